// F20-F22: in-order delivery, duplicates dropped by seq, gaps resumed, resume_from,
// the outbox re-sent until prompt_ack, acks.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventFrame, makeServer, readyFrame, sleep, waitFor } from './_fakes.mjs';
import { makeClient, record } from './_client.mjs';

const seqs = (events) => events.map((e) => e.seq);

test('F21 duplicates are dropped by seq and counted; delivery is in order', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  const sock = server.sockets[0];
  for (const s of [1, 2, 2, 3, 1, 3, 4]) sock.deliver(eventFrame(s));
  assert.deepEqual(seqs(events), [1, 2, 3, 4]);
  assert.equal(client.lastSeq, 4);
  assert.equal(client.stats.duplicatesDropped, 3);
  assert.equal(events[0].kind, 'agent_chunk');
  assert.equal(events[0].data.text, 'chunk 1');
});

test('F22 the first init has no resume_from; later ones resume from lastSeq; replayed duplicates are dropped', async () => {
  const server = makeServer({
    onInit: (sock, init) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0, last_seq: 5 }));
      // A sloppy replay that starts too early: the client must drop 2 and 3.
      const from = init.resume_from === undefined ? 1 : init.resume_from - 1;
      for (let s = Math.max(from, 1); s <= 5; s++) sock.deliver(eventFrame(s));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  assert.equal(server.sockets[0].init.resume_from, undefined);
  assert.deepEqual(seqs(events), [1, 2, 3, 4, 5]);
  server.sockets[0].serverClose(1006);
  await waitFor(() => server.sockets.length === 2 && client.state === 'ready');
  await sleep(5);
  assert.equal(server.sockets[1].init.resume_from, 5);
  assert.deepEqual(seqs(events), [1, 2, 3, 4, 5]);
  assert.equal(client.stats.duplicatesDropped, 2); // seqs 4 and 5 replayed again (from = 5 - 1)
});

test('F22 without resume_from, the ready frame sets the base (live-only server)', async () => {
  const server = makeServer({
    onInit: (sock, init) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 40, last_seq: 40 }));
      sock.deliver(eventFrame(41));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  await waitFor(() => events.length === 1);
  assert.deepEqual(seqs(events), [41]);
  assert.equal(server.sockets.length, 1, 'no false gap');
});

test('F20 a gap is a protocol error: drop the socket and resume from lastSeq', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) {
        sock.deliver(eventFrame(1));
        sock.deliver(eventFrame(2));
        sock.deliver(eventFrame(4)); // 3 is missing
        sock.deliver(eventFrame(5));
      } else {
        for (let s = init.resume_from + 1; s <= 5; s++) sock.deliver(eventFrame(s));
      }
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  const errors = record(client, 'error');
  await client.connect();
  await waitFor(() => events.length === 5, { what: 'all five events' });
  assert.deepEqual(seqs(events), [1, 2, 3, 4, 5]);
  assert.equal(server.sockets.length, 2);
  assert.equal(server.sockets[0].closedWith.code, 3000);
  assert.equal(server.sockets[1].init.resume_from, 2);
  assert.equal(errors.find((e) => e.name === 'sequence_gap').source, 'client');
});

test('F21 the outbox is re-sent after every reconnect until prompt_ack arrives', async () => {
  let ackOn = 2; // the server acks only on the third connection
  const server = makeServer({
    onFrame: (sock, f) => {
      if (f.type === 'prompt' && sock.index === ackOn) {
        sock.deliver({ type: 'prompt_ack', v: 1, client_msg_id: f.client_msg_id, seq: 7, duplicate: true });
      }
    },
  });
  const { client } = makeClient(server);
  const acks = record(client, 'ack');
  await client.connect();
  const p = client.send('hello agent');
  await waitFor(() => server.sockets[0].frames('prompt').length === 1);
  const id = server.sockets[0].frames('prompt')[0].client_msg_id;
  assert.match(id, /^[0-9a-f-]{36}$/);
  assert.equal(client.stats.outbox, 1);

  server.sockets[0].serverClose(1006);
  await waitFor(() => server.sockets.length === 2 && server.sockets[1].frames('prompt').length === 1);
  server.sockets[1].serverClose(1012);
  const result = await p;
  assert.deepEqual(result, { seq: 7, duplicate: true, clientMsgId: id });
  for (const s of server.sockets) {
    assert.deepEqual(s.frames('prompt').map((f) => [f.client_msg_id, f.text, f.v]), [[id, 'hello agent', 1]]);
  }
  assert.equal(acks.length, 1);
  assert.equal(client.stats.outbox, 0);

  // Once acked it is never sent again.
  ackOn = -1;
  server.sockets[2].serverClose(1006);
  await waitFor(() => server.sockets.length === 4 && client.state === 'ready');
  await sleep(10);
  assert.equal(server.sockets[3].frames('prompt').length, 0);
});

test('F21 send before connect() is queued; a caller-chosen clientMsgId is used and deduplicated', async () => {
  const server = makeServer({
    onFrame: (sock, f) => {
      if (f.type === 'prompt') sock.deliver({ type: 'prompt_ack', v: 1, client_msg_id: f.client_msg_id, seq: 1, duplicate: false });
    },
  });
  const { client } = makeClient(server);
  const a = client.send('one', { clientMsgId: 'msg-1' });
  const b = client.send('one', { clientMsgId: 'msg-1' });
  assert.equal(a, b);
  await client.connect();
  assert.deepEqual(await a, { seq: 1, duplicate: false, clientMsgId: 'msg-1' });
  assert.equal(server.sockets[0].frames('prompt').length, 1);
  await assert.rejects(client.send(''), TypeError);
  await assert.rejects(client.send('x'.repeat(16001)));
  await assert.rejects(client.send('x', { clientMsgId: 'bad id!' }), TypeError);
});

test('close() rejects pending sends', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  await client.connect();
  const p = client.send('never acked');
  client.close();
  await assert.rejects(p, /closed/);
});

test('prompts over limits.max_frame_bytes are rejected instead of tripping frame_too_large', async () => {
  const server = makeServer({ onInit: (sock) => sock.deliver(readyFrame({ limits: { max_frame_bytes: 200, prompts_per_minute: 60 } })) });
  const { client } = makeClient(server);
  await client.connect();
  await assert.rejects(client.send('y'.repeat(500)), /too large/);
  await sleep(5);
  assert.equal(server.sockets[0].frames('prompt').length, 0);
});

test('prompts are paced to limits.prompts_per_minute', async () => {
  const server = makeServer({ onInit: (sock) => sock.deliver(readyFrame({ limits: { max_frame_bytes: 65536, prompts_per_minute: 2 } })) });
  const { client } = makeClient(server);
  await client.connect();
  client.send('a');
  client.send('b');
  client.send('c');
  await sleep(20);
  assert.deepEqual(server.sockets[0].frames('prompt').map((f) => f.text), ['a', 'b']);
  assert.equal(client.stats.outbox, 3);
});

test('acks are sent every 50 events and after the ack interval', async () => {
  const server = makeServer();
  const { client } = makeClient(server, { ackIntervalMs: 30 });
  await client.connect();
  const sock = server.sockets[0];
  for (let s = 1; s <= 50; s++) sock.deliver(eventFrame(s));
  assert.deepEqual(sock.frames('ack'), [{ type: 'ack', v: 1, seq: 50 }]);
  sock.deliver(eventFrame(51));
  sock.deliver(eventFrame(52));
  assert.equal(sock.frames('ack').length, 1);
  await waitFor(() => sock.frames('ack').length === 2, { what: 'timed ack' });
  assert.deepEqual(sock.frames('ack')[1], { type: 'ack', v: 1, seq: 52 });
  await sleep(50);
  assert.equal(sock.frames('ack').length, 2, 'no ack without new events');
});

test('frames that break the protocol make the client resume, not crash', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) {
        sock.deliver(eventFrame(1));
        sock.deliver('this is not json');
      } else sock.deliver(eventFrame(2));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  await waitFor(() => events.length === 2);
  assert.equal(server.sockets[1].init.resume_from, 1);
  // Unknown frame types from a newer server are ignored.
  server.sockets[1].deliver({ type: 'something_new', v: 1 });
  await sleep(5);
  assert.equal(server.sockets.length, 2);
});
