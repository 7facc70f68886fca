// F32 / F05: backoff with full jitter, retry_after_ms, terminal vs retryable (read from the
// catalogue), one fresh token per attempt, network closes, URL rotation, online/offline.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, catalogueUrlFor, TetherError } from '../tether.js';
import { CATALOGUE, errorFrame, fakeFetch, makeServer, readyFrame, sleep, waitFor } from './_fakes.mjs';
import { makeClient, record } from './_client.mjs';

test('F32 backoffDelay is full jitter within [0, min(cap, base*2^n))', () => {
  const backoff = { baseMs: 250, capMs: 15000 };
  for (let n = 0; n < 25; n++) {
    const ceiling = Math.min(15000, 250 * 2 ** n);
    let max = 0;
    let min = Infinity;
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(n, backoff);
      assert.ok(Number.isInteger(d) && d >= 0 && d < ceiling, `attempt ${n}: ${d} not in [0, ${ceiling})`);
      max = Math.max(max, d);
      min = Math.min(min, d);
    }
    // Full jitter spreads over the whole range, not just near the ceiling.
    assert.ok(min < ceiling * 0.1, `attempt ${n}: min ${min} too high for full jitter`);
    assert.ok(max > ceiling * 0.9, `attempt ${n}: max ${max} too low`);
  }
  assert.equal(backoffDelay(3, backoff, () => 0), 0);
  assert.equal(backoffDelay(3, backoff, () => 0.5), 1000);
  assert.equal(backoffDelay(60, backoff, () => 0.5), 7500); // capped
  assert.equal(backoffDelay(0, {}, () => 0.5), 125); // defaults base 250, cap 15000
});

test('F32 the client reconnects with capped, jittered, growing delays', async () => {
  const server = makeServer({ onInit: (sock) => sock.serverClose(1006) });
  const { client } = makeClient(server, { backoff: { baseMs: 4, capMs: 20 }, random: () => 0.5 });
  const states = record(client, 'state');
  client.connect();
  await waitFor(() => server.sockets.length >= 6, { what: '6 attempts' });
  client.close();
  const delays = states.filter((s) => s.state === 'reconnecting' && s.delayMs !== undefined).map((s) => s.delayMs);
  assert.deepEqual(delays.slice(0, 5), [2, 4, 8, 10, 10]); // 0.5 * min(20, 4 * 2^n)
  assert.equal(client.state, 'idle');
});

test('F32 random jitter stays within bounds on the client', async () => {
  const server = makeServer({ onInit: (sock) => sock.serverClose(1006) });
  const { client } = makeClient(server, { backoff: { baseMs: 3, capMs: 12 } });
  const states = record(client, 'state');
  client.connect();
  await waitFor(() => server.sockets.length >= 8, { what: '8 attempts' });
  client.close();
  for (const s of states.filter((x) => x.delayMs !== undefined)) {
    const ceiling = Math.min(12, 3 * 2 ** (s.attempt - 1));
    assert.ok(s.delayMs >= 0 && s.delayMs < ceiling, `attempt ${s.attempt}: ${s.delayMs}`);
  }
});

test('F32 retry_after_ms from the error frame is honoured', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      if (i === 0) {
        sock.deliver(errorFrame(4501, { retry_after_ms: 150 }));
        sock.serverClose(4501);
      } else sock.deliver(readyFrame());
    },
  });
  const { client } = makeClient(server, { backoff: { baseMs: 1, capMs: 5 } });
  const states = record(client, 'state');
  const errors = record(client, 'error');
  const t0 = Date.now();
  await client.connect();
  assert.equal(server.sockets.length, 2);
  const gap = server.createdAt[1] - server.createdAt[0];
  assert.ok(gap >= 145, `reconnected after ${gap} ms, wanted >= 150`);
  assert.ok(Date.now() - t0 >= 145);
  const sched = states.find((s) => s.delayMs !== undefined);
  assert.ok(sched.delayMs >= 150);
  assert.equal(sched.reason.name, 'starting_up');
  assert.equal(errors[0].name, 'starting_up');
  assert.equal(errors[0].retryAfterMs, 150);
});

test('F32 every non-retryable catalogue code is terminal: failed, human message, no retry', async () => {
  const terminal = CATALOGUE.codes.filter((c) => !c.retryable);
  assert.ok(terminal.length >= 5);
  for (const entry of terminal) {
    const server = makeServer({
      onInit: (sock) => {
        sock.deliver(errorFrame(entry.code));
        sock.serverClose(entry.code);
      },
    });
    const { client } = makeClient(server);
    const pending = client.send('hello');
    await assert.rejects(client.connect(), (err) => err instanceof TetherError && err.code === entry.code);
    await assert.rejects(pending, (err) => err.message === entry.message);
    assert.equal(client.state, 'failed');
    assert.deepEqual({ ...client.failure }, { code: entry.code, name: entry.name, message: entry.message, action: entry.action });
    await sleep(60);
    assert.equal(server.sockets.length, 1, `${entry.name} must not retry`);
    assert.equal(client.stats.connectAttempts, 1);
    client.close();
  }
});

test('F32 a terminal close without an error frame still fails (project_not_found)', async () => {
  const server = makeServer({ onInit: (sock) => sock.serverClose(4040) });
  const { client } = makeClient(server);
  const states = record(client, 'state');
  await assert.rejects(client.connect());
  assert.equal(client.failure.message, 'Project not found.');
  assert.equal(client.failure.name, 'project_not_found');
  assert.equal(states.at(-1).state, 'failed');
  assert.equal(states.at(-1).failure.code, 4040);
  await sleep(50);
  assert.equal(server.sockets.length, 1);
});

test('F32 every retryable catalogue code reconnects', async () => {
  const retryable = CATALOGUE.codes.filter((c) => c.retryable);
  for (const entry of retryable) {
    const server = makeServer({
      onInit: (sock, init, i) => {
        if (i === 0) {
          sock.deliver(errorFrame(entry.code, { retry_after_ms: 1 }));
          sock.serverClose(entry.code);
        } else sock.deliver(readyFrame());
      },
    });
    const { client } = makeClient(server);
    await client.connect();
    assert.equal(server.sockets.length, 2, entry.name);
    assert.equal(client.state, 'ready');
    client.close();
  }
});

test('F32 retryable vs terminal comes from the fetched catalogue, not from a copy', async () => {
  // A catalogue where forbidden is retryable and draining is terminal.
  const flipped = structuredClone(CATALOGUE);
  for (const c of flipped.codes) {
    if (c.code === 4030) c.retryable = true;
    if (c.code === 4502) {
      c.retryable = false;
      c.message = 'Custom message from the served catalogue.';
    }
  }
  const fetch = fakeFetch({ catalogue: flipped });
  let server = makeServer({
    onInit: (sock, init, i) => (i === 0 ? sock.serverClose(4030) : sock.deliver(readyFrame())),
  });
  let { client } = makeClient(server, { fetch, catalogueUrl: 'http://cat.example/v1/protocol/close-codes' });
  await client.connect();
  assert.equal(server.sockets.length, 2);
  assert.deepEqual(fetch.calls, ['http://cat.example/v1/protocol/close-codes']);
  client.close();

  server = makeServer({ onInit: (sock) => sock.serverClose(4502) });
  ({ client } = makeClient(server, { fetch: fakeFetch({ catalogue: flipped }) }));
  await assert.rejects(client.connect());
  assert.equal(client.failure.message, 'Custom message from the served catalogue.');
});

test('the catalogue URL defaults to the first ws URL origin', () => {
  assert.equal(catalogueUrlFor('ws://127.0.0.1:8002/v1/ws'), 'http://127.0.0.1:8002/v1/protocol/close-codes');
  assert.equal(catalogueUrlFor('wss://chat.example.com/v1/ws?x=1'), 'https://chat.example.com/v1/protocol/close-codes');
});

test('F32 without a catalogue the error frame decides; unknown 4xxx without either backs off', async () => {
  let server = makeServer({
    onInit: (sock) => {
      sock.deliver(errorFrame(4030));
      sock.serverClose(4030);
    },
  });
  let { client } = makeClient(server, { fetch: fakeFetch({ fail: true }) });
  const errors = record(client, 'error');
  await assert.rejects(client.connect());
  assert.equal(client.failure.name, 'forbidden');
  assert.ok(errors.some((e) => e.source === 'catalogue'), 'the missing catalogue is reported');
  client.close();

  server = makeServer({ onInit: (sock, init, i) => (i === 0 ? sock.serverClose(4999) : sock.deliver(readyFrame())) });
  ({ client } = makeClient(server, { fetch: fakeFetch({ fail: true }) }));
  await client.connect();
  assert.equal(server.sockets.length, 2);
  client.close();

  // With the catalogue, an unknown 4xxx and no error frame is terminal (no endless loop).
  server = makeServer({ onInit: (sock) => sock.serverClose(4999) });
  ({ client } = makeClient(server));
  await assert.rejects(client.connect());
  assert.equal(client.failure.name, 'unknown_close_code');
});

test('F32 network closes (1006, 1001, 1011, 1000 from the server) are retried', async () => {
  const codes = [1006, 1001, 1011, 1000, 1012];
  const server = makeServer({
    onInit: (sock, init, i) => (i < codes.length ? sock.serverClose(codes[i]) : sock.deliver(readyFrame())),
  });
  const { client } = makeClient(server);
  await client.connect();
  assert.equal(server.sockets.length, codes.length + 1);
  assert.equal(client.stats.reconnects, codes.length);
});

test('F32 a ready connection that drops reconnects; close() is final', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  await client.connect();
  server.sockets[0].serverClose(1006);
  await waitFor(() => client.state === 'ready' && server.sockets.length === 2, { what: 'reconnect' });
  client.close();
  assert.equal(client.state, 'idle');
  assert.deepEqual(server.sockets[1].closedWith, { code: 1000, reason: 'client closed' });
  await sleep(50);
  assert.equal(server.sockets.length, 2);
});

test('F05 getToken is called once before every attempt; tokens are never reused or put in the URL', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      if (i < 4) {
        sock.deliver(errorFrame(4012));
        sock.serverClose(4012);
      } else sock.deliver(readyFrame());
    },
  });
  const { client, getToken } = makeClient(server);
  await client.connect();
  assert.equal(server.sockets.length, 5);
  assert.equal(getToken.calls, 5);
  assert.equal(client.stats.tokensFetched, 5);
  assert.equal(client.stats.connectAttempts, 5);
  const tokens = server.sockets.map((s) => s.init.token);
  assert.equal(new Set(tokens).size, 5, 'every init carries a new token');
  for (const s of server.sockets) {
    for (const t of tokens) assert.ok(!s.url.includes(t), 'no token in the URL');
    assert.equal(s.url, 'ws://127.0.0.1:8002/v1/ws');
  }
  // A drop after ready: one more token, one more attempt.
  server.sockets[4].serverClose(1006);
  await waitFor(() => server.sockets.length === 6 && client.state === 'ready');
  assert.equal(getToken.calls, 6);
});

test('F05 a failing getToken is retried with backoff; a non-retryable one fails with its message', async () => {
  let n = 0;
  const server = makeServer();
  let { client } = makeClient(server, {
    getToken: async () => {
      n++;
      if (n < 3) throw new Error('auth-token service 503');
      return `fresh-token-${n}`;
    },
  });
  const errors = record(client, 'error');
  await client.connect();
  assert.equal(n, 3);
  assert.equal(server.sockets.length, 1);
  assert.equal(server.sockets[0].init.token, 'fresh-token-3');
  assert.equal(errors.filter((e) => e.source === 'token').length, 2);
  client.close();

  ({ client } = makeClient(server, {
    getToken: async () => {
      throw new TetherError('You are signed out. Log in again.', { name: 'unauthenticated', retryable: false, action: 'show_message' });
    },
  }));
  await assert.rejects(client.connect());
  assert.equal(client.state, 'failed');
  assert.equal(client.failure.message, 'You are signed out. Log in again.');
  assert.equal(client.failure.name, 'unauthenticated');
  assert.equal(server.sockets.length, 1);
});

test('connect() can start over after a terminal failure', async () => {
  let forbid = true;
  const server = makeServer({
    onInit: (sock) => {
      if (forbid) {
        sock.deliver(errorFrame(4030));
        sock.serverClose(4030);
      } else sock.deliver(readyFrame());
    },
  });
  const { client } = makeClient(server);
  await assert.rejects(client.connect());
  forbid = false;
  await client.connect();
  assert.equal(client.state, 'ready');
  assert.equal(client.failure, null);
});

test('urls are rotated on reconnect', async () => {
  const server = makeServer({ onInit: (sock, init, i) => (i < 3 ? sock.serverClose(1006) : sock.deliver(readyFrame())) });
  const { client } = makeClient(server, { url: undefined, urls: ['ws://a.test/v1/ws', 'ws://b.test/v1/ws'] });
  await client.connect();
  assert.deepEqual(server.sockets.map((s) => s.url), ['ws://a.test/v1/ws', 'ws://b.test/v1/ws', 'ws://a.test/v1/ws', 'ws://b.test/v1/ws']);
});

test('a connection that never gets ready times out and retries', async () => {
  const server = makeServer({ onInit: (sock, init, i) => (i === 0 ? undefined : sock.deliver(readyFrame())) });
  const { client } = makeClient(server, { connectTimeoutMs: 40 });
  await client.connect();
  assert.equal(server.sockets.length, 2);
  assert.equal(server.sockets[0].closedWith.code, 3002);
});

test('the backoff resets after a ready that lasted a while', async () => {
  const server = makeServer();
  const { client } = makeClient(server, { backoff: { baseMs: 4, capMs: 400, resetAfterMs: 30 }, random: () => 0.5 });
  const states = record(client, 'state');
  await client.connect();
  for (let i = 0; i < 3; i++) {
    server.sockets.at(-1).serverClose(1006);
    await waitFor(() => client.state === 'ready' && server.sockets.length === i + 2);
  }
  await sleep(40);
  server.sockets.at(-1).serverClose(1006);
  await waitFor(() => client.state === 'ready' && server.sockets.length === 5);
  const delays = states.filter((s) => s.delayMs !== undefined).map((s) => s.delayMs);
  assert.deepEqual(delays, [2, 4, 8, 2]);
});

test('offline pauses reconnects; online reconnects at once; visible again revives a dead socket', async () => {
  const win = new EventTarget();
  win.navigator = { onLine: true };
  win.document = new EventTarget();
  win.document.visibilityState = 'visible';
  globalThis.window = win;
  try {
    const server = makeServer();
    const { client } = makeClient(server, { backoff: { baseMs: 60000, capMs: 60000 }, random: () => 0.99 });
    await client.connect();
    win.navigator.onLine = false;
    win.dispatchEvent(new Event('offline'));
    server.sockets[0].serverClose(1006);
    await waitFor(() => client.state === 'reconnecting');
    await sleep(30);
    assert.equal(server.sockets.length, 1, 'no attempt while offline');
    win.navigator.onLine = true;
    win.dispatchEvent(new Event('online'));
    await waitFor(() => client.state === 'ready', { what: 'ready after online' });
    assert.equal(server.sockets.length, 2);

    // A long backoff is cut short when the page becomes visible again.
    server.sockets[1].serverClose(1006);
    await waitFor(() => client.state === 'reconnecting');
    await sleep(20);
    assert.equal(server.sockets.length, 2);
    win.document.dispatchEvent(new Event('visibilitychange'));
    await waitFor(() => client.state === 'ready' && server.sockets.length === 3, { what: 'ready after visible' });
    client.close();
  } finally {
    delete globalThis.window;
  }
});
