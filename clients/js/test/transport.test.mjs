// Closes decided by the server's WebSocket layer (no error frame, a 1xxx code) that stand for a
// catalogue entry: the client fails with that entry, as for the session's own close (F01, F32).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeServer, sleep } from './_fakes.mjs';
import { makeClient, record } from './_client.mjs';

for (const [code, name] of [[1009, 'frame_too_large'], [1007, 'invalid_frame']]) {
  test(`F01 a ${code} close from the WebSocket layer is the catalogue's ${name}`, { timeout: 5000 }, async () => {
    const server = makeServer({ onInit: (sock) => sock.serverClose(code) });
    const { client } = makeClient(server);
    const states = record(client, 'state');
    await assert.rejects(client.connect());
    assert.equal(client.failure.name, name);
    assert.equal(client.failure.action, 'fix_client');
    assert.equal(states.at(-1).state, 'failed');
    assert.equal(states.at(-1).failure.code, code);
    await sleep(50);
    assert.equal(server.sockets.length, 1); // not retried: the same frame would be refused again
  });
}
