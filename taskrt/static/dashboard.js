// taskrt dashboard: a client of the JSON API and of ONE event stream (GET /events).
//
// Notes (see also taskrt/web/dashboard.py):
// 1. Every URL starts with the app's root path (data-root), so a mounted app works.
// 2. Live, not polled: job rows, status counts, throughput and the job page's
//    timeline move with the events. Pools and schedules are re-read from their
//    JSON routes when an event says they changed, at most once a second; a
//    schedule is re-read once its next fire time has passed. A pool paused,
//    resumed or resized elsewhere (the CLI, another process or node) sends no
//    event: pools are also re-read every POOLS_EVERY seconds while the page is
//    in view. Otherwise the one-second ticker only redraws (relative times,
//    sparklines); it never asks the server.
// 3. The multiplexed stream does not resume: after every (re)connect the page
//    re-reads what it shows. Events that arrive while a listing loads are kept
//    and applied after it, skipping those the listing already reflects (seq).
// 4. Data is written with textContent, never as HTML.
// 5. Signed out (a 401: say the login cookie expired): when the app serves the
//    login form (the built-in token, TASKRT_TOKEN), the page goes there;
//    otherwise it says so in a banner. Asked once, with HEAD ${ROOT}/login.
// 6. A workflow's page follows its own stream (GET /workflows/{id}/events) as
//    well: every (re)connect starts with a snapshot, which the page redraws
//    from; each job event moves its job's box. What it draws is bounded
//    (WF_LIMITS: boxes per column, boxes, columns), whatever the workflow's
//    size, and the boxes and the header are redrawn at most once a frame.
// 7. The status counts are a snapshot (GET /stats) moved by each event. The
//    snapshot does not say which events it reflects, so one read while events
//    moved the counts is read again once the stream is quiet (loadCounts).
//    Deletions send no event (a purge by another client, the retention), and
//    an end whose job the page never saw waiting or running is taken for an
//    attempt's: the counts are also read again every COUNTS_EVERY seconds
//    while the page is in view (constant time on the server at any size).
// 8. Job ids are exact. They run to 2^63-1 (docs/guarantees.md "Ids"), past the
//    integers a JavaScript number holds (2^53-1): read as numbers, 2^60+1 and
//    2^60+2 both become 2^60, one row whose Cancel names job 2^60 (another job,
//    or none). Answers and events are read with readJson, which keeps such
//    integers as their digits; every id the page holds is a string (idText),
//    maps are keyed by it, URLs and buttons carry it, and ids are put in order
//    by compareIds.

const ROOT = document.documentElement.dataset.root || "";
const STATUSES = ["WAITING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"];
const TERMINAL = new Set(["SUCCESS", "FAILURE", "CANCELLED"]);
const EVENT_TYPES = ["added", "started", "progress", "retrying", "success", "failure", "cancelled"];
const LIMIT = 50;
const SPARK_SECONDS = 60;
const RATE_WINDOW = 10;
const POOLS_EVERY = 10; // seconds between two reads of the pools without an event (note 2)
const COUNTS_EVERY = 10; // seconds between two reads of the status counts (note 7)
// The run_at of a job held for other jobs (its parents, its batch): a placeholder
// (models.BLOCKED_AT, 9999-12-31T23:59:59Z), no time it runs at.
const BLOCKED_AT = 253402300799;

const $ = (sel, scope = document) => scope.querySelector(sel);

// Exposed for people poking at the page and for the browser tests.
const probe = (window.taskrtDashboard = { ready: false, firstRenderMs: null, loads: 0, workflowDraws: 0 });

// -- small helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

const nowS = () => Date.now() / 1000;

function relative(ts) {
  if (ts === null || ts === undefined) return "—";
  const d = ts - nowS();
  const a = Math.abs(d);
  let text;
  if (a < 1) return d >= 0 ? "now" : "just now";
  if (a < 60) text = `${Math.round(a)} s`;
  else if (a < 3600) text = `${Math.floor(a / 60)} min`;
  else if (a < 86400) text = `${Math.floor(a / 3600)} h ${Math.floor((a % 3600) / 60)} min`;
  else text = `${Math.floor(a / 86400)} d`;
  return d > 0 ? `in ${text}` : `${text} ago`;
}

function absolute(ts) {
  // One format everywhere: the date, and the time on a 24-hour clock (as clock()).
  return ts === null || ts === undefined ? "" : new Date(ts * 1000).toLocaleString([], { hour12: false });
}

function clock(ts) {
  const d = new Date(ts * 1000);
  const ms = String(d.getMilliseconds()).padStart(3, "0");
  return `${d.toLocaleTimeString([], { hour12: false })}.${ms}`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function timeEl(ts, cls) {
  if (ts === null || ts === undefined) return el("span", { class: "muted", text: "—" });
  return el("time", { class: cls, dataset: { ts: String(ts) }, title: absolute(ts), text: relative(ts) });
}

// A docstring's inline literals (RST ``code``, Markdown `code`) as <code>, the rest as text.
function richText(text) {
  return text.split(/(``[^`]+``|`[^`]+`)/).filter(Boolean).map((part) => (part.startsWith("`") ? el("code", { text: part.replace(/^`+|`+$/g, "") }) : part));
}

// At most ``max`` characters as a reader counts them, the last one "…" when cut:
// whole graphemes where the browser can tell them apart (an emoji, a flag, a
// letter and its accents), else whole code points; never half a surrogate pair.
const graphemes = typeof Intl.Segmenter === "function" ? new Intl.Segmenter(undefined, { granularity: "grapheme" }) : null;

function shorten(text, max) {
  if (text.length <= max) return text; // UTF-16 units: never fewer than characters
  const kept = [];
  for (const piece of graphemes ? graphemes.segment(text) : text) {
    if (kept.length === max) return `${kept.slice(0, max - 1).join("")}…`;
    kept.push(typeof piece === "string" ? piece : piece.segment);
  }
  return text;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, Math.max(0, last + ms - Date.now()));
  };
}

class FieldError extends Error {
  // A form value the task's schema refuses, with the input to point at.
  constructor(input, message) {
    super(message);
    this.input = input;
  }
}

class ApiFailure extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

// -- ids (note 8) ---------------------------------------------------------------------------

// A JSON text's strings (skipped whole, whatever digits they hold) and numbers.
const JSON_TOKENS = /"[^"\\]*(?:\\.[^"\\]*)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

// JSON.parse, but an integer beyond 2^53-1 comes out as the string of its digits.
// (JSON.parse's context.source could say the same, but only from Chromium 114,
// Firefox 135 and Safari 18.4 on; this works in every browser.)
function readJson(text) {
  // No integer part of 16 digits or more (fractions do not count): every number is exact.
  if (!/(?:^|[^\d.])\d{16}/.test(text)) return JSON.parse(text);
  const exact = (token) => (/^-?\d+$/.test(token) && !Number.isSafeInteger(Number(token)) ? `"${token}"` : token);
  return JSON.parse(text.replace(JSON_TOKENS, exact));
}

// JSON.parse of what a user typed, refusing an integer the page cannot send exactly
// (beyond 2^53-1: JSON.parse would round it, and the job would get another number).
function typedJson(text, label) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (exc) {
    throw new Error(`${label}: not valid JSON (${exc.message})`);
  }
  for (const token of text.match(JSON_TOKENS) || []) {
    if (/^-?\d+$/.test(token) && !Number.isSafeInteger(Number(token))) throw new Error(`${label}: ${token} is beyond the integers a browser sends exactly (2^53-1); add this job with the API or the CLI`);
  }
  return value;
}

// An id as the page holds it: the string of its digits (null when there is none).
function idText(value) {
  return value === null || value === undefined ? null : String(value);
}

// An id from the address: its digits without leading zeros, as the server reads them.
function addressId(digits) {
  return digits.replace(/^0+(?=\d)/, "");
}

// Ids in numeric order: a longer string of digits is a larger id, and among
// ids of one length the text orders them.
function compareIds(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function oldestId(ids) {
  let oldest = null;
  for (const id of ids) if (oldest === null || compareIds(id, oldest) < 0) oldest = id;
  return oldest;
}

// What the API says of a job, of an event, of a workflow: their ids made strings, in place.
function jobIds(job) {
  job.id = idText(job.id);
  job.workflow = idText(job.workflow);
  job.batch = idText(job.batch);
  return job;
}

function eventIds(event) {
  event.job_id = idText(event.job_id);
  if (Array.isArray(event.after)) event.after = event.after.map(idText);
  return event;
}

function workflowIds(info) {
  info.id = idText(info.id);
  info.jobs.forEach(jobIds);
  info.edges = info.edges.map(([child, parent]) => [idText(child), idText(parent)]);
  return info;
}

async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(ROOT + path, init);
  } catch (exc) {
    throw new ApiFailure(0, `the server cannot be reached (${exc.message})`, null);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? readJson(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error?.message || `${response.status} ${response.statusText}`;
    if (response.status === 401) signedOut();
    throw new ApiFailure(response.status, message, data);
  }
  return data;
}

let loginForm = null; // a promise: whether the app serves ${ROOT}/login (note 5)

function signedOut() {
  loginForm ??= fetch(`${ROOT}/login`, { method: "HEAD", credentials: "same-origin", cache: "no-store" }).then(
    (response) => response.ok,
    () => {
      loginForm = null; // the server cannot be reached: ask again next time
      return false;
    },
  );
  loginForm.then((served) => {
    if (served) location.assign(`${ROOT}/login`);
    else showBanner("Not signed in: the API answered 401. The dashboard uses the credentials your browser sends (cookies or HTTP Basic).");
  });
}

function toast(message, kind = "") {
  const node = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", text: message });
  $("#toasts").append(node);
  setTimeout(() => node.remove(), kind === "error" ? 6000 : 3000);
}

function showBanner(message) {
  const banner = $("#banner");
  banner.textContent = message;
  banner.hidden = false;
}

async function act(label, fn) {
  try {
    return await fn();
  } catch (exc) {
    toast(`${label}: ${exc.message}`, "error");
    return null;
  }
}

// -- state ----------------------------------------------------------------------------------

const state = {
  view: "list", // or "job", "workflow"
  jobId: null,
  workflowId: null,
  filters: { status: "", pool: "", task: "", q: "" },
  stack: [], // cursors of the pages before this one ("" = the first page)
  cursor: null, // the cursor this page was loaded with
  next: null, // the next page's cursor
  jobs: new Map(), // id -> job, the rows on screen
  rows: new Map(), // id -> <tr>
  loading: false,
  buffered: [],
  loadToken: 0,
  stale: false,
  unreadable: false, // the search cannot be read: the list is empty and says why
  counts: null,
  known: new Map(), // id -> last status seen in an event or a listing (bounded): moves the counts
  pools: new Map(),
  throughput: new Map(), // pool -> number[SPARK_SECONDS]
  schedules: [],
  tasks: [],
  job: null, // the job page: { id, info, attempts, timeline, loading, buffered }
  flow: null, // the workflow page: see openWorkflow
};

// The search's metadata filters: ``key=value`` separated by spaces, a value
// with spaces (or one that would read as a number, true or false) quoted as
// a JSON string, ``key="a b"``. Each value goes to GET /jobs as written
// (``metadata.key="a b"``), which reads a JSON scalar as such.
const FILTER = /\s*([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]\S*|)(?=\s|$)/y;

function metadataFilters(q) {
  const out = [];
  const text = q.trim();
  FILTER.lastIndex = 0;
  while (FILTER.lastIndex < text.length) {
    const at = FILTER.lastIndex;
    const m = FILTER.exec(text);
    if (!m || (m[2].startsWith('"') && !isJsonString(m[2]))) {
      const token = text.slice(at).trim().split(/\s/)[0];
      throw new Error(`expected key=value or key="a value", found ${JSON.stringify(token)}`);
    }
    out.push([m[1], m[2]]);
  }
  return out;
}

function isJsonString(text) {
  try {
    return typeof JSON.parse(text) === "string";
  } catch {
    return false;
  }
}

// ``key=value`` for the search, the value quoted when it must be (see metadataFilters).
function filterText(key, value) {
  const plain = value !== "" && !/[\s"]/.test(value) && jsonScalar(value) === value;
  return `${key}=${plain ? value : JSON.stringify(value)}`;
}

function matchesFilters(job) {
  const f = state.filters;
  // "SCHEDULED": waiting for a time still to come (a delay, a retry's backoff), not for other jobs.
  const status = f.status === "SCHEDULED" ? job.status === "WAITING" && runsLater(job, 0) : !f.status || job.status === f.status;
  return status && (!f.pool || job.pool === f.pool) && (!f.task || job.task === f.task);
}

// -- routing (note 1) -----------------------------------------------------------------------

function readLocation() {
  const path = location.pathname.slice(ROOT.length);
  const hash = location.hash.match(/^#\/(jobs|workflows)\/(\d+)$/);
  if (hash) {
    history.replaceState(null, "", `${ROOT}/dashboard/${hash[1]}/${hash[2]}`);
    return readLocation();
  }
  const m = path.match(/^\/dashboard\/jobs\/(\d+)\/?$/);
  if (m) return { view: "job", id: addressId(m[1]) };
  const w = path.match(/^\/dashboard\/workflows\/(\d+)\/?$/);
  if (w) return { view: "workflow", id: addressId(w[1]) };
  const params = new URLSearchParams(location.search);
  return {
    view: "list",
    filters: {
      status: params.get("status") || "",
      pool: params.get("pool") || "",
      task: params.get("task") || "",
      q: params.get("q") || "",
    },
  };
}

function listUrl(filters) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  const query = params.toString();
  return `${ROOT}/dashboard${query ? `?${query}` : ""}`;
}

function navigate(url) {
  history.pushState(null, "", url);
  route();
}

function route() {
  const where = readLocation();
  state.view = where.view;
  $("#list-view").hidden = where.view !== "list";
  $("#job-view").hidden = where.view !== "job";
  $("#workflow-view").hidden = where.view !== "workflow";
  if (where.view !== "workflow") closeWorkflow();
  if (where.view === "job") {
    document.title = `Job #${where.id} · taskrt`;
    state.jobId = where.id;
    if (started) openJob(where.id);
  } else if (where.view === "workflow") {
    document.title = `Workflow #${where.id} · taskrt`;
    state.job = null;
    state.workflowId = where.id;
    if (started) openWorkflow(where.id);
  } else {
    document.title = "taskrt · dashboard";
    state.job = null;
    state.filters = where.filters;
    state.stack = [];
    state.cursor = null;
    syncFilterForm();
    if (started) loadJobs();
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);

// -- the stream (notes 2, 3) ----------------------------------------------------------------

let source = null;
let backoff = 1000;
let started = false; // the first load waits for the stream to open (note 3)

function setConn(kind, text) {
  const node = $("#conn");
  node.dataset.state = kind;
  node.textContent = text;
  document.body.dataset.live = String(kind === "live");
}

function connect() {
  source = new EventSource(`${ROOT}/events`, { withCredentials: true });
  source.addEventListener("open", () => {
    backoff = 1000;
    setConn("live", "live");
    reloadAll();
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      // The server refused the stream (401, 503 ...): try again later, ourselves.
      // A JSON call tells a 401 apart, which sends the page to sign in (note 5).
      setConn("down", `offline · retrying in ${Math.round(backoff / 1000)} s`);
      if (started) call("GET", "/tasks").catch(() => {});
      source.close();
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    } else {
      setConn("connecting", "reconnecting…");
    }
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      let event;
      try {
        event = eventIds(readJson(message.data));
      } catch {
        return;
      }
      onEvent(event);
    });
  }
}

async function reloadAll() {
  started = true;
  probe.loads += 1;
  state.known.clear(); // events may have been missed while disconnected
  // What the page is about first, so that it is not queued behind the rest.
  await (state.view === "job" && state.jobId !== null ? openJob(state.jobId) : state.view === "workflow" ? keepWorkflow() : loadJobs());
  await Promise.allSettled([loadCounts(), loadPools(), loadSchedules(), loadTasks(), loadOwner(), loadHistory()]);
  probe.ready = true;
  document.body.dataset.ready = "true";
}

function onEvent(event) {
  moveCounts(event);
  if (TERMINAL.has(event.status)) {
    countFinished(event.pool);
    reloadHistory();
  }
  refreshPools();
  if (event.type === "failure") refreshSchedules();
  if (state.loading) state.buffered.push(event);
  else applyToList(event);
  onJobPageEvent(event);
}

// -- history: what finished per minute (or hour), from the server's per-minute table -----

const RANGES = { hour: { step: 60, span: 3600 }, week: { step: 3600, span: 7 * 86400 } };
let historyRange = "hour";

async function loadHistory() {
  const { step, span } = RANGES[historyRange];
  const until = nowS();
  const since = Math.floor((until - span) / step) * step;
  const data = await act("History", () => call("GET", `/stats/history?since=${since}&until=${until}&step=${step}`));
  if (!data) return;
  drawHistory(data.points, since, until, step);
}

const reloadHistory = throttle(() => loadHistory(), 10000);

function drawHistory(points, since, until, step) {
  const byStart = new Map(points.map((p) => [p.at, p]));
  const bars = [];
  for (let at = since; at < until; at += step) bars.push(byStart.get(at) || { at, succeeded: 0, failed: 0, cancelled: 0 });
  const highest = Math.max(1, ...bars.map((b) => b.succeeded + b.failed + b.cancelled));
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  const width = bars.length * 6;
  svg.setAttribute("viewBox", `0 0 ${width} 60`);
  svg.setAttribute("preserveAspectRatio", "none");
  bars.forEach((b, i) => {
    let y = 60;
    for (const [key, cls] of [["succeeded", "ok"], ["failed", "bad"], ["cancelled", "off"]]) {
      if (!b[key]) continue;
      const h = (56 * b[key]) / highest;
      y -= h;
      const rect = document.createElementNS(NS, "rect");
      rect.setAttribute("x", String(i * 6 + 0.5));
      rect.setAttribute("y", String(y));
      rect.setAttribute("width", "5");
      rect.setAttribute("height", String(h));
      rect.setAttribute("class", cls);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${clock(b.at).slice(0, 5)} · ${b.succeeded} succeeded, ${b.failed} failed, ${b.cancelled} cancelled`;
      rect.append(title);
      svg.append(rect);
    }
  });
  const totals = points.reduce((t, p) => ({ succeeded: t.succeeded + p.succeeded, failed: t.failed + p.failed }), { succeeded: 0, failed: 0 });
  const box = $("#history");
  box.dataset.succeeded = String(totals.succeeded);
  box.dataset.failed = String(totals.failed);
  box.replaceChildren(svg);
  $("#history-totals").textContent = `${totals.succeeded.toLocaleString()} succeeded · ${totals.failed.toLocaleString()} failed`;
}

for (const button of document.querySelectorAll("[data-range]")) {
  button.addEventListener("click", () => {
    historyRange = button.dataset.range;
    for (const other of document.querySelectorAll("[data-range]")) other.setAttribute("aria-pressed", String(other === button));
    loadHistory();
  });
}

// -- who runs the jobs (GET /health: the process that served the page may be a standby) ----

async function loadOwner() {
  let health = null;
  try {
    const response = await fetch(`${ROOT}/health`, { credentials: "same-origin" });
    health = await response.json();
  } catch {
    return;
  }
  const node = $("#owner");
  const own = health && health.ownership;
  if (!own) return;
  if (Array.isArray(health.nodes)) {
    // Every process of a PostgreSQL schema runs workers: name them, not an owner.
    const names = health.nodes.map((n) => `${n.id} (${n.host} pid ${n.pid}, heartbeat ${Number(n.heartbeat_age).toFixed(1)} s ago)`);
    node.dataset.state = "nodes";
    const one = health.nodes.length === 1;
    node.textContent = `${health.nodes.length} node${one ? " runs" : "s run"} the jobs`;
    node.title = names.join("\n");
    return;
  }
  const [host, pid] = (own.owner || "").split(":");
  if (!own.reachable) {
    node.dataset.state = "unreachable";
    node.textContent = "no owner reachable: jobs wait";
    node.title = "No process runs the jobs now; what is added waits in the database.";
    return;
  }
  node.dataset.state = own.role;
  const via = own.role === "owner" ? "" : ` · via ${own.role}`;
  node.textContent = `owner ${host} pid ${pid}${via}`;
  node.title = `${own.owner}, the process that runs the jobs, since ${clock(own.since)}`;
}

// -- status counts --------------------------------------------------------------------------

// A snapshot of GET /stats does not say which events it reflects (note 7): one
// read while events moved the counts may be off by those events, either way.
// It is read again once the stream has been quiet for COUNTS_QUIET ms, at most
// COUNTS_RETRIES times in a row; a read that no event crossed is exact.
const COUNTS_QUIET = 400;
const COUNTS_RETRIES = 5;
const counting = { moves: 0, token: 0, retries: 0, timer: null };

const resyncCounts = throttle(() => loadCounts(), 5000);

async function loadCounts(retry = false) {
  if (!retry) counting.retries = 0;
  clearTimeout(counting.timer);
  counting.timer = null;
  const token = ++counting.token;
  const moves = counting.moves;
  const stats = await act("Statistics", () => call("GET", "/stats"));
  if (!stats || token !== counting.token) return; // a newer read supersedes this one
  state.counts = { ...stats.counts };
  renderCounts();
  if (counting.moves !== moves && counting.retries < COUNTS_RETRIES) {
    counting.retries += 1;
    recountWhenQuiet();
  }
}

function recountWhenQuiet() {
  clearTimeout(counting.timer);
  counting.timer = setTimeout(() => loadCounts(true), COUNTS_QUIET);
}

function know(id, status) {
  state.known.delete(id); // re-insert: the Map stays in recency order
  state.known.set(id, status);
  if (state.known.size > 20000) state.known.delete(state.known.keys().next().value);
}

function previousStatus(event) {
  const seen = state.known.get(event.job_id);
  switch (event.type) {
    case "added":
      return null;
    case "started":
      return "WAITING";
    case "progress":
      return "RUNNING";
    case "success":
    case "failure":
      // An attempt's end, mostly; a job that passed its deadline while it waited,
      // or a batch's member, ends from WAITING: what the page last saw of it says.
      return seen === undefined ? "RUNNING" : seen;
    case "retrying":
      return event.manual ? seen : "RUNNING";
    default: // cancelled: from WAITING or RUNNING
      return seen;
  }
}

function moveCounts(event) {
  const before = previousStatus(event);
  const after = event.status;
  know(event.job_id, after);
  if (before === after) return;
  counting.moves += 1; // a read of the counts in flight now may or may not reflect it
  if (counting.timer !== null) recountWhenQuiet(); // not quiet yet: wait on
  if (!state.counts) return;
  if (before === undefined) {
    resyncCounts(); // we cannot tell where it came from: ask, at most every 5 s
    return;
  }
  if (before !== null) state.counts[before] = Math.max(0, (state.counts[before] || 0) - 1);
  state.counts[after] = (state.counts[after] || 0) + 1;
  scheduleCounts();
}

let countsFrame = 0;
function scheduleCounts() {
  if (!countsFrame) countsFrame = requestAnimationFrame(() => {
    countsFrame = 0;
    renderCounts();
  });
}

function renderCounts() {
  if (!state.counts) return;
  let total = 0;
  for (const status of STATUSES) {
    const n = state.counts[status] || 0;
    total += n;
    $(`#count-${status}`).textContent = n.toLocaleString();
  }
  $("#count-all").textContent = total.toLocaleString();
  for (const link of document.querySelectorAll("[data-count]")) {
    link.setAttribute("aria-current", String(link.dataset.status === state.filters.status));
    link.href = listUrl({ ...state.filters, status: link.dataset.status });
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("[data-count]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey) return;
  event.preventDefault();
  navigate(listUrl({ ...state.filters, status: link.dataset.status }));
});

// -- pools ----------------------------------------------------------------------------------

const refreshPools = throttle(() => loadPools(), 1000);

async function loadPools() {
  const data = await act("Pools", () => call("GET", "/pools"));
  if (!data) return;
  const before = state.pools;
  state.pools = new Map(data.pools.map((p) => [p.name, p]));
  for (const pool of state.pools.values()) if (before.has(pool.name) && before.get(pool.name).paused !== pool.paused) poolTurned(pool.name);
  renderPools();
  // A rate-limited row says when its pool's next slot comes: from the pools just read.
  for (const [id, job] of state.jobs) {
    const held = job.waiting_reason === "rate_limited" && state.rows.get(id)?.querySelector(".held");
    if (held) held.textContent = heldText(job);
  }
  fillSelect($("#filters [name=pool]"), [...state.pools.keys()], state.filters.pool);
}

// A pool paused or resumed: its waiting rows say so, or stop saying so, once re-read.
function poolTurned(name) {
  if ([...state.jobs.values()].some((job) => job.pool === name && job.status === "WAITING")) rereadPage();
}

const rereadPage = throttle(() => {
  if (state.view === "list" && !turning) loadJobs(state.cursor);
}, 1000);

function countFinished(pool) {
  if (!state.throughput.has(pool)) state.throughput.set(pool, new Array(SPARK_SECONDS).fill(0));
  state.throughput.get(pool)[SPARK_SECONDS - 1] += 1;
  if (!sparkFrame) sparkFrame = requestAnimationFrame(() => {
    sparkFrame = 0;
    if (state.view === "list") drawSparklines();
  });
}

let sparkFrame = 0;

function renderPools() {
  const body = $("#pools tbody");
  $("#pools-empty").hidden = state.pools.size > 0;
  const seen = new Set();
  for (const pool of state.pools.values()) {
    seen.add(pool.name);
    let row = body.querySelector(`tr[data-pool="${CSS.escape(pool.name)}"]`);
    if (!row) {
      row = poolRow(pool.name);
      body.append(row);
    }
    updatePoolRow(row, pool);
  }
  for (const row of [...body.rows]) if (!seen.has(row.dataset.pool)) row.remove();
  drawSparklines();
}

function poolRow(name) {
  const input = el("input", { type: "number", min: 1, step: 1, "aria-label": `Concurrency of ${name}`, name: "concurrency" });
  const set = el("button", { type: "button", class: "btn small", dataset: { action: "concurrency" }, text: "Set" });
  const toggle = el("button", { type: "button", class: "btn small", dataset: { action: "toggle" } });
  return el(
    "tr",
    { dataset: { pool: name } },
    el("td", {}, el("span", { class: "name", text: name }), " ", el("span", { class: "badge", dataset: { role: "state" } })),
    el("td", { class: "num", dataset: { role: "running" } }),
    el("td", { class: "num", dataset: { role: "waiting" } }),
    el("td", { class: "num", dataset: { role: "done" } }),
    el("td", {}, el("div", { class: "spark-wrap" }, el("span", { dataset: { role: "spark" } }), el("span", { class: "spark-value", dataset: { role: "rate" } }))),
    el("td", { class: "num" }, el("span", { class: "concurrency" }, input, set)),
    el("td", {}, el("div", { class: "actions" }, toggle)),
  );
}

function updatePoolRow(row, pool) {
  const cell = (role) => row.querySelector(`[data-role="${role}"]`);
  const badge = cell("state");
  badge.textContent = pool.paused ? "paused" : "active";
  badge.className = `badge ${pool.paused ? "paused" : "active"}`;
  cell("running").textContent = `${pool.running} / ${pool.concurrency}`;
  // A rate limit (docs/flow-control.md): at most so many starts per unit of time.
  if (pool.rate) cell("running").append(el("span", { class: "sub", dataset: { role: "rate-limit" }, title: "rate limit: starts per unit of time", text: `≤ ${pool.rate}` }));
  cell("waiting").textContent = pool.capacity === null ? pool.waiting.toLocaleString() : `${pool.waiting.toLocaleString()} / ${pool.capacity.toLocaleString()}`;
  // Queue latency: how long the oldest runnable job has waited for a slot.
  if (pool.latency >= 0.5) cell("waiting").append(el("span", { class: "sub", title: "the oldest runnable job has waited this long", text: `oldest ${duration(pool.latency)}` }));
  cell("done").textContent = `${pool.processed.toLocaleString()} / ${pool.failed.toLocaleString()}`;
  const input = row.querySelector("input[name=concurrency]");
  if (document.activeElement !== input && input.dataset.dirty !== "true") input.value = pool.concurrency;
  const toggle = row.querySelector("[data-action=toggle]");
  toggle.textContent = pool.paused ? "Resume" : "Pause";
  toggle.setAttribute("aria-label", `${pool.paused ? "Resume" : "Pause"} pool ${pool.name}`);
}

$("#pools").addEventListener("input", (event) => {
  if (event.target.name === "concurrency") event.target.dataset.dirty = "true";
});

$("#pools").addEventListener("keydown", (event) => {
  if (event.target.name === "concurrency" && event.key === "Enter") {
    event.preventDefault();
    event.target.closest("tr").querySelector("[data-action=concurrency]").click();
  }
});

$("#pools").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr");
  const name = row.dataset.pool;
  const pool = state.pools.get(name);
  let change;
  if (button.dataset.action === "toggle") change = { paused: !pool.paused };
  else {
    const input = row.querySelector("input[name=concurrency]");
    const value = Number(input.value);
    if (!Number.isInteger(value) || value < 1) {
      toast(`Concurrency of ${name}: expected a positive integer`, "error");
      return;
    }
    change = { concurrency: value };
  }
  button.disabled = true;
  const updated = await act(`Pool ${name}`, () => call("PATCH", `/pools/${encodeURIComponent(name)}`, change));
  button.disabled = false;
  if (!updated) return;
  row.querySelector("input[name=concurrency]").dataset.dirty = "false";
  if (pool.paused !== updated.paused) poolTurned(name);
  state.pools.set(name, updated);
  updatePoolRow(row, updated);
  toast("concurrency" in change ? `Pool ${name}: concurrency ${updated.concurrency}` : `Pool ${name} ${updated.paused ? "paused" : "resumed"}`);
});

function rateOf(buckets) {
  // Jobs finished in the last RATE_WINDOW seconds (the current one included), per second.
  let sum = 0;
  for (let i = SPARK_SECONDS - RATE_WINDOW; i < SPARK_SECONDS; i += 1) sum += buckets[i];
  return sum / RATE_WINDOW;
}

function drawSparklines() {
  let total = 0;
  for (const row of $("#pools tbody").rows) {
    const buckets = state.throughput.get(row.dataset.pool) || new Array(SPARK_SECONDS).fill(0);
    const rate = rateOf(buckets);
    total += rate;
    const holder = row.querySelector('[data-role="spark"]');
    holder.replaceChildren(sparkline(buckets));
    row.querySelector('[data-role="rate"]').textContent = `${rate.toFixed(1)}/s`;
  }
  $("#rate").textContent = total.toFixed(1);
}

function sparkline(values) {
  const w = 150;
  const h = 28;
  const peak = Math.max(1, ...values);
  const step = w / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(h - 2 - (v / peak) * (h - 4)).toFixed(1)}`);
  const node = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": `jobs finished per second, peak ${peak}` });
  node.append(svg("polygon", { points: `0,${h} ${points.join(" ")} ${w},${h}` }));
  node.append(svg("polyline", { points: points.join(" ") }));
  return node;
}

// -- schedules ------------------------------------------------------------------------------

const refreshSchedules = throttle(() => loadSchedules(), 1000);
let scheduleTimer = null;

async function loadSchedules() {
  let data;
  try {
    data = await call("GET", "/schedules");
  } catch (exc) {
    if (exc.status !== 404) toast(`Schedules: ${exc.message}`, "error");
    return;
  }
  state.schedules = data.schedules;
  renderSchedules();
  armScheduleTimer();
}

function armScheduleTimer() {
  // Re-read once the earliest next fire time has passed (note 2): a fact, not a poll.
  clearTimeout(scheduleTimer);
  const next = state.schedules.filter((s) => !s.paused && s.next_run_at !== null).map((s) => s.next_run_at);
  if (!next.length) return;
  const delay = Math.min(2 ** 31 - 1, Math.max(250, (Math.min(...next) - nowS()) * 1000 + 500));
  scheduleTimer = setTimeout(refreshSchedules, delay);
}

function renderSchedules() {
  const body = $("#schedules tbody");
  $("#schedules-empty").hidden = state.schedules.length > 0;
  body.replaceChildren(
    ...state.schedules.map((s) => {
      const jobsLink = el("a", { href: listUrl({ status: "", pool: "", task: "", q: filterText("schedule", s.name) }), "data-nav": true, text: "jobs" });
      const last = s.last_job_id
        ? el("span", {}, timeEl(s.last_run_at), " · ", el("a", { href: `${ROOT}/dashboard/jobs/${s.last_job_id}`, "data-nav": true, text: `#${s.last_job_id}` }))
        : timeEl(s.last_run_at);
      return el(
        "tr",
        { dataset: { schedule: s.name } },
        el("td", {}, el("span", { class: "name", text: s.name }), el("span", { class: "sub", text: s.task })),
        el("td", {}, el("code", { text: s.expression }), el("span", { class: "sub", text: s.tz })),
        el("td", {}, s.paused ? el("span", { class: "badge paused", text: "paused" }) : timeEl(s.next_run_at, "next-fire")),
        el("td", {}, last, s.last_error ? el("span", { class: "sub", title: s.last_error, text: "last slot added no job" }) : null),
        el("td", { class: "num" }, `${s.fires} / ${s.failures} `, jobsLink),
        el(
          "td",
          {},
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "btn small", dataset: { action: "run" }, "aria-label": `Run schedule ${s.name} now`, text: "Run now" }),
            el("button", { type: "button", class: "btn small", dataset: { action: s.paused ? "resume" : "pause" }, "aria-label": `${s.paused ? "Resume" : "Pause"} schedule ${s.name}`, text: s.paused ? "Resume" : "Pause" }),
          ),
        ),
      );
    }),
  );
}

$("#schedules").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const name = button.closest("tr").dataset.schedule;
  const action = button.dataset.action;
  button.disabled = true;
  const result = await act(`Schedule ${name}`, () => call("POST", `/schedules/${encodeURIComponent(name)}/${action}`));
  button.disabled = false;
  if (!result) return;
  toast(action === "run" ? `Schedule ${name}: job #${result.id} added` : `Schedule ${name} ${action === "pause" ? "paused" : "resumed"}`);
  loadSchedules();
});

// -- tasks ----------------------------------------------------------------------------------

async function loadTasks() {
  const data = await act("Tasks", () => call("GET", "/tasks"));
  if (!data) return;
  state.tasks = data.tasks;
  fillSelect($("#filters [name=task]"), state.tasks.map((t) => t.name), state.filters.task);
}

function fillSelect(select, names, chosen) {
  const keep = select.value || chosen;
  const all = new Set(names);
  if (chosen) all.add(chosen);
  select.replaceChildren(el("option", { value: "", text: "any" }), ...[...all].sort().map((n) => el("option", { value: n, text: n })));
  select.value = keep || "";
}

// -- the jobs list --------------------------------------------------------------------------

function syncFilterForm() {
  const form = $("#filters");
  for (const key of ["status", "pool", "task", "q"]) {
    const field = form.elements[key];
    if (key !== "q" && state.filters[key] && ![...field.options].some((o) => o.value === state.filters[key])) {
      field.append(el("option", { value: state.filters[key], text: state.filters[key] }));
    }
    field.value = state.filters[key];
  }
  renderCounts();
}

$("#filters").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const q = form.elements.q.value.trim();
  const id = q.match(/^#?(\d+)$/);
  if (id) {
    navigate(`${ROOT}/dashboard/jobs/${id[1]}`);
    return;
  }
  try {
    metadataFilters(q);
  } catch (exc) {
    toast(`Search: ${exc.message} (or a job id)`, "error");
    return;
  }
  navigate(listUrl({ status: form.elements.status.value, pool: form.elements.pool.value, task: form.elements.task.value, q }));
});

for (const name of ["status", "pool", "task"]) {
  $(`#filters [name=${name}]`).addEventListener("change", () => $("#filters").requestSubmit());
}
$("#clear-filters").addEventListener("click", () => navigate(listUrl({})));
$("#reload").addEventListener("click", () => loadJobs(state.cursor));
// The pager: a click while a page turns is ignored (a double click is one
// turn), and the stack of earlier pages changes only with the page shown. A
// live re-read of the page waits for the turn, which reads afresh anyway.
let turning = false;

async function turnPage(cursor, stack) {
  if (turning) return;
  turning = true;
  try {
    await loadJobs(cursor, stack);
  } finally {
    turning = false;
  }
}
$("#first-page").addEventListener("click", () => turnPage(null, []));
$("#prev-page").addEventListener("click", () => turnPage(state.stack.at(-1) || null, state.stack.slice(0, -1)));
$("#next-page").addEventListener("click", () => turnPage(state.next, [...state.stack, state.cursor || ""]));

async function loadJobs(cursor = state.cursor, stack = state.stack) {
  const f = state.filters;
  const params = new URLSearchParams({ limit: String(LIMIT) });
  if (f.status === "SCHEDULED") params.set("scheduled", "true");
  else if (f.status) params.set("status", f.status);
  if (f.pool) params.set("pool", f.pool);
  if (f.task) params.set("task", f.task);
  let meta;
  try {
    meta = metadataFilters(f.q);
  } catch (exc) {
    // A search it cannot read lists nothing, and says why (never every job).
    ++state.loadToken;
    state.loading = false;
    state.unreadable = true;
    state.jobs = new Map();
    state.next = null;
    state.stale = false;
    renderJobs(`Search: ${exc.message}.`);
    toast(`Search: ${exc.message}`, "error");
    return;
  }
  for (const [key, value] of meta) params.set(`metadata.${key}`, value);
  if (cursor) params.set("cursor", cursor);
  state.unreadable = false;
  const token = ++state.loadToken;
  state.loading = true;
  state.buffered = [];
  const started = performance.now();
  let page;
  try {
    page = await call("GET", `/jobs?${params}`);
  } catch (exc) {
    if (token === state.loadToken) {
      state.loading = false;
      toast(`Jobs: ${exc.message}`, "error");
    }
    return;
  }
  if (token !== state.loadToken) return; // a newer load superseded this one
  state.stack = stack;
  state.cursor = cursor;
  state.next = page.cursor;
  state.stale = false;
  state.jobs = new Map(page.jobs.map((j) => [jobIds(j).id, j]));
  for (const job of page.jobs) if (!state.known.has(job.id)) know(job.id, job.status);
  renderJobs();
  state.loading = false;
  for (const event of state.buffered) applyToList(event); // note 3
  state.buffered = [];
  if (probe.firstRenderMs === null) probe.firstRenderMs = performance.now();
  probe.lastListMs = performance.now() - started;
}

function firstPage() {
  return !state.cursor;
}

function renderJobs(empty = "No jobs match.") {
  $("#jobs-empty").textContent = empty;
  const body = $("#jobs tbody");
  state.rows = new Map();
  const rows = [...state.jobs.values()].sort((a, b) => compareIds(b.id, a.id)).map((job) => {
    const row = jobRow(job);
    state.rows.set(job.id, row);
    return row;
  });
  body.replaceChildren(...rows);
  renderPager();
}

function renderPager() {
  $("#jobs-empty").hidden = state.jobs.size > 0;
  $("#stale").hidden = !state.stale;
  $("#first-page").disabled = firstPage();
  $("#prev-page").disabled = firstPage();
  $("#next-page").disabled = !state.next;
  $("#page-info").textContent = `page ${state.stack.length + 1}${firstPage() ? " · live" : ""}`;
}

function percentOf(job) {
  if (job.status === "SUCCESS") return 100;
  if (!job.total) return null;
  return Math.max(0, Math.min(100, (100 * job.current) / job.total));
}

function progressEl(job) {
  const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": `Progress of job ${job.id}` }, el("span"));
  const node = el("div", { class: "progress" }, bar, el("span", { class: "percent" }), el("span", { class: "message" }));
  setProgress(node, job);
  return node;
}

function setProgress(node, job) {
  const bar = node.querySelector(".bar");
  const pct = percentOf(job);
  // No bar for a job that is not running and never reported progress.
  node.classList.toggle("none", pct === null && job.status !== "RUNNING");
  bar.classList.toggle("indeterminate", pct === null && job.status === "RUNNING");
  bar.classList.toggle("done", job.status === "SUCCESS");
  bar.classList.toggle("failed", job.status === "FAILURE");
  bar.classList.toggle("cancelled", job.status === "CANCELLED");
  bar.firstElementChild.style.width = pct === null ? "" : `${pct}%`;
  if (pct === null) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", String(Math.round(pct)));
  node.querySelector(".percent").textContent = pct === null ? (job.status === "RUNNING" ? "…" : "") : `${Math.round(pct)} %`;
  const message = node.querySelector(".message");
  // The step a job reported last (progress(..., step=...)) leads its message.
  const text = [job.step ? `[${job.step}]` : "", job.message || ""].filter(Boolean).join(" ");
  message.textContent = text;
  message.title = text;
}

function jobRow(job) {
  const row = el("tr", { class: "job", dataset: { id: String(job.id) } });
  updateRow(row, job);
  return row;
}

function jobActions(job) {
  const out = [];
  if (job.status === "WAITING" || job.status === "RUNNING") {
    out.push(el("button", { type: "button", class: "btn small danger", dataset: { action: "cancel", id: job.id }, "aria-label": `Cancel job ${job.id}`, text: "Cancel" }));
  }
  if (job.status === "FAILURE" || job.status === "CANCELLED") {
    out.push(el("button", { type: "button", class: "btn small", dataset: { action: "retry", id: job.id }, "aria-label": `Retry job ${job.id}`, text: "Retry" }));
  }
  if (job.status === "WAITING" && job.run_at && job.run_at > nowS() + 1) {
    out.unshift(el("button", { type: "button", class: "btn small", dataset: { action: "run", id: job.id }, "aria-label": `Run job ${job.id} now`, text: "Run now" }));
  }
  return out;
}

function attemptsText(job) {
  const max = job.max_attempts === null ? "∞" : job.max_attempts ?? "?";
  return `${job.attempts ?? 0} / ${max}`;
}

function durationEl(job) {
  if (job.started_at && !job.finished_at && job.status === "RUNNING") {
    return el("span", { dataset: { since: String(job.started_at) }, text: duration(nowS() - job.started_at) });
  }
  if (job.started_at && job.finished_at) return duration(job.finished_at - job.started_at);
  return el("span", { class: "muted", text: "—" });
}

// A job's error belongs to its row while it failed it or waits to retry after it;
// a running attempt has none of its own yet.
function shownError(job) {
  return Boolean(job.error) && (job.status === "FAILURE" || job.status === "WAITING");
}

// Its run_at is a time to come (more than ``margin`` seconds off), not the placeholder
// of a job held for other jobs (BLOCKED_AT).
function runsLater(job, margin) {
  return Boolean(job.run_at) && job.run_at > nowS() + margin && job.run_at < BLOCKED_AT;
}

// Why a waiting job has not started: it runs later (a delay, or a retry's backoff).
function waitingFor(job) {
  if (job.status !== "WAITING") return null;
  const held = heldEl(job, "sub held");
  if (held) return held;
  if (!runsLater(job, 1)) return null;
  return el("span", { class: "sub when", dataset: { until: String(job.run_at) }, title: absolute(job.run_at), text: untilText(job.run_at) });
}

// What holds a waiting job back besides its time (its waiting_reason, docs/flow-control.md).
function heldText(job) {
  switch (job.waiting_reason) {
    case "paused":
      return "pool paused";
    case "locked":
      return `locked: ${job.lock}`;
    case "rate_limited": {
      const pool = state.pools.get(job.pool);
      const next = pool && pool.next_slot > 0 ? `, next slot in ${pool.next_slot.toFixed(1)} s` : "";
      return `rate limited${next}`;
    }
    case "blocked":
      return "waits for its parents";
    case "batching":
      return "gathering its batch";
    case "batched":
      return job.batch ? `in batch ${job.batch}` : "in a batch";
    default:
      return "";
  }
}

// The same, as an element: "in batch N" links to job N, the one that runs the batch.
function heldEl(job, cls) {
  const text = heldText(job);
  if (!text) return null;
  const node = el("span", { class: cls, dataset: { reason: job.waiting_reason }, title: job.batch_key ? `batch key ${job.batch_key}` : null });
  if (job.waiting_reason === "batched" && job.batch) node.append("in ", el("a", { href: `${ROOT}/dashboard/jobs/${job.batch}`, "data-nav": true, text: `batch ${job.batch}` }));
  else node.textContent = text;
  return node;
}

function untilText(ts) {
  return ts > nowS() + 0.5 ? `runs ${relative(ts)}` : "due now";
}

function updateRow(row, job) {
  const href = `${ROOT}/dashboard/jobs/${job.id}`;
  const cells = [
    el("td", { class: "num" }, el("a", { href, "data-nav": true, text: `#${job.id}` })),
    el("td", {}, el("span", { class: "name", text: job.task })),
    el("td", { text: job.pool }),
    el("td", {}, el("span", { class: `badge ${job.status} status`, text: job.status }), shownError(job) ? el("span", { class: "sub", title: job.error, text: shorten(job.error, 48) }) : null, waitingFor(job)),
    el("td", { class: "message-cell" }, progressEl(job)),
    el("td", { class: "num", text: attemptsText(job) }),
    el("td", {}, timeEl(job.created_at)),
    el("td", { class: "num" }, durationEl(job)),
    el("td", {}, el("div", { class: "actions" }, jobActions(job))),
  ];
  if (row.cells.length === cells.length && row.dataset.status === job.status && row.dataset.error === String(job.error ?? "") && row.dataset.runAt === String(job.run_at ?? "") && row.dataset.reason === String(job.waiting_reason ?? "")) {
    // Same status: only the moving parts change (keeps focus and hover steady).
    setProgress(row.querySelector(".progress"), job);
    row.cells[5].textContent = attemptsText(job);
    row.cells[7].replaceChildren(durationEl(job));
    return;
  }
  row.dataset.status = job.status;
  row.dataset.error = String(job.error ?? "");
  row.dataset.runAt = String(job.run_at ?? "");
  row.dataset.reason = String(job.waiting_reason ?? "");
  row.replaceChildren(...cells);
}

function applyEvent(job, event) {
  if (typeof job.seq === "number" && event.seq <= job.seq) return false; // already reflected
  job.seq = event.seq;
  job.status = event.status;
  switch (event.type) {
    case "added":
      job.run_at = event.run_at;
      job.priority = event.priority;
      break;
    case "started":
      job.attempts = event.attempt;
      job.started_at = event.at;
      job.finished_at = null;
      job.waiting_reason = null; // whatever held it back, it runs
      break;
    case "progress":
      job.current = event.current;
      job.total = event.total;
      job.message = event.message;
      if (event.step !== undefined) {
        job.step = event.step;
        job.steps = event.steps;
      }
      break;
    case "retrying":
      if (event.error !== undefined && event.error !== null) job.error = event.error;
      job.run_at = event.run_at;
      job.started_at = null;
      job.finished_at = null;
      job.waiting_reason = null; // it waits for its run_at now
      break;
    case "success":
      job.result = event.result;
      job.error = null;
      job.finished_at = event.at;
      break;
    case "failure":
      job.error = event.error;
      job.finished_at = event.at;
      break;
    case "cancelled":
      job.finished_at = event.at;
      break;
  }
  return true;
}

function fromEvent(event) {
  // A row for a job first seen in an event; ``hydrate`` fills in the rest.
  const spec = state.tasks.find((t) => t.name === event.task);
  return {
    id: event.job_id,
    task: event.task,
    pool: event.pool,
    status: event.status,
    attempts: event.attempt ?? 0,
    max_attempts: spec ? spec.attempts : undefined,
    current: 0,
    total: 0,
    message: "",
    error: null,
    created_at: event.type === "added" ? event.at : null,
    started_at: null,
    finished_at: null,
    seq: event.seq - 1,
  };
}

function applyToList(event) {
  if (state.view !== "list") return;
  const job = state.jobs.get(event.job_id);
  if (job) {
    if (!applyEvent(job, event)) return;
    const row = state.rows.get(job.id);
    if (row) updateRow(row, job);
    if (!matchesFilters(job)) leave(job.id);
    else state.rows.get(job.id)?.classList.remove("leaving");
    return;
  }
  if (!firstPage()) return; // later pages stay put: the cursor keeps them stable
  const candidate = fromEvent(event);
  applyEvent(candidate, event);
  if (!matchesFilters(candidate)) return;
  if (state.filters.q) {
    // Events do not carry metadata: we cannot tell, so offer a refresh.
    if (!state.unreadable && (event.type === "added" || event.type === "started")) {
      state.stale = true;
      renderPager();
    }
    return;
  }
  insert(candidate);
  if (state.rows.has(candidate.id) && (candidate.created_at === null || heldUnsaid(event))) hydrate();
}

// An "added" event does not say why the job waits: its pool paused, or held for
// its parents or its batch (GET /jobs does: ``waiting_reason``).
function heldUnsaid(event) {
  if (event.type !== "added") return false;
  return Boolean(state.pools.get(event.pool)?.paused || event.after?.length || (event.batch_key ?? null) !== null);
}

// Re-read the first page, at most every 2 s, while it misses what the server
// has: rows first seen in a "started" (or later) event lack their creation
// time, rows added to a paused pool why they wait, and a page whose rows faded
// out the rows that ``insert`` pushed past its end.
const hydrate = throttle(() => {
  if (state.view === "list" && firstPage() && !turning) loadJobs(null);
}, 2000);

function insert(job) {
  // Older than every row of a full page: it belongs on a later page.
  if (state.jobs.size >= LIMIT && compareIds(job.id, oldestId(state.jobs.keys())) < 0) return;
  state.jobs.set(job.id, job);
  const row = jobRow(job);
  row.classList.add("fresh");
  state.rows.set(job.id, row);
  const body = $("#jobs tbody");
  const after = [...body.rows].find((r) => compareIds(r.dataset.id, job.id) < 0);
  body.insertBefore(row, after || null);
  while (state.jobs.size > LIMIT) {
    const last = oldestId(state.jobs.keys());
    state.jobs.delete(last);
    state.rows.get(last)?.remove();
    state.rows.delete(last);
    // The API's cursor is the id of a page's last job: the next page starts after ours.
    state.next = oldestId(state.jobs.keys());
  }
  renderPager();
}

function leave(id) {
  const row = state.rows.get(id);
  if (!row || row.classList.contains("leaving")) return;
  row.classList.add("leaving");
  setTimeout(() => {
    const job = state.jobs.get(id);
    if (!job || matchesFilters(job) || state.rows.get(id) !== row) {
      row.classList.remove("leaving");
      return;
    }
    state.jobs.delete(id);
    state.rows.delete(id);
    row.remove();
    renderPager();
    // Rows beyond the live first page (state.next) move up to fill it.
    if (firstPage() && state.next && state.jobs.size < LIMIT) hydrate();
  }, 1500);
}

$("#jobs").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  await jobAction(button, button.dataset.id, button.dataset.action);
});

async function jobAction(button, id, action) {
  if (action === "purge") {
    if (!window.confirm(`Delete job #${id} and its attempts?`)) return;
    const done = await act(`Job #${id}`, () => call("POST", `/jobs/${id}/purge`));
    if (!done) return;
    toast(`Job #${id} deleted`);
    navigate(`${ROOT}/dashboard`);
    loadCounts(); // a purge sends no event: the counts are read again
    return;
  }
  button.disabled = true;
  const path = { cancel: `/jobs/${id}/cancel`, retry: `/jobs/${id}/retry`, run: `/jobs/${id}/run` }[action];
  const job = await act(`Job #${id}`, () => call("POST", path));
  button.disabled = false;
  if (!job) return;
  toast(`Job #${id} ${{ cancel: "cancelled", retry: "queued again", run: "runs now" }[action]}`);
  adopt(jobIds(job));
}

function adopt(job) {
  // A job the API returned: newer than what the row shows, unless events overtook it.
  const shown = state.jobs.get(job.id);
  if (shown && (shown.seq ?? -1) <= job.seq) {
    state.jobs.set(job.id, job);
    const row = state.rows.get(job.id);
    if (row) updateRow(row, job);
  }
  if (state.job && state.job.id === job.id && state.job.info && state.job.info.seq <= job.seq) {
    state.job.info = job;
    renderJobPage();
    loadAttempts();
  }
}

// -- many jobs at once: the filters on screen, a count, a confirmation -----------------

function bulkFilter() {
  const f = state.filters;
  const body = {};
  if (f.status === "SCHEDULED") body.scheduled = true;
  else if (f.status) body.status = f.status;
  if (f.pool) body.pool = f.pool;
  if (f.task) body.task = f.task;
  const meta = metadataFilters(f.q || "");
  if (meta.length) body.metadata = Object.fromEntries(meta.map(([k, v]) => [k, jsonScalar(v)]));
  const described = [f.status && `status ${f.status}`, f.pool && `pool ${f.pool}`, f.task && `task ${f.task}`, ...meta.map(([k, v]) => `${k}=${v}`)].filter(Boolean);
  if (!described.length) body.older_than = 0; // every job: said outright
  return [body, described.length ? `matching ${described.join(", ")}` : "of every kind"];
}

function jsonScalar(text) {
  // As GET /jobs reads a metadata filter: a JSON scalar (not null), else the text.
  try {
    const value = JSON.parse(text);
    return value === null || typeof value === "object" ? text : value;
  } catch {
    return text;
  }
}

async function bulkAction(action) {
  let body;
  let what;
  try {
    [body, what] = bulkFilter();
  } catch (exc) {
    toast(`Search: ${exc.message}`, "error");
    return;
  }
  const preview = await act("Bulk", () => call("POST", `/jobs/${action}`, { ...body, dry_run: true }));
  if (!preview) return;
  if (!preview.matched) {
    toast(`No job ${what}`);
    return;
  }
  const verb = { retry: "Retry", cancel: "Cancel", purge: "Delete" }[action];
  if (!window.confirm(`${verb} ${preview.matched} job${preview.matched === 1 ? "" : "s"} ${what}?`)) return;
  const done = await act("Bulk", () => call("POST", `/jobs/${action}`, body));
  if (!done) return;
  const past = { retry: "queued again", cancel: "cancelled", purge: "deleted" }[action];
  toast(`${done.done} job${done.done === 1 ? "" : "s"} ${past}${done.skipped ? ` (${done.skipped} skipped)` : ""}`);
  await Promise.allSettled([loadJobs(), loadCounts()]);
}

for (const button of document.querySelectorAll("[data-bulk]")) {
  button.addEventListener("click", () => bulkAction(button.dataset.bulk));
}

// -- a job's page ---------------------------------------------------------------------------

async function openJob(id) {
  state.jobId = id;
  const page = (state.job = { id, info: null, attempts: [], timeline: [], loading: true, buffered: [] });
  $("#job-title").textContent = `Job #${id}`;
  let info;
  let attempts;
  try {
    [info, attempts] = await Promise.all([call("GET", `/jobs/${id}`), call("GET", `/jobs/${id}/attempts`)]);
  } catch (exc) {
    if (state.job !== page) return;
    page.loading = false;
    $("#job-status").textContent = "";
    $("#job-status").className = "badge";
    $("#job-actions").replaceChildren();
    $("#job-progress").replaceChildren();
    $("#job-body").hidden = true; // no empty panels for a job that is not there
    $("#job-facts").replaceChildren(el("p", { class: "muted", text: exc.status === 404 ? `There is no job #${id}: it never existed, or it was cleaned up.` : exc.message }));
    return;
  }
  $("#job-body").hidden = false;
  if (state.job !== page) return;
  page.info = jobIds(info);
  page.attempts = attempts.attempts;
  page.timeline = storedTimeline(info, page.attempts);
  page.loading = false;
  for (const event of page.buffered) liveEntry(page, event);
  page.buffered = [];
  renderJobPage();
}

async function loadAttempts() {
  const page = state.job;
  if (!page) return;
  const data = await act("Attempts", () => call("GET", `/jobs/${page.id}/attempts`));
  if (!data || state.job !== page) return;
  page.attempts = data.attempts;
  renderAttempts();
}

const reloadAttempts = throttle(loadAttempts, 300);

function storedTimeline(info, attempts) {
  // What is stored: the job's creation, each attempt's start and end, what
  // followed each attempt (a retry by policy, or one asked for by hand), the outcome.
  const out = [{ at: info.created_at, kind: "added", detail: `to pool ${info.pool}${info.priority ? `, priority ${info.priority}` : ""}` }];
  // Delayed at its add: it was due later than it was created (never inferred from a retry's time).
  const due = attempts.length || info.run_at >= BLOCKED_AT ? null : info.run_at;
  if (due !== null && due > info.created_at + 1) out.push({ at: info.created_at, kind: "delayed", detail: `until ${clock(due)}` });
  for (const a of attempts) {
    out.push({ at: a.started_at, kind: "started", detail: `attempt ${a.number}` });
    if (a.finished_at !== null) out.push({ at: a.finished_at, kind: a.outcome, detail: `attempt ${a.number}${a.error ? `: ${a.error}` : ""}` });
    if (a.next === "retry") out.push({ at: a.finished_at, kind: "retrying", detail: `next attempt at ${clock(a.next_at)}` });
    if (a.next === "retried") out.push({ at: a.next_at, kind: "retrying", detail: "retry requested" });
  }
  if (TERMINAL.has(info.status) && info.finished_at) {
    const kind = info.status.toLowerCase();
    const detail = info.status === "SUCCESS" ? resultSummary(info.result) : info.error || "";
    out.push({ at: info.finished_at, kind, detail });
  }
  return out.sort((a, b) => a.at - b.at);
}

function resultSummary(result) {
  if (result === null || result === undefined) return "";
  const text = JSON.stringify(result);
  return shorten(text, 80);
}

function liveEntry(page, event) {
  if (!page.info || !applyEvent(page.info, event)) return false;
  const detail = {
    added: `to pool ${event.pool}`,
    started: `attempt ${event.attempt}`,
    progress: `${event.step ? `[${event.step}] ` : ""}${event.current}${event.total ? ` / ${event.total}` : ""}${event.message ? ` · ${event.message}` : ""}`,
    retrying: event.manual ? "retry requested" : `attempt ${event.attempt} failed${event.error ? `: ${event.error}` : ""}; next attempt at ${clock(event.run_at)}`,
    success: resultSummary(event.result),
    failure: event.error || "",
    cancelled: "",
  }[event.type];
  const last = page.timeline[page.timeline.length - 1];
  const entry = { at: event.at, kind: event.type, detail, live: true };
  if (event.type === "progress" && last && last.kind === "progress") page.timeline[page.timeline.length - 1] = entry;
  else page.timeline.push(entry);
  return true;
}

function onJobPageEvent(event) {
  const page = state.job;
  if (!page || state.view !== "job" || event.job_id !== page.id) return;
  if (page.loading) {
    page.buffered.push(event);
    return;
  }
  if (!liveEntry(page, event)) return;
  renderJobPage();
  if (event.type !== "progress" && event.type !== "added") reloadAttempts();
}

function renderJobPage() {
  const page = state.job;
  if (!page || !page.info) return;
  const job = page.info;
  $("#job-title").textContent = `Job #${job.id} · ${job.task}`;
  const badge = $("#job-status");
  badge.textContent = job.status;
  badge.className = `badge ${job.status} status`;
  const purge = TERMINAL.has(job.status)
    ? el("button", { type: "button", class: "btn small danger", dataset: { action: "purge", id: job.id }, "aria-label": `Delete job ${job.id}`, text: "Delete" })
    : null;
  $("#job-actions").replaceChildren(...jobActions(job), ...(purge ? [purge] : []));
  const holder = $("#job-progress");
  if (!holder.firstChild) holder.append(progressEl(job));
  else setProgress(holder.firstChild, job);
  // A job that finished without reporting progress has no bar worth showing.
  holder.hidden = !job.total && (job.status === "FAILURE" || job.status === "CANCELLED");
  const facts = [
    ["Pool", job.pool],
    ...(job.workflow ? [["Workflow", el("a", { href: workflowUrl(job.workflow), "data-nav": true, text: `workflow ${job.workflow}` })]] : []),
    ["Attempts", attemptsText(job)],
    ["Priority", String(job.priority ?? 0)],
    ["Created", timeEl(job.created_at)],
    ["Runs at", job.run_at >= BLOCKED_AT ? heldEl(job, "held") || el("span", { class: "muted", text: "—" }) : timeEl(job.run_at)],
    ["Started", timeEl(job.started_at)],
    ["Finished", timeEl(job.finished_at)],
    ["Duration", durationEl(job)],
    ["Timeout", job.timeout ? duration(job.timeout) : "none"],
    ["Unique key", job.unique_key || "—"],
  ];
  if (job.node) facts.push(["Node", job.node]);
  if (job.lock) facts.push(["Lock", job.lock]);
  if (job.deadline) facts.push(["Deadline", timeEl(job.deadline)]);
  const held = job.status === "WAITING" ? heldEl(job, "held") : null;
  if (held) facts.push(["Waits for", held]);
  if (job.batch_key) facts.push(["Batch key", job.batch_key]);
  if (job.batch && job.batch !== job.id) facts.push(["Batch run by", el("a", { href: `${ROOT}/dashboard/jobs/${job.batch}`, "data-nav": true, text: `#${job.batch}` })]);
  if (job.recoveries) facts.push(["Recoveries", String(job.recoveries)]);
  for (const [key, value] of Object.entries(job.metadata || {})) facts.push([`meta · ${key}`, typeof value === "string" ? value : JSON.stringify(value)]);
  $("#job-facts").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", {}, v))));
  const args = {};
  if (job.args && job.args.length) args.args = job.args;
  args.kwargs = job.kwargs || {};
  $("#job-args").textContent = json(job.args && job.args.length ? args : args.kwargs);
  const outcome = $("#job-outcome");
  outcome.classList.toggle("error", Boolean(job.error) && job.status !== "SUCCESS");
  if (job.status === "SUCCESS") {
    $("#job-outcome-title").textContent = "Result";
    outcome.textContent = json(job.result);
  } else if (job.error) {
    $("#job-outcome-title").textContent = job.status === "FAILURE" ? "Error" : "Last error";
    outcome.textContent = job.error;
  } else {
    $("#job-outcome-title").textContent = "Result";
    outcome.textContent = TERMINAL.has(job.status) ? "(none)" : "not finished yet";
  }
  $("#job-timeline").replaceChildren(
    ...page.timeline.map((entry) =>
      el("li", { class: entry.live ? "live" : "" }, el("time", { title: absolute(entry.at), text: clock(entry.at) }), el("span", { class: `kind ${entry.kind}`, text: entry.kind }), el("span", { class: "detail", title: entry.detail, text: entry.detail })),
    ),
  );
  renderAttempts();
}

function renderAttempts() {
  const page = state.job;
  if (!page) return;
  const attempts = page.attempts;
  $("#attempts-empty").hidden = attempts.length > 0;
  let withheld = false;
  $("#job-attempts tbody").replaceChildren(
    ...attempts.map((a) => {
      const error = el("td", { class: "wrap" });
      if (a.error) error.append(el("div", { text: a.error }));
      if (a.traceback) error.append(el("details", {}, el("summary", { text: "Traceback" }), el("pre", { class: "traceback", text: a.traceback })));
      else if (a.outcome === "error") withheld = true;
      const took = a.finished_at === null ? el("span", { dataset: { since: String(a.started_at) }, text: duration(nowS() - a.started_at) }) : duration(a.finished_at - a.started_at);
      return el(
        "tr",
        { class: "attempt" },
        el("td", { class: "num", text: String(a.number) }),
        el("td", {}, el("span", { class: `badge ${a.outcome === "running" ? "RUNNING" : a.outcome}`, text: a.outcome })),
        el("td", {}, timeEl(a.started_at)),
        el("td", { class: "num" }, took),
        error,
      );
    }),
  );
  $("#tracebacks-note").hidden = !withheld;
}

$("#job-actions").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) await jobAction(button, button.dataset.id, button.dataset.action);
});

// -- a workflow's page: its jobs as a small live graph (note 6) -------------------------------

// What is drawn, whatever the workflow's size: boxes per column (the rest of a
// column is one "+N more"), boxes in all, and columns (deeper ones are summed up).
const WF_LIMITS = { perColumn: 200, boxes: 600, columns: 60, edges: 2000 };
const WF_BOX = { w: 196, h: 64, gapX: 56, gapY: 12, pad: 14 };

function workflowUrl(id) {
  return `${ROOT}/dashboard/workflows/${id}`;
}

function closeWorkflow() {
  const flow = state.flow;
  if (!flow) return;
  state.flow = null;
  flow.source?.close();
  clearTimeout(flow.retry);
  if (flow.frame) cancelAnimationFrame(flow.frame);
  flow.loaded();
}

async function keepWorkflow() {
  // A reconnect of the page's stream: the workflow's own stream reconnects by itself.
  if (state.flow && state.flow.id === state.workflowId) return;
  if (state.workflowId !== null) await openWorkflow(state.workflowId);
}

function openWorkflow(id) {
  closeWorkflow();
  state.workflowId = id;
  let loaded;
  const done = new Promise((resolve) => (loaded = resolve));
  const flow = (state.flow = {
    id,
    source: null,
    jobs: new Map(), // id -> job (every job of the workflow, drawn or not)
    counts: {},
    done: 0, // finished jobs plus running jobs' fractions (as WorkflowInfo.progress, times the jobs)
    boxes: new Map(), // id -> the job's box, for the drawn ones
    edgesFrom: new Map(), // parent id -> its drawn <path>s
    dirty: new Set(),
    frame: 0,
    ended: false, // the stream said the workflow finished (frame id "end")
    retry: null,
    backoff: 1000,
    loaded,
  });
  setTimeout(loaded, 5000); // the page is ready (probe) even if the stream never answers
  $("#wf-title").textContent = `Workflow #${id}`;
  $("#wf-status").textContent = "";
  $("#wf-status").className = "badge";
  $("#wf-actions").replaceChildren();
  $("#wf-progress").replaceChildren();
  $("#wf-counts").replaceChildren();
  $("#wf-graph").replaceChildren();
  followWorkflow(flow);
  return done;
}

function wfConn(flow, text) {
  if (state.flow === flow) $("#wf-note").textContent = text;
}

function followWorkflow(flow) {
  const source = (flow.source = new EventSource(`${ROOT}/workflows/${flow.id}/events`, { withCredentials: true }));
  const current = () => state.flow === flow && flow.source === source;
  const data = (message) => {
    try {
      return readJson(message.data);
    } catch {
      return null;
    }
  };
  // The workflow's last frame (and a finished workflow's snapshot) has the id "end":
  // nothing follows, so the page closes the stream rather than have it reconnect.
  const ends = (message) => {
    if (message.lastEventId !== "end") return;
    flow.ended = true;
    source.close();
    wfConn(flow, "finished");
  };
  source.addEventListener("open", () => {
    if (!current()) return;
    flow.backoff = 1000;
    wfConn(flow, "live");
  });
  source.addEventListener("snapshot", (message) => {
    const snapshot = data(message);
    if (!current() || !snapshot || !snapshot.workflow) return;
    drawWorkflow(flow, workflowIds(snapshot.workflow));
    ends(message);
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      const event = data(message);
      if (!current() || !event) return;
      applyToWorkflow(flow, eventIds(event));
      ends(message);
    });
  }
  source.addEventListener("error", () => {
    if (!current() || flow.ended) return;
    if (source.readyState !== EventSource.CLOSED) {
      wfConn(flow, "reconnecting…"); // the browser reconnects; a fresh snapshot follows
      return;
    }
    source.close(); // refused (404, 401, 503 ...): a plain read tells why
    readWorkflow(flow);
  });
}

async function readWorkflow(flow) {
  let info;
  try {
    info = await call("GET", `/workflows/${flow.id}`);
  } catch (exc) {
    if (state.flow !== flow) return;
    if (exc.status === 404) {
      flow.ended = true;
      $("#wf-panel").hidden = true; // no empty graph for a workflow that is not there
      $("#wf-progress").replaceChildren();
      $("#wf-counts").replaceChildren(el("p", { class: "muted", text: `There is no workflow #${flow.id}: no such job, a job that is not part of a workflow, or one whose jobs were cleaned up.` }));
      wfConn(flow, "");
      flow.loaded();
      return;
    }
    retryWorkflow(flow, exc.message);
    flow.loaded();
    return;
  }
  if (state.flow !== flow) return;
  drawWorkflow(flow, workflowIds(info));
  if (TERMINAL.has(info.status)) {
    flow.ended = true;
    wfConn(flow, "finished");
  } else retryWorkflow(flow, "stream refused");
}

function retryWorkflow(flow, why) {
  wfConn(flow, `${why} · retrying in ${Math.round(flow.backoff / 1000)} s`);
  flow.retry = setTimeout(() => {
    if (state.flow === flow) followWorkflow(flow);
  }, flow.backoff);
  flow.backoff = Math.min(flow.backoff * 2, 30000);
}

// A job's part of the workflow's progress, as WorkflowInfo.progress counts it.
function share(job) {
  if (TERMINAL.has(job.status)) return 1;
  if (job.status === "RUNNING" && job.total) return Math.max(0, Math.min(1, job.current / job.total));
  return 0;
}

function workflowStatus(counts) {
  if (counts.WAITING || counts.RUNNING) return "RUNNING";
  if (counts.FAILURE) return "FAILURE";
  if (counts.CANCELLED) return "CANCELLED";
  return "SUCCESS";
}

// Depth: the longest path from a root over the edges ([child, parent]); Kahn's order.
function depths(ids, edges) {
  const known = new Set(ids);
  const children = new Map();
  const open = new Map(ids.map((id) => [id, 0])); // parents not placed yet
  for (const [child, parent] of edges) {
    if (!known.has(child) || !known.has(parent) || child === parent) continue;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(child);
    open.set(child, open.get(child) + 1);
  }
  const depth = new Map();
  const queue = ids.filter((id) => open.get(id) === 0);
  for (const id of queue) depth.set(id, 0);
  for (let i = 0; i < queue.length; i += 1) {
    const below = depth.get(queue[i]) + 1;
    for (const child of children.get(queue[i]) || []) {
      depth.set(child, Math.max(depth.get(child) ?? 0, below));
      open.set(child, open.get(child) - 1);
      if (open.get(child) === 0) queue.push(child);
    }
  }
  for (const id of ids) if (!depth.has(id)) depth.set(id, 0); // no job can make a cycle; never loop on one
  return depth;
}

// Columns by depth, each in id order, within WF_LIMITS: [{ shown: [ids], hidden }], and
// what lies beyond the last column drawn.
function layoutWorkflow(ids, edges) {
  const depth = depths(ids, edges);
  const byDepth = [];
  for (const id of ids) (byDepth[depth.get(id)] ||= []).push(id);
  const columns = [];
  let budget = WF_LIMITS.boxes;
  const beyond = { jobs: 0, columns: 0 };
  byDepth.forEach((column = [], d) => {
    if (d >= WF_LIMITS.columns) {
      beyond.jobs += column.length;
      beyond.columns += 1;
      return;
    }
    const n = Math.min(column.length, WF_LIMITS.perColumn, budget);
    budget -= n;
    columns.push({ shown: column.slice(0, n), hidden: column.length - n });
  });
  return { columns, beyond };
}

function drawWorkflow(flow, info) {
  const began = performance.now();
  probe.workflowDraws += 1;
  const ids = info.jobs.map((j) => j.id).sort(compareIds);
  flow.jobs = new Map(info.jobs.map((j) => [j.id, j]));
  flow.counts = { ...info.counts };
  flow.done = info.progress * info.jobs.length;
  flow.dirty.clear();
  $("#wf-panel").hidden = false;
  const { columns, beyond } = layoutWorkflow(ids, info.edges);
  const { w, h, gapX, gapY, pad } = WF_BOX;
  const slots = columns.map((c) => c.shown.length + (c.hidden ? 1 : 0));
  const rows = Math.max(1, ...slots);
  const at = new Map(); // id -> [x, y]
  const boxes = new Map();
  const nodes = [];
  columns.forEach((column, c) => {
    const x = pad + c * (w + gapX);
    // Short columns are centred on the tallest; tall ones start at the top.
    const top = rows <= 20 ? ((rows - slots[c]) * (h + gapY)) / 2 : 0;
    column.shown.forEach((id, r) => {
      const y = pad + top + r * (h + gapY);
      const box = workflowBox(flow.jobs.get(id));
      box.dataset.col = String(c);
      box.dataset.row = String(r);
      place(box, x, y);
      at.set(id, [x, y]);
      boxes.set(id, box);
      nodes.push(box);
    });
    if (column.hidden) {
      const more = el("div", { class: "wf-more", dataset: { col: String(c) }, text: `+${column.hidden.toLocaleString()} more` });
      place(more, x, pad + top + column.shown.length * (h + gapY));
      nodes.push(more);
    }
  });
  let width = pad * 2 + columns.length * (w + gapX) - gapX;
  if (beyond.jobs) {
    const more = el("div", { class: "wf-more beyond", text: `+${beyond.jobs.toLocaleString()} more in ${beyond.columns.toLocaleString()} more columns` });
    place(more, width - pad + gapX, pad);
    nodes.push(more);
    width += w + gapX;
  }
  const height = pad * 2 + rows * (h + gapY) - gapY;
  // The lines: from a parent's right edge to its child's left edge, drawn boxes only.
  const lines = svg("svg", { class: "wf-edges", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
  const edgesFrom = new Map();
  let drawn = 0;
  for (const [child, parent] of info.edges) {
    const from = at.get(parent);
    const to = at.get(child);
    if (!from || !to || drawn >= WF_LIMITS.edges) continue;
    drawn += 1;
    const [x1, y1] = [from[0] + w, from[1] + h / 2];
    const [x2, y2] = [to[0], to[1] + h / 2];
    const bend = Math.max(gapX / 2, (x2 - x1) / 3);
    const path = svg("path", { d: `M${x1} ${y1} C${x1 + bend} ${y1} ${x2 - bend} ${y2} ${x2} ${y2}` });
    path.dataset.from = String(parent);
    path.dataset.to = String(child);
    if (!edgesFrom.has(parent)) edgesFrom.set(parent, []);
    edgesFrom.get(parent).push(path);
    lines.append(path);
  }
  const canvas = el("div", { class: "wf-canvas", role: "group", "aria-label": `Jobs of workflow ${flow.id}` }, lines, nodes);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  flow.boxes = boxes;
  flow.edgesFrom = edgesFrom;
  for (const [parent, paths] of edgesFrom) for (const path of paths) path.setAttribute("class", edgeClass(flow.jobs.get(parent)));
  $("#wf-graph").replaceChildren(canvas);
  $("#wf-graph").dataset.shown = String(boxes.size);
  renderWorkflowHead(flow);
  probe.lastWorkflowDrawMs = performance.now() - began;
  flow.loaded();
}

// A box's place and size, through the CSSOM (which the CSP allows: dashboard.py note 5).
function place(node, x, y) {
  Object.assign(node.style, { left: `${x}px`, top: `${y}px`, width: `${WF_BOX.w}px`, height: `${WF_BOX.h}px` });
}

function edgeClass(parent) {
  if (parent.status === "SUCCESS") return "done";
  if (parent.status === "FAILURE" || parent.status === "CANCELLED") return "broken";
  return "";
}

function workflowBox(job) {
  const bar = el("span", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": `Progress of job ${job.id}` }, el("span"));
  const box = el(
    "a",
    { class: "wf-job", href: `${ROOT}/dashboard/jobs/${job.id}`, "data-nav": true, dataset: { id: String(job.id) } },
    el("span", { class: "wf-head" }, el("span", { class: "wf-id", text: `#${job.id}` }), el("span", { class: "wf-task", text: job.task })),
    el("span", { class: "wf-line" }, el("span", { class: "badge status" }), el("span", { class: "wf-note" })),
    bar,
  );
  updateBox(box, job);
  return box;
}

function updateBox(box, job) {
  box.dataset.status = job.status;
  box.title = `#${job.id} ${job.task} · ${job.status}`;
  const badge = box.querySelector(".status");
  badge.className = `badge ${job.status} status`;
  badge.textContent = job.status;
  const pct = percentOf(job);
  let note = "";
  if (job.status === "RUNNING") note = pct === null ? "running" : `${Math.round(pct)} %`;
  else if (job.status === "WAITING") note = heldText(job) || (runsLater(job, 1) ? untilText(job.run_at) : "");
  else if (job.status !== "SUCCESS" && job.error) note = job.error;
  const noteEl = box.querySelector(".wf-note");
  noteEl.textContent = note;
  noteEl.title = note;
  const bar = box.querySelector(".bar");
  bar.hidden = job.status !== "RUNNING";
  bar.classList.toggle("indeterminate", pct === null);
  bar.firstElementChild.style.width = pct === null ? "" : `${pct}%`;
  if (pct === null) bar.removeAttribute("aria-valuenow");
  else bar.setAttribute("aria-valuenow", String(Math.round(pct)));
}

function applyToWorkflow(flow, event) {
  const job = flow.jobs.get(event.job_id);
  if (!job) return; // not one of its jobs: the next snapshot says what is
  changeJob(flow, job, () => applyEvent(job, event));
}

// A change to one job (``change`` says whether it changed anything), with the
// workflow's counts and progress moved to match and its box redrawn next frame.
function changeJob(flow, job, change) {
  const before = job.status;
  const part = share(job);
  if (!change()) return;
  if (before !== job.status) {
    flow.counts[before] = (flow.counts[before] || 1) - 1;
    if (!flow.counts[before]) delete flow.counts[before];
    flow.counts[job.status] = (flow.counts[job.status] || 0) + 1;
  }
  flow.done += share(job) - part;
  flow.dirty.add(job.id);
  if (!flow.frame) {
    flow.frame = requestAnimationFrame(() => {
      flow.frame = 0;
      if (state.flow === flow) flushWorkflow(flow);
    });
  }
}

function flushWorkflow(flow) {
  for (const id of flow.dirty) {
    const job = flow.jobs.get(id);
    const box = flow.boxes.get(id);
    if (box) updateBox(box, job);
    for (const path of flow.edgesFrom.get(id) || []) path.setAttribute("class", edgeClass(job));
  }
  flow.dirty.clear();
  renderWorkflowHead(flow);
}

function renderWorkflowHead(flow) {
  const n = flow.jobs.size;
  const status = workflowStatus(flow.counts);
  const badge = $("#wf-status");
  badge.textContent = status;
  badge.className = `badge ${status} status`;
  const fraction = n ? Math.max(0, Math.min(1, flow.done / n)) : 1;
  const finished = STATUSES.filter((s) => TERMINAL.has(s)).reduce((sum, s) => sum + (flow.counts[s] || 0), 0);
  const holder = $("#wf-progress");
  if (!holder.firstChild) {
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": `Progress of workflow ${flow.id}` }, el("span"));
    holder.append(el("div", { class: "progress" }, bar, el("span", { class: "percent" }), el("span", { class: "message" })));
  }
  const pct = Math.round(100 * fraction);
  const bar = holder.querySelector(".bar");
  bar.firstElementChild.style.width = `${100 * fraction}%`;
  bar.setAttribute("aria-valuenow", String(pct));
  bar.classList.toggle("done", status === "SUCCESS");
  bar.classList.toggle("failed", status === "FAILURE");
  bar.classList.toggle("cancelled", status === "CANCELLED");
  holder.querySelector(".percent").textContent = `${pct} %`;
  holder.querySelector(".message").textContent = `${finished.toLocaleString()} of ${n.toLocaleString()} job${n === 1 ? "" : "s"} finished`;
  $("#wf-counts").replaceChildren(
    ...STATUSES.filter((s) => flow.counts[s]).map((s) => el("span", { class: `badge ${s}`, dataset: { status: s }, text: `${flow.counts[s].toLocaleString()} ${s}` })),
  );
  const cancel = status === "RUNNING" ? el("button", { type: "button", class: "btn small danger", dataset: { action: "cancel-workflow" }, "aria-label": `Cancel workflow ${flow.id}`, text: "Cancel" }) : null;
  if (Boolean(cancel) !== Boolean($("#wf-actions").firstChild)) $("#wf-actions").replaceChildren(...(cancel ? [cancel] : []));
}

$("#wf-actions").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action=cancel-workflow]");
  const flow = state.flow;
  if (!button || !flow) return;
  const open = (flow.counts.WAITING || 0) + (flow.counts.RUNNING || 0);
  if (!window.confirm(`Cancel the ${open} unfinished job${open === 1 ? "" : "s"} of workflow #${flow.id}?`)) return;
  button.disabled = true;
  const info = await act(`Workflow #${flow.id}`, () => call("POST", `/workflows/${flow.id}/cancel`));
  button.disabled = false;
  if (!info) return;
  toast(`Workflow #${flow.id} cancelled`);
  if (state.flow !== flow) return;
  // The answer, where it is newer than what the events said (by each job's seq).
  for (const job of workflowIds(info).jobs) {
    const shown = flow.jobs.get(job.id);
    if (shown && (shown.seq ?? -1) < job.seq) changeJob(flow, shown, () => Object.assign(shown, job));
  }
});

// -- the new-job form, generated from the task's JSON Schema --------------------------------

const dialog = $("#job-dialog");
let formFields = [];
let formShape = "kwargs";

$("#new-job").addEventListener("click", async () => {
  if (!state.tasks.length) await loadTasks();
  const select = $("#form-task");
  const chosen = select.value || state.filters.task;
  select.replaceChildren(...state.tasks.map((t) => el("option", { value: t.name, text: t.name })));
  if (chosen && state.tasks.some((t) => t.name === chosen)) select.value = chosen;
  buildForm();
  $("#form-error").hidden = true;
  dialog.showModal();
});
$("#form-task").addEventListener("change", buildForm);
$("#form-cancel").addEventListener("click", () => dialog.close());

function normalize(schema) {
  // -> [schema without the null alternative, nullable]
  if (!schema || typeof schema !== "object") return [{}, false];
  let s = { ...schema };
  let nullable = false;
  for (const key of ["anyOf", "oneOf"]) {
    if (!Array.isArray(s[key])) continue;
    const rest = s[key].filter((x) => !(x && x.type === "null"));
    if (rest.length < s[key].length) nullable = true;
    if (rest.length === 1) {
      const { [key]: _drop, ...others } = s;
      s = { ...others, ...rest[0] };
    }
  }
  if (Array.isArray(s.type)) {
    const types = s.type.filter((t) => t !== "null");
    if (types.length < s.type.length) nullable = true;
    s.type = types.length === 1 ? types[0] : types;
  }
  if (Array.isArray(s.enum) && s.enum.includes(null)) {
    nullable = true;
    s.enum = s.enum.filter((v) => v !== null);
  }
  return [s, nullable];
}

function kindOf(s) {
  if ("const" in s) return "enum";
  if (Array.isArray(s.enum) && s.enum.length) return "enum";
  if (["string", "integer", "number", "boolean"].includes(s.type)) return s.type;
  return "json";
}

function field(name, raw, required) {
  const [s, nullable] = normalize(raw);
  const kind = kindOf(s);
  const label = s.title || name;
  const id = `param-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const hasDefault = "default" in s;
  const placeholder = hasDefault ? `default: ${JSON.stringify(s.default)}` : nullable ? "null" : "";
  let input;
  if (kind === "enum") {
    const options = "const" in s ? [s.const] : s.enum;
    input = el("select", { id, name }, required ? null : el("option", { value: "", text: hasDefault ? `(default: ${JSON.stringify(s.default)})` : "(not set)" }), ...options.map((v, i) => el("option", { value: String(i), text: typeof v === "string" ? v : JSON.stringify(v) })));
    if (required && hasDefault) input.value = String(options.findIndex((v) => JSON.stringify(v) === JSON.stringify(s.default)));
  } else if (kind === "boolean") {
    input = el("input", { id, name, type: "checkbox" });
    input.checked = s.default === true;
  } else if (kind === "integer" || kind === "number") {
    input = el("input", { id, name, type: "number", step: kind === "integer" ? (s.multipleOf || 1) : "any", min: s.minimum ?? s.exclusiveMinimum, max: s.maximum ?? s.exclusiveMaximum, placeholder });
  } else if (kind === "string") {
    const type = { email: "email", date: "date", uri: "url" }[s.format] || "text";
    // No maxlength / minlength: the browser counts UTF-16 units, JSON Schema characters.
    input = el("input", { id, name, type, placeholder, spellcheck: "false" });
  } else {
    input = el("textarea", { id, name, rows: 3, spellcheck: "false", placeholder: hasDefault ? `default: ${JSON.stringify(s.default)}` : s.type === "array" ? "[ ]" : "{ }" });
  }
  let touched = false;
  input.addEventListener("input", () => (touched = true));
  input.addEventListener("change", () => (touched = true));
  const hint = [s.description, kind === "json" ? `JSON${s.type ? ` (${[].concat(s.type).join(" or ")})` : ""}` : null].filter(Boolean).join(" · ");
  const wrap = kind === "boolean"
    ? el("label", { class: "field check", for: id }, input, el("span", {}, label, required ? el("span", { class: "req", text: " *" }) : null), hint ? el("span", { class: "hint", text: hint }) : null)
    : el("label", { class: "field", for: id }, el("span", {}, label, required ? el("span", { class: "req", text: " *" }) : null), input, hint ? el("span", { class: "hint", text: hint }) : null);
  const read = () => {
    if (kind === "enum") {
      if (input.value === "") return undefined;
      const options = "const" in s ? [s.const] : s.enum;
      return options[Number(input.value)];
    }
    if (kind === "boolean") return touched || required ? input.checked : undefined;
    const text = input.value.trim();
    if (text === "") {
      // Checked here against the schema; the server's 422 covers the rest.
      if (required) throw new FieldError(input, `${label}: required`);
      return undefined;
    }
    if (kind === "integer" || kind === "number") {
      const n = Number(text);
      if (!isFinite(n) || (kind === "integer" && !Number.isInteger(n))) throw new FieldError(input, `${label}: expected ${kind === "integer" ? "an integer" : "a number"}`);
      if (kind === "integer" && !Number.isSafeInteger(n)) throw new FieldError(input, `${label}: beyond the integers a browser sends exactly (2^53-1); add this job with the API or the CLI`);
      if (s.minimum !== undefined && n < s.minimum) throw new FieldError(input, `${label}: at least ${s.minimum}`);
      if (s.maximum !== undefined && n > s.maximum) throw new FieldError(input, `${label}: at most ${s.maximum}`);
      if (s.exclusiveMinimum !== undefined && n <= s.exclusiveMinimum) throw new FieldError(input, `${label}: above ${s.exclusiveMinimum}`);
      if (s.exclusiveMaximum !== undefined && n >= s.exclusiveMaximum) throw new FieldError(input, `${label}: below ${s.exclusiveMaximum}`);
      return n;
    }
    if (kind === "string") {
      const value = input.value;
      const chars = [...value].length; // code points, as JSON Schema counts them
      if (s.minLength !== undefined && chars < s.minLength) throw new FieldError(input, `${label}: at least ${s.minLength} characters`);
      if (s.maxLength !== undefined && chars > s.maxLength) throw new FieldError(input, `${label}: at most ${s.maxLength} characters`);
      if (s.pattern !== undefined && !new RegExp(s.pattern, "u").test(value)) throw new FieldError(input, `${label}: does not match ${s.pattern}`);
      return value;
    }
    return typedJson(text, label);
  };
  return { name, wrap, read, required };
}

function buildForm() {
  const task = state.tasks.find((t) => t.name === $("#form-task").value);
  const box = $("#form-params");
  box.replaceChildren(el("legend", { text: "Parameters" }));
  formFields = [];
  if (!task) return;
  const facts = [`pool ${task.pool}`, task.attempts === null ? "unlimited attempts" : `${task.attempts} attempt${task.attempts === 1 ? "" : "s"}`, task.timeout ? `timeout ${duration(task.timeout)}` : null].filter(Boolean).join(" · ");
  $("#form-task-info").replaceChildren(...(task.description ? [...richText(task.description), " · "] : []), facts);
  const schema = task.parameters;
  if (!schema || (typeof schema === "object" && Object.keys(schema).length === 0)) {
    formShape = "raw";
    formFields = [field("kwargs", { type: "object", description: "keyword arguments" }, false), field("args", { type: "array", description: "positional arguments" }, false)];
  } else if (schema.type === "object" || schema.properties) {
    formShape = "kwargs";
    const required = new Set(schema.required || []);
    formFields = Object.entries(schema.properties || {}).map(([name, sub]) => field(name, sub, required.has(name)));
    if (!formFields.length && schema.additionalProperties !== false) formFields = [field("kwargs", { type: "object", description: "keyword arguments" }, false)], (formShape = "raw");
  } else if (schema.type === "array") {
    formShape = "args";
    const items = Array.isArray(schema.prefixItems) ? schema.prefixItems : null;
    const min = schema.minItems || 0;
    formFields = items ? items.map((sub, i) => field(sub.title || `argument ${i + 1}`, sub, i < min)) : [field("args", schema, true)];
    if (!items) formShape = "array";
  } else {
    formShape = "single";
    formFields = [field(schema.title || "value", schema, true)];
  }
  if (!formFields.length) box.append(el("p", { class: "muted small", text: "This task takes no parameters." }));
  box.append(...formFields.map((f) => f.wrap));
}

function collect() {
  const task = $("#form-task").value;
  const body = { task };
  const values = formFields.map((f) => [f.name, f.read()]);
  if (formShape === "kwargs") {
    body.kwargs = {};
    for (const [name, value] of values) if (value !== undefined) body.kwargs[name] = value;
  } else if (formShape === "raw") {
    for (const [name, value] of values) if (value !== undefined) body[name] = value;
  } else if (formShape === "array") {
    body.args = values[0][1] ?? [];
  } else if (formShape === "single") {
    body.args = [values[0][1] ?? null];
  } else {
    const args = values.map(([, v]) => v);
    while (args.length && args[args.length - 1] === undefined) args.pop();
    if (args.includes(undefined)) throw new Error("positional arguments: fill in every argument before the last one given");
    body.args = args;
  }
  const form = $("#job-form").elements;
  if (form.priority.value.trim()) {
    body.priority = Number(form.priority.value);
    if (Number.isInteger(body.priority) && !Number.isSafeInteger(body.priority)) throw new Error("priority: beyond the integers a browser sends exactly (2^53-1)");
  }
  if (form.delay.value.trim()) body.delay = Number(form.delay.value);
  if (form.metadata.value.trim()) body.metadata = typedJson(form.metadata.value, "metadata");
  return body;
}

$("#job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("#form-error");
  error.hidden = true;
  let body;
  for (const input of $("#job-form").querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  try {
    body = collect();
  } catch (exc) {
    error.textContent = exc.message;
    error.hidden = false;
    if (exc instanceof FieldError) {
      exc.input.setAttribute("aria-invalid", "true");
      exc.input.focus();
    }
    return;
  }
  const submit = $("#form-submit");
  submit.disabled = true;
  try {
    const job = await call("POST", "/jobs", body);
    dialog.close();
    toast(`Job #${job.id} added (${job.task})`);
  } catch (exc) {
    error.textContent = exc.message;
    error.hidden = false;
  } finally {
    submit.disabled = false;
  }
});

// -- the ticker: redraws, and the pools now and then (note 2) ---------------------------------

let ticks = 0;
setInterval(() => {
  ticks += 1;
  if (ticks % POOLS_EVERY === 0 && document.visibilityState === "visible") refreshPools();
  if (ticks % COUNTS_EVERY === 0 && document.visibilityState === "visible") loadCounts();
  for (const buckets of state.throughput.values()) {
    buckets.shift();
    buckets.push(0);
  }
  if (state.view === "list") drawSparklines();
  for (const node of document.querySelectorAll("time[data-ts]")) node.textContent = relative(Number(node.dataset.ts));
  for (const node of document.querySelectorAll("[data-since]")) node.textContent = duration(nowS() - Number(node.dataset.since));
  for (const node of document.querySelectorAll("[data-until]")) node.textContent = untilText(Number(node.dataset.until));
}, 1000);

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && source && source.readyState === EventSource.OPEN) {
    refreshPools();
    refreshSchedules();
  }
});

// -- start ----------------------------------------------------------------------------------

route();
connect();
// Should the stream be slow to open (or refused), show what can be read anyway.
setTimeout(() => {
  if (!started) reloadAll();
}, 1500);
