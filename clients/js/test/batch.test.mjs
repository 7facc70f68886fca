// Batched delivery: INIT asks for it (batch: true, unless turned off), and an `events`
// frame's items are handled exactly as if each had arrived alone in an `event` frame:
// dedup by seq (F21), gap detection and resume (F20, F22), acks, the resume cursor,
// one 'event' callback per item.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { eventFrame, eventsFrame, makeServer, readyFrame, sleep, waitFor } from './_fakes.mjs';
import { makeClient, record } from './_client.mjs';

const seqs = (events) => events.map((e) => e.seq);

test('INIT asks for batched delivery by default; batch: false leaves it out', async () => {
  const on = makeServer({ onInit: (sock, init) => sock.deliver(readyFrame({ batch: init.batch === true })) });
  const { client } = makeClient(on);
  const ready = await client.connect();
  assert.equal(on.sockets[0].init.batch, true);
  assert.equal(ready.batch, true);
  assert.equal(client.session.batch, true);

  const off = makeServer();
  const { client: plain } = makeClient(off, { batch: false });
  await plain.connect();
  assert.equal('batch' in off.sockets[0].init, false);

  assert.throws(() => makeClient(off, { batch: 'yes' }), TypeError);
});

test('F21 each item of an events frame is delivered once, in order, one callback each; duplicates dropped', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  const sock = server.sockets[0];
  sock.deliver(eventsFrame([1, 2, 3]));
  sock.deliver(eventFrame(4));
  sock.deliver(eventsFrame([3, 4, 5, 6])); // overlaps what was delivered: 3 and 4 are dropped
  sock.deliver(eventsFrame([6]));
  assert.deepEqual(seqs(events), [1, 2, 3, 4, 5, 6]);
  assert.ok(events.every((e) => e.type === 'event' && e.v === 1 && e.event_id === `ev-${e.seq}`));
  assert.equal(events[4].data.text, 'chunk 5');
  assert.equal(client.lastSeq, 6);
  assert.equal(client.stats.duplicatesDropped, 3);
  assert.equal(client.stats.batchesReceived, 3);
  assert.equal(server.sockets.length, 1);
});

test('F20 a gap inside a batch delivers the items before it, drops the socket and resumes from there', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) sock.deliver(eventsFrame([1, 2, 4, 5])); // 3 is missing
      else sock.deliver(eventsFrame([3, 4, 5]));
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
  assert.equal(server.sockets[1].init.batch, true);
  assert.equal(errors.filter((e) => e.name === 'sequence_gap').length, 1);
});

test('F20 a gap between a batch and the event before it resumes too', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) {
        sock.deliver(eventFrame(1));
        sock.deliver(eventsFrame([3, 4]));
      } else sock.deliver(eventsFrame([2, 3, 4]));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  await waitFor(() => events.length === 4, { what: 'four events' });
  assert.deepEqual(seqs(events), [1, 2, 3, 4]);
  assert.equal(server.sockets[1].init.resume_from, 1);
});

test('F22 the resume cursor after a batch is its last seq', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) sock.deliver(eventsFrame([1, 2, 3, 4, 5, 6, 7]));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  await waitFor(() => events.length === 7);
  server.sockets[0].serverClose(1006);
  await waitFor(() => server.sockets.length === 2 && client.state === 'ready');
  assert.equal(server.sockets[1].init.resume_from, 7);
});

test('acks count batched events one by one: every 50, then after the ack interval', async () => {
  const server = makeServer();
  const { client } = makeClient(server, { ackIntervalMs: 30 });
  await client.connect();
  const sock = server.sockets[0];
  sock.deliver(eventsFrame(Array.from({ length: 120 }, (_, i) => i + 1)));
  assert.deepEqual(sock.frames('ack'), [{ type: 'ack', v: 1, seq: 50 }, { type: 'ack', v: 1, seq: 100 }]);
  await waitFor(() => sock.frames('ack').length === 3, { what: 'timed ack' });
  assert.deepEqual(sock.frames('ack')[2], { type: 'ack', v: 1, seq: 120 });
});

test('malformed events frames are protocol errors that deliver nothing and resume', async () => {
  const bad = [
    { type: 'events', v: 1, events: [] },
    { type: 'events', v: 1 },
    { type: 'events', v: 1, events: [eventFrame(2), { type: 'prompt', seq: 3 }] },
    { type: 'events', v: 1, events: [eventFrame(2), { ...eventFrame(3), seq: '3' }] },
    { type: 'events', v: 1, events: [eventFrame(2), null] },
  ];
  const server = makeServer({
    onInit: (sock, init, i) => {
      sock.deliver(readyFrame({ resume_from: init.resume_from ?? 0 }));
      if (i === 0) sock.deliver(eventFrame(1));
      if (i < bad.length) sock.deliver(bad[i]);
      else sock.deliver(eventsFrame([2, 3]));
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  const errors = record(client, 'error');
  await client.connect();
  await waitFor(() => events.length === 3, { what: 'the good batch after the bad ones' });
  assert.deepEqual(seqs(events), [1, 2, 3]);
  assert.equal(server.sockets.length, bad.length + 1);
  for (let i = 0; i < bad.length; i++) {
    assert.equal(server.sockets[i].closedWith.code, 3000, `bad frame ${i}`);
    assert.equal(server.sockets[i + 1].init.resume_from, 1, `bad frame ${i}`);
  }
  assert.equal(errors.filter((e) => e.name === 'protocol_error').length, bad.length);
  assert.equal(client.stats.batchesReceived, 1);
});

test('an events frame before ready is a protocol error', async () => {
  const server = makeServer({
    onInit: (sock, init, i) => {
      if (i === 0) sock.deliver(eventsFrame([1]));
      else sock.deliver(readyFrame());
    },
  });
  const { client } = makeClient(server);
  const events = record(client, 'event');
  await client.connect();
  assert.equal(server.sockets[0].closedWith.code, 3000);
  assert.equal(events.length, 0);
});

test('a handler that closes the client mid-batch stops the rest of the batch', async () => {
  const server = makeServer();
  const { client } = makeClient(server);
  const seen = [];
  client.on('event', (e) => {
    seen.push(e.seq);
    if (e.seq === 2) client.close();
  });
  await client.connect();
  server.sockets[0].deliver(eventsFrame([1, 2, 3, 4]));
  await sleep(5);
  assert.deepEqual(seen, [1, 2]);
  assert.equal(client.state, 'idle');
  assert.equal(client.lastSeq, 2);
});
