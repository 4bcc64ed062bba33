// onvif-gateway dashboard: camera grid (snapshots, status, bitrate sparkline, viewers,
// compliance, egress attempts) and a live view (fragmented MP4 over a WebSocket into Media
// Source Extensions, no transcoding). Plain JS, no build step.
"use strict";

const POLL_MS = 3000;
const SLOW_POLL_MS = 15000;
const SPARK_POINTS = 60;
const SNAPSHOT_WIDTH = 640;
const LIVE_TARGET_S = 0.15; // how far behind the newest frame the live view plays
const LIVE_JUMP_S = 1.5; // further behind than this, it jumps instead of catching up

const ROLES = ["viewer", "operator", "admin"];

const state = {
  csrf: null,
  role: "viewer",
  cards: new Map(), // camera name -> {el, history: []}
  cameras: [],
  compliance: new Map(),
  findings: new Map(), // camera name -> its findings (latest audit)
  inventory: new Map(), // camera name -> {model, firmware}
  egress: new Map(),
  live: null,
  slowPolls: 0,
};

const NO_PICTURE = {
  idle: "on demand: starts when someone watches",
  down: "no picture: the camera is down",
  disabled: "disabled in the configuration",
  connecting: "connecting…",
};
const STATE_ORDER = { down: 0, connecting: 1, live: 2, idle: 3, disabled: 4 };
const COMPLIANCE_ORDER = { "non-compliant": 0, unknown: 1, compliant: 2 };

// Snapshots are fetched only for cards on screen: 200 cameras would otherwise cost the
// gateway a JPEG decode each every few seconds for pictures nobody sees.
const onScreen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const card = state.cards.get(entry.target.dataset.camera);
    if (card) card.visible = entry.isIntersecting;
  }
}, { rootMargin: "200px" });

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (options.method && options.method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (response.status === 401) {
    location.assign("/login?next=/");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// Controls the signed-in account's role may not use are hidden (the API refuses them anyway).
function applyRole(root) {
  for (const el of root.querySelectorAll("[data-needs]")) {
    el.hidden = ROLES.indexOf(state.role) < ROLES.indexOf(el.dataset.needs);
  }
}

// One notice at a time. Without a source it clears itself after NOTICE_MS; a poll's error
// (source: the poll) stays until that poll succeeds again, or until dismissed.
const NOTICE_MS = 10000;
let noticeSource = null;
let noticeTimer = null;

function notice(text, source = null) {
  const el = document.getElementById("notice");
  clearTimeout(noticeTimer);
  el.querySelector(".text").textContent = text;
  el.hidden = !text;
  noticeSource = text ? source : null;
  if (text && !source) noticeTimer = setTimeout(() => notice(""), NOTICE_MS);
}

function clearNotice(source) {
  if (noticeSource === source) notice("");
}

function formatBitrate(bps) {
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  if (bps >= 1e3) return `${Math.round(bps / 1e3)} kbit/s`;
  return `${bps} bit/s`;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function streamProblem(stream) {
  if (stream.down_since) {
    const since = new Date(stream.down_since).toLocaleString();
    return `down since ${since}${stream.last_error ? `: ${stream.last_error}` : ""}`;
  }
  return stream.state === "live" ? "" : stream.last_error || "";
}

// ------------------------------------------------------------------ grid

function cardFor(camera) {
  let card = state.cards.get(camera.name);
  if (card) return card;
  const el = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  el.dataset.camera = camera.name;
  applyRole(el);
  el.querySelector(".name").textContent = camera.name;
  el.querySelector(".picture").addEventListener("click", () => openLive(camera.name, "main"));
  el.querySelector(".compliance").addEventListener("click", (event) => {
    event.preventDefault();
    openFindings(camera.name);
  });
  for (const button of el.querySelectorAll(".copy")) {
    button.addEventListener("click", () => {
      const text = el.querySelector(`.${button.dataset.copy}`).textContent;
      copyText(text).then(
        () => notice(`Copied ${text}`),
        () => notice(`Copy it by hand: ${text}`));
    });
  }
  el.querySelector(".watch").addEventListener("click", () => openLive(camera.name, "main"));
  el.querySelector(".reconnect").addEventListener("click", async () => {
    try {
      await api(`/api/v1/cameras/${encodeURIComponent(camera.name)}/reconnect`, { method: "POST" });
      notice(`Reconnecting ${camera.name}…`);
    } catch (err) {
      notice(`Reconnect failed: ${err.message}`);
    }
  });
  const img = el.querySelector("img");
  img.addEventListener("load", () => { el.classList.add("has-picture"); card.loading = false; });
  img.addEventListener("error", () => { card.loading = false; });
  document.getElementById("grid").appendChild(el);
  card = { el, history: [], loading: false, lastSnapshot: 0, visible: false, camera };
  state.cards.set(camera.name, card);
  onScreen.observe(el);
  return card;
}

function refreshSnapshot(card, camera) {
  const main = camera.streams[0];
  if (!main || !main.picture || card.loading) return;
  if (!card.visible || card.el.hidden || listView()) return;
  const now = Date.now();
  if (now - card.lastSnapshot < POLL_MS - 100) return;
  card.loading = true;
  card.lastSnapshot = now;
  card.el.querySelector("img").src = `${main.snapshot_url}?width=${SNAPSHOT_WIDTH}&t=${now}`;
}

function drawSparkline(canvas, points) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (points.length < 2) return;
  const max = Math.max(...points, 1);
  ctx.strokeStyle = "#3d7eff";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((value, i) => {
    const x = (i / (SPARK_POINTS - 1)) * width;
    const y = height - 2 - (value / max) * (height - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function renderCamera(camera) {
  const card = cardFor(camera);
  const el = card.el;
  const main = camera.streams[0];
  const status = camera.state;
  const badge = el.querySelector(".state");
  badge.textContent = status;
  badge.className = `badge state ${status}`;
  const compliance = state.compliance.get(camera.name) || "unknown";
  const cbadge = el.querySelector(".compliance");
  const open = (state.findings.get(camera.name) || []).filter((f) => f.status === "open").length;
  cbadge.textContent = open ? `${compliance} (${plural(open, "finding")})` : compliance;
  cbadge.className = `badge compliance ${compliance}`;
  card.camera = camera;
  const inventory = state.inventory.get(camera.name) || {};
  el.querySelector(".ip").textContent = camera.host;
  el.querySelector(".vendor").textContent = camera.vendor;
  el.querySelector(".model").textContent = inventory.model || "";
  el.querySelector(".firmware").textContent = inventory.firmware ? `firmware ${inventory.firmware}` : "";
  el.querySelector(".rtsp").textContent = camera.rtsp_urls.main || "";
  el.querySelector(".onvif").textContent = camera.onvif_url;
  // Rates come only with a live stream (the API gives null otherwise), so a stream that is
  // down never shows its last figures as current.
  const facts = [];
  if (main && main.codec) facts.push(`${main.codec} ${main.width}×${main.height}`);
  if (main && main.fps !== null) facts.push(`${main.fps} fps`);
  if (main && main.bitrate !== null) facts.push(formatBitrate(main.bitrate));
  if (main && main.reconnects) facts.push(plural(main.reconnects, "reconnect"));
  // What reads the camera; with ingest = "auto", why a stream moved to PyAV (the detail on
  // hover) until the next reload.
  const fallback = main && main.ingest_fallback;
  if (fallback) facts.push(`PyAV (fallback: ${fallback.reason.replaceAll("_", " ")})`);
  else if (main && main.ingest) facts.push(main.ingest === "pyav" ? "PyAV" : "native ingest");
  if (status === "idle" && camera.on_demand) facts.push("on demand: starts when watched");
  const factsEl = el.querySelector(".facts");
  factsEl.textContent = facts.join(" · ");
  factsEl.title = fallback ? `Moved to PyAV: ${fallback.detail}. The next reload tries native again.` : "";
  // A camera that is not live keeps its last picture, dimmed, with when it went down.
  el.classList.toggle("stale", status !== "live");
  el.querySelector(".nopicture").textContent = NO_PICTURE[status] || "waiting for a picture";
  const viewers = camera.streams.reduce((n, s) => n + s.clients, 0);
  el.querySelector(".viewers").textContent = plural(viewers, "viewer");
  const egress = state.egress.get(camera.name);
  el.querySelector(".egress").textContent = egress === undefined
    ? "" : `${plural(egress, "egress attempt")} blocked`;
  el.querySelector(".error").textContent = main ? streamProblem(main) : "";
  if (main) {
    card.history.push(main.bitrate || 0);
    if (card.history.length > SPARK_POINTS) card.history.shift();
  }
  drawSparkline(el.querySelector(".sparkline"), card.history);
  refreshSnapshot(card, camera);
}

async function pollCameras() {
  try {
    // With several worker processes, one that does not answer in time is named here and
    // its cameras are left out until it answers again.
    const { cameras, unanswered = [] } = await api("/api/v1/cameras");
    state.cameras = cameras;
    cameras.forEach(renderCamera);
    const names = new Set(cameras.map((c) => c.name));
    for (const [name, card] of state.cards) {
      if (!names.has(name)) { onScreen.unobserve(card.el); card.el.remove(); state.cards.delete(name); }
    }
    applyView();
    const live = cameras.filter((c) => c.connected).length;
    document.getElementById("summary").textContent = `${live} of ${cameras.length} cameras live`;
    if (unanswered.length) {
      notice(unanswered.map((u) => `Worker process ${u.worker} is not answering (${u.error}); `
        + `not shown: ${u.cameras.join(", ")}.`).join(" "), "cameras");
    } else {
      clearNotice("cameras");
    }
  } catch (err) {
    notice(`Cannot read the camera list: ${err.message}`, "cameras");
  }
}

async function pollSlow() {
  try {
    const findings = await api("/api/v1/findings");
    for (const c of findings.cameras) {
      state.compliance.set(c.camera, c.status);
      state.findings.set(c.camera, c.findings);
    }
    clearNotice("findings");
  } catch (err) {
    notice(`Cannot read findings: ${err.message}`, "findings");
  }
  try {
    const egress = await api("/api/v1/egress");
    for (const c of egress.cameras) state.egress.set(c.name, c.blocked_packets + c.dns_phone_home);
    clearNotice("egress");
  } catch (err) {
    notice(`Cannot read the egress report: ${err.message}`, "egress");
  }
  // Model and firmware change only with an inventory run: read them every fourth round.
  if (state.slowPolls++ % 4 === 0) await pollInventory();
  applyView();
}

async function pollInventory() {
  try {
    const { cameras } = await api("/api/v1/inventory");
    for (const c of cameras) {
      const identity = (c.inventory && c.inventory.identity) || {};
      state.inventory.set(c.camera, { model: identity.model, firmware: identity.firmware });
    }
    clearNotice("inventory");
  } catch (err) {
    notice(`Cannot read the inventory: ${err.message}`, "inventory");
  }
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  throw new Error("no clipboard");
}

// ------------------------------------------------------------------ search, filters, sort

function listView() {
  return document.getElementById("grid").classList.contains("list");
}

function searchText(card) {
  const c = card.camera;
  const inventory = state.inventory.get(c.name) || {};
  return [c.name, c.host, c.vendor, inventory.model, inventory.firmware, c.state]
    .filter(Boolean).join(" ").toLowerCase();
}

function sortKey(card, by) {
  const c = card.camera;
  if (by === "state") return STATE_ORDER[c.state] ?? 9;
  if (by === "compliance") return COMPLIANCE_ORDER[state.compliance.get(c.name)] ?? 1;
  if (by === "egress") return -(state.egress.get(c.name) || 0);
  if (by === "bitrate") return -((c.streams[0] && c.streams[0].bitrate) || 0);
  return 0;
}

// Shows the cards that match the search and filters, in the chosen order. The cards are
// moved only when the order changes, so a refresh does not disturb the page.
function applyView() {
  const words = document.getElementById("search").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const onlyDown = document.getElementById("only-down").checked;
  const onlyNonCompliant = document.getElementById("only-noncompliant").checked;
  const onlyPhoning = document.getElementById("only-phoning").checked;
  const by = document.getElementById("sort").value;
  const cards = [...state.cards.values()];
  let shown = 0;
  for (const card of cards) {
    const c = card.camera;
    const text = searchText(card);
    const match = words.every((w) => text.includes(w)) &&
      (!onlyDown || c.streams.some((s) => s.should_stream && s.state !== "live")) &&
      (!onlyNonCompliant || state.compliance.get(c.name) === "non-compliant") &&
      (!onlyPhoning || (state.egress.get(c.name) || 0) > 0);
    card.el.hidden = !match;
    if (match) shown++;
  }
  cards.sort((a, b) => (sortKey(a, by) - sortKey(b, by)) || a.camera.name.localeCompare(b.camera.name));
  const grid = document.getElementById("grid");
  if (cards.some((card, i) => grid.children[i] !== card.el)) {
    grid.replaceChildren(...cards.map((card) => card.el));
  }
  document.getElementById("shown").textContent =
    shown === cards.length ? "" : `${shown} of ${cards.length} shown`;
}

// ------------------------------------------------------------------ findings, audit, enforce

const findingsView = { camera: null, plan: null };

function openFindings(camera) {
  findingsView.camera = camera;
  findingsView.plan = null;
  document.getElementById("plan").hidden = true;
  document.getElementById("findings-title").textContent =
    camera ? `Findings: ${camera}` : "Findings: every camera";
  findingsStatus("");
  renderFindings();
  const dialog = document.getElementById("findings");
  if (!dialog.open) dialog.showModal();
}

function findingsStatus(text) {
  document.getElementById("findings-status").textContent = text;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (className) td.className = className;
  return td;
}

function renderFindings() {
  const names = findingsView.camera ? [findingsView.camera] : [...state.findings.keys()].sort();
  const rows = [];
  for (const name of names) {
    for (const f of state.findings.get(name) || []) {
      const row = document.createElement("tr");
      row.append(cell(name), cell(f.severity, `sev-${f.severity}`), cell(f.title),
        cell(f.action), cell(f.status));
      rows.push(row);
    }
  }
  if (!rows.length) {
    const row = document.createElement("tr");
    const status = findingsView.camera ? state.compliance.get(findingsView.camera) : null;
    row.append(cell(status === "unknown" || (!status && !state.findings.size)
      ? "No audit yet (or the camera could not be read): run Audit now."
      : "No findings."));
    row.firstChild.colSpan = 5;
    rows.push(row);
  }
  document.querySelector("#findings-table tbody").replaceChildren(...rows);
}

function policyBody(extra) {
  const body = Object.assign({}, extra);
  if (findingsView.camera) body.cameras = [findingsView.camera];
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

async function auditNow() {
  findingsStatus("Auditing… (reads every camera in scope; changes nothing)");
  try {
    const report = await api("/api/v1/audit", policyBody({}));
    await pollSlow();
    renderFindings();
    findingsStatus(`Audit done at ${new Date().toLocaleTimeString()}: ${summaryText(report.summary)}`);
    pollCameras();
  } catch (err) {
    findingsStatus(`Audit failed: ${err.message}`);
  }
}

function summaryText(summary) {
  if (!summary || typeof summary !== "object") return "";
  return Object.entries(summary).filter(([, v]) => typeof v !== "object")
    .map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`).join(", ");
}

async function planEnforce() {
  findingsStatus("Reading the cameras to see what enforce would change (nothing is written)…");
  document.getElementById("plan").hidden = true;
  try {
    const report = await api("/api/v1/enforce", policyBody({ dry_run: true }));
    const changes = report.cameras.flatMap((c) =>
      (c.changes || []).filter((ch) => ch.planned).map((ch) => ({ camera: c.name, ...ch })));
    findingsView.plan = changes;
    if (!changes.length) {
      findingsStatus("Nothing to change: the cameras already follow the policy.");
      return;
    }
    document.querySelector("#plan-table tbody").replaceChildren(...changes.map((ch) => {
      const row = document.createElement("tr");
      row.append(cell(ch.camera), cell(ch.key), cell(ch.before), cell(ch.after));
      return row;
    }));
    document.getElementById("plan").hidden = false;
    findingsStatus(`${plural(changes.length, "change")} planned; nothing written yet.`);
  } catch (err) {
    findingsStatus(`Enforce (dry run) failed: ${err.message}`);
  }
}

async function applyEnforce() {
  document.getElementById("plan").hidden = true;
  findingsStatus("Applying and verifying…");
  try {
    const report = await api("/api/v1/enforce", policyBody({ dry_run: false }));
    const changes = report.cameras.flatMap((c) => c.changes || []);
    const failed = changes.filter((ch) => !ch.verified);
    findingsStatus(`${plural(changes.length - failed.length, "change")} applied and verified` +
      (failed.length ? `; ${failed.length} failed: ${failed.map((ch) => `${ch.key} (${ch.error || "not verified"})`).join(", ")}` : "."));
    await pollSlow();
    renderFindings();
  } catch (err) {
    findingsStatus(`Enforce failed: ${err.message}`);
  }
}

// ------------------------------------------------------------------ live view

function streamOf(cameraName, streamName) {
  const camera = state.cameras.find((c) => c.name === cameraName);
  return camera ? camera.streams.find((s) => s.stream === streamName) : undefined;
}

function playable(stream) {
  return Boolean(stream && stream.mse_mime && window.MediaSource &&
    MediaSource.isTypeSupported(stream.mse_mime));
}

function liveMessage(text, offer) {
  const el = document.getElementById("live-message");
  el.textContent = text;
  if (offer) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = offer.label;
    button.addEventListener("click", offer.action);
    el.appendChild(button);
  }
  el.hidden = !text;
}

function stopLive() {
  const live = state.live;
  state.live = null;
  if (!live) return;
  live.closed = true;
  if (live.ws) {
    if (live.ws.readyState === WebSocket.CONNECTING) live.ws.onopen = () => live.ws.close();
    else live.ws.close();
  }
  const video = document.getElementById("video");
  video.pause();
  video.removeAttribute("src");
  video.load();
  if (live.url) URL.revokeObjectURL(live.url);
}

function openLive(cameraName, streamName) {
  stopLive();
  const dialog = document.getElementById("live");
  if (!dialog.open) dialog.showModal();
  document.getElementById("live-title").textContent = `${cameraName} / ${streamName}`;
  liveMessage("");
  const stream = streamOf(cameraName, streamName);
  if (!stream) {
    liveMessage(`${cameraName} has no ${streamName} stream.`);
    return;
  }
  if (!playable(stream)) {
    const sub = streamOf(cameraName, "sub");
    const offer = streamName !== "sub" && playable(sub)
      ? { label: `Watch the sub stream (${sub.codec})`, action: () => openLive(cameraName, "sub") }
      : null;
    const codec = stream.codec === "H265" ? "H.265 (HEVC)" : stream.codec || "this";
    liveMessage(
      `This browser cannot play ${codec} video` +
      (stream.mse_mime ? ` (${stream.mse_mime})` : "") +
      ". The gateway does not transcode; use a VMS or a browser with " +
      `${codec} support for this stream.`, offer);
    return;
  }
  startLive(cameraName, streamName);
}

function startLive(cameraName, streamName) {
  const video = document.getElementById("video");
  const mediaSource = new MediaSource();
  const live = { camera: cameraName, stream: streamName, ws: null, sb: null, queue: [], mime: null,
                 closed: false, url: URL.createObjectURL(mediaSource), mediaSource };
  state.live = live;
  video.src = live.url;
  mediaSource.addEventListener("sourceopen", () => {
    if (live.closed) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const path = `/api/v1/live/${encodeURIComponent(cameraName)}/${encodeURIComponent(streamName)}`;
    const ws = new WebSocket(`${proto}//${location.host}${path}`);
    ws.binaryType = "arraybuffer";
    live.ws = ws;
    ws.onmessage = (event) => onLiveMessage(live, event.data);
    ws.onclose = () => {
      if (!live.closed && state.live === live && !live.message) {
        liveMessage("The live view ended.", { label: "Reconnect", action: () => openLive(cameraName, streamName) });
      }
    };
  }, { once: true });
}

function onLiveMessage(live, data) {
  if (live.closed) return;
  if (typeof data === "string") {
    const message = JSON.parse(data);
    if (message.type === "init") {
      if (!MediaSource.isTypeSupported(message.mime)) {
        live.message = true;
        liveMessage(`This browser cannot play ${message.mime}.`);
        live.ws.close();
        return;
      }
      if (!live.sb) {
        live.sb = live.mediaSource.addSourceBuffer(message.mime);
        live.sb.mode = "segments";
        live.sb.addEventListener("updateend", () => pump(live));
      } else if (message.mime !== live.mime && live.sb.changeType) {
        live.queue.push({ changeType: message.mime });
      }
      live.mime = message.mime;
    } else if (message.type === "closed") {
      live.message = true;
      liveMessage(`The live view ended: ${message.reason}`, {
        label: "Reconnect", action: () => openLive(live.camera, live.stream) });
    }
    return;
  }
  live.queue.push(data);
  pump(live);
}

function pump(live) {
  const sb = live.sb;
  if (!sb || sb.updating || live.closed || live.mediaSource.readyState !== "open") return;
  const video = document.getElementById("video");
  // Stay within half a second of the live edge: a little behind, play 10 % faster until
  // caught up (no visible jump); far behind (a stall, a hidden tab), jump. Keep the buffer
  // short so memory stays flat.
  if (video.buffered.length) {
    const end = video.buffered.end(video.buffered.length - 1);
    const lag = end - video.currentTime;
    if (lag > LIVE_JUMP_S) video.currentTime = Math.max(end - LIVE_TARGET_S, 0);
    else video.playbackRate = lag > LIVE_TARGET_S * 2 ? 1.1 : 1.0;
    const start = video.buffered.start(0);
    if (video.currentTime - start > 30) {
      sb.remove(start, video.currentTime - 10);
      return;
    }
  }
  const next = live.queue.shift();
  if (next === undefined) return;
  try {
    if (next.changeType) {
      sb.changeType(next.changeType);
      pump(live);
      return;
    }
    sb.appendBuffer(next);
  } catch (err) {
    live.message = true;
    liveMessage(`The browser refused the video: ${err.message}`);
    live.ws.close();
    return;
  }
  if (video.paused) video.play().catch(() => {});
}

// ------------------------------------------------------------------ start

async function main() {
  const session = await api("/api/v1/session");
  state.csrf = session.csrf_token;
  state.role = session.role;
  document.body.dataset.role = session.role;
  document.getElementById("user").textContent = `${session.username} (${session.role})`;
  applyRole(document);
  document.querySelector("#notice .dismiss").addEventListener("click", () => notice(""));
  const trail = document.getElementById("trail");
  document.getElementById("trail-open").addEventListener("click", () => openTrail(trail));
  document.getElementById("trail-close").addEventListener("click", () => trail.close());
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/logout", { method: "POST" }).catch(() => {});
    location.assign("/login");
  });
  document.getElementById("reload").addEventListener("click", async () => {
    try {
      const { changes } = await api("/api/v1/reload", { method: "POST" });
      const parts = ["added", "removed", "changed"].filter((k) => changes[k].length)
        .map((k) => `${k}: ${changes[k].join(", ")}`);
      notice(`Configuration reloaded. ${parts.join("; ") || "No camera changed."}`);
      pollCameras();
    } catch (err) {
      notice(`Reload refused: ${err.message}`);
    }
  });
  const findings = document.getElementById("findings");
  document.getElementById("findings-open").addEventListener("click", () => openFindings(null));
  document.getElementById("findings-close").addEventListener("click", () => findings.close());
  document.getElementById("audit-now").addEventListener("click", auditNow);
  document.getElementById("enforce-plan").addEventListener("click", planEnforce);
  document.getElementById("enforce-apply").addEventListener("click", applyEnforce);
  document.getElementById("enforce-cancel").addEventListener("click", () => {
    document.getElementById("plan").hidden = true;
    findingsStatus("Nothing changed.");
  });
  for (const id of ["search", "only-down", "only-noncompliant", "only-phoning", "sort"]) {
    document.getElementById(id).addEventListener("input", applyView);
  }
  document.getElementById("view-toggle").addEventListener("click", (event) => {
    const list = document.getElementById("grid").classList.toggle("list");
    event.target.setAttribute("aria-pressed", String(list));
    event.target.textContent = list ? "Grid view" : "List view";
  });
  const dialog = document.getElementById("live");
  document.getElementById("live-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", stopLive);
  document.getElementById("live-main").addEventListener("click", () => {
    if (state.live || dialog.open) openLive(currentCamera(), "main");
  });
  document.getElementById("live-sub").addEventListener("click", () => {
    if (state.live || dialog.open) openLive(currentCamera(), "sub");
  });
  await pollSlow();
  await pollCameras();
  setInterval(pollCameras, POLL_MS);
  setInterval(pollSlow, SLOW_POLL_MS);
}

async function openTrail(dialog) {
  try {
    const { entries } = await api("/api/v1/admin-log?limit=200");
    const body = document.querySelector("#trail-table tbody");
    body.replaceChildren(...entries.reverse().map((e) => {
      const row = document.createElement("tr");
      const cells = [
        new Date(e.at * 1000).toLocaleString(),
        e.role ? `${e.account} (${e.role})` : e.account,
        e.method,
        e.source,
        e.target ? `${e.action} ${e.target}` : e.action,
        e.result,
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      if (e.result !== "ok") row.lastChild.classList.add("refused");
      return row;
    }));
    dialog.showModal();
  } catch (err) {
    notice(`Audit trail unavailable: ${err.message}`);
  }
}

function currentCamera() {
  return document.getElementById("live-title").textContent.split(" / ")[0];
}

main().catch((err) => notice(`Dashboard failed to start: ${err.message}`));
