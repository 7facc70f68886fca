// The Tether demo: log in with an API key, list and create projects, chat with a project's
// agent over one TetherClient.  Plain DOM, no framework, no build step.
//
// Served by the session service: /tether.js, this page at / and /p/<slug>, the other files
// of clients/js/demo/ at /demo/<file>, and /demo/config.json with the service URLs.
//
// DOM contract for the browser tests:
//   body[data-view]         loading | login | projects | project | not-found | error
//   #conn-state             text and data-state = the client state (idle, connecting, ready,
//                           reconnecting, failed); always visible
//   #conn-message           a human message; always set for a terminal state
//                           (exactly "Project not found" when /p/<slug> does not resolve)
//   #transcript             one element per rendered event, each with data-seq and data-kind:
//                           .msg.user[data-kind=prompt]           a stored prompt
//                           .msg.agent[data-prompt-seq]           the answer bubble of a prompt
//                             span[data-kind=agent_chunk]         one per chunk, in seq order
//                             span[data-kind=agent_done]          (bubble gets data-done="true")
//                             span[data-kind=agent_error]         (bubble gets data-error="true")
//                           .msg.user[data-pending]               a prompt not stored yet (no data-seq)
//
// Test hooks (kept tiny on purpose):
//   window.__tether = {
//     client,     // the page's single TetherClient (null until a project resolved)
//     renders,    // how many times the chat view was fully rendered
//     rerender(), // re-render the chat view from the model and re-subscribe its handlers
//                 // (off + on) WITHOUT touching the connection: the F30 storm test calls it
//                 // 100 times and then counts server connections (must stay 1)
//   }

import { TetherClient, TetherError } from '/tether.js';

const $ = (id) => document.getElementById(id);
const SLUG_RE = /^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$/;

const hooks = { client: null, renders: 0, rerender };
window.__tether = hooks;

let config = null;
let me = null;
let client = null;
let project = null;

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === 'class') node.className = v;
    else node.setAttribute(k, String(v));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

function newId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

/** Show one view's section; 'error' has none, so it hides them all. */
function showView(name) {
  document.body.dataset.view = name;
  for (const v of ['loading', 'login', 'projects', 'project', 'not-found']) $(`${v}-view`).hidden = v !== name;
}

function showProblem(node, message) {
  node.textContent = message;
  node.hidden = !message;
}

function setConn(state, message) {
  const s = $('conn-state');
  s.textContent = state;
  s.dataset.state = state;
  $('conn-message').textContent = message ?? '';
}

/** An HTTP failure with the problem+json fields the UI shows. */
class ProblemError extends Error {
  constructor(status, problem, requestId) {
    const detail = problem?.detail || problem?.title || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = problem?.code ?? null;
    this.detail = detail;
    this.requestId = problem?.request_id || requestId || null;
  }

  get display() {
    return this.requestId ? `${this.detail} (request id ${this.requestId})` : this.detail;
  }
}

async function readProblem(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null; // not JSON (a proxy's error page): the status line is all we have
  }
  return new ProblemError(res.status, body, res.headers.get('x-request-id'));
}

/** fetch with the session cookie; JSON in and out; throws ProblemError or a network TypeError. */
async function api(url, { method = 'GET', body, headers = {} } = {}) {
  const init = { method, credentials: 'include', headers: { accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  if (!res.ok) throw await readProblem(res);
  if (res.status === 204) return null;
  return res.json();
}

function describe(err) {
  if (err instanceof ProblemError) return err.display;
  return `Could not reach the server: ${err?.message ?? err}`;
}

// ------------------------------------------------------------------ auth

function renderAuth() {
  $('auth-status').textContent = me ? `Signed in as ${me.name}` : 'Signed out';
  $('logout-btn').hidden = !me;
}

async function loadMe() {
  try {
    me = await api(`${config.auth_url}/v1/me`);
  } catch (err) {
    if (err instanceof ProblemError && err.status === 401) me = null;
    else throw err;
  }
  renderAuth();
  return me;
}

function showLogin(message) {
  me = null;
  renderAuth();
  showView('login');
  showProblem($('login-error'), message ?? '');
  $('api-key').focus();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const key = $('api-key').value.trim();
  if (!key) return;
  $('login-btn').disabled = true;
  showProblem($('login-error'), '');
  try {
    const out = await api(`${config.auth_url}/v1/login`, { method: 'POST', body: { api_key: key } });
    me = out.user;
    $('api-key').value = '';
    renderAuth();
    await route();
  } catch (err) {
    showProblem($('login-error'), describe(err));
  } finally {
    $('login-btn').disabled = false;
  }
});

$('logout-btn').addEventListener('click', async () => {
  try {
    await api(`${config.auth_url}/v1/logout`, { method: 'POST' });
  } catch (err) {
    showProblem($('app-error'), `Log-out failed: ${describe(err)}`);
    return;
  }
  if (client) {
    client.close();
    client = null;
    hooks.client = null;
  }
  setConn('idle', '');
  showLogin('');
});

// ------------------------------------------------------------------ projects

let createIntent = null; // {name, key}: a retried create of the same name reuses its Idempotency-Key

function projectItem(p) {
  const li = el('li', { 'data-project-id': p.id, 'data-slug': p.slug });
  li.append(el('a', { href: `/p/${encodeURIComponent(p.slug)}`, 'data-slug': p.slug }, p.name));
  li.append(el('span', { class: 'muted' }, ` /p/${p.slug} · ${p.last_seq} events`));
  return li;
}

async function showProjects() {
  showView('projects');
  setConn('idle', '');
  showProblem($('projects-error'), '');
  const list = $('projects');
  try {
    const { projects } = await api(`${config.session_url}/v1/projects`);
    list.replaceChildren(...projects.map(projectItem));
    $('projects-empty').hidden = projects.length > 0;
  } catch (err) {
    if (err instanceof ProblemError && err.status === 401) return showLogin('Your session ended. Log in again.');
    showProblem($('projects-error'), describe(err));
  }
  return undefined;
}

$('create-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const name = $('project-name').value.trim();
  if (!name) return;
  if (!createIntent || createIntent.name !== name) createIntent = { name, key: newId() };
  $('create-btn').disabled = true;
  showProblem($('projects-error'), '');
  try {
    const p = await api(`${config.session_url}/v1/projects`, {
      method: 'POST',
      body: { name },
      headers: { 'Idempotency-Key': createIntent.key },
    });
    createIntent = null;
    $('project-name').value = '';
    const list = $('projects');
    list.querySelector(`li[data-project-id="${CSS.escape(p.id)}"]`)?.remove();
    list.prepend(projectItem(p));
    $('projects-empty').hidden = true;
  } catch (err) {
    if (err instanceof ProblemError && err.status === 401) showLogin('Your session ended. Log in again.');
    else showProblem($('projects-error'), describe(err));
  } finally {
    $('create-btn').disabled = false;
  }
});

// ------------------------------------------------------------------ the chat view

// The model: every delivered event, in seq order, plus prompts not stored yet.
const model = { events: [], pending: new Map() };
let answers = new Map(); // prompt_seq -> {el, body}
let subscriptions = []; // [type, fn] pairs of the current render

function answerBubble(promptSeq) {
  const key = promptSeq ?? 'none';
  let a = answers.get(key);
  if (!a) {
    const node = el('div', { class: 'msg agent', 'data-prompt-seq': promptSeq ?? '' });
    const body = el('div', { class: 'body' });
    node.append(body);
    $('transcript').append(node);
    a = { el: node, body };
    answers.set(key, a);
  }
  return a;
}

function renderPending(p) {
  const node = el('div', { class: 'msg user pending', 'data-pending': 'true', 'data-client-msg-id': p.id }, p.text);
  if (p.failed) node.dataset.failed = 'true';
  $('transcript').append(node);
}

function removePending(id) {
  model.pending.delete(id);
  $('transcript').querySelector(`[data-pending][data-client-msg-id="${CSS.escape(id)}"]`)?.remove();
}

function renderEvent(ev) {
  const t = $('transcript');
  const d = ev.data ?? {};
  switch (ev.kind) {
    case 'prompt': {
      if (d.client_msg_id) removePending(d.client_msg_id);
      t.append(el('div', { class: 'msg user', 'data-seq': ev.seq, 'data-kind': 'prompt', 'data-client-msg-id': d.client_msg_id }, String(d.text ?? '')));
      break;
    }
    case 'agent_chunk': {
      const a = answerBubble(d.prompt_seq);
      a.body.append(el('span', { class: 'chunk', 'data-seq': ev.seq, 'data-kind': 'agent_chunk', 'data-index': d.index }, String(d.text ?? '')));
      break;
    }
    case 'agent_done': {
      const a = answerBubble(d.prompt_seq);
      a.el.dataset.done = 'true';
      a.el.append(el('span', { class: 'status done', 'data-seq': ev.seq, 'data-kind': 'agent_done' }, `✓ done${d.chunks !== undefined ? ` · ${d.chunks} chunks` : ''}`));
      break;
    }
    case 'agent_error': {
      const a = answerBubble(d.prompt_seq);
      a.el.dataset.error = 'true';
      const msg = d.message || d.error || d.detail || 'The agent failed to answer.';
      a.el.append(el('span', { class: 'status error', 'data-seq': ev.seq, 'data-kind': 'agent_error' }, `⚠ ${msg}`));
      break;
    }
    default:
      t.append(el('div', { class: 'msg other', 'data-seq': ev.seq, 'data-kind': ev.kind }, `${ev.kind}: ${JSON.stringify(d)}`));
  }
}

function scrollToEnd() {
  const t = $('transcript');
  t.scrollTop = t.scrollHeight;
}

function connMessage(s) {
  switch (s.state) {
    case 'ready': return `Connected to ${project?.name ?? 'the project'}.`;
    case 'connecting': return s.waiting === 'online' ? 'Offline; waiting for the network.' : 'Connecting…';
    case 'reconnecting': {
      if (s.waiting === 'online') return 'Offline; waiting for the network.';
      const why = s.reason?.message ? `${s.reason.message} ` : '';
      return s.delayMs !== undefined ? `${why}Retrying in ${(s.delayMs / 1000).toFixed(1)} s.` : `${why}Reconnecting…`;
    }
    case 'failed': return s.failure?.message || client?.failure?.message || 'The connection failed.';
    default: return '';
  }
}

/** The chat view's handlers, made fresh by every render (like a component's callbacks). */
function makeHandlers() {
  return [
    ['event', (ev) => {
      model.events.push(ev);
      renderEvent(ev);
      scrollToEnd();
    }],
    ['state', (s) => {
      setConn(s.state, connMessage(s));
      $('send-btn').disabled = s.state === 'failed';
      // Signed out while chatting: offer the log-in form; logging in re-opens this project.
      if (s.state === 'failed' && s.failure?.name === 'unauthenticated') showLogin(s.failure.message);
    }],
    ['error', (e) => {
      console.info('tether error', e);
    }],
  ];
}

/** Full render of the chat view from the model, then re-subscribe; never touches the socket. */
function rerender() {
  const t = $('transcript');
  t.replaceChildren();
  answers = new Map();
  for (const ev of model.events) renderEvent(ev);
  for (const p of model.pending.values()) renderPending(p);
  scrollToEnd();
  if (client) {
    for (const [type, fn] of subscriptions) client.off(type, fn);
    subscriptions = makeHandlers();
    for (const [type, fn] of subscriptions) client.on(type, fn);
    setConn(client.state, connMessage({ state: client.state, failure: client.failure }));
  }
  hooks.renders++;
}

function sendPrompt() {
  const input = $('prompt-input');
  const text = input.value.trim();
  if (!text || !client) return;
  showProblem($('send-error'), '');
  const p = { id: newId(), text, failed: false };
  model.pending.set(p.id, p);
  renderPending(p);
  scrollToEnd();
  input.value = '';
  client.send(text, { clientMsgId: p.id }).then(
    (ack) => {
      // A duplicate whose event was rendered before: nothing will arrive to replace the bubble.
      if (model.events.some((ev) => ev.seq === ack.seq)) removePending(p.id);
    },
    (err) => {
      p.failed = true;
      const node = $('transcript').querySelector(`[data-pending][data-client-msg-id="${CSS.escape(p.id)}"]`);
      if (node) node.dataset.failed = 'true';
      showProblem($('send-error'), `Not sent: ${err?.message ?? err}`);
    },
  );
}

$('prompt-form').addEventListener('submit', (e) => {
  e.preventDefault();
  sendPrompt();
});

$('prompt-input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendPrompt();
  }
});

function retryAfterMs(res) {
  const v = res.headers.get('retry-after');
  const s = v === null ? NaN : Number(v);
  return Number.isFinite(s) && s >= 0 ? s * 1000 : undefined;
}

/** A fresh single-use connection token for this project, before every connect and reconnect. */
async function getToken() {
  const res = await fetch(`${config.auth_url}/v1/tokens`, {
    method: 'POST',
    credentials: 'include',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ project_id: project.id }),
  });
  if (res.ok) return (await res.json()).token;
  const problem = await readProblem(res);
  if (res.status === 401) {
    throw new TetherError('You are signed out. Log in again to reconnect.', { name: 'unauthenticated', action: 'show_message', retryable: false });
  }
  const retryable = res.status === 429 || res.status >= 500;
  throw new TetherError(`Could not get a connection token: ${problem.display}`, {
    name: problem.code ?? 'token_unavailable',
    action: retryable ? 'backoff' : 'show_message',
    retryable,
    retryAfterMs: retryAfterMs(res),
  });
}

async function showProject(slug) {
  showView('loading');
  setConn('idle', '');
  if (!SLUG_RE.test(slug)) return showNotFound();
  let p;
  try {
    p = await api(`${config.session_url}/v1/projects/by-slug/${encodeURIComponent(slug)}`);
  } catch (err) {
    if (err instanceof ProblemError && err.status === 404) return showNotFound();
    if (err instanceof ProblemError && err.status === 401) return showLogin('Log in to open this project.');
    showView('error');
    setConn('failed', `Could not open the project: ${describe(err)}`);
    return undefined;
  }
  project = p;
  document.title = `${p.name} · Tether`;
  $('project-title').textContent = p.name;
  showView('project');
  if (!client) {
    // A new client starts from seq 0 and replays the log: start the model afresh too.
    model.events = [];
    model.pending.clear();
    subscriptions = [];
    // resumeFrom: 0 — the page shows the whole transcript on load, then streams live.
    client = new TetherClient({ urls: config.ws_urls, project: { id: p.id }, getToken, resumeFrom: 0 });
    hooks.client = client;
  }
  rerender();
  client.connect(); // resolves on ready; failures arrive as the 'failed' state
  $('prompt-input').focus();
  return undefined;
}

function showNotFound() {
  // F33: say so, and make no WebSocket attempt.
  showView('not-found');
  setConn('failed', 'Project not found');
}

// ------------------------------------------------------------------ routing

function slugFromPath(path) {
  const m = /^\/p\/([^/]+)\/?$/.exec(path);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

async function route() {
  showProblem($('app-error'), '');
  if (!(await loadMe())) return showLogin('');
  const slug = slugFromPath(location.pathname);
  if (slug !== null) return showProject(slug);
  return showProjects();
}

async function main() {
  try {
    const res = await fetch('/demo/config.json', { headers: { accept: 'application/json' } });
    if (!res.ok) throw await readProblem(res);
    config = await res.json();
    for (const k of ['auth_url', 'session_url']) config[k] = String(config[k]).replace(/\/+$/, '');
    await route();
  } catch (err) {
    showView('error');
    showProblem($('app-error'), `The demo could not start: ${describe(err)}`);
    setConn('failed', 'The demo could not start.');
  }
}

main();
