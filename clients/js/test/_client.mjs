// A helper that builds a TetherClient wired to the fakes and closes it after each test.
// (Not a test file itself.)

import { afterEach } from 'node:test';
import { TetherClient } from '../tether.js';
import { fakeFetch, PROJECT_ID, tokenSource } from './_fakes.mjs';

const open = [];

afterEach(() => {
  while (open.length) open.pop().close();
});

export function makeClient(server, extra = {}) {
  const getToken = extra.getToken ?? tokenSource();
  const c = new TetherClient({
    url: 'ws://127.0.0.1:8002/v1/ws',
    project: { id: PROJECT_ID },
    fetch: fakeFetch(),
    WebSocketImpl: server.WebSocket,
    backoff: { baseMs: 2, capMs: 20 },
    ...extra,
    getToken,
  });
  open.push(c);
  return { client: c, getToken };
}

/** Collect every payload of one event type. */
export function record(client, type) {
  const seen = [];
  client.on(type, (x) => seen.push(x));
  return seen;
}
