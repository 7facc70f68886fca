// Test doubles for tether.js: a scriptable fake WebSocket "server", a fake fetch that
// serves the real close-code catalogue from contracts/, and small waiting helpers.
// (Not a test file itself: node --test runs it and finds no tests.)

import { readFileSync } from 'node:fs';

export const CATALOGUE = JSON.parse(
  readFileSync(new URL('../../../contracts/session/close-codes.json', import.meta.url), 'utf8'),
);

export const PROJECT_ID = '0b0e5a7c-1d2e-4f3a-8b9c-0d1e2f3a4b5c';

/** A fetch that answers the catalogue URL.  opts.fail: answer 503; opts.catalogue: serve this one. */
export function fakeFetch({ catalogue = CATALOGUE, fail = false } = {}) {
  const calls = [];
  const fn = async (url) => {
    calls.push(String(url));
    if (fail) return { ok: false, status: 503, json: async () => ({ code: 'unavailable' }) };
    return { ok: true, status: 200, json: async () => structuredClone(catalogue) };
  };
  fn.calls = calls;
  return fn;
}

export function readyFrame(overrides = {}) {
  const now = new Date();
  return {
    type: 'ready',
    v: 1,
    session_id: '6f1d3c1e-2b7a-4c55-9d0e-1a2b3c4d5e6f',
    connection_id: 'conn-1',
    project: { id: PROJECT_ID, slug: 'demo', name: 'Demo' },
    last_seq: 0,
    resume_from: 0,
    heartbeat: { interval_ms: 10000, timeout_ms: 30000 },
    session_expires_at: new Date(now.getTime() + 3600_000).toISOString(),
    server_time: now.toISOString(),
    limits: { max_frame_bytes: 65536, prompts_per_minute: 600 },
    ...overrides,
  };
}

export function eventFrame(seq, kind = 'agent_chunk', data = { text: `chunk ${seq}`, index: seq, prompt_seq: 1 }) {
  return { type: 'event', v: 1, seq, event_id: `ev-${seq}`, kind, data, ts: new Date().toISOString() };
}

/** An `events` frame (batched delivery) carrying one event frame per seq, in the given order. */
export function eventsFrame(seqs) {
  return { type: 'events', v: 1, events: seqs.map((s) => eventFrame(s)) };
}

export function errorFrame(code, extra = {}) {
  const entry = CATALOGUE.codes.find((c) => c.code === code);
  return {
    type: 'error',
    v: 1,
    code: entry ? entry.name : 'unknown',
    close_code: code,
    message: entry ? entry.meaning : 'unknown',
    retryable: entry ? entry.retryable : false,
    action: entry ? entry.action : 'show_message',
    ...extra,
  };
}

/**
 * A fake server.  server.WebSocket is the class to pass as WebSocketImpl; every socket the
 * client creates is pushed to server.sockets.  onInit(sock, initFrame, index) decides what
 * happens after INIT (default: reply with a ready frame).  onFrame(sock, frame) sees every
 * other client frame.
 */
export function makeServer({ onInit, onFrame, autoOpen = true } = {}) {
  const server = {
    sockets: [],
    createdAt: [],
    onInit: onInit ?? ((sock) => sock.deliver(readyFrame())),
    onFrame: onFrame ?? (() => {}),
  };
  class FakeSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      this.onopen = null;
      this.onmessage = null;
      this.onerror = null;
      this.onclose = null;
      this.index = server.sockets.length;
      server.sockets.push(this);
      server.createdAt.push(Date.now());
      if (autoOpen) setTimeout(() => this.open(), 0);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
      const frame = JSON.parse(data);
      this.sent.push(frame);
      setTimeout(() => {
        if (this.readyState !== 1) return;
        if (frame.type === 'init') server.onInit(this, frame, this.index);
        else server.onFrame(this, frame);
      }, 0);
    }
    close(code = 1000, reason = '') {
      if (this.readyState >= 2) return;
      this.closedWith = { code, reason };
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason, wasClean: true }), 0);
    }
    // ---- the server side
    open() {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.({ type: 'open' });
    }
    deliver(frame) {
      if (this.readyState !== 1) return;
      this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }
    serverClose(code, reason = '') {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
    get init() {
      return this.sent.find((f) => f.type === 'init');
    }
  }
  server.WebSocket = FakeSocket;
  return server;
}

/** A getToken that returns tok-1, tok-2, … and counts its calls. */
export function tokenSource() {
  let n = 0;
  const fn = async () => `tok-${++n}-${'x'.repeat(40)}`;
  Object.defineProperty(fn, 'calls', { get: () => n });
  return fn;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, { timeout = 3000, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    if (pred()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}
