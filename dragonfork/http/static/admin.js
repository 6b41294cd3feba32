// The admin UI: log in, list processes with live figures, create/edit/start/stop/delete them, read their
// logs, toggle WebRTC and watch a stream in the embedded WHEP player; the live publishers per protocol and,
// for a process fed by one, the server URL and stream key to paste into OBS or an encoder.

import { Api, ApiError } from "./api.js";
import { copyText } from "./clipboard.js";
import {
  ingestErrors,
  ingestRefusals,
  publisherRows,
  publishTargets,
  rtmpServerUrl,
  srtPublishUrl,
  srtServerUrl,
  whipUrl,
} from "./ingest.js";
import { ProcessEditor } from "./process-editor.js";
import { Trends, sparkline } from "./trends.js";
import { PlayerView } from "./whep-player.js";

const POLL_MS = 1500;
const WHIP_TOKEN_NOTE = "Bearer token: an access token of this server (POST /api/login).";
const api = new Api();
const $ = (selector) => document.querySelector(selector);

// --- formatting -----------------------------------------------------------------------------------------

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const [d, h, m] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60)];
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s % 60}s`;
}

function bitrate(kbit) {
  return kbit >= 1000 ? `${(kbit / 1000).toFixed(2)} Mbit/s` : `${Math.round(kbit)} kbit/s`;
}

function time(unixSeconds) {
  return unixSeconds ? new Date(unixSeconds * 1000).toLocaleTimeString() : "";
}

/** Build an element: el("button", {class: "link", onclick}, "text", child…). */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (value === true) element.setAttribute(key, "");
    else if (value !== false && value != null) element.setAttribute(key, value);
  }
  element.append(...present(...children));
  return element;
}

/** The given children without the empty ones (false, "", null), for conditional parts. */
function present(...children) {
  return children.filter((child) => child || child === 0);
}

/** Where the server serves a file a process writes: {memfs}/x → /memfs/x, {diskfs}/x → /x (or null). */
function servedUrl(address, process, outputId) {
  const names = { processid: process.id, reference: process.reference || "", outputid: outputId };
  const expanded = address.replace(/\{(processid|reference|outputid)\}/g, (_, name) => names[name]);
  const match = expanded.match(/^\{(memfs|fs:mem|diskfs|fs:disk)\}(\/.*)$/);
  if (!match) return null;
  return (match[1] === "memfs" || match[1] === "fs:mem" ? "/memfs" : "") + match[2];
}

const THUMBNAIL_REFRESH_MS = 5000; // a snapshot output is typically -update 1 -r 0.2

/** The live thumbnail of a process: the URL of its snapshot output (an image it writes into memfs or diskfs),
 * changed every THUMBNAIL_REFRESH_MS so the browser fetches the new picture. */
function thumbnailUrl(process) {
  for (const output of process.config.output || []) {
    const url = servedUrl(output.address, process, output.id);
    const fresh = Math.floor(Date.now() / THUMBNAIL_REFRESH_MS);
    if (url && /\.(jpe?g|png|webp)$/i.test(url)) return `${url}?t=${fresh}`;
  }
  return null;
}

function whepUrl(id) {
  return `${location.origin}/api/v3/whep/${encodeURIComponent(id)}`;
}

// --- messages -------------------------------------------------------------------------------------------

let toastTimer = null;

function toast(message, kind = "info") {
  const box = $("#toast");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 3000);
}

/** Run an API action; report failure as a toast, success as `done` (if given). */
async function act(action, done) {
  try {
    const result = await action();
    if (done) toast(done);
    await refresh();
    return result;
  } catch (error) {
    toast(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), "error");
    return undefined;
  }
}

// --- the process list -----------------------------------------------------------------------------------

const processes = new Map(); // id -> the latest {id, reference, config, state}
const rows = new Map(); // id -> {tr, cells, buttons}
let pollTimer = null;
const trends = new Trends(api, () => render());
let ingest = null; // the latest GET /api/v3/ingest

function command(id, name) {
  return act(
    () => api.request("PUT", `/api/v3/process/${encodeURIComponent(id)}/command`, { command: name }),
    `${name}: ${id}`,
  );
}

function buildRow(id) {
  const cells = {};
  const td = (key, label) => (cells[key] = el("td", { "data-label": label, "data-cell": key }));
  const buttons = {
    toggleOrder: el("button", {
      type: "button",
      onclick: () => command(id, processes.get(id).state.order === "start" ? "stop" : "start"),
    }),
    restart: el("button", { type: "button", onclick: () => command(id, "restart") }, "Restart"),
    edit: el("button", { type: "button", onclick: () => editor.open(processes.get(id).config) }, "Edit"),
    log: el("button", { type: "button", onclick: () => showReport(id) }, "Log"),
    watch: el("button", { type: "button", onclick: () => watch(id) }, "Watch"),
    copy: el(
      "button",
      { type: "button", onclick: (event) => copyText(whepUrl(id), event.currentTarget) },
      "Copy WHEP URL",
    ),
    remove: el("button", { type: "button", class: "danger", onclick: () => confirmDelete(id) }, "Delete"),
  };
  const thumb = el("img", {
    class: "thumb",
    alt: `thumbnail of ${id}`,
    hidden: true,
    onload: () => (thumb.hidden = false),
    onerror: () => ((thumb.failed = thumb.dataset.src), (thumb.hidden = true)), // not written yet
  });
  const webrtc = el("input", {
    type: "checkbox",
    role: "switch",
    "aria-label": `WebRTC for ${id}`,
    onchange: () => toggleWebrtc(id, webrtc),
  });
  const tr = el(
    "tr",
    { "data-id": id },
    td("process", "Process"),
    td("state", "State"),
    td("uptime", "Uptime"),
    td("fps", "FPS"),
    td("bitrate", "Bitrate"),
    td("cpu", "CPU"),
    td("memory", "Memory"),
    td("viewers", "Viewers"),
    td("webrtc", "WebRTC"),
    td("actions", "Actions"),
  );
  cells.webrtc.append(el("label", { class: "switch" }, webrtc, el("span", { "aria-hidden": "true" })));
  cells.actions.append(el("div", { class: "actions" }, ...Object.values(buttons)));
  return { tr, cells, buttons, webrtc, thumb };
}

/** A labelled value with a copy button (a server URL, a stream key). */
function copyable(label, value) {
  return el(
    "div",
    { class: "copyable" },
    el("span", { class: "muted" }, label),
    el("code", {}, value),
    el("button", { type: "button", class: "link", onclick: (event) => copyText(value, event.currentTarget) }, "Copy"),
  );
}

/** "Publish to": what OBS needs for each input of the process a publisher feeds. */
function publishBlock(targets) {
  return el(
    "details",
    { class: "publish-to" },
    el("summary", {}, `Publish here (${targets.map((target) => target.protocol).join(", ")})`),
    ...targets.flatMap((target) => [
      ...target.fields.map(([label, value]) => copyable(label, value)),
      ...present(target.token && el("p", { class: "muted" }, WHIP_TOKEN_NOTE)),
    ]),
  );
}

function renderRow(row, process) {
  const { config, state } = process;
  const live = state.exec === "running" || state.exec === "starting";
  const progress = state.progress || {};
  const targets = publishTargets(config, ingest);
  const signature = JSON.stringify([process.id, process.reference, targets]);
  if (row.signature !== signature) {
    // Rebuilt only when it changes, so an open "Publish here" and a "Copied" button stay as they are.
    row.signature = signature;
    row.cells.process.replaceChildren(
      ...present(
        el("strong", {}, process.id),
        process.reference && el("small", { class: "muted" }, process.reference),
        row.thumb,
        targets.length > 0 && publishBlock(targets),
      ),
    );
  }
  const thumb = thumbnailUrl(process);
  row.thumb.hidden = !thumb || row.thumb.failed === thumb;
  if (thumb && row.thumb.dataset.src !== thumb) {
    row.thumb.dataset.src = thumb;
    row.thumb.src = thumb;
  }
  row.cells.state.replaceChildren(
    ...present(
      el("span", { class: `badge state-${state.exec}`, title: `order: ${state.order}` }, state.exec),
      state.restarts > 0 && el("small", { class: "muted" }, `${state.restarts} restarts`),
      state.last_error && el("small", { class: "last-error", title: state.last_error }, state.last_error),
    ),
  );
  row.cells.uptime.textContent = live ? duration(state.runtime_seconds) : "—";
  const figures = {
    fps: live ? (progress.fps || 0).toFixed(1) : "—",
    bitrate: live ? bitrate(progress.bitrate_kbit || 0) : "—",
    cpu: live ? `${(state.cpu_usage || 0).toFixed(1)} %` : "—",
    memory: live ? `${Math.round((state.memory_bytes || 0) / 1048576)} MiB` : "—",
    viewers: config.webrtc?.enabled ? String(state.webrtc?.viewers ?? 0) : "—",
  };
  // The figure now, and beside it its line over the last 10 minutes (the SVG holds no text of its own).
  for (const [cell, figure] of Object.entries(figures)) {
    const label = row.cells[cell].dataset.label;
    row.cells[cell].replaceChildren(
      el("span", { class: "figure" }, figure),
      sparkline(trends.series(process.id, cell), `${label} of ${process.id}`),
    );
  }
  if (!row.webrtc.busy) row.webrtc.checked = Boolean(config.webrtc?.enabled);
  row.buttons.toggleOrder.textContent = state.order === "start" ? "Stop" : "Start";
  row.buttons.watch.disabled = !config.webrtc?.enabled;
  row.buttons.copy.disabled = !config.webrtc?.enabled;
}

function render() {
  const body = $("#process-rows");
  const ids = [...processes.keys()].sort();
  for (const [id, row] of rows) {
    if (!processes.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  for (const id of ids) {
    if (!rows.has(id)) rows.set(id, buildRow(id));
    const row = rows.get(id);
    renderRow(row, processes.get(id));
    body.append(row.tr); // append moves it: keeps the rows sorted without rebuilding them
  }
  $("#empty").hidden = ids.length > 0;
}

function readerCount(count) {
  return count === 1 ? "1 reader" : `${count} readers`;
}

/** How to publish over RTMP: the server URLs and the stream key rule. */
function rtmpHelp(server) {
  const secure = rtmpServerUrl(ingest.rtmp, true);
  return [
    copyable("RTMP server", server),
    ...present(secure && copyable("RTMPS server", secure)),
    el(
      "p",
      { class: "muted" },
      "Stream key: the stream NAME",
      ingest.rtmp.token ? ` followed by ?token=${ingest.rtmp.token}` : "",
      ". A process reads it with the input address {rtmp,name=NAME}.",
    ),
  ];
}

/** How to publish over SRT: the URL (stream id NAME,mode:publish) and how readers request it. */
function srtHelp() {
  return [
    copyable("SRT URL", srtPublishUrl(ingest.srt, "NAME")),
    el(
      "p",
      { class: "muted" },
      "Readers request NAME with the stream id NAME,mode:request",
      ingest.srt.passphrase_set ? "; callers must encrypt with the server's passphrase" : "",
      ". A process reads it with the input address {srt,name=NAME}.",
    ),
  ];
}

/** How to publish over WHIP: the URL per stream NAME (OBS's Server), the Bearer token when auth is on. */
function whipHelp(url) {
  return [
    copyable("WHIP URL", url),
    el(
      "p",
      { class: "muted" },
      "OBS (WHIP service) and FFmpeg (-f whip) publish to it with NAME replaced. ",
      ingest.whip.bearer_token_required ? `${WHIP_TOKEN_NOTE} ` : "",
      "A process reads it with the input address {whip,name=NAME}.",
    ),
  ];
}

function renderPublishers() {
  const rtmp = rtmpServerUrl(ingest?.rtmp);
  const srt = srtServerUrl(ingest?.srt);
  const whip = whipUrl(ingest?.whip, "NAME");
  const errors = ingestErrors(ingest);
  $("#ingest").hidden = !rtmp && !srt && !whip && errors.length === 0;
  $("#ingest-errors").replaceChildren(
    ...errors.map(({ protocol, error }) =>
      el(
        "p",
        { class: "last-error", role: "alert", "data-protocol": protocol },
        `${protocol} server is down: ${error}`,
      ),
    ),
  );
  $("#ingest-refusals").replaceChildren(
    ...ingestRefusals(ingest).map(({ protocol, remote, message }) =>
      el("li", { "data-protocol": protocol }, `${protocol} refused ${remote}: ${message}`),
    ),
  );
  $("#publish-here").replaceChildren(
    ...(rtmp ? rtmpHelp(rtmp) : []),
    ...(srt ? srtHelp() : []),
    ...(whip ? whipHelp(whip) : []),
  );
  const publishers = publisherRows(ingest);
  $("#publisher-rows").replaceChildren(
    ...publishers.map((publisher) =>
      el(
        "tr",
        { "data-publisher": publisher.name },
        el("td", { "data-label": "Protocol" }, publisher.protocol),
        el(
          "td",
          { "data-label": "Stream" },
          ...present(
            el("strong", {}, publisher.name),
            publisher.readers && el("small", { class: "muted" }, readerCount(publisher.readers.length)),
          ),
        ),
        el("td", { "data-label": "From" }, publisher.remote),
        el("td", { "data-label": "Uptime" }, duration(publisher.uptime_seconds)),
        el("td", { "data-label": "Received" }, `${(publisher.bytes_received / 1048576).toFixed(1)} MiB`),
      ),
    ),
  );
  $("#no-publishers").hidden = publishers.length > 0;
}

async function refresh() {
  const [list, ingestNow] = await Promise.all([
    api.request("GET", "/api/v3/process?filter=config,state"),
    api.request("GET", "/api/v3/ingest"),
  ]);
  ingest = ingestNow;
  processes.clear();
  for (const process of list) processes.set(process.id, process);
  render();
  await refreshFiles();
  renderPublishers();
  $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  $("#banner").hidden = true;
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    await refresh();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // the login form takes over
    showBanner(`Cannot load the processes: ${error.message}. Retrying…`);
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

function showBanner(message) {
  $("#banner").textContent = message;
  $("#banner").hidden = false;
}

// --- the files view -------------------------------------------------------------------------------------

function size(bytes) {
  if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} B`;
}

let filesystems = []; // [{name, type, mount}] from /api/v3/fs

async function refreshFiles() {
  if (!filesystems.length) {
    filesystems = await api.request("GET", "/api/v3/fs");
    $("#filesystem").replaceChildren(
      ...filesystems.map((fs) => el("option", { value: fs.name }, `${fs.name} (${fs.mount})`)),
    );
  }
  const fs = filesystems.find((candidate) => candidate.name === $("#filesystem").value) || filesystems[0];
  const files = await api.request("GET", `/api/v3/fs/${encodeURIComponent(fs.name)}?sort=name`);
  const now = Date.now() / 1000;
  const mount = fs.mount === "/" ? "" : fs.mount;
  $("#file-rows").replaceChildren(
    ...files.map((file) =>
      el(
        "tr",
        { "data-name": file.name },
        el(
          "td",
          { "data-label": "Name", "data-cell": "name" },
          el("a", { href: `${mount}${file.name}`, target: "_blank", rel: "noopener" }, file.name),
        ),
        el("td", { "data-label": "Size", "data-cell": "size" }, size(file.size_bytes)),
        el("td", { "data-label": "Age", "data-cell": "age" }, duration(now - file.last_modified)),
        el(
          "td",
          { "data-label": "Actions", "data-cell": "actions" },
          el(
            "div",
            { class: "actions" },
            el(
              "button",
              { type: "button", class: "danger", onclick: () => deleteFile(fs.name, file.name) },
              "Delete",
            ),
          ),
        ),
      ),
    ),
  );
  const total = files.reduce((sum, file) => sum + file.size_bytes, 0);
  $("#files-summary").textContent = `${files.length} files, ${size(total)}`;
  $("#no-files").hidden = files.length > 0;
}

function deleteFile(storage, name) {
  const path = name.split("/").map(encodeURIComponent).join("/");
  return act(() => api.request("DELETE", `/api/v3/fs/${encodeURIComponent(storage)}${path}`), `Deleted ${name}`);
}

// --- actions --------------------------------------------------------------------------------------------

/** Flip webrtc.enabled: PUT the stored config with the flag changed (the server restarts a running process). */
async function toggleWebrtc(id, checkbox) {
  const config = structuredClone(processes.get(id).config);
  config.webrtc = { ...config.webrtc, enabled: checkbox.checked };
  checkbox.busy = true;
  checkbox.disabled = true;
  await act(
    () => api.request("PUT", `/api/v3/process/${encodeURIComponent(id)}`, config),
    `WebRTC ${checkbox.checked ? "enabled" : "disabled"} for ${id}`,
  );
  checkbox.busy = false;
  checkbox.disabled = false;
  render();
}

async function confirmDelete(id) {
  const dialog = $("#confirm");
  dialog.querySelector(".confirm-text").textContent =
    `Delete process “${id}”? It is stopped and its config removed.`;
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue === "ok") {
    await act(() => api.request("DELETE", `/api/v3/process/${encodeURIComponent(id)}`), `Deleted ${id}`);
  }
}

const editor = new ProcessEditor($("#editor"), async (config, originalId) => {
  if (originalId) await api.request("PUT", `/api/v3/process/${encodeURIComponent(originalId)}`, config);
  else await api.request("POST", "/api/v3/process", config);
  toast(`Saved ${config.id || "the new process"}`);
  await refresh();
});

function logBlock(title, lines) {
  return [el("h3", {}, title), el("pre", { class: "log" }, lines.length ? lines.join("\n") : "(empty)")];
}

async function showReport(id) {
  const dialog = $("#report");
  dialog.querySelector(".report-title").textContent = `Log of ${id}`;
  const body = dialog.querySelector(".report-body");
  const load = async () => {
    const report = await api.request("GET", `/api/v3/process/${encodeURIComponent(id)}/report`);
    const commandLine = processes.get(id)?.state.command || [];
    const history = report.history.map((run) =>
      el(
        "details",
        {},
        el(
          "summary",
          {},
          `${time(run.created_at)} – ${time(run.exited_at)}: ${run.exit_state} (exit code ${run.exit_code ?? "none"})`,
        ),
        ...logBlock("Prelude", run.prelude),
        ...logBlock(
          "Log",
          run.log.map(([at, line]) => `${time(Number(at))}  ${line}`),
        ),
      ),
    );
    body.replaceChildren(
      ...(commandLine.length ? logBlock("Command", [commandLine.join(" ")]) : []),
      ...logBlock("Prelude", report.prelude),
      ...logBlock(
        "Log",
        report.log.map(([at, line]) => `${time(Number(at))}  ${line}`),
      ),
      el(
        "h3",
        {},
        `History (${report.history.length} earlier ${report.history.length === 1 ? "run" : "runs"})`,
      ),
      ...history,
    );
  };
  dialog.querySelector("[data-action=refresh]").onclick = () => act(load);
  body.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  dialog.showModal();
  await act(load);
}

let watchView = null;

function watch(id) {
  const dialog = $("#watch");
  watchView ||= new PlayerView(dialog.querySelector(".watch-player"));
  const url = whepUrl(id);
  dialog.querySelector(".watch-title").textContent = `Watching ${id}`;
  dialog.querySelector(".watch-open").href = `/whep-player.html?url=${encodeURIComponent(url)}`;
  dialog.querySelector("[data-action=copy]").onclick = (event) => copyText(url, event.currentTarget);
  dialog.showModal();
  watchView.play(url, () => api.accessToken); // a function: the token is refreshed while watching
}

// --- login and start ------------------------------------------------------------------------------------

function showLogin(message = "") {
  clearTimeout(pollTimer);
  trends.stop();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("#processes").hidden = true;
  $("#files").hidden = true;
  $("#ingest").hidden = true;
  $("#user").hidden = true;
  const form = $("#login");
  form.hidden = false;
  form.querySelector(".login-error").textContent = message;
  form.username.focus();
}

function showApp() {
  $("#login").hidden = true;
  $("#processes").hidden = false;
  $("#files").hidden = false;
  $("#user").hidden = !api.loggedIn;
  $("#user-name").textContent = api.username;
  poll();
  trends.start();
}

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  try {
    await api.login(form.username.value, form.password.value);
    form.password.value = "";
    showApp();
  } catch (error) {
    form.querySelector(".login-error").textContent = error.message;
  }
});
$("#logout").addEventListener("click", () => {
  api.logout();
  showLogin("Logged out.");
});
$("#new-process").addEventListener("click", () => editor.open());
$("#filesystem").addEventListener("change", () => act(refreshFiles));
for (const dialog of [$("#report"), $("#watch")]) {
  dialog.querySelector("[data-action=close]").addEventListener("click", () => dialog.close());
}
$("#watch").addEventListener("close", () => watchView?.stop());
api.addEventListener("loginrequired", (event) => showLogin(event.detail));

async function start() {
  try {
    const about = await api.loadAbout();
    // Without a token datarhei's /api leaves the name out; version.number is the datarhei API version.
    $("#server-name").textContent = about.name || "dragonfork";
  } catch (error) {
    showBanner(`Cannot reach the server: ${error.message}. Reload to try again.`);
    return;
  }
  if (api.authRequired && !api.loggedIn) showLogin();
  else showApp();
}

start();
