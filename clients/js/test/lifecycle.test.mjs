// F30 / F31: a stable client whose subscriptions never reconnect and whose handlers survive
// reconnects; heartbeats; reauth before session expiry; state reporting.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, TetherClient } from '../tether.js';
import { eventFrame, fakeFetch, makeServer, PROJECT_ID, readyFrame, sleep, tokenSource, waitFor } from './_fakes.mjs';
import { makeClient, record } from './_client.mjs';

test('F30 subscribing, unsubscribing and connect() storms never reconnect', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  await client.connect();
  const seen = [];
  let current = null;
  for (let i = 0; i < 1000; i++) {
    // What a re-render does: drop the old handlers, add new ones, maybe call connect() again.
    if (current) {
      client.off('event', current.event);
      client.off('state', current.state);
    }
    current = { event: (e) => seen.push([i, e.seq]), state: () => {} };
    client.on('event', current.event);
    client.on('state', current.state);
    client.connect();
  }
  await sleep(20);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.stats.connectAttempts, 1);
  assert.equal(client.stats.tokensFetched, 1);
  server.sockets[0].deliver(eventFrame(1));
  assert.deepEqual(seen, [[999, 1]], 'only the latest handler fires, once');
});

test('F30 connect() is idempotent while connecting', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const a = client.connect();
  const b = client.connect();
  const c = client.connect();
  const [ra, rb, rc] = await Promise.all([a, b, c]);
  assert.equal(ra.type, 'ready');
  assert.equal(ra, rb);
  assert.equal(rb, rc);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.session, ra);
});

test('F31 handlers belong to the client and survive reconnects; removed ones never fire', async () => {
  const server = makeServer({
    onInit: (sock, init) => sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 })),
  });
  const { client } = makeClient(server);
  const kept = record(client, 'event');
  const readies = record(client, 'ready');
  const removed = [];
  const fn = (e) => removed.push(e.seq);
  const unsubscribe = client.on('event', fn);
  await client.connect();
  server.sockets[0].deliver(eventFrame(1));
  unsubscribe();
  server.sockets[0].serverClose(1006);
  await waitFor(() => client.state === 'ready' && server.sockets.length === 2);
  server.sockets[1].deliver(eventFrame(2));
  server.sockets[1].serverClose(4502);
  await waitFor(() => client.state === 'ready' && server.sockets.length === 3);
  server.sockets[2].deliver(eventFrame(3));
  assert.deepEqual(kept.map((e) => e.seq), [1, 2, 3]);
  assert.deepEqual(removed, [1]);
  assert.equal(readies.length, 3);
  // Frames from a replaced socket are ignored.
  server.sockets[0].deliver(eventFrame(4));
  assert.deepEqual(kept.map((e) => e.seq), [1, 2, 3]);
});

test('a throwing handler does not break delivery to the others', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const errors = [];
  const orig = console.error;
  console.error = (...a) => errors.push(a);
  try {
    client.on('event', () => {
      throw new Error('boom');
    });
    const events = record(client, 'event');
    await client.connect();
    server.sockets[0].deliver(eventFrame(1));
    server.sockets[0].deliver(eventFrame(2));
    assert.deepEqual(events.map((e) => e.seq), [1, 2]);
    assert.equal(errors.length, 2, 'the handler error is reported, not swallowed');
    assert.equal(server.sockets.length, 1);
  } finally {
    console.error = orig;
  }
});

test('state goes idle -> connecting -> ready -> reconnecting -> ready -> idle', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const states = record(client, 'state');
  assert.equal(client.state, 'idle');
  await client.connect();
  server.sockets[0].serverClose(1006);
  await waitFor(() => client.state === 'ready' && server.sockets.length === 2);
  client.close();
  const seq = states.map((s) => s.state).filter((s, i, a) => i === 0 || a[i - 1] !== s);
  assert.deepEqual(seq, ['connecting', 'ready', 'reconnecting', 'ready', 'idle']);
  assert.equal(client.stats.reconnects, 1);
});

test('on() rejects unknown event types and non-functions', () => {
  const server = makeServer();
  const { client } = makeClient(server);
  assert.throws(() => client.on('message', () => {}), TypeError);
  assert.throws(() => client.on('event', null), TypeError);
});

test('options are validated; createClient returns a TetherClient', () => {
  const base = { url: 'ws://x.test/v1/ws', project: { id: PROJECT_ID }, getToken: tokenSource(), WebSocketImpl: makeServer().WebSocket, fetch: fakeFetch() };
  assert.ok(createClient(base) instanceof TetherClient);
  assert.throws(() => new TetherClient({ ...base, url: 'http://x.test/v1/ws' }), TypeError);
  assert.throws(() => new TetherClient({ ...base, url: undefined }), TypeError);
  assert.throws(() => new TetherClient({ ...base, project: {} }), TypeError);
  assert.throws(() => new TetherClient({ ...base, project: { id: PROJECT_ID, slug: 'a' } }), TypeError);
  assert.throws(() => new TetherClient({ ...base, getToken: 'abc' }), TypeError);
  assert.throws(() => new TetherClient({ ...base, clientId: 'has space' }), TypeError);
  const c = new TetherClient({ ...base, project: { slug: 'my-proj' }, clientId: 'tab-1' });
  assert.equal(c.clientId, 'tab-1');
});

test('the init frame matches the contract', async () => {
  const server = makeServer();
  const { client } = makeClient(server, { clientId: 'tab.7', project: { slug: 'demo-project' } });
  await client.connect();
  const init = server.sockets[0].init;
  assert.deepEqual(Object.keys(init).sort(), ['batch', 'client_id', 'project', 'token', 'type', 'v']);
  assert.equal(init.v, 1);
  assert.equal(init.batch, true);
  assert.equal(init.client_id, 'tab.7');
  assert.deepEqual(init.project, { slug: 'demo-project' });
});

test('F24 pings every heartbeat.interval_ms; a silent server is dropped and the client resumes', async () => {
  let answer = true;
  const server = makeServer({
    onInit: (sock, init) => sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0, heartbeat: { interval_ms: 10, timeout_ms: 60 } })),
    onFrame: (sock, f) => {
      if (f.type === 'ping' && answer) sock.deliver({ type: 'pong', v: 1, server_time: new Date().toISOString() });
    },
  });
  const { client } = makeClient(server);
  const errors = record(client, 'error');
  await client.connect();
  server.sockets[0].deliver(eventFrame(1));
  await sleep(150); // > timeout_ms, kept alive by pongs
  assert.equal(server.sockets.length, 1);
  assert.ok(server.sockets[0].frames('ping').length >= 5);
  assert.deepEqual(server.sockets[0].frames('ping')[0], { type: 'ping', v: 1 });
  answer = false;
  await waitFor(() => server.sockets.length === 2 && client.state === 'ready', { what: 'reconnect after silence' });
  assert.equal(server.sockets[0].closedWith.code, 3001);
  assert.equal(server.sockets[1].init.resume_from, 1);
  assert.ok(errors.some((e) => e.name === 'heartbeat_timeout'));
});

test('reauth is sent with a fresh token before session_expires_at', async () => {
  const server = makeServer({
    onInit: (sock) => {
      const now = Date.now();
      sock.deliver(readyFrame({ server_time: new Date(now).toISOString(), session_expires_at: new Date(now + 100).toISOString() }));
    },
    onFrame: (sock, f) => {
      if (f.type === 'reauth') sock.deliver({ type: 'reauth_ok', v: 1, session_expires_at: new Date(Date.now() + 100).toISOString() });
    },
  });
  const { client, getToken } = makeClient(server);
  const t0 = Date.now();
  await client.connect();
  await waitFor(() => server.sockets[0].frames('reauth').length >= 2, { what: 'two reauths' });
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 140, `two reauths at ~80 ms each, got ${elapsed}`);
  const reauths = server.sockets[0].frames('reauth');
  const tokens = [server.sockets[0].init.token, ...reauths.map((f) => f.token)];
  assert.equal(new Set(tokens).size, tokens.length, 'every reauth uses a new token');
  assert.ok(getToken.calls >= 3);
  assert.equal(server.sockets.length, 1);
  assert.equal(client.state, 'ready');
});

test('reauth uses the server clock, not the local one', async () => {
  const server = makeServer({
    onInit: (sock) => {
      // The server's clock is an hour ahead; the session has 100 ms left on it.
      const serverNow = Date.now() + 3600_000;
      sock.deliver(readyFrame({ server_time: new Date(serverNow).toISOString(), session_expires_at: new Date(serverNow + 100).toISOString() }));
    },
  });
  const { client } = makeClient(server);
  await client.connect();
  await waitFor(() => server.sockets[0].frames('reauth').length === 1, { timeout: 500, what: 'reauth' });
});

test('an error frame without a close is acted on', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      if (i === 0) {
        sock.deliver({ type: 'error', v: 1, code: 'forbidden', close_code: 4030, message: 'no', retryable: false, action: 'show_message' });
      } else sock.deliver(readyFrame());
    },
  });
  const { client } = makeClient(server);
  const t0 = Date.now();
  await assert.rejects(client.connect());
  assert.ok(Date.now() - t0 >= 1900);
  assert.equal(client.failure.name, 'forbidden');
  assert.equal(server.sockets[0].closedWith.code, 3003);
});
