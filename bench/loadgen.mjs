// Tether's benchmark load client: Node + the `ws` package (the only dependency, bench/package.json).
//
// usage: node bench/loadgen.mjs '<json config>'      (bench/run.py builds the config; see bench/scenarios.py)
//
// Node rather than Python: a Python client would cost more CPU per message than the server under
// test (bench/NOTES.md).  It prints, on stdout, one line per step:
//   MARK start / MARK end      the measured window (the orchestrator samples server CPU at these lines)
//   WAIT <what>                it waits for one line on stdin (the orchestrator measures RSS meanwhile)
//   LOG <text>                 progress, for the log
//   RESULT <json>              the numbers, last
// Every event received is checked against the per-project sequence (gap = lost, seq <= last = duplicate).
//
// Client options (every mode), as Tether's own clients set them:
//   batch_frames  true = INIT carries "batch": true (the client understands 'events' frames: several
//                 consecutive events in one message; contracts/session/frames/events.json)
//   deflate       true = offer permessage-deflate (`ws`'s offer, like a browser's:
//                 "permessage-deflate; client_max_window_bits"); false = offer nothing
// Each RESULT says what the server granted: batch_granted (sessions whose ready had batch: true),
// extensions (the negotiated Sec-WebSocket-Extensions), event_messages (WebSocket messages that
// carried events) and events_frames (of which 'events' frames).
import http from 'node:http';
import readline from 'node:readline';
import WebSocket from 'ws';

const cfg = JSON.parse(process.argv[2]);
const now = () => Number(process.hrtime.bigint()) / 1e3; // µs, monotonic
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t00 = now();
const cpu00 = process.cpuUsage();

// ---------------------------------------------------------------------------------------------
// stdout protocol, stdin handshake
const out = (line) => process.stdout.write(line + '\n');
const log = (text) => out('LOG ' + text);
const stdinLines = [];
let stdinWaiter = null;
readline.createInterface({ input: process.stdin }).on('line', (l) => {
  if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(l); } else stdinLines.push(l);
});
function waitOrchestrator(what) {
  out('WAIT ' + what);
  if (stdinLines.length) return Promise.resolve(stdinLines.shift());
  return new Promise((r) => { stdinWaiter = r; });
}
let window0 = null;
function markStart() { out('MARK start'); window0 = { t: now(), cpu: process.cpuUsage() }; }
function markEnd() {
  out('MARK end');
  const c = process.cpuUsage(window0.cpu);
  const wall = now() - window0.t;
  return { window_s: +(wall / 1e6).toFixed(4), client_cpu_window: +((c.user + c.system) / wall).toFixed(3) };
}
function pct(sorted, p) { return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] : null; }
function latencyStats(samples, prefix) {
  const a = Float64Array.from(samples).sort();
  const r = {};
  r[prefix + '_n'] = a.length;
  for (const p of [50, 90, 99, 99.9]) r[`${prefix}_p${String(p).replace('.', '_')}_ms`] = a.length ? +(pct(a, p) / 1000).toFixed(3) : null;
  r[prefix + '_max_ms'] = a.length ? +(a[a.length - 1] / 1000).toFixed(3) : null;
  return r;
}
function finish(res) {
  if (res.mode !== 'fill') Object.assign(res, frameStats(SESSIONS));
  const c = process.cpuUsage(cpu00);
  res.client_cpu_total = +((c.user + c.system) / (now() - t00)).toFixed(3);
  out('RESULT ' + JSON.stringify(res));
  for (const s of SESSIONS) s.close();
  setTimeout(() => process.exit(0), 300);
}

// ---------------------------------------------------------------------------------------------
// HTTP (keep-alive): tokens from auth-token, events into the ingest API
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
function request(url, { method = 'POST', headers = {}, body = null, timeoutMs = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === null ? null : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const h = Object.assign({}, headers);
    if (data) { h['content-type'] = 'application/json'; h['content-length'] = data.length; }
    const req = http.request(url, { method, headers: h, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode >= 300) reject(new Error(`${method} ${url} -> ${res.statusCode} ${text.slice(0, 300)}`));
        else resolve(text ? JSON.parse(text) : null);
      });
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}
function getText(url, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks).toString()) : reject(new Error(`GET ${url} -> ${res.statusCode}`))));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}
// the replica's own count of connection outcomes (tether_ws_connects_total{outcome="ready"|"refused:<code>"})
async function serverConnects() {
  const text = await getText(cfg.ingest_url + '/metrics');
  const out = {};
  for (const m of text.matchAll(/^tether_ws_connects_total\{outcome="([^"]+)"\} ([0-9.e+]+)$/gm)) out[m[1]] = Number(m[2]);
  return out;
}
async function pool(items, concurrency, fn) {
  let next = 0;
  const results = new Array(items.length);
  async function worker() { while (next < items.length) { const i = next++; results[i] = await fn(items[i], i); } }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}
// apiKey: the user's (storm: one user per project, `cfg.api_keys`); default the one bench user
async function fetchToken(apiKey = cfg.api_key) {
  const r = await request(cfg.auth_url + '/v1/tokens', { headers: { authorization: 'Bearer ' + apiKey }, body: {} });
  return r.token;
}
async function fetchTokens(n) {
  const t0 = now();
  const tokens = await pool(Array.from({ length: n }), cfg.token_concurrency || 16, () => fetchToken());
  log(`fetched ${n} tokens in ${((now() - t0) / 1e6).toFixed(2)} s`);
  return tokens;
}
// last seq stored per project, from the ingest responses
const publishedLast = new Map();
async function publish(project, events) {
  const r = await request(`${cfg.ingest_url}/v1/projects/${project}/events`, {
    headers: { authorization: 'Bearer ' + cfg.ingest_key },
    body: { events },
  });
  if (r.last_seq > (publishedLast.get(project) || 0)) publishedLast.set(project, r.last_seq);
  for (const x of r.results) if (x.duplicate) throw new Error('ingest reported a duplicate for a fresh event id');
  return r;
}
const RUN = Math.random().toString(36).slice(2, 10);
const PAD = 'x'.repeat(cfg.pad || 32);

// ---------------------------------------------------------------------------------------------
// One logical client session: survives reconnects (resume) and checks the sequence it sees.
const SESSIONS = [];
class RefusedError extends Error {
  constructor(frame) { super(`refused: ${frame.code} ${frame.message || ''}`); this.frame = frame; }
}
let NEGOTIATED = null; // Sec-WebSocket-Extensions of the first opened socket
class Session {
  constructor(idx, project) {
    this.idx = idx; this.project = project; this.clientId = `bench-${RUN}-${idx}`;
    // the project's owner: with cfg.api_keys (one per project), its own user; else the one bench user
    this.apiKey = cfg.api_keys ? cfg.api_keys[cfg.projects.indexOf(project)] : cfg.api_key;
    this.ws = null; this.lastSeq = 0; this.events = 0; this.dups = 0; this.gaps = 0; this.errors = [];
    this.onEvent = null; this.onAck = null; this.live = false; this.closes = 0; this.lastPing = 0; this.heartbeatMs = 15000;
    this.messages = 0; this.batchMessages = 0; this.batchGranted = false;
    SESSIONS.push(this);
  }
  // timeoutMs: no `ready` within this long of opening the socket = a failed attempt (tether.js: connectTimeoutMs)
  open(token, resumeFrom, timeoutMs = 0) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(cfg.ws_url, { perMessageDeflate: !!cfg.deflate });
      this.ws = ws; this.live = false;
      let settled = false;
      let timer = null;
      const fail = (e) => { if (!settled) { settled = true; if (timer) clearTimeout(timer); reject(e); } };
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          if (settled) return;
          fail(Object.assign(new Error('connect timeout'), { code: 'connect_timeout' }));
          if (ws === this.ws) this.ws = null;
          ws.terminate();
        }, timeoutMs);
      }
      ws.on('error', (e) => { if (ws === this.ws && !settled) fail(e); });
      ws.on('open', () => {
        if (NEGOTIATED === null) NEGOTIATED = ws.extensions || '';
        const init = { type: 'init', v: 1, token, project: { id: this.project }, client_id: this.clientId };
        if (resumeFrom !== undefined && resumeFrom !== null) init.resume_from = resumeFrom;
        if (cfg.batch_frames) init.batch = true;
        ws.send(JSON.stringify(init));
      });
      ws.on('close', (code) => {
        if (ws === this.ws) { if (this.live) this.closes++; this.live = false; }
        fail(Object.assign(new Error(`closed before ready (${code})`), { code: `close_${code}` }));
      });
      const dispatch = (m) => {
        switch (m.type) {
          case 'event': {
            const seq = m.seq;
            if (seq === this.lastSeq + 1) this.events++;
            else if (seq <= this.lastSeq) { this.dups++; return; } else { this.gaps += seq - this.lastSeq - 1; this.events++; }
            this.lastSeq = seq;
            if (this.onEvent) this.onEvent(m, this);
            return;
          }
          // several events in one message: not in the contract today; a proposed protocol extension
          // (batched delivery), understood here so that an A/B run of a patched server just works
          case 'events': for (const e of m.events) dispatch(e); return;
          case 'prompt_ack': if (this.onAck) this.onAck(m, this); return;
          case 'ready':
            this.live = true; this.heartbeatMs = m.heartbeat.interval_ms; this.lastPing = Date.now();
            this.batchGranted = m.batch === true;
            if (resumeFrom === undefined || resumeFrom === null) this.lastSeq = m.resume_from;
            if (timer) clearTimeout(timer);
            settled = true; resolve(m); return;
          case 'error':
            this.errors.push(m.code);
            if (!settled) { settled = true; reject(new RefusedError(m)); }
            return;
          default: return; // pong, reauth_ok
        }
      };
      ws.on('message', (buf) => {
        if (ws !== this.ws) return; // a dropped socket's leftovers
        const m = JSON.parse(buf.toString());
        if (m.type === 'event') this.messages++;
        else if (m.type === 'events') { this.messages++; this.batchMessages++; }
        dispatch(m);
      });
    });
  }
  drop() { const ws = this.ws; this.ws = null; this.live = false; if (ws) ws.terminate(); }
  close() { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000); }
  send(obj) { this.ws.send(JSON.stringify(obj)); }
}
// heartbeats: one timer for every socket, a ping per heartbeat interval
setInterval(() => {
  const t = Date.now();
  for (const s of SESSIONS) if (s.live && t - s.lastPing >= s.heartbeatMs) { s.lastPing = t; s.send({ type: 'ping', v: 1 }); }
}, 1000).unref();

// Open (or re-open with resume) many sessions, at most `concurrency` handshakes in flight.  A refused
// INIT is retried after the server's retry_after_ms with a fresh token; connect latencies are collected.
// With no prefetched tokens (`tokens` empty) every attempt fetches its own, as Tether's clients do
// (getToken() before each connect), and its latency includes that fetch.
async function openAll(sessions, tokens, concurrency, { resume = false, latencies = null, refusals = null } = {}) {
  let tk = 0;
  await pool(sessions, concurrency, async (s) => {
    for (let attempt = 0; ; attempt++) {
      const t0 = now();
      const token = tk < tokens.length ? tokens[tk++] : await fetchToken(s.apiKey);
      try {
        await s.open(token, resume ? s.lastSeq : undefined);
        if (latencies) latencies.push(now() - t0);
        return;
      } catch (e) {
        const code = failureCode(e);
        if (refusals) refusals[code] = (refusals[code] || 0) + 1;
        if (attempt >= 20) throw e;
        const wait = e instanceof RefusedError && e.frame.retry_after_ms !== undefined ? e.frame.retry_after_ms : 50 * (attempt + 1);
        await sleep(wait);
      }
    }
  });
}
// Reconnect after a drop the way Tether's browser client does (clients/js/tether.js: backoffDelay,
// #afterAttempt, #scheduleReconnect, connectTimeoutMs), each session on its own, no cap on attempts in
// flight: the connection had been up longer than resetAfterMs (5 s), so the first attempt waits
// floor(random * 250) ms; the n-th failed attempt then waits max(floor(random * min(15000, 250 * 2^n)),
// retry_after_ms of the server's error frame); an attempt without `ready` 15 s after the socket was
// opened is abandoned (and counts as failed).  Every attempt, the first included, fetches a fresh token
// from auth-token after its backoff sleep (tether.js: getToken() in #startAttempt), inside the window.
const TETHER_JS = { baseMs: 250, capMs: 15000, connectTimeoutMs: 15000 };
function backoffDelay(attempt) {
  return Math.floor(Math.random() * Math.min(TETHER_JS.capMs, TETHER_JS.baseMs * 2 ** Math.min(Math.max(attempt, 0), 40)));
}
// -> per-session timings and a per-second timeline (attempts started, ready, failed), for "where the time goes"
// A session still not back `deadlineMs` after the drop stops trying (the harness must end; tether.js would
// go on): it counts as not recovered and its events are not counted as lost.
async function reconnectLikeClients(sessions, tokens, { latencies, refusals, maxAttempts = 60, deadlineMs = 180000 }) {
  const t0 = now();
  const sec = (t) => Math.max(0, Math.floor((t - t0) / 1e6));
  const timeline = [];
  const bump = (t, k) => { const i = sec(t); while (timeline.length <= i) timeline.push({ attempts: 0, ready: 0, failed: 0 }); timeline[i][k]++; };
  const per = [];
  let tk = 0;
  // the server's view, polled once a second (one request at a time) while the sessions come back
  const server0 = await serverConnects().catch(() => null);
  const serverSeries = [];
  let polling = true, metricsErrors = 0;
  const poller = (async () => {
    while (polling) {
      const t = now();
      try { serverSeries.push({ s: +((t - t0) / 1e6).toFixed(1), ...(await serverConnects()) }); } catch { metricsErrors++; }
      if (serverSeries.length % 10 === 0) {
        const done = timeline.reduce((a, x) => a + x.ready, 0), tried = timeline.reduce((a, x) => a + x.attempts, 0);
        log(`5b after ${((t - t0) / 1e6).toFixed(0)} s: ${done} of ${sessions.length} back, ${tried} attempts`);
      }
      await sleep(Math.max(0, 1000 - (now() - t) / 1000));
    }
  })();
  await Promise.all(sessions.map(async (s) => {
    const st = { gave_up: false, attempts: 0, tokens: 0, backoff_ms: 0, token_ms: 0, failed_ms: 0, final_ms: 0, first_attempt_ms: null, ready_ms: null };
    per.push(st);
    let attempt = 0, retryAfter = 0;
    for (;;) {
      const delay = Math.max(backoffDelay(attempt), retryAfter);
      attempt++;
      if ((now() - t0) / 1000 + delay > deadlineMs) { st.gave_up = true; return; }
      await sleep(delay);
      st.backoff_ms += delay;
      const ta = now();
      if (st.first_attempt_ms === null) st.first_attempt_ms = (ta - t0) / 1000;
      st.attempts++;
      bump(ta, 'attempts');
      try {
        let token;
        if (tk < tokens.length) token = tokens[tk++];
        else { const tt = now(); token = await fetchToken(s.apiKey); st.token_ms += (now() - tt) / 1000; st.tokens++; }
        await s.open(token, s.lastSeq, TETHER_JS.connectTimeoutMs);
        const tr = now();
        st.final_ms = (tr - ta) / 1000; st.ready_ms = (tr - t0) / 1000;
        bump(tr, 'ready');
        if (latencies) latencies.push(tr - ta);
        return;
      } catch (e) {
        const tf = now();
        st.failed_ms += (tf - ta) / 1000;
        bump(tf, 'failed');
        const code = failureCode(e);
        refusals[code] = (refusals[code] || 0) + 1;
        retryAfter = e instanceof RefusedError && Number.isInteger(e.frame.retry_after_ms) ? e.frame.retry_after_ms : 0;
        if (st.attempts >= maxAttempts) throw e;
      }
    }
  })).finally(() => { polling = false; });
  await poller;
  const server1 = await serverConnects().catch(() => null);
  const serverDelta = {};
  if (server0 && server1) for (const [k, v] of Object.entries(server1)) if (v - (server0[k] || 0) > 0) serverDelta[k] = v - (server0[k] || 0);
  // ready per second as the replica counted them
  const serverReadyPerS = [];
  let prev = server0 ? server0.ready || 0 : null;
  for (const x of serverSeries) { if (prev !== null) serverReadyPerS.push([x.s, (x.ready || 0) - prev]); prev = x.ready || 0; }
  // the session that came back last sets the recovery time: how its time was spent
  const back = per.filter((x) => !x.gave_up);
  const last = back.length ? back.reduce((a, b) => (b.ready_ms > a.ready_ms ? b : a), back[0]) : per[0];
  const sum = (k) => per.reduce((a, x) => a + x[k], 0);
  const sortedBy = (k) => Float64Array.from(back.map((x) => x[k])).sort();
  const q = (k, p) => +pct(sortedBy(k), p).toFixed(1);
  const hist = {};
  for (const x of per) hist[x.attempts] = (hist[x.attempts] || 0) + 1;
  return {
    pacing: 'tether.js: first attempt after floor(random*250) ms, full-jitter exponential backoff (250 ms base, 15 s cap), >= retry_after_ms, 15 s connect timeout, a fresh token from auth-token per attempt, no cap on attempts in flight',
    first_attempt_ms: { p50: q('first_attempt_ms', 50), p99: q('first_attempt_ms', 99), max: q('first_attempt_ms', 100) },
    ready_ms: { p50: q('ready_ms', 50), p90: q('ready_ms', 90), p99: q('ready_ms', 99), max: q('ready_ms', 100) },
    tokens_fetched: sum('tokens'),
    deadline_ms: deadlineMs,
    not_recovered: per.length - back.length,
    attempts: { total: sum('attempts'), per_session_mean: +(sum('attempts') / per.length).toFixed(2), histogram: hist },
    // session-seconds summed over all sessions: sleeping in backoff, fetching retry tokens, in attempts that failed, in the attempt that worked
    session_secs: { backoff: +(sum('backoff_ms') / 1000).toFixed(1), token_fetch: +(sum('token_ms') / 1000).toFixed(1),
      failed_attempts: +(sum('failed_ms') / 1000).toFixed(1), final_attempt: +(sum('final_ms') / 1000).toFixed(1) },
    last_session: Object.fromEntries(Object.entries(last).map(([k, v]) => [k, typeof v === 'number' ? +v.toFixed(1) : v])),
    timeline_per_s: timeline,
    // the replica's count over the window: ready > sessions = `ready` sent on sockets the client had already abandoned
    server_outcomes: server0 && server1 ? serverDelta : null,
    server_ready_per_s: serverReadyPerS,
    metrics_errors: metricsErrors,
  };
}
function failureCode(e) {
  return e instanceof RefusedError ? e.frame.code : String(e.code || e.message).slice(0, 40);
}
function seqTotals(sessions) {
  let events = 0, dups = 0, gaps = 0, closes = 0;
  for (const s of sessions) { events += s.events; dups += s.dups; gaps += s.gaps; closes += s.closes; }
  return { events, dups, gaps, closes };
}
// what the client asked for and what the server granted (every RESULT carries it)
function frameStats(sessions) {
  let messages = 0, batchMessages = 0, granted = 0, events = 0;
  for (const s of sessions) { messages += s.messages; batchMessages += s.batchMessages; events += s.events; if (s.batchGranted) granted++; }
  return {
    batch_frames: !!cfg.batch_frames, batch_granted: granted, deflate: !!cfg.deflate, extensions: NEGOTIATED,
    event_messages: messages, events_frames: batchMessages,
    events_per_message: messages ? +(events / messages).toFixed(2) : null,
  };
}
// Wait until every session has seen its project's last published seq (or the deadline): lost = shortfall + gaps.
async function settle(sessions, deadlineMs) {
  const end = Date.now() + deadlineMs;
  const behind = () => sessions.filter((s) => s.lastSeq < (publishedLast.get(s.project) || 0));
  while (behind().length && Date.now() < end) await sleep(20);
  let shortfall = 0;
  for (const s of behind()) shortfall += publishedLast.get(s.project) - s.lastSeq;
  const t = seqTotals(sessions);
  return { lost: shortfall + t.gaps, duplicates: t.dups, behind_sessions: behind().length, server_closes: t.closes };
}

// ---------------------------------------------------------------------------------------------
// scenarios
const modes = {};

// 1. durable fan-out: N sockets on one project, events through the ingest API in batches.
modes.fanout = async () => {
  const { sockets, events, batch, inflight } = cfg;
  const tokens = await fetchTokens(sockets);
  const sess = Array.from({ length: sockets }, (_, i) => new Session(i, cfg.project));
  await openAll(sess, tokens, 50);
  const base = sess[0].lastSeq;
  const lat = [];
  let sample = 0;
  const every = Math.max(1, Math.floor((sockets * events) / 200000)); // keep ≤ ~200k latency samples
  for (const s of sess) s.onEvent = (m) => { if (m.data.t !== undefined && (sample++ % every) === 0) lat.push(now() - m.data.t); };
  await waitOrchestrator('ready');
  markStart();
  const t0 = now();
  const batches = [];
  for (let i = 0; i < events; i += batch) batches.push(Math.min(batch, events - i));
  let seqNo = 0;
  await pool(batches, inflight, async (k) => {
    const evs = [];
    const t = now();
    for (let j = 0; j < k; j++) evs.push({ event_id: `f-${RUN}-${seqNo++}`, kind: 'bench', data: { t, pad: PAD } });
    await publish(cfg.project, evs);
  });
  const tPublished = now();
  const st = await settle(sess, 60000);
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  finish(Object.assign({
    mode: 'fanout', sockets, events, batch, inflight, expected: sockets * events,
    delivered: seqTotals(sess).events, base_seq: base, secs: +dt.toFixed(3),
    publish_secs: +((tPublished - t0) / 1e6).toFixed(3), deliveries_per_s: Math.round((sockets * events) / dt),
    events_per_s: Math.round(events / dt),
  }, st, w, latencyStats(lat, 'lat')));
};

// 2a. agent token stream, throughput: one publisher (sequential ingest batches) -> one socket.
modes.stream = async () => {
  const { events, batch, inflight } = cfg;
  const [token] = await fetchTokens(1);
  const s = new Session(0, cfg.project);
  await s.open(token);
  const lat = [];
  s.onEvent = (m) => { if (m.data.t !== undefined) lat.push(now() - m.data.t); };
  await waitOrchestrator('ready');
  markStart();
  const t0 = now();
  const batches = [];
  for (let i = 0; i < events; i += batch) batches.push(Math.min(batch, events - i));
  let n = 0;
  await pool(batches, inflight, async (k) => {
    const evs = [];
    const t = now();
    for (let j = 0; j < k; j++) evs.push({ event_id: `s-${RUN}-${n}`, kind: 'agent_chunk', data: { t, text: 'tok' + (n++ % 1000) } });
    await publish(cfg.project, evs);
  });
  const st = await settle([s], 60000);
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  finish(Object.assign({ mode: 'stream', events, batch, inflight, delivered: s.events, secs: +dt.toFixed(3), events_per_s: Math.round(events / dt) },
    st, w, latencyStats(lat, 'lat')));
};

// 2b. agent token stream, latency at a fixed rate: one event per ingest request, `rate` per second.
modes.stream_rate = async () => {
  const { rate, seconds } = cfg;
  const [token] = await fetchTokens(1);
  const s = new Session(0, cfg.project);
  await s.open(token);
  const lat = [];
  s.onEvent = (m) => { if (m.data.t !== undefined) lat.push(now() - m.data.t); };
  // warm-up
  for (let i = 0; i < 50; i++) await publish(cfg.project, [{ event_id: `w-${RUN}-${i}`, kind: 'agent_chunk', data: { text: 'w' } }]);
  await settle([s], 10000);
  await waitOrchestrator('ready');
  markStart();
  const total = Math.round(rate * seconds);
  const period = 1e6 / rate;
  const t0 = now();
  // no busy-waiting (the client shares its core with Postgres and auth-token): every millisecond tick sends
  // whatever is due; latency is measured from each event's own send time.
  const pending = new Set();
  let sent = 0, maxInflight = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor((now() - t0) / period) + 1);
    // at most max_inflight requests outstanding: a server that falls behind slows the publisher
    // (achieved rate < offered rate) instead of growing an unbounded client-side queue
    for (; sent < due && pending.size < (cfg.max_inflight || 100); sent++) {
      const p = publish(cfg.project, [{ event_id: `r-${RUN}-${sent}`, kind: 'agent_chunk', data: { t: now(), text: 'tok' + sent } }]);
      pending.add(p); p.finally(() => pending.delete(p));
      maxInflight = Math.max(maxInflight, pending.size);
    }
    await sleep(1);
  }
  await Promise.all([...pending]);
  const st = await settle([s], 30000);
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  finish(Object.assign({ mode: 'stream_rate', rate, seconds, events: total, max_inflight: cfg.max_inflight || 100, delivered_in_window: lat.length, max_inflight_requests: maxInflight,
    secs: +dt.toFixed(3), events_per_s: Math.round(total / dt) }, st, w, latencyStats(lat, 'lat')));
};

// 2c. the built-in agent as token streams: `streams` sockets (one project each) each send one prompt at once;
// the agent answers each with `chunks` agent_chunk events produced TETHER_AGENT_DELAY_MS apart (set on the
// replica), then agent_done.  Chunks arrive over time: the gap between consecutive chunks of a stream is
// recorded.  With a delay of 0 the chunks are ready together: the bulk variant.
modes.agent = async () => {
  const chunks = cfg.chunks;
  const projects = cfg.projects;
  const sess = projects.map((p, i) => new Session(i, p));
  await openAll(sess, await fetchTokens(sess.length), 50);
  const firsts = [], gaps = [];
  let count = 0, lastAt = 0;
  const done = Promise.all(sess.map((s) => new Promise((resolve) => {
    let prev = null;
    s.onEvent = (m) => {
      if (m.kind === 'agent_chunk') {
        const t = now();
        if (prev === null) firsts.push(t); else gaps.push(t - prev);
        prev = t; count++;
      }
      if (m.kind === 'agent_done') { lastAt = Math.max(lastAt, now()); resolve(); }
    };
  })));
  await waitOrchestrator('ready');
  markStart();
  const t0 = now();
  for (const s of sess) s.send({ type: 'prompt', v: 1, client_msg_id: `a-${RUN}-${s.idx}`, text: 'y'.repeat(Math.min(16000, chunks * 2)) });
  await Promise.race([done, sleep(cfg.timeout_ms || 300000)]);
  const w = markEnd();
  const end = lastAt || now();
  const firstAll = firsts.length ? Math.min(...firsts) : t0;
  const t = seqTotals(sess);
  const firstUs = firsts.map((x) => x - t0);
  finish(Object.assign({ mode: 'agent', streams: sess.length, chunks, received_chunks: count,
    // per stream: the prompt's event, the chunks, agent_done
    events: t.events, secs: +((end - t0) / 1e6).toFixed(3),
    events_per_s: Math.round(count / ((end - firstAll) / 1e6)),
    first_chunk_ms: firstUs.length ? +(Math.max(...firstUs) / 1000).toFixed(2) : null,
    lost: sess.length * chunks - count + t.gaps, duplicates: t.dups },
  w, latencyStats(firstUs, 'first_chunk'), latencyStats(gaps, 'chunk_gap')));
};

// 3. echo-equivalent: prompt -> prompt_ack (and the prompt's own event) round trips, one project per socket.
modes.echo = async () => {
  const { rounds, warmup } = cfg;
  const projects = cfg.projects;
  const tokens = await fetchTokens(projects.length);
  const sess = projects.map((p, i) => new Session(i, p));
  await openAll(sess, tokens, 50);
  const lat = [];
  let lost = 0;
  let timeouts = 0;
  async function loop(s, n, record, tag) {
    for (let k = 0; k < n; k++) {
      if (!s.live) { lost += n - k; return; } // closed by the server: counted, never awaited forever
      const id = `${tag}-${s.idx}-${k}`;
      const t = now();
      const ok = await new Promise((resolve) => {
        let acked = null;
        const timer = setTimeout(() => { s.onAck = s.onEvent = null; resolve(false); }, cfg.round_timeout_ms || 30000);
        const check = () => { if (acked !== null && s.lastSeq >= acked) { clearTimeout(timer); s.onAck = s.onEvent = null; resolve(true); } };
        s.onAck = (m) => { if (m.client_msg_id === id) { acked = m.seq; if (record) lat.push(now() - t); check(); } };
        s.onEvent = check;
        s.send({ type: 'prompt', v: 1, client_msg_id: id, text: PAD });
      });
      if (!ok) { timeouts++; lost++; }
    }
  }
  await Promise.all(sess.map((s) => loop(s, warmup, false, `w${RUN}`)));
  await waitOrchestrator('ready');
  markStart();
  const t0 = now();
  await Promise.all(sess.map((s) => loop(s, rounds, true, `e${RUN}`)));
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  const t = seqTotals(sess);
  lost += t.gaps;
  finish(Object.assign({ mode: 'echo', conns: sess.length, rounds, total: sess.length * rounds, secs: +dt.toFixed(3),
    msgs_per_s: Math.round((sess.length * rounds) / dt), lost, timeouts, duplicates: t.dups, server_closes: t.closes }, w, latencyStats(lat, 'rtt')));
};

// 4. idle: open N sessions (INIT + ready), hold them while the orchestrator measures RSS.
modes.idle = async () => {
  const { n, concurrency } = cfg;
  const sess = Array.from({ length: n }, (_, i) => new Session(i, cfg.projects[i % cfg.projects.length]));
  const refusals = {};
  markStart();
  const t0 = now();
  // tokens in slices fetched just before use (60 s TTL; 10,000 sessions take longer than that to fetch + open)
  for (let i = 0; i < n; i += 2000) {
    const part = sess.slice(i, i + 2000);
    await openAll(part, await fetchTokens(part.length), concurrency, { refusals });
  }
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  await waitOrchestrator('idle');
  const live = sess.filter((s) => s.live).length;
  const t = seqTotals(sess);
  finish(Object.assign({ mode: 'idle', n, live, open_secs_incl_tokens: +dt.toFixed(2), refusals, lost: 0, server_closes: t.closes }, w));
};

// 5. connect storm: N fresh connects + INIT as fast as the server takes them; then all N dropped at once
//    while events are being published, reconnecting with resume_from: time until all are live, lost, dups.
modes.storm = async () => {
  const { n, concurrency, publish_interval_ms } = cfg;
  const projects = cfg.projects;
  const sess = Array.from({ length: n }, (_, i) => new Session(i, projects[i % projects.length]));
  const connLat = [], refusals1 = {};
  await waitOrchestrator('connect');
  markStart();
  let t0 = now();
  // each connect fetches its token inside the window, as a client does before connecting
  await openAll(sess, [], concurrency, { latencies: connLat, refusals: refusals1 });
  const connectSecs = (now() - t0) / 1e6;
  const w1 = markEnd();
  // live traffic through the drop: one event every publish_interval_ms, projects round-robin
  let publishing = true, published = 0;
  const publisher = (async () => {
    let i = 0;
    while (publishing) {
      const p = projects[i % projects.length];
      await publish(p, [{ event_id: `st-${RUN}-${i}`, kind: 'bench', data: { i } }]);
      i++; published++;
      await sleep(publish_interval_ms);
    }
  })();
  await sleep(1500);
  const before = seqTotals(sess);
  await waitOrchestrator('drop');
  markStart();
  t0 = now();
  for (const s of sess) s.drop();
  const reLat = [], refusals2 = {};
  let detail = null;
  if (cfg.reconnect_pacing === 'pool') await openAll(sess, [], concurrency, { resume: true, latencies: reLat, refusals: refusals2 });
  else detail = await reconnectLikeClients(sess, [], { latencies: reLat, refusals: refusals2, deadlineMs: cfg.recover_deadline_ms });
  const recoverSecs = (now() - t0) / 1e6;
  const w2 = markEnd();
  await sleep(1000);
  publishing = false;
  await publisher;
  // a session that gave up (detail.not_recovered) is not live: its missing events are not a loss
  const st = await settle(sess.filter((s) => s.live), 30000);
  finish(Object.assign({ mode: 'storm', n, projects: projects.length, concurrency,
    connect_secs: +connectSecs.toFixed(3), connects_per_s: Math.round(n / connectSecs), refusals_connect: refusals1,
    connect_window: w1, recover_secs: +recoverSecs.toFixed(3), reconnects_per_s: Math.round(n / recoverSecs),
    refusals_reconnect: refusals2, recover_window: w2, published_during: published,
    reconnect_pacing: cfg.reconnect_pacing === 'pool' ? `pool: <= ${concurrency} handshakes in flight, retry after retry_after_ms or 50 ms * attempt` : 'tether.js',
    reconnect_detail: detail,
    events_before_drop: before.events, events_total: seqTotals(sess).events },
  st, latencyStats(connLat, 'connect'), latencyStats(reLat, 'reconnect')));
};

// 6. catch-up: one client resumes from 0 over a log of `events` events.
modes.catchup = async () => {
  const expect = cfg.expect_last;
  const [token] = await fetchTokens(1);
  const s = new Session(0, cfg.project);
  let t0 = 0;
  const done = new Promise((resolve) => { s.onEvent = (m) => { if (m.seq >= expect) resolve(); }; });
  await waitOrchestrator('ready');
  markStart();
  t0 = now();
  const ready = await s.open(token, 0);
  const tReady = now();
  await Promise.race([done, sleep(300000)]);
  const dt = (now() - t0) / 1e6;
  const w = markEnd();
  finish(Object.assign({ mode: 'catchup', expect_last: expect, ready_last_seq: ready.last_seq, received: s.events,
    ready_ms: +((tReady - t0) / 1000).toFixed(2), secs: +dt.toFixed(3), events_per_s: Math.round(s.events / dt),
    lost: expect - s.lastSeq + s.gaps, duplicates: s.dups }, w));
};

// fill a project's log quickly (setup for catch-up; not measured)
modes.fill = async () => {
  const { events, batch } = cfg;
  const batches = [];
  for (let i = 0; i < events; i += batch) batches.push([i, Math.min(batch, events - i)]);
  const t0 = now();
  await pool(batches, cfg.inflight || 2, async ([start, k]) => {
    const evs = [];
    for (let j = 0; j < k; j++) evs.push({ event_id: `c-${RUN}-${start + j}`, kind: 'agent_chunk', data: { text: 'token ' + (start + j), pad: PAD } });
    await publish(cfg.project, evs);
  });
  finish({ mode: 'fill', events, last_seq: publishedLast.get(cfg.project), secs: +((now() - t0) / 1e6).toFixed(3) });
};

const fn = modes[cfg.mode];
if (!fn) { console.error('unknown mode ' + cfg.mode); process.exit(2); }
fn().catch((e) => { out('FAILED ' + (e && e.stack ? e.stack : String(e)).replace(/\n/g, ' | ')); process.exit(1); });
