// AnomalyMatch workbench: plain JavaScript, no build step, no network beyond this service.
"use strict";

const $ = (sel) => document.querySelector(sel);
const PAGE = 60;
const COLOURS = ["#4da3ff", "#ffb14d", "#49c28b", "#ff6b5a", "#b98cff", "#5ad1d1", "#d1c95a", "#ff8fc7"];

const state = {
  me: null,
  strategy: "top",
  stretch: "linear",
  thumb: 128,
  items: [],          // the queue shown: {image_id, score, rank}
  seen: new Set(),    // ids ever put in the queue since it was (re)loaded
  sel: 0,
  serverOffset: 0,    // position in the server's ranking of unlabelled images where the next page starts
  exhausted: false,
  loading: false,
  counter: 0,
  undo: [],           // {item, index, job} of labels given in this session, newest last
  outbox: [],         // label posts not yet confirmed: {key, body, tries, record}
  sending: false,
  comments: {},
  view: { brightness: 0, contrast: 1, channels: [1, 1, 1], invert: 0, zoom: 1, saliency: false },
  modelVersion: null,
  queueVersion: null,
  polls: 0,
};

// -- helpers ---------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const init = { credentials: "same-origin", headers: {}, ...options };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const res = await fetch("api/" + path, init);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.statusText);
  return data;
}

function toast(message, ok = false) {
  const div = document.createElement("div");
  div.textContent = message;
  if (ok) div.className = "ok";
  $("#toast").appendChild(div);
  setTimeout(() => div.remove(), 6000);
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

const q = (params) => new URLSearchParams(params).toString();
const fmt = (x, digits) => (x === null || x === undefined ? "not scored" : x.toFixed(digits));

// -- sign-in and views -----------------------------------------------------------------------------------
function show(view) {
  for (const s of document.querySelectorAll(".view")) s.classList.toggle("hidden", s.id !== view);
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view === "dashboard") refreshDashboard();
  if (view === "admin") refreshAdmin();
}

function route() {
  if (!state.me) return show("signin");
  const view = (location.hash || "#queue").slice(1);
  show(["queue", "dashboard", "admin"].includes(view) ? view : "queue");
}

function signedIn(me) {
  state.me = me;
  const name = me.shared ? (localStorage.getItem("anomalymatch.name") || "team") : me.user;
  $("#who").textContent = me.open ? "read-only (no sign-in needed)" : `${name} (${me.role})`;
  for (const el of document.querySelectorAll(".admin-only")) el.classList.toggle("hidden", me.role !== "admin");
  route();
  if (!state.items.length) reloadQueue();
}

async function start() {
  try {
    signedIn(await api("me"));
  } catch (err) {
    if (err.status === 401 || err.status === 403) show("signin");
    else toast(`cannot reach the service: ${err.message}`);
  }
}

$("#signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    const me = await api("signin", { json: { token: $("#token").value } });
    if (me.shared && $("#name").value.trim()) localStorage.setItem("anomalymatch.name", $("#name").value.trim());
    $("#token").value = "";
    state.counter = 0;
    updateCounter();
    signedIn(me);
  } catch (err) {
    $("#signin-error").textContent = err.message;
  }
});

$("#signout").addEventListener("click", async () => {
  // labels still being sent belong to this user: give them a moment, then drop what is left rather than
  // let them go out later under the next user's sign-in
  for (let waited = 0; state.outbox.length && waited < 5000; waited += 250) await new Promise((r) => setTimeout(r, 250));
  if (state.outbox.length) toast(`${state.outbox.length} label(s) could not be sent before sign-out and were dropped`);
  state.outbox = [];
  state.undo = [];
  await api("signout", { json: {} }).catch(() => {});
  state.me = null;
  state.items = [];
  updateCounter();
  show("signin");
});

window.addEventListener("hashchange", route);

// -- the queue -------------------------------------------------------------------------------------------
function thumbUrl(id) { return "api/thumb?" + q({ id, stretch: state.stretch, size: state.thumb }); }

function tile(item) {
  const div = document.createElement("div");
  div.className = "tile";
  div.dataset.id = item.image_id;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = item.image_id;
  img.src = thumbUrl(item.image_id);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = item.similarity !== undefined ? `sim ${item.similarity.toFixed(3)}` : fmt(item.score, 3);
  div.append(img, score);
  div.addEventListener("click", () => select(state.items.indexOf(item)));
  item.el = div;
  return div;
}

async function reloadQueue() {
  state.undo = []; // undo belongs to the queue it was given in
  state.items = [];
  state.seen = new Set();
  state.sel = 0;
  state.serverOffset = 0;
  state.exhausted = false;
  $("#grid").replaceChildren();
  $("#banner").classList.add("hidden");
  await loadMore();
  select(0);
}

async function loadMore() {
  if (state.loading || state.exhausted || !state.me) return;
  state.loading = true;
  try {
    const page = await api("queue?" + q({ strategy: state.strategy, offset: state.serverOffset, limit: PAGE }));
    state.queueVersion = page.model_version;
    setModel(page.model_version);
    state.serverOffset += page.candidates.length;
    if (page.candidates.length < PAGE) state.exhausted = true;
    const fresh = page.candidates.filter((c) => !state.seen.has(c.image_id));
    const grid = $("#grid");
    for (const c of fresh) {
      state.seen.add(c.image_id);
      state.items.push(c);
      grid.appendChild(tile(c));
    }
    const empty = !state.items.length;
    $("#queue-empty").classList.toggle("hidden", !empty);
    if (empty) $("#queue-empty").textContent = page.message || "Nothing left to label with this strategy.";
  } catch (err) {
    toast(`could not load candidates: ${err.message}`);
  } finally {
    state.loading = false;
  }
}

new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting)) loadMore();
}, { root: $("#grid-wrap"), rootMargin: "600px" }).observe($("#sentinel"));

function current() { return state.items[state.sel] || null; }

function select(index) {
  if (!state.items.length) { showDetail(null); return; }
  index = Math.max(0, Math.min(index, state.items.length - 1));
  for (const el of document.querySelectorAll(".tile.sel")) el.classList.remove("sel");
  state.sel = index;
  const item = current();
  item.el.classList.add("sel");
  item.el.scrollIntoView({ block: "nearest" });
  showDetail(item);
  if (state.items.length - index < 20) loadMore();
}

function columns() {
  const tiles = $("#grid").children;
  if (tiles.length < 2) return 1;
  const top = tiles[0].offsetTop;
  let n = 0;
  while (n < tiles.length && tiles[n].offsetTop === top) n++;
  return Math.max(1, n);
}

// -- the detail view -------------------------------------------------------------------------------------
function renderUrl(id) {
  const v = state.view;
  if (v.saliency) return "api/saliency?" + q({ id, stretch: state.stretch });
  return "api/render?" + q({ id, stretch: state.stretch, brightness: v.brightness, contrast: v.contrast,
    channels: v.channels.join(""), invert: v.invert });
}

let detailToken = 0;
async function showDetail(item) {
  const big = $("#big");
  if (!item) { big.removeAttribute("src"); $("#info").textContent = ""; return; }
  big.src = renderUrl(item.image_id);
  big.dataset.id = item.image_id;
  $("#comment").value = state.comments[item.image_id] || "";
  const token = ++detailToken;
  const note = state.comments[item.image_id];
  const comment = note ? `<tr><td>your comment</td><td>${esc(note)}</td></tr>` : "";
  $("#info").innerHTML = `<table><tr><td>image</td><td>${esc(item.image_id)}</td></tr>
    <tr><td>score</td><td>${fmt(item.score, 4)} (model ${esc(state.queueVersion)})</td></tr>${comment}</table>`;
  try {
    const info = await api("image?" + q({ id: item.image_id }));
    if (token !== detailToken) return;
    const rows = info.labels.map((l) => `<tr><td>${esc(l.user)}</td><td class="lab-${l.label}">${l.label}</td>
      <td>${esc(l.time.slice(0, 16).replace("T", " "))}</td><td>${esc(l.comment)}</td></tr>`).join("");
    const cat = info.catalogue ? Object.entries(info.catalogue).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("") : "";
    const sky = info.ra !== undefined && info.ra !== null ? `<tr><td>ra, dec</td><td>${info.ra.toFixed(5)}, ${info.dec.toFixed(5)}
      ${Object.entries(info.links || {}).map(([k, u]) => `<a href="${esc(u)}" target="_blank" rel="noopener">${esc(k)}</a>`).join(" ")}</td></tr>` : "";
    $("#info").innerHTML = `<table><tr><td>image</td><td>${esc(info.image_id)}</td></tr>
      <tr><td>score</td><td>${fmt(info.score, 4)} (model ${esc(info.model_version)})</td></tr>
      ${sky}${cat}${comment}</table>
      ${rows ? `<p>Labels by others${info.disputed ? " (disputed)" : ""}:</p><table class="data">${rows}</table>` : ""}`;
  } catch (err) {
    if (token === detailToken) toast(`image details: ${err.message}`);
  }
}

function applyZoom() {
  $("#big").style.transform = `scale(${state.view.zoom})`;
  $("#zoom-level").textContent = `${state.view.zoom}\u00d7`;
}

let renderTimer = null;
function rerender() {
  clearTimeout(renderTimer);
  renderTimer = setTimeout(() => { const item = current(); if (item) $("#big").src = renderUrl(item.image_id); }, 80);
}

$("#brightness").addEventListener("input", (e) => { state.view.brightness = +e.target.value; rerender(); });
$("#contrast").addEventListener("input", (e) => { state.view.contrast = +e.target.value; rerender(); });
$("#invert").addEventListener("change", (e) => { state.view.invert = e.target.checked ? 1 : 0; rerender(); });
$("#saliency").addEventListener("change", (e) => { state.view.saliency = e.target.checked; rerender(); });
for (const box of document.querySelectorAll("[data-ch]")) {
  box.addEventListener("change", (e) => { state.view.channels[+e.target.dataset.ch] = e.target.checked ? 1 : 0; rerender(); });
}
$("#zoom-in").addEventListener("click", () => { state.view.zoom = Math.min(16, state.view.zoom * 2); applyZoom(); });
$("#zoom-out").addEventListener("click", () => { state.view.zoom = Math.max(1, state.view.zoom / 2); applyZoom(); });
$("#big").addEventListener("load", () => {
  const img = $("#big");
  const fit = Math.max(1, Math.floor(Math.min(400 / img.naturalWidth, 400 / img.naturalHeight)));
  img.style.width = `${img.naturalWidth * fit}px`;
});
$("#strategy").addEventListener("change", (e) => { state.strategy = e.target.value; reloadQueue(); });
$("#stretch").addEventListener("change", (e) => {
  state.stretch = e.target.value;
  for (const item of state.items) item.el.querySelector("img").src = thumbUrl(item.image_id);
  rerender();
});
$("#thumbsize").addEventListener("change", (e) => {
  state.thumb = +e.target.value;
  document.documentElement.style.setProperty("--thumb", `${state.thumb}px`);
  for (const item of state.items) item.el.querySelector("img").src = thumbUrl(item.image_id);
});

// -- labelling -------------------------------------------------------------------------------------------
function updateCounter() {
  $("#counter").textContent = `${state.counter} label${state.counter === 1 ? "" : "s"}`;
  const n = state.outbox.length;
  $("#pending").classList.toggle("hidden", n === 0);
  $("#pending").textContent = `${n} sending`;
}

function give(label) {
  const item = current();
  if (!item) return;
  if (!state.me || state.me.open || state.me.role === "viewer") { toast("your token may not label (viewer)"); return; }
  const index = state.sel;
  const body = { image_id: item.image_id, label, key: newKey(), comment: state.comments[item.image_id] || "" };
  if (state.me.shared) body.user = localStorage.getItem("anomalymatch.name") || "";
  const job = { body, tries: 0, seq: null, done: false, cancelled: false };
  state.items.splice(index, 1);
  item.el.remove();
  state.serverOffset = Math.max(0, state.serverOffset - 1); // it leaves the server's unlabelled ranking too
  state.undo.push({ item, index, job });
  state.counter += 1;
  state.outbox.push(job);
  updateCounter();
  select(index);
  send();
}

async function send() {
  if (state.sending) return;
  state.sending = true;
  try {
    while (state.outbox.length) {
      const job = state.outbox[0];
      if (job.cancelled) { state.outbox.shift(); continue; }
      try {
        const out = await api("label", { json: job.body });
        job.seq = out.seq;
        job.done = true;
        state.outbox.shift();
        updateCounter();
      } catch (err) {
        const retry = !(err instanceof ApiError) || err.status >= 500 || err.status === 429;
        if (!retry) { // refused: the label will never be stored; put the image back
          state.outbox.shift();
          toast(`label of ${job.body.image_id} refused: ${err.message}`);
          restore(job);
          continue;
        }
        job.tries += 1; // network failure or server error: the same key again, so it is stored once
        await new Promise((r) => setTimeout(r, Math.min(10000, 500 * 2 ** Math.min(job.tries, 5))));
      }
    }
  } finally {
    state.sending = false;
    updateCounter();
  }
}

function restore(job) {
  const at = state.undo.findIndex((u) => u.job === job);
  if (at < 0) return;
  const { item, index } = state.undo.splice(at, 1)[0];
  const pos = Math.min(index, state.items.length);
  state.items.splice(pos, 0, item);
  const grid = $("#grid");
  grid.insertBefore(tile(item), grid.children[pos] || null);
  state.serverOffset += 1;
  state.counter = Math.max(0, state.counter - 1);
  updateCounter();
  select(pos);
}

async function undo() {
  const last = state.undo[state.undo.length - 1];
  if (!last) { toast("nothing to undo"); return; }
  const job = last.job;
  if (!job.done) {
    if (state.outbox[0] === job && state.sending) { toast("that label is being sent; undo again in a moment"); return; }
    job.cancelled = true;
    state.outbox = state.outbox.filter((j) => j !== job);
    restore(job);
    return;
  }
  try {
    await api("undo", { json: { seq: job.seq } });
    restore(job);
  } catch (err) {
    toast(`undo failed: ${err.message}`);
  }
}

for (const b of document.querySelectorAll("[data-label]")) b.addEventListener("click", () => give(b.dataset.label));
$("#skip").addEventListener("click", () => select(state.sel + 1));
$("#undo").addEventListener("click", undo);
$("#comment-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const item = current();
  if (item) state.comments[item.image_id] = $("#comment").value;
  $("#comment").blur();
  $("#comment-form").classList.add("hidden");
  if (item) showDetail(item);
});

document.addEventListener("keydown", (ev) => {
  if ($("#queue").classList.contains("hidden") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA")) {
    if (ev.key === "Escape") { t.blur(); $("#comment-form").classList.add("hidden"); }
    return;
  }
  const keys = {
    a: () => give("anomaly"), n: () => give("nominal"), s: () => select(state.sel + 1), u: undo,
    c: () => { $("#comment-form").classList.remove("hidden"); $("#comment").focus(); },
    ArrowRight: () => select(state.sel + 1), ArrowLeft: () => select(state.sel - 1),
    ArrowDown: () => select(state.sel + columns()), ArrowUp: () => select(state.sel - columns()),
  };
  const action = keys[ev.key];
  if (action) { ev.preventDefault(); action(); }
});

// -- live status -----------------------------------------------------------------------------------------
function setModel(version) {
  state.modelVersion = version;
  $("#model").textContent = version ? `model ${version}` : "";
}

async function poll() {
  if (state.me) {
    try {
      const s = await api("status");
      setModel(s.model_version);
      if (state.queueVersion && s.model_version !== state.queueVersion) {
        const banner = $("#banner");
        banner.innerHTML = `Model version ${esc(s.model_version)} is now served. <button id="reload">Rank the queue with it</button>`;
        banner.classList.remove("hidden");
        $("#reload").onclick = reloadQueue;
      }
      if (!$("#dashboard").classList.contains("hidden")) {
        // every poll: the live parts; every fifth (15 s): the whole dashboard (it reads every label)
        const model = $("#d-model"), status = $("#d-status");
        if (model) model.textContent = s.model_version;
        if (status) status.textContent = s.retrain.status;
        if (++state.polls % 5 === 0) refreshDashboard();
      }
    } catch (err) { /* shown on the next action */ }
  }
  setTimeout(poll, 3000);
}

// -- dashboard -------------------------------------------------------------------------------------------
function lineChart(series, opts = {}) {
  const w = opts.width || 400, h = opts.height || 220, pad = 34;
  const xs = series.flatMap((s) => s.x), ys = series.flatMap((s) => s.y);
  if (!xs.length) return "<p>no data yet</p>";
  const x0 = opts.xmin ?? Math.min(...xs), x1 = opts.xmax ?? Math.max(...xs);
  const y0 = opts.ymin ?? 0, y1 = opts.ymax ?? Math.max(1, ...ys);
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (w - pad - 8);
  const sy = (y) => h - pad + 8 - ((y - y0) / (y1 - y0 || 1)) * (h - pad - 8);
  const lines = series.map((s, k) => `<polyline fill="none" stroke="${s.colour || COLOURS[k % COLOURS.length]}"
    stroke-width="2" ${s.dash ? 'stroke-dasharray="4 3"' : ""} points="${s.x.map((x, i) => `${sx(x).toFixed(1)},${sy(s.y[i]).toFixed(1)}`).join(" ")}"/>`);
  const legend = series.filter((s) => s.name).map((s, k) => `<span style="color:${s.colour || COLOURS[k % COLOURS.length]}">${esc(s.name)}</span>`);
  return `<svg viewBox="0 0 ${w} ${h}" width="100%" role="img">
    <line x1="${pad}" y1="${h - pad + 8}" x2="${w - 8}" y2="${h - pad + 8}" stroke="#2c353f"/>
    <line x1="${pad}" y1="8" x2="${pad}" y2="${h - pad + 8}" stroke="#2c353f"/>
    <text x="${pad}" y="${h - 8}">${esc(opts.xlabel || "")} ${+x0.toFixed(2)}</text>
    <text x="${w - 40}" y="${h - 8}">${+x1.toFixed(2)}</text>
    <text x="2" y="14">${+y1.toFixed(2)}</text><text x="2" y="${h - pad + 8}">${+y0.toFixed(2)}</text>
    ${lines.join("")}</svg><div class="legend">${legend.join("")}</div>`;
}

function activityChart(rows) {
  if (!rows.length) return "<p>no labels yet</p>";
  const days = [...new Set(rows.map((r) => r.day))], users = [...new Set(rows.map((r) => r.user))];
  const series = users.map((u, k) => {
    let total = 0;
    return { name: u, colour: COLOURS[k % COLOURS.length], x: days.map((_, i) => i),
      y: days.map((d) => (total += (rows.find((r) => r.user === u && r.day === d) || { n: 0 }).n)) };
  });
  const table = `<table class="data"><tr><th>user</th>${days.map((d) => `<th>${esc(d)}</th>`).join("")}</tr>${users.map((u) =>
    `<tr><td>${esc(u)}</td>${days.map((d) => `<td>${(rows.find((r) => r.user === u && r.day === d) || { n: 0 }).n}</td>`).join("")}</tr>`).join("")}</table>`;
  return (days.length > 1 ? lineChart(series, { xlabel: "day", height: 160 }) : "") + table;
}

async function refreshDashboard() {
  let d;
  try { d = await api("dashboard"); } catch (err) { toast(`dashboard: ${err.message}`); return; }
  const c = d.counts;
  $("#d-counts").innerHTML = `<table class="data"><tr><td>images</td><td>${c.images}</td></tr>
    <tr><td>labels given</td><td>${c.labels}</td></tr><tr><td>images labelled</td><td>${c.labelled_images}</td></tr>
    <tr><td>anomalies</td><td>${c.anomalies}</td></tr><tr><td>label policy</td><td>${esc(d.label_policy)}</td></tr>
    <tr><td>served model</td><td id="d-model">${esc(d.model_version)}</td></tr></table>`;
  const r = d.retrain;
  $("#d-retrain").innerHTML = `<table class="data"><tr><td>status</td><td id="d-status">${esc(r.status)}</td></tr>
    <tr><td>last version</td><td>${esc(r.last_version ?? "-")}</td></tr>
    <tr><td>new labels waiting</td><td>${esc(r.new_labels)} (retrain at ${esc(r.min_labels)})</td></tr>
    ${r.waiting_for_anomalies ? `<tr><td>cold start</td><td>the first model trains once ${esc(r.min_anomalies)} anomalies are labelled</td></tr>` : ""}
    <tr><td>last gate</td><td>${esc(r.last_gate || "-")}${r.last_promoted ? " (promoted)" : ""}</td></tr>
    ${r.last_error ? `<tr><td>last error</td><td class="error">${esc(r.last_error)}</td></tr>` : ""}</table>`;
  $("#d-activity").innerHTML = activityChart(d.activity);
  $("#d-discovery").innerHTML = lineChart([{ name: "anomalies found", x: d.discovery.x, y: d.discovery.y }], { xlabel: "labels" });
  const e = d.evaluation;
  $("#d-eval").innerHTML = e.roc
    ? `<p>${e.n} images (${e.n_anomalies} anomalies): AUROC ${e.auroc.toFixed(3)}, AUPRC ${e.auprc.toFixed(3)}</p>
       ${lineChart([{ name: "ROC", x: e.roc.x, y: e.roc.y }, { name: "chance", x: [0, 1], y: [0, 1], dash: true, colour: "#555" }], { xmin: 0, xmax: 1, ymax: 1, xlabel: "false positive rate", height: 180 })}
       ${lineChart([{ name: "precision / recall", x: e.pr.x, y: e.pr.y, colour: COLOURS[1] }], { xmin: 0, xmax: 1, ymax: 1, xlabel: "recall", height: 180 })}`
    : `<p>${esc(e.message || "")} (${e.n} so far)</p>`;
  const v = d.versions;
  $("#d-versions").innerHTML = v.error ? `<p class="error">${esc(v.error)}</p>` : `<table class="data">
    <tr><th>version</th><th>aliases</th><th>gate</th><th>parity</th><th>held-out AUPRC</th><th>labels</th>
      <th>anomalies</th><th>from</th><th>created</th></tr>
    ${v.items.map((m) => `<tr><td>${esc(m.version)}</td><td>${esc(m.aliases.join(", "))}</td><td>${esc(m.gate)}</td>
      <td>${esc(m.parity)}</td><td>${m.holdout.auprc === undefined ? "-" : (+m.holdout.auprc).toFixed(3)}</td>
      <td>${esc(m.tags.n_labels || "-")}</td><td>${esc(m.tags.n_anomalies || "-")}</td>
      <td>${esc(m.tags.init_from || m.tags.parent_version || m.tags.campaign || "-")}</td>
      <td>${new Date(m.created_ms).toISOString().slice(0, 16).replace("T", " ")}</td></tr>`).join("")}</table>`;
}

// -- admin -----------------------------------------------------------------------------------------------
async function refreshAdmin() {
  try {
    const s = await api("settings");
    $("#policy").value = s.label_policy;
    const d = await api("disagreements");
    $("#disagreements").innerHTML = d.items.length ? "" : "<p>none</p>";
    for (const item of d.items) {
      const row = document.createElement("div");
      row.className = "dis";
      row.dataset.id = item.image_id;
      row.innerHTML = `<img src="${thumbUrl(item.image_id)}" alt=""><span>${esc(item.image_id)}</span>
        <span>${Object.entries(item.labels).map(([u, l]) => `${esc(u)}: <b class="lab-${l}">${l}</b>`).join(", ")}</span>
        <button data-settle="anomaly">anomaly</button><button data-settle="nominal">nominal</button>`;
      for (const b of row.querySelectorAll("[data-settle]")) {
        b.addEventListener("click", async () => {
          try {
            await api("label", { json: { image_id: item.image_id, label: b.dataset.settle, key: newKey() } });
            toast(`settled ${item.image_id}: ${b.dataset.settle}`, true);
            refreshAdmin();
          } catch (err) { toast(`settle: ${err.message}`); }
        });
      }
      $("#disagreements").appendChild(row);
    }
  } catch (err) {
    toast(`admin: ${err.message}`);
  }
  try {
    const s = await api("suspects");
    $("#suspects").innerHTML = s.suspects.length ? "" : `<p>none of ${s.judged} labels</p>`;
    for (const item of s.suspects) {
      const row = document.createElement("div");
      row.className = "dis";
      row.dataset.id = item.image_id;
      row.innerHTML = `<img src="${thumbUrl(item.image_id)}" alt=""><span>${esc(item.image_id)}</span>
        <span>${esc(item.user || "-")}: <b class="lab-${item.label}">${item.label}</b>, doubt ${item.doubt.toFixed(2)}</span>`;
      $("#suspects").appendChild(row);
    }
  } catch (err) {
    $("#suspects").textContent = err.message; // e.g. no stored embeddings for this model version yet
  }
}

$("#policy").addEventListener("change", async (e) => {
  try {
    const s = await api("settings", { json: { label_policy: e.target.value } });
    $("#policy-status").textContent = `saved: ${s.label_policy}`;
  } catch (err) { toast(`policy: ${err.message}`); }
});

start();
poll();
