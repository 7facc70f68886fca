// tether.js — the browser (and Node) client for Tether's session WebSocket.
//
// One dependency-free ES module.  Use it from a page with
//   <script type="module">import { TetherClient } from '/tether.js'; …</script>
// or from a bundler.  The wire protocol is contracts/session/frames/*.json; which close
// codes are retryable is read at run time from the service's close-code catalogue
// (GET /v1/protocol/close-codes), never copied into this file.
//
// The client is an object with a stable identity (F30): subscribing, unsubscribing or
// re-rendering never touches the connection, and handlers belong to the client, not to a
// socket, so they survive reconnects (F31).  Every connect and reconnect fetches a fresh
// single-use token with getToken() (F05).  Events are delivered once, in seq order
// (F20, F21), and resumed after a drop with resume_from (F22).  By default the client asks
// for batched delivery (INIT batch: true): an `events` frame carries several consecutive
// events, each handled exactly as if it had arrived alone in its own `event` frame.  Retryable closes reconnect
// with capped exponential backoff and full jitter; terminal ones stop and say why (F32).
// An answer that says when to come back (an `overloaded` close or token answer with
// retry_after_ms / Retry-After) is pacing: the client waits that long plus its own jitter
// and carries on, however often it is told.  A prompt the server refuses on its own
// (an error frame with scope `request`) stays queued and is re-sent the same way.

export const PROTOCOL_VERSION = 1;

/** The client's states. */
export const STATES = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting',
  READY: 'ready',
  RECONNECTING: 'reconnecting',
  FAILED: 'failed',
});

/** Close codes the client itself uses when it drops a socket to reconnect (3000-3999). */
export const CLIENT_CLOSE_CODES = Object.freeze({
  PROTOCOL_ERROR: 3000, // the server sent something the protocol does not allow (bad JSON, a seq gap)
  HEARTBEAT_TIMEOUT: 3001, // nothing arrived from the server within heartbeat.timeout_ms
  CONNECT_TIMEOUT: 3002, // no `ready` within connectTimeoutMs of opening the socket
  SERVER_ERROR_NO_CLOSE: 3003, // the server sent an `error` frame but did not close
});

const EVENT_TYPES = new Set(['event', 'state', 'ready', 'error', 'ack', 'queued']);
const WS_OPEN = 1;
const MAX_TIMER_MS = 2 ** 31 - 1;
const ID_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;
const MAX_PROMPT_CHARS = 16000;

/** An error from the client: carries the failure fields ({code, name, message, action}). */
export class TetherError extends Error {
  /**
   * @param {string} message human-readable
   * @param {{code?: number|null, name?: string, action?: string, retryable?: boolean, retryAfterMs?: number}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = 'TetherError';
    this.code = info.code ?? null;
    this.failureName = info.name ?? null;
    this.action = info.action ?? null;
    this.retryable = info.retryable ?? null;
    this.retryAfterMs = info.retryAfterMs ?? null;
  }
}

/**
 * Full-jitter exponential backoff: a random delay in [0, min(capMs, baseMs * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{baseMs?: number, capMs?: number}} [backoff]
 * @param {() => number} [random] returns [0, 1)
 */
export function backoffDelay(attempt, { baseMs = 250, capMs = 15000 } = {}, random = Math.random) {
  return Math.floor(random() * backoffCeiling(attempt, { baseMs, capMs }));
}

function backoffCeiling(attempt, { baseMs = 250, capMs = 15000 } = {}) {
  return Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 40));
}

/**
 * The wait after being told when to come back (retry_after_ms, Retry-After): that long,
 * capped at maxRetryAfterMs, plus this client's own jitter in [0, min(that, the backoff
 * ceiling)), so clients told the same value do not come back in one wave.  Without a
 * retry-after it is plain backoffDelay().
 * @param {number} retryAfterMs
 * @param {number} attempt
 * @param {{baseMs?: number, capMs?: number, maxRetryAfterMs?: number}} [backoff]
 * @param {() => number} [random]
 */
export function pacedDelay(retryAfterMs, attempt, backoff = {}, random = Math.random) {
  const told = Math.min(waitMs(retryAfterMs), backoff.maxRetryAfterMs ?? 60000);
  if (told === 0) return backoffDelay(attempt, backoff, random);
  return told + Math.floor(random() * Math.min(told, backoffCeiling(attempt, backoff)));
}

/** http(s)://<origin of wsUrl>/v1/protocol/close-codes */
export function catalogueUrlFor(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = '/v1/protocol/close-codes';
  u.search = '';
  u.hash = '';
  return u.toString();
}

function uuid() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  // crypto.randomUUID only exists in secure contexts; getRandomValues exists everywhere.
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function reportHandlerError(err) {
  // A throwing handler must not break the client, and must not vanish either.
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else console.error('tether: a handler threw', err);
}

function clampTimer(ms) {
  return Math.min(Math.max(0, Math.floor(ms)), MAX_TIMER_MS);
}

function nonNegInt(x) {
  return Number.isSafeInteger(x) && x >= 0 ? x : 0;
}

// Closes that the server's WebSocket layer decides before the session sees the frame (so with no
// error frame): the catalogue entry each stands for.  1009: a message above the server's cap;
// 1007: a text frame that is not UTF-8.
const TRANSPORT_CLOSES = Object.freeze({ 1007: 'invalid_frame', 1009: 'frame_too_large' });

/** A wait we were told, in whole ms (a Retry-After of 1.0005 s must not round to "no wait"). */
function waitMs(x) {
  return Number.isFinite(x) && x > 0 ? Math.ceil(x) : 0;
}

function networkName(code) {
  switch (code) {
    case 1000: return 'normal_closure';
    case 1001: return 'going_away';
    case 1006: return 'abnormal_closure';
    case 1011: return 'server_error';
    case 1012: return 'service_restart';
    case 1013: return 'try_again_later';
    default: return 'connection_lost';
  }
}

export class TetherClient {
  // ---- configuration
  #urls;
  #project;
  #getToken;
  #clientId;
  #catalogueUrl;
  #backoff;
  #WS;
  #fetch;
  #random;
  #connectTimeoutMs;
  #catalogueTimeoutMs;
  #ackEvery;
  #ackIntervalMs;
  #reauthFraction;
  #batch;
  // ---- state that outlives sockets
  #handlers = new Map();
  #state = STATES.IDLE;
  #failure = null;
  #lastSeq = 0;
  #hasBaseline = false; // true once resume_from is meaningful (an event was seen, or a ready set the base)
  #stats = { connectAttempts: 0, tokensFetched: 0, reconnects: 0, duplicatesDropped: 0, batchesReceived: 0, promptsRequeued: 0 };
  #outbox = new Map(); // client_msg_id -> {id, text, promise, resolve, reject, sentOn, notBefore, refusals}
  #promptTimes = []; // send times of prompts in the last minute (client-side prompts_per_minute)
  #readyWaiters = [];
  #lastReady = null;
  // ---- the connection machinery
  #active = false; // connect() was called and neither close() nor a terminal failure followed
  #gen = 0; // bumped by every attempt and by close(): stale async work compares it
  #conn = null; // the current connection record, or null
  #attempt = 0; // backoff exponent
  #attemptsThisRun = 0; // attempts since connect(): the first one is 'connecting', later ones 'reconnecting'
  #urlIndex = 0;
  #retryTimer = null;
  #notBefore = 0; // epoch ms: no reconnect before this (retry_after_ms)
  #waitingOnline = false;
  #win = null; // window listeners, when installed
  #catalogue = null; // Map<code, entry>
  #cataloguePromise = null;

  /**
   * @param {object} opts
   * @param {string[]} [opts.urls] ws:// or wss:// URLs of GET /v1/ws, rotated on reconnect
   * @param {string} [opts.url] one URL (instead of urls)
   * @param {{id: string}|{slug: string}} opts.project
   * @param {() => Promise<string>} opts.getToken returns a fresh single-use connection token
   * @param {string} [opts.clientId]
   * @param {string} [opts.catalogueUrl]
   * @param {{baseMs?: number, capMs?: number, resetAfterMs?: number, maxRetryAfterMs?: number}} [opts.backoff]
   * @param {typeof WebSocket} [opts.WebSocketImpl]
   * @param {typeof fetch} [opts.fetch] used for the close-code catalogue
   * @param {boolean} [opts.batch] ask for batched delivery (`events` frames); default true
   */
  constructor(opts = {}) {
    const urls = opts.urls ?? (opts.url ? [opts.url] : []);
    if (!Array.isArray(urls) || urls.length === 0) throw new TypeError('TetherClient: give url or urls');
    for (const u of urls) {
      if (typeof u !== 'string' || !/^wss?:\/\//i.test(u)) throw new TypeError(`TetherClient: not a ws:// or wss:// URL: ${u}`);
    }
    const p = opts.project;
    const hasId = p && typeof p.id === 'string' && p.id.length > 0;
    const hasSlug = p && typeof p.slug === 'string' && p.slug.length > 0;
    if (hasId === hasSlug) throw new TypeError('TetherClient: project must be {id} or {slug}');
    if (typeof opts.getToken !== 'function') throw new TypeError('TetherClient: getToken must be an async function');
    const clientId = opts.clientId ?? `js-${uuid()}`;
    if (!ID_PATTERN.test(clientId)) throw new TypeError('TetherClient: clientId must match ^[A-Za-z0-9._:-]{1,64}$');
    const WS = opts.WebSocketImpl ?? globalThis.WebSocket;
    if (typeof WS !== 'function') throw new TypeError('TetherClient: no WebSocket implementation (pass WebSocketImpl)');
    if (opts.batch !== undefined && typeof opts.batch !== 'boolean') throw new TypeError('TetherClient: batch must be a boolean');

    this.#urls = [...urls];
    this.#project = hasId ? { id: p.id } : { slug: p.slug };
    this.#getToken = opts.getToken;
    this.#clientId = clientId;
    this.#catalogueUrl = opts.catalogueUrl ?? catalogueUrlFor(urls[0]);
    const b = opts.backoff ?? {};
    this.#backoff = {
      baseMs: b.baseMs ?? 250, capMs: b.capMs ?? 15000, resetAfterMs: b.resetAfterMs ?? 5000, maxRetryAfterMs: b.maxRetryAfterMs ?? 60000,
    };
    this.#WS = WS;
    this.#fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#random = opts.random ?? Math.random;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 15000;
    this.#catalogueTimeoutMs = opts.catalogueTimeoutMs ?? 5000;
    this.#ackEvery = opts.ackEvery ?? 50;
    this.#ackIntervalMs = opts.ackIntervalMs ?? 1000;
    this.#reauthFraction = opts.reauthFraction ?? 0.8;
    this.#batch = opts.batch ?? true;
    if (Number.isSafeInteger(opts.resumeFrom) && opts.resumeFrom >= 0) {
      this.#lastSeq = opts.resumeFrom;
      this.#hasBaseline = true;
    }
  }

  // ------------------------------------------------------------------ public API

  /** idle | connecting | ready | reconnecting | failed */
  get state() { return this.#state; }
  /** {code, name, message, action} when state is 'failed', else null */
  get failure() { return this.#failure; }
  /** The highest event seq delivered to 'event' handlers (0 before any). */
  get lastSeq() { return this.#lastSeq; }
  /** A copy of the counters. */
  get stats() { return { ...this.#stats, outbox: this.#outbox.size }; }
  get clientId() { return this.#clientId; }
  /** The last `ready` frame, or null. */
  get session() { return this.#lastReady; }

  /**
   * Start connecting (idempotent: while connecting/ready/reconnecting it only returns the
   * promise of the next ready).  Resolves with the `ready` frame; rejects with a TetherError
   * on a terminal failure or close().
   */
  connect() {
    if (this.#active) return this.#waitReady();
    this.#active = true;
    this.#failure = null;
    this.#attempt = 0;
    this.#attemptsThisRun = 0;
    this.#notBefore = 0;
    this.#installWindowListeners();
    this.#loadCatalogue().catch(() => {}); // warm it; failures are reported when it is needed
    const p = this.#waitReady();
    this.#startAttempt();
    return p;
  }

  /**
   * Send a prompt.  It stays in the outbox and is re-sent after every reconnect until the
   * server's prompt_ack for its client_msg_id arrives (the server stores it once).
   * @param {string} text
   * @param {{clientMsgId?: string}} [options]
   * @returns {Promise<{seq: number, duplicate: boolean, clientMsgId: string}>}
   */
  send(text, options = {}) {
    if (typeof text !== 'string' || text.length === 0) return Promise.reject(new TypeError('send: text must be a non-empty string'));
    if (text.length > MAX_PROMPT_CHARS) return Promise.reject(new TetherError(`The message is longer than ${MAX_PROMPT_CHARS} characters.`, { name: 'frame_too_large', action: 'show_message', retryable: false }));
    if (this.#state === STATES.FAILED) return Promise.reject(this.#failureError());
    const id = options.clientMsgId ?? uuid();
    if (!ID_PATTERN.test(id)) return Promise.reject(new TypeError('send: clientMsgId must match ^[A-Za-z0-9._:-]{1,64}$'));
    const existing = this.#outbox.get(id);
    if (existing) return existing.promise;
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => {}); // callers that await still see the rejection
    this.#outbox.set(id, { id, text, promise, resolve, reject, sentOn: 0, notBefore: 0, refusals: 0 });
    if (this.#conn?.ready) this.#pumpOutbox(this.#conn);
    return promise;
  }

  /**
   * Subscribe.  Types: 'event' (event frame), 'state' ({state, prev, failure, ...}),
   * 'ready' (ready frame), 'error' ({code, name, message, action, retryable, source, ...}),
   * 'ack' (prompt_ack frame), 'queued' ({clientMsgId, name, message, retryAfterMs, delayMs}:
   * the server refused a prompt for now; it stays queued and is re-sent after delayMs).  Never touches the connection.  Returns an unsubscribe function.
   */
  on(type, fn) {
    if (!EVENT_TYPES.has(type)) throw new TypeError(`on: unknown event type ${JSON.stringify(type)}`);
    if (typeof fn !== 'function') throw new TypeError('on: handler must be a function');
    let set = this.#handlers.get(type);
    if (!set) this.#handlers.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /** Unsubscribe.  Never touches the connection. */
  off(type, fn) {
    this.#handlers.get(type)?.delete(fn);
  }

  /** Close for good (until the next connect()).  Pending sends are rejected. */
  close() {
    const wasActive = this.#active;
    this.#active = false;
    this.#gen++;
    this.#clearRetryTimer();
    this.#waitingOnline = false;
    const conn = this.#conn;
    if (conn) {
      if (conn.ready) this.#sendAck(conn);
      this.#teardown(conn, 1000, 'client closed');
    }
    this.#removeWindowListeners();
    const err = new TetherError('The client was closed.', { name: 'client_closed', action: 'show_message', retryable: false });
    this.#rejectAll(err);
    this.#failure = null;
    if (wasActive || this.#state !== STATES.IDLE) this.#setState(STATES.IDLE);
  }

  // ------------------------------------------------------------------ attempts

  async #startAttempt() {
    this.#clearRetryTimer();
    if (!this.#active) return;
    const gen = ++this.#gen;
    const isReconnect = this.#attemptsThisRun > 0;
    if (this.#isOffline()) {
      this.#waitingOnline = true;
      this.#setState(isReconnect ? STATES.RECONNECTING : STATES.CONNECTING, { waiting: 'online' }, true);
      return;
    }
    this.#waitingOnline = false;
    this.#attemptsThisRun++;
    if (isReconnect) {
      this.#stats.reconnects++;
      this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    }
    this.#stats.connectAttempts++;
    this.#setState(isReconnect ? STATES.RECONNECTING : STATES.CONNECTING);

    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (gen !== this.#gen || !this.#active) return;
      const verdict = {
        code: err?.code ?? null,
        name: err?.failureName ?? 'token_unavailable',
        message: err?.message || 'Could not get a connection token.',
        action: err?.action ?? 'refresh_token',
        retryable: err?.retryable !== false,
        retryAfterMs: waitMs(err?.retryAfterMs),
        source: 'token',
      };
      this.#emit('error', verdict);
      this.#afterAttempt(null, verdict);
      return;
    }
    if (gen !== this.#gen || !this.#active) return; // closed meanwhile; the token is simply dropped

    const url = this.#urls[this.#urlIndex];
    let ws;
    try {
      ws = new this.#WS(url);
    } catch (err) {
      const verdict = { code: null, name: 'connection_lost', message: `Could not open ${url}: ${err?.message ?? err}`, action: 'reconnect', retryable: true, retryAfterMs: 0, source: 'client' };
      this.#emit('error', verdict);
      this.#afterAttempt(null, verdict);
      return;
    }
    const conn = {
      id: gen, ws, url, token, ready: false, readyAt: 0, errorFrame: null,
      lastRx: Date.now(), unacked: 0, clockOffset: 0, heartbeat: null, limits: null,
      timers: { connect: null, ping: null, watch: null, ack: null, reauth: null, pump: null, errorClose: null },
    };
    this.#conn = conn;
    conn.timers.connect = setTimeout(() => this.#drop(conn, {
      code: CLIENT_CLOSE_CODES.CONNECT_TIMEOUT, name: 'connect_timeout',
      message: 'The server did not answer in time; reconnecting.', action: 'reconnect', retryable: true,
    }), clampTimer(this.#connectTimeoutMs));
    ws.onopen = () => this.#onOpen(conn);
    ws.onmessage = (ev) => this.#onMessage(conn, ev);
    ws.onerror = () => {}; // a close event always follows; it carries the code
    ws.onclose = (ev) => this.#onClose(conn, ev);
  }

  async #fetchToken() {
    const token = await this.#getToken();
    if (typeof token !== 'string' || token.length === 0) {
      throw new TetherError('getToken() did not return a token.', { name: 'token_unavailable', action: 'refresh_token', retryable: true });
    }
    this.#stats.tokensFetched++;
    return token;
  }

  #onOpen(conn) {
    if (this.#conn !== conn) return;
    const init = { type: 'init', v: PROTOCOL_VERSION, token: conn.token, project: { ...this.#project }, client_id: this.#clientId };
    if (this.#hasBaseline) init.resume_from = this.#lastSeq;
    if (this.#batch) init.batch = true; // we understand `events` frames
    conn.token = null; // single use: not kept once sent
    this.#sendFrame(conn, init);
  }

  #onMessage(conn, ev) {
    if (this.#conn !== conn) return;
    conn.lastRx = Date.now();
    if (typeof ev.data !== 'string') return this.#protocolError(conn, 'The server sent a binary frame.');
    let f;
    try {
      f = JSON.parse(ev.data);
    } catch {
      return this.#protocolError(conn, 'The server sent a frame that is not JSON.');
    }
    if (!f || typeof f !== 'object' || typeof f.type !== 'string') return this.#protocolError(conn, 'The server sent a frame without a type.');
    switch (f.type) {
      case 'ready': return this.#onReady(conn, f);
      case 'event': return this.#onEvent(conn, f);
      case 'events': return this.#onEvents(conn, f);
      case 'prompt_ack': return this.#onPromptAck(conn, f);
      case 'reauth_ok': return this.#scheduleReauth(conn, f.session_expires_at);
      case 'error': return this.#onErrorFrame(conn, f);
      case 'pong': return undefined;
      default: return undefined; // a newer server's frame type: ignored
    }
  }

  #onReady(conn, f) {
    if (conn.ready) return this.#protocolError(conn, 'The server sent a second ready frame.');
    conn.ready = true;
    conn.readyAt = Date.now();
    clearTimeout(conn.timers.connect);
    conn.timers.connect = null;
    conn.heartbeat = f.heartbeat ?? null;
    conn.limits = f.limits ?? null;
    const serverNow = Date.parse(f.server_time);
    conn.clockOffset = Number.isFinite(serverNow) ? serverNow - Date.now() : 0;
    if (!this.#hasBaseline) {
      // No resume_from was sent: the server chose where the replay starts.
      this.#lastSeq = Math.max(this.#lastSeq, nonNegInt(f.resume_from));
      this.#hasBaseline = true;
    }
    this.#notBefore = 0;
    this.#lastReady = f;
    this.#setState(STATES.READY, { connectionId: f.connection_id });
    if (this.#conn !== conn) return undefined; // a 'state' handler closed the client
    this.#startHeartbeat(conn);
    this.#scheduleReauth(conn, f.session_expires_at);
    this.#pumpOutbox(conn);
    const waiters = this.#readyWaiters;
    this.#readyWaiters = [];
    for (const w of waiters) w.resolve(f);
    if (this.#conn === conn) this.#emit('ready', f);
    return undefined;
  }

  #onEvent(conn, f) {
    if (!conn.ready) return this.#protocolError(conn, 'The server sent an event before ready.');
    const seq = f.seq;
    if (!Number.isSafeInteger(seq) || seq < 1) return this.#protocolError(conn, 'The server sent an event without a valid seq.');
    if (seq <= this.#lastSeq) {
      this.#stats.duplicatesDropped++;
      return undefined;
    }
    if (seq !== this.#lastSeq + 1) {
      // F20: a gap must not happen.  Reconnect and let the server replay from lastSeq.
      return this.#protocolError(conn, `Event seq ${seq} arrived after ${this.#lastSeq}; resuming.`, 'sequence_gap');
    }
    this.#lastSeq = seq;
    this.#hasBaseline = true;
    conn.unacked++;
    this.#emit('event', f);
    if (this.#conn !== conn) return undefined;
    if (conn.unacked >= this.#ackEvery) this.#sendAck(conn);
    else if (!conn.timers.ack) {
      conn.timers.ack = setTimeout(() => { conn.timers.ack = null; this.#sendAck(conn); }, clampTimer(this.#ackIntervalMs));
    }
    return undefined;
  }

  /** A batch: each item is handled exactly as if it had arrived alone, in order. */
  #onEvents(conn, f) {
    if (!conn.ready) return this.#protocolError(conn, 'The server sent events before ready.');
    const items = f.events;
    if (!Array.isArray(items) || items.length === 0) return this.#protocolError(conn, 'The server sent an events frame without events.');
    // Check the whole frame before delivering any of it: a malformed batch delivers nothing.
    for (const item of items) {
      if (!item || typeof item !== 'object' || item.type !== 'event' || !Number.isSafeInteger(item.seq) || item.seq < 1) {
        return this.#protocolError(conn, 'The server sent an events frame with an item that is not a valid event.');
      }
    }
    this.#stats.batchesReceived++;
    for (const item of items) {
      this.#onEvent(conn, item);
      if (this.#conn !== conn) return undefined; // a gap, a bad seq, or a handler closed the client
    }
    return undefined;
  }

  #onPromptAck(conn, f) {
    const entry = this.#outbox.get(f.client_msg_id);
    if (entry) {
      this.#outbox.delete(f.client_msg_id);
      entry.resolve({ seq: f.seq, duplicate: f.duplicate === true, clientMsgId: f.client_msg_id });
    }
    if (this.#conn === conn) this.#emit('ack', f);
  }

  #onErrorFrame(conn, f) {
    if (f.scope === 'request') return this.#onRequestRefused(conn, f);
    conn.errorFrame = f;
    this.#emit('error', {
      code: f.close_code, name: f.code, message: f.message, action: f.action, retryable: f.retryable,
      retryAfterMs: f.retry_after_ms, connectionId: f.connection_id, source: 'server',
    });
    if (this.#conn !== conn || conn.timers.errorClose) return;
    // The contract says a close follows; if it does not, close ourselves and act on the frame.
    conn.timers.errorClose = setTimeout(() => {
      if (this.#conn !== conn) return;
      this.#teardown(conn, CLIENT_CLOSE_CODES.SERVER_ERROR_NO_CLOSE, 'error frame without close');
      this.#handleClosed(conn, Number.isInteger(f.close_code) ? f.close_code : 1006);
    }, 2000);
    return undefined;
  }

  /** The server refused one prompt and keeps the socket: pace it (or drop it when terminal). */
  #onRequestRefused(conn, f) {
    const id = f.client_msg_id;
    if (typeof id !== 'string') return this.#protocolError(conn, 'The server refused a request without naming its client_msg_id.');
    const entry = this.#outbox.get(id);
    if (!entry) return undefined; // acknowledged meanwhile (the refusal crossed an ack)
    if (f.retryable === false) {
      this.#outbox.delete(id);
      const info = { code: f.close_code ?? null, name: f.code, action: f.action, retryable: false };
      entry.reject(new TetherError(f.message || 'The server refused the message.', info));
      this.#emit('error', { ...info, message: f.message, clientMsgId: id, scope: 'request', source: 'server' });
      return undefined;
    }
    const retryAfterMs = nonNegInt(f.retry_after_ms);
    const delayMs = pacedDelay(retryAfterMs, entry.refusals, this.#backoff, this.#random);
    entry.refusals++;
    entry.sentOn = 0;
    entry.notBefore = Date.now() + delayMs;
    this.#stats.promptsRequeued++;
    this.#emit('queued', { clientMsgId: id, name: f.code, message: f.message, retryAfterMs, delayMs });
    if (this.#conn === conn) this.#pumpOutbox(conn);
    return undefined;
  }

  #onClose(conn, ev) {
    if (this.#conn !== conn) return;
    this.#teardown(conn);
    this.#handleClosed(conn, ev?.code ?? 1006);
  }

  async #handleClosed(conn, code) {
    const gen = this.#gen;
    const verdict = await this.#classify(code, conn.errorFrame);
    if (gen !== this.#gen || !this.#active) return;
    this.#afterAttempt(conn, verdict);
  }

  /** What a close code means: catalogue first, then the error frame, then network rules. */
  async #classify(code, errorFrame) {
    const catalogue = await this.#catalogueOrNull();
    let effective = code;
    const isCustom = (c) => Number.isInteger(c) && c >= 4000 && c <= 4999;
    if (!isCustom(code) && errorFrame && isCustom(errorFrame.close_code)) effective = errorFrame.close_code;
    const transportName = isCustom(effective) ? undefined : TRANSPORT_CLOSES[effective];
    const entry = transportName
      ? [...(catalogue?.values() ?? [])].find((e) => e.name === transportName)
      : catalogue?.get(effective);
    const retryAfterMs = Math.max(nonNegInt(errorFrame?.retry_after_ms), nonNegInt(entry?.retry_after_ms));
    const source = 'server';
    if (entry) {
      return { code: effective, name: entry.name, message: entry.message, action: entry.action, retryable: entry.retryable, retryAfterMs, source };
    }
    if (isCustom(effective)) {
      if (errorFrame && typeof errorFrame.retryable === 'boolean') {
        return { code: effective, name: errorFrame.code ?? 'unknown_close_code', message: errorFrame.message || `The server closed the connection (${effective}).`, action: errorFrame.action ?? 'show_message', retryable: errorFrame.retryable, retryAfterMs, source };
      }
      if (catalogue) {
        return { code: effective, name: 'unknown_close_code', message: `The server closed the connection with an unknown code (${effective}).`, action: 'show_message', retryable: false, retryAfterMs, source };
      }
      // Neither the catalogue nor an error frame: we cannot tell, so back off and try again.
      return { code: effective, name: 'unknown_close_code', message: `The server closed the connection (${effective}); retrying.`, action: 'backoff', retryable: true, retryAfterMs, source };
    }
    // Not a catalogue code: a network-level close (1000 from the server, 1001, 1006, 1011, …).
    return { code: effective, name: networkName(effective), message: 'The connection was lost; reconnecting.', action: 'reconnect', retryable: true, retryAfterMs, source: 'network' };
  }

  /** A connection (or an attempt that never got one) ended: retry or fail. */
  #afterAttempt(conn, verdict) {
    if (!this.#active) return;
    if (conn?.ready && Date.now() - conn.readyAt >= this.#backoff.resetAfterMs) this.#attempt = 0;
    if (verdict.retryable) this.#scheduleReconnect(verdict);
    else this.#fail(verdict);
  }

  #scheduleReconnect(verdict) {
    const retryAfterMs = Math.min(waitMs(verdict.retryAfterMs), this.#backoff.maxRetryAfterMs);
    const delayMs = pacedDelay(retryAfterMs, this.#attempt, this.#backoff, this.#random);
    this.#attempt++;
    this.#notBefore = Date.now() + retryAfterMs;
    this.#clearRetryTimer();
    const offline = this.#isOffline();
    this.#waitingOnline = offline;
    this.#setState(STATES.RECONNECTING, {
      delayMs, attempt: this.#attempt, reason: { code: verdict.code, name: verdict.name, message: verdict.message, action: verdict.action },
      waiting: offline ? 'online' : undefined,
    }, true);
    if (offline) return; // the 'online' event resumes
    this.#retryTimer = setTimeout(() => { this.#retryTimer = null; this.#startAttempt(); }, clampTimer(delayMs));
  }

  #fail(verdict) {
    this.#active = false;
    this.#gen++;
    this.#clearRetryTimer();
    this.#waitingOnline = false;
    this.#removeWindowListeners();
    this.#failure = Object.freeze({ code: verdict.code ?? null, name: verdict.name, message: verdict.message, action: verdict.action });
    this.#rejectAll(this.#failureError());
    this.#setState(STATES.FAILED, { failure: this.#failure });
  }

  #failureError() {
    const f = this.#failure ?? { code: null, name: 'failed', message: 'The connection failed.', action: 'show_message' };
    return new TetherError(f.message, { code: f.code, name: f.name, action: f.action, retryable: false });
  }

  #rejectAll(err) {
    const waiters = this.#readyWaiters;
    this.#readyWaiters = [];
    for (const w of waiters) w.reject(err);
    const entries = [...this.#outbox.values()];
    this.#outbox.clear();
    for (const e of entries) e.reject(err);
  }

  /** Drop a live connection from the client side and retry (or fail) per verdict. */
  #drop(conn, verdict) {
    if (this.#conn !== conn) return;
    const v = { retryAfterMs: 0, source: 'client', ...verdict };
    this.#emit('error', v);
    if (this.#conn !== conn) return;
    this.#teardown(conn, v.code ?? 1000, v.name);
    this.#afterAttempt(conn, v);
  }

  #protocolError(conn, message, name = 'protocol_error') {
    this.#drop(conn, { code: CLIENT_CLOSE_CODES.PROTOCOL_ERROR, name, message, action: 'resume', retryable: true });
  }

  /** Stop every timer of a connection, detach from its socket, optionally close it. */
  #teardown(conn, closeCode, reason) {
    for (const k of Object.keys(conn.timers)) {
      if (conn.timers[k] !== null) {
        clearTimeout(conn.timers[k]);
        clearInterval(conn.timers[k]);
        conn.timers[k] = null;
      }
    }
    const { ws } = conn;
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = null;
    ws.onclose = null;
    conn.token = null;
    if (closeCode !== undefined && (ws.readyState === 0 || ws.readyState === WS_OPEN)) {
      try {
        ws.close(closeCode, String(reason ?? '').slice(0, 120));
      } catch (err) {
        console.warn('tether: closing the socket failed', err);
      }
    }
    if (this.#conn === conn) this.#conn = null;
  }

  // ------------------------------------------------------------------ live connection

  #sendFrame(conn, frame) {
    if (this.#conn !== conn || conn.ws.readyState !== WS_OPEN) return false;
    try {
      conn.ws.send(JSON.stringify(frame));
      return true;
    } catch (err) {
      console.warn('tether: send failed (a close will follow)', err);
      return false;
    }
  }

  #sendAck(conn) {
    if (conn.timers.ack) {
      clearTimeout(conn.timers.ack);
      conn.timers.ack = null;
    }
    if (conn.unacked === 0) return;
    if (this.#sendFrame(conn, { type: 'ack', v: PROTOCOL_VERSION, seq: this.#lastSeq })) conn.unacked = 0;
  }

  #startHeartbeat(conn) {
    const hb = conn.heartbeat;
    if (!hb || !(hb.interval_ms > 0) || !(hb.timeout_ms > 0)) return;
    conn.timers.ping = setInterval(() => this.#sendFrame(conn, { type: 'ping', v: PROTOCOL_VERSION }), clampTimer(hb.interval_ms));
    const check = () => {
      conn.timers.watch = null;
      if (this.#conn !== conn) return;
      const quiet = Date.now() - conn.lastRx;
      if (quiet >= hb.timeout_ms) this.#heartbeatTimeout(conn);
      else conn.timers.watch = setTimeout(check, clampTimer(hb.timeout_ms - quiet + 1));
    };
    conn.timers.watch = setTimeout(check, clampTimer(hb.timeout_ms));
  }

  #heartbeatTimeout(conn) {
    this.#drop(conn, {
      code: CLIENT_CLOSE_CODES.HEARTBEAT_TIMEOUT, name: 'heartbeat_timeout',
      message: 'The connection went quiet; reconnecting.', action: 'resume', retryable: true,
    });
  }

  #scheduleReauth(conn, expiresAtIso) {
    if (this.#conn !== conn) return;
    if (conn.timers.reauth) clearTimeout(conn.timers.reauth);
    conn.timers.reauth = null;
    const expires = Date.parse(expiresAtIso);
    if (!Number.isFinite(expires)) return;
    const remaining = expires - (Date.now() + conn.clockOffset);
    conn.timers.reauth = setTimeout(() => this.#reauth(conn, expires), clampTimer(remaining * this.#reauthFraction));
  }

  async #reauth(conn, expires) {
    conn.timers.reauth = null;
    if (this.#conn !== conn) return;
    let token;
    try {
      token = await this.#fetchToken();
    } catch (err) {
      if (this.#conn !== conn) return;
      const retryAfterMs = Math.min(waitMs(err?.retryAfterMs), this.#backoff.maxRetryAfterMs);
      this.#emit('error', { code: null, name: err?.failureName ?? 'token_unavailable', message: err?.message ?? String(err), action: 'refresh_token', retryable: true, retryAfterMs, source: 'token' });
      const remaining = expires - (Date.now() + conn.clockOffset);
      // Told when to ask again: not sooner, even if the session runs out meanwhile (the
      // server then closes with session_expired and the reconnect is paced the same way).
      const again = Math.max(Math.min(5000, remaining / 2), retryAfterMs);
      if (remaining > 1000) conn.timers.reauth = setTimeout(() => this.#reauth(conn, expires), clampTimer(again));
      return; // otherwise the server closes with session_expired and we reconnect with a new token
    }
    this.#sendFrame(conn, { type: 'reauth', v: PROTOCOL_VERSION, token });
  }

  /** Send the outbox entries not yet sent on this connection, within prompts_per_minute. */
  #pumpOutbox(conn) {
    if (conn.timers.pump) {
      clearTimeout(conn.timers.pump);
      conn.timers.pump = null;
    }
    if (!conn.ready || this.#conn !== conn) return;
    const limit = conn.limits?.prompts_per_minute;
    const maxBytes = conn.limits?.max_frame_bytes;
    for (const entry of this.#outbox.values()) {
      if (entry.sentOn === conn.id) continue;
      const wait = entry.notBefore - Date.now();
      if (wait > 0) {
        // Held back by the server: later prompts wait behind it, so they keep their order.
        conn.timers.pump = setTimeout(() => this.#pumpOutbox(conn), clampTimer(wait));
        return;
      }
      const frame = JSON.stringify({ type: 'prompt', v: PROTOCOL_VERSION, client_msg_id: entry.id, text: entry.text });
      if (maxBytes > 0 && new TextEncoder().encode(frame).length > maxBytes) {
        this.#outbox.delete(entry.id);
        entry.reject(new TetherError('The message is too large to send.', { name: 'frame_too_large', action: 'show_message', retryable: false }));
        continue;
      }
      if (limit > 0) {
        const now = Date.now();
        while (this.#promptTimes.length && now - this.#promptTimes[0] >= 60000) this.#promptTimes.shift();
        if (this.#promptTimes.length >= limit) {
          conn.timers.pump = setTimeout(() => this.#pumpOutbox(conn), clampTimer(60000 - (now - this.#promptTimes[0]) + 5));
          return;
        }
      }
      if (conn.ws.readyState !== WS_OPEN) return;
      try {
        conn.ws.send(frame);
      } catch (err) {
        console.warn('tether: send failed (a close will follow)', err);
        return;
      }
      entry.sentOn = conn.id;
      this.#promptTimes.push(Date.now());
    }
  }

  // ------------------------------------------------------------------ helpers

  #waitReady() {
    if (this.#state === STATES.READY && this.#lastReady) return Promise.resolve(this.#lastReady);
    let resolve;
    let reject;
    const p = new Promise((res, rej) => { resolve = res; reject = rej; });
    p.catch(() => {}); // an un-awaited connect() must not raise an unhandled rejection
    this.#readyWaiters.push({ resolve, reject });
    return p;
  }

  #setState(state, info = {}, force = false) {
    const prev = this.#state;
    if (prev === state && !force) return;
    this.#state = state;
    this.#emit('state', { state, prev, failure: this.#failure, ...info });
  }

  #emit(type, payload) {
    const set = this.#handlers.get(type);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (err) {
        reportHandlerError(err);
      }
    }
  }

  #clearRetryTimer() {
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
  }

  #loadCatalogue() {
    if (this.#catalogue) return Promise.resolve(this.#catalogue);
    if (!this.#cataloguePromise) {
      const url = this.#catalogueUrl;
      const doFetch = this.#fetch;
      this.#cataloguePromise = (async () => {
        if (typeof doFetch !== 'function') throw new Error('no fetch() to load the close-code catalogue');
        const res = await doFetch(url, { headers: { accept: 'application/json' } });
        if (!res.ok) throw new Error(`close-code catalogue: HTTP ${res.status} from ${url}`);
        const body = await res.json();
        if (!body || !Array.isArray(body.codes)) throw new Error(`close-code catalogue from ${url} is malformed`);
        const map = new Map();
        for (const c of body.codes) {
          if (c && Number.isInteger(c.code) && typeof c.retryable === 'boolean') map.set(c.code, Object.freeze({ ...c }));
        }
        this.#catalogue = map;
        return map;
      })();
      this.#cataloguePromise.catch((err) => {
        this.#cataloguePromise = null; // try again next time
        this.#emit('error', { code: null, name: 'catalogue_unavailable', message: String(err?.message ?? err), action: 'reconnect', retryable: true, source: 'catalogue' });
      });
    }
    return this.#cataloguePromise;
  }

  async #catalogueOrNull() {
    if (this.#catalogue) return this.#catalogue;
    let timer;
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), clampTimer(this.#catalogueTimeoutMs)); });
    try {
      return await Promise.race([this.#loadCatalogue(), timeout]);
    } catch {
      return null; // already reported by #loadCatalogue
    } finally {
      clearTimeout(timer);
    }
  }

  #isOffline() {
    const nav = typeof window !== 'undefined' ? window.navigator : undefined;
    return nav?.onLine === false;
  }

  #installWindowListeners() {
    if (typeof window === 'undefined' || this.#win || typeof window.addEventListener !== 'function') return;
    const win = window;
    const doc = win.document;
    const online = () => {
      if (!this.#active || this.#conn) return;
      if (this.#waitingOnline || this.#retryTimer) this.#reconnectNow();
    };
    const offline = () => {
      if (!this.#active || !this.#retryTimer) return;
      this.#clearRetryTimer();
      this.#waitingOnline = true;
    };
    const visible = () => {
      if (!this.#active || (doc && doc.visibilityState !== 'visible')) return;
      const c = this.#conn;
      if (c) {
        const dead = c.ws.readyState > WS_OPEN || (c.ready && c.heartbeat && Date.now() - c.lastRx >= c.heartbeat.timeout_ms);
        if (dead) this.#heartbeatTimeout(c);
      } else if (this.#retryTimer || this.#waitingOnline) {
        this.#reconnectNow();
      }
    };
    win.addEventListener('online', online);
    win.addEventListener('offline', offline);
    doc?.addEventListener?.('visibilitychange', visible);
    this.#win = { win, doc, online, offline, visible };
  }

  #removeWindowListeners() {
    const w = this.#win;
    if (!w) return;
    this.#win = null;
    w.win.removeEventListener('online', w.online);
    w.win.removeEventListener('offline', w.offline);
    w.doc?.removeEventListener?.('visibilitychange', w.visible);
  }

  /** Reconnect promptly (online / visible again), but never before retry_after_ms. */
  #reconnectNow() {
    this.#clearRetryTimer();
    this.#waitingOnline = false;
    const wait = this.#notBefore - Date.now();
    if (wait > 0) this.#retryTimer = setTimeout(() => { this.#retryTimer = null; this.#startAttempt(); }, clampTimer(wait));
    else this.#startAttempt();
  }
}

/** Same as new TetherClient(opts). */
export function createClient(opts) {
  return new TetherClient(opts);
}

export default TetherClient;
