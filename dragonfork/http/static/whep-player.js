// A WHEP player for the browser: no dependencies, used by /whep-player.html and by the admin UI's "Watch".
//
// WhepPlayer speaks WHEP (POST the offer, PATCH late ICE candidates, DELETE the session), reconnects with
// backoff, and turns getStats() into the figures a person wants to see. PlayerView wraps it in a <video>,
// an unmute button, a status line and a stats table.

const STATS_INTERVAL_MS = 1000;
const DISCONNECT_GRACE_MS = 4000; // ICE "disconnected" often recovers by itself; give it this long
const DELETE_WAIT_MS = 2000; // Stop closes the connection when its DELETE is answered, or after this long
const MAX_BACKOFF_S = 30;
const PROCESS_DOWN_STATES = new Set(["finished", "finishing", "failed", "killed"]);

/** The number of seconds in a Retry-After header (delta-seconds or an HTTP date), or null. */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/** The sentence a person reads for a failed WHEP POST; `{s}` becomes the seconds until the retry. */
function statusSentence(status) {
  switch (status) {
    case 400:
      return "The server could not use this browser's offer (400 Bad Request).";
    case 401:
      return "Not authorized (401): the token is missing, wrong or expired.";
    case 403:
      return "Forbidden (403): this token may not watch this stream.";
    case 404:
      return "No such stream (404): check the URL; the process may not exist or may not have WebRTC enabled.";
    case 406:
      return "This browser and the stream have no codec in common (406); the stream sends H.264 and Opus.";
    case 409:
      return "The stream is not live yet (409), retrying in {s} s.";
    case 413:
      return "The offer is larger than the server accepts (413).";
    case 415:
      return "The server refused the request's content type (415).";
    case 503:
      return "The stream is full, try again in {s} s (503). Retrying automatically.";
    case 504:
      return "The server could not finish the connection in time (504), retrying in {s} s.";
    default:
      return `The server answered ${status}, retrying in {s} s.`;
  }
}

/** Statuses worth retrying: the stream may come, free a seat, or the server may recover. */
function isRetryable(status) {
  return status === 409 || status === 503 || status >= 500;
}

function browserDecodesH264() {
  const codecs = RTCRtpReceiver.getCapabilities?.("video")?.codecs || [];
  return codecs.some((codec) => codec.mimeType.toLowerCase() === "video/h264");
}

/** The error body's message and its details as {field: text} (datarhei's ["field: text", ...]). */
async function readErrorBody(response) {
  try {
    const body = await response.json();
    const details = {};
    for (const entry of Array.isArray(body.details) ? body.details : []) {
      const named = /^([\w.]+): (.*)$/s.exec(String(entry));
      if (named) details[named[1]] = named[2];
    }
    return { message: body.message || "", details };
  } catch {
    return { message: "", details: {} };
  }
}

const H264_PROFILES = { 0x42: "Baseline", 0x4d: "Main", 0x58: "Extended", 0x64: "High" };

/** "Constrained Baseline, level 3.1" for an fmtp line with profile-level-id=42e01f. */
function h264ProfileName(fmtpLine) {
  const match = /profile-level-id=([0-9a-f]{6})/i.exec(fmtpLine || "");
  if (!match) return "";
  const [profile, constraints, level] = [0, 2, 4].map((i) => parseInt(match[1].slice(i, i + 2), 16));
  let name = H264_PROFILES[profile] || `profile 0x${match[1].slice(0, 2)}`;
  if (profile === 0x42 && constraints & 0x40) name = "Constrained Baseline";
  return `${name}, level ${(level / 10).toFixed(1)}`;
}

/** An RFC 8840 sdpfrag with the ICE credentials, one m-line per mid and the candidates under it. */
function sdpFragment(localSdp, candidates, endOfCandidates) {
  const lines = localSdp.split(/\r?\n/);
  const ufrag = lines.find((line) => line.startsWith("a=ice-ufrag:"));
  const pwd = lines.find((line) => line.startsWith("a=ice-pwd:"));
  const mediaLines = {}; // mid -> its m= line
  let currentMedia = null;
  for (const line of lines) {
    if (line.startsWith("m=")) currentMedia = line;
    else if (line.startsWith("a=mid:") && currentMedia) mediaLines[line.slice(6)] = currentMedia;
  }
  const firstMid = Object.keys(mediaLines)[0];
  const byMid = new Map();
  for (const candidate of candidates) {
    const mid = candidate.sdpMid ?? firstMid;
    if (!byMid.has(mid)) byMid.set(mid, []);
    byMid.get(mid).push(`a=${candidate.candidate}`);
  }
  if (endOfCandidates && !byMid.size) byMid.set(firstMid, []);
  const out = [ufrag, pwd];
  for (const [mid, candidateLines] of byMid) {
    out.push(mediaLines[mid] ?? mediaLines[firstMid], `a=mid:${mid}`, ...candidateLines);
    if (endOfCandidates) out.push("a=end-of-candidates");
  }
  return out.filter(Boolean).join("\r\n") + "\r\n";
}

function describeCandidate(candidate) {
  if (!candidate) return "?";
  // Chromium hides its own host addresses behind mDNS names and reports no address for them.
  let address = candidate.address || candidate.ip || "mDNS";
  if (address.includes(":")) address = `[${address}]`;
  return `${address}:${candidate.port} ${candidate.candidateType}/${candidate.protocol}`;
}

/**
 * One WHEP viewer on a <video> element.
 *
 * Events: "statechange" (detail {state, message, detail}) and "stats" (detail: the latest stats object).
 * States: idle, connecting, connected (waiting for the first frame), playing, waiting (a retry is scheduled),
 * ended (the process is not running; still watching for it to come back), error (gave up; needs the user).
 */
export class WhepPlayer extends EventTarget {
  state = "idle";
  message = "Stopped.";
  detail = ""; // the server's own message, shown under the sentence
  stats = null;

  #url = "";
  #token = null; // a string or a function returning the current token
  #session = null; // {pc, location, pending candidates, trickle counters, closed, …}
  #generation = 0; // increases with each connection attempt; stale async work compares and bails out
  #attempt = 0; // failed attempts in a row, for the backoff
  #hadPlayed = false; // this play() has been connected at least once (a 404 then means "ended")
  #startedAt = 0; // performance.now() at Play (or at the reconnect), for the time to first frame
  #firstFrameMs = null;
  #timers = new Set();
  #previous = {}; // last byte counters per kind, for bitrates

  constructor(video) {
    super();
    this.video = video;
    video.muted = true; // browsers allow muted autoplay; the view offers an unmute button
    video.autoplay = true;
    video.playsInline = true;
    window.addEventListener("pagehide", () => this.#closeSession({ keepalive: true }));
  }

  /** Start watching `url`; `token` is a Bearer token string, a function returning one, or empty. */
  play(url, token = null) {
    this.stop();
    try {
      this.#url = new URL(url, location.href).href;
    } catch {
      this.#fail(`Not a URL: ${url}`);
      return;
    }
    this.#token = token;
    this.#attempt = 0;
    this.#hadPlayed = false;
    this.#startedAt = performance.now();
    this.#connect();
  }

  /** Stop watching: DELETE the session, close the connection, blank the video. */
  stop() {
    this.#generation++;
    this.#clearTimers();
    this.#closeSession();
    this.video.srcObject = null;
    this.detail = "";
    if (this.state !== "idle") this.#setState("idle", "Stopped.");
  }

  async #headers(extra) {
    const token = typeof this.#token === "function" ? await this.#token() : this.#token;
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
  }

  async #connect() {
    const generation = ++this.#generation;
    this.detail = "";
    this.#setState("connecting", this.#attempt ? "Reconnecting…" : "Connecting…");
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    const session = { pc, location: null, pending: [], endOfCandidates: false, patching: false };
    session.trickle = { candidates: 0, requests: 0, lastStatus: null };
    this.#session = session;
    const stream = new MediaStream();
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    pc.ontrack = (event) => {
      stream.addTrack(event.track);
      if (this.video.srcObject !== stream) {
        this.video.srcObject = stream;
        this.video.play().catch(() => {}); // muted autoplay; a refusal leaves the video's own controls
      }
    };
    pc.onicecandidate = (event) => this.#queueCandidate(session, event.candidate);
    pc.onconnectionstatechange = () => this.#onConnectionState(session);
    this.#watchFirstFrame(generation);

    let response;
    try {
      await pc.setLocalDescription(await pc.createOffer());
      response = await fetch(this.#url, {
        method: "POST",
        headers: await this.#headers({ "Content-Type": "application/sdp" }),
        body: pc.localDescription.sdp,
      });
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#closeSession();
      this.#retry(`Cannot reach the server (${error.message}), retrying in {s} s.`);
      return;
    }
    if (response.status === 201) {
      session.location = new URL(response.headers.get("Location"), this.#url).href;
    }
    if (generation !== this.#generation) {
      this.#closeSession({ session }); // stopped while the POST was in flight
      return;
    }
    if (response.status !== 201) {
      this.#closeSession();
      await this.#onRefused(response);
      return;
    }
    try {
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#closeSession();
      this.#fail(`The server's answer could not be used: ${error.message}`);
      return;
    }
    // Chromium reports the server's DTLS close (process stopped, session DELETEd) here at once; the
    // connection state would only turn "disconnected" seconds later.
    const transport = pc.getReceivers()[0]?.transport;
    transport?.addEventListener("statechange", () => {
      if (transport.state === "closed" && session === this.#session)
        this.#reconnect("The server ended the session.");
      if (transport.state === "failed" && session === this.#session)
        this.#reconnect("The secure connection failed.");
    });
    this.#flushCandidates(session);
    this.#schedule(() => this.#pollStats(session, generation), STATS_INTERVAL_MS);
  }

  async #onRefused(response) {
    const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
    const { message, details } = await readErrorBody(response);
    this.detail = message;
    const processState = details && details.state;
    if (response.status === 409 && PROCESS_DOWN_STATES.has(processState)) {
      const sentence = this.#hadPlayed ? "The stream has ended" : "The stream is offline";
      this.#retry(
        `${sentence}: the process is ${processState}. Checking again in {s} s.`,
        retryAfter,
        "ended",
      );
    } else if (response.status === 404 && this.#hadPlayed) {
      this.#setState("ended", "The stream has ended: the process was deleted or no longer serves WebRTC.");
    } else if (isRetryable(response.status)) {
      this.#retry(statusSentence(response.status), retryAfter);
    } else if (response.status === 406 && !browserDecodesH264()) {
      this.#fail(
        "This browser offers no H.264 for WebRTC, the stream's video codec (406). In Firefox, enable the " +
          "OpenH264 plugin (about:addons → Plugins); it is downloaded on first use and needs the internet.",
      );
    } else {
      this.#fail(statusSentence(response.status));
    }
  }

  #onConnectionState(session) {
    if (session !== this.#session) return;
    const state = session.pc.connectionState;
    if (state === "connected") {
      this.#attempt = 0;
      this.#hadPlayed = true;
      if (this.state !== "playing") this.#setState("connected", "Connected, waiting for the first frame…");
    } else if (state === "failed") {
      this.#reconnect("The connection failed.");
    } else if (state === "disconnected") {
      this.#schedule(() => {
        if (session === this.#session && session.pc.connectionState === "disconnected") {
          this.#reconnect("The connection was lost.");
        }
      }, DISCONNECT_GRACE_MS);
    }
  }

  #watchFirstFrame(generation) {
    this.#firstFrameMs = null;
    const seen = () => {
      if (generation !== this.#generation || this.#firstFrameMs !== null) return;
      this.#firstFrameMs = Math.round(performance.now() - this.#startedAt);
      this.detail = "";
      this.#setState("playing", "Playing.");
    };
    if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
      this.video.requestVideoFrameCallback(seen);
    } else {
      this.video.addEventListener("loadeddata", seen, { once: true });
    }
  }

  #reconnect(reason) {
    this.#generation++; // the old session's events and timers are stale from here on
    this.#clearTimers();
    this.#closeSession();
    this.#retry(`${reason} Reconnecting in {s} s.`);
  }

  /** Schedule the next attempt after a backoff (at least `retryAfter` seconds), counting down in the message. */
  #retry(template, retryAfter = null, state = "waiting") {
    const backoff = Math.min(MAX_BACKOFF_S, 2 ** this.#attempt);
    this.#attempt++;
    let remaining = Math.max(retryAfter ?? 0, backoff);
    const generation = this.#generation;
    const tick = () => {
      if (generation !== this.#generation) return;
      if (remaining <= 0) {
        this.#startedAt = performance.now();
        this.#connect();
        return;
      }
      this.#setState(state, template.replaceAll("{s}", remaining));
      remaining--;
      this.#schedule(tick, 1000);
    };
    tick();
  }

  #fail(message) {
    this.#generation++;
    this.#clearTimers();
    this.#setState("error", message);
  }

  #queueCandidate(session, candidate) {
    if (candidate && candidate.candidate) session.pending.push(candidate);
    else session.endOfCandidates = true;
    if (session.location) this.#flushCandidates(session);
  }

  /** PATCH the candidates the browser produced after (or while) the offer was posted; one request at a time. */
  async #flushCandidates(session) {
    if (session.patching || !session.location || session.closed) return;
    const candidates = session.pending.splice(0);
    const end = session.endOfCandidates && !session.endSent;
    if (!candidates.length && !end) return;
    session.patching = true;
    session.endSent = session.endSent || end;
    try {
      const response = await fetch(session.location, {
        method: "PATCH",
        headers: await this.#headers({ "Content-Type": "application/trickle-ice-sdpfrag" }),
        body: sdpFragment(session.pc.localDescription.sdp, candidates, end),
      });
      session.trickle.candidates += candidates.length;
      session.trickle.requests++;
      session.trickle.lastStatus = response.status;
    } catch {
      // A lost PATCH only costs a candidate; the connectivity checks find the browser anyway.
    } finally {
      session.patching = false;
    }
    this.#flushCandidates(session);
  }

  /** DELETE the WHEP session (idempotent on the server; status ignored) and close the peer connection. */
  #closeSession({ keepalive = false, session = this.#session } = {}) {
    if (!session || session.closed) return;
    session.closed = true;
    if (session === this.#session) {
      this.#session = null;
      this.stats = null;
      this.dispatchEvent(new CustomEvent("stats", { detail: null }));
    }
    if (!session.location || keepalive) {
      if (session.location) this.#deleteSession(session.location, keepalive);
      session.pc.close(); // no session yet, or the page is leaving: no time to wait for an answer
      return;
    }
    // The connection closes once the DELETE is answered (or after DELETE_WAIT_MS): the server then ends
    // the session for the DELETE, and our DTLS close does not race the request to the server.
    const waited = new Promise((resolve) => setTimeout(resolve, DELETE_WAIT_MS));
    Promise.race([this.#deleteSession(session.location, keepalive), waited]).then(() => session.pc.close());
  }

  /** The DELETE request; resolves when it is answered or failed. */
  #deleteSession(location, keepalive) {
    const send = (token) =>
      fetch(location, {
        method: "DELETE",
        keepalive, // lets the request outlive the page on unload
        headers: token ? { Authorization: `Bearer ${token}` } : {},
      }).catch(() => {});
    const token = typeof this.#token === "function" ? this.#token() : this.#token;
    // Send at once when the token is at hand: on page unload there is no time to wait for a promise.
    return token instanceof Promise ? token.then(send) : send(token);
  }

  #schedule(callback, delayMs) {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      callback();
    }, delayMs);
    this.#timers.add(timer);
  }

  #clearTimers() {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
  }

  #setState(state, message) {
    this.state = state;
    this.message = message;
    this.dispatchEvent(new CustomEvent("statechange", { detail: { state, message, detail: this.detail } }));
  }

  async #pollStats(session, generation) {
    if (generation !== this.#generation || session.closed) return;
    try {
      this.stats = this.#summarize(session, await session.pc.getStats());
      this.dispatchEvent(new CustomEvent("stats", { detail: this.stats }));
    } catch {
      // getStats() fails once the connection is closed; the next session starts its own polling
    }
    this.#schedule(() => this.#pollStats(session, generation), STATS_INTERVAL_MS);
  }

  /** The figures of one getStats() report (Chromium and Firefox spell some of them differently). */
  #summarize(session, report) {
    const all = [...report.values()];
    const byId = new Map(all.map((entry) => [entry.id, entry]));
    const inbound = (kind) =>
      all.find((entry) => entry.type === "inbound-rtp" && (entry.kind || entry.mediaType) === kind);
    const video = inbound("video") || {};
    const audio = inbound("audio") || {};
    const transport = all.find((entry) => entry.type === "transport") || {};
    const pair =
      byId.get(transport.selectedCandidatePairId) ||
      all.find(
        (entry) =>
          entry.type === "candidate-pair" &&
          (entry.selected || (entry.nominated && entry.state === "succeeded")),
      );
    const codec = byId.get(video.codecId) || {};
    const dtlsTransport = session.pc.getReceivers()[0]?.transport;
    const jitterCount = video.jitterBufferEmittedCount;
    return {
      connection: session.pc.connectionState,
      ice: transport.iceState || session.pc.iceConnectionState,
      dtls: transport.dtlsState || dtlsTransport?.state || "?",
      candidatePair: pair
        ? {
            local: describeCandidate(byId.get(pair.localCandidateId)),
            remote: describeCandidate(byId.get(pair.remoteCandidateId)),
            rttMs: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000) : null,
          }
        : null,
      codec: codec.mimeType ? codec.mimeType.replace(/^video\//, "") : "",
      fmtp: codec.sdpFmtpLine || "",
      profile: h264ProfileName(codec.sdpFmtpLine),
      width: video.frameWidth || 0,
      height: video.frameHeight || 0,
      fps: video.framesPerSecond ?? null,
      framesDecoded: video.framesDecoded || 0,
      videoKbps: this.#bitrate("video", video),
      audioKbps: this.#bitrate("audio", audio),
      audioPacketsReceived: audio.packetsReceived || 0,
      packetsLost: (video.packetsLost || 0) + (audio.packetsLost || 0),
      jitterBufferMs: jitterCount ? Math.round((video.jitterBufferDelay / jitterCount) * 1000) : null,
      freezeCount: video.freezeCount ?? null,
      firstFrameMs: this.#firstFrameMs,
      trickle: { ...session.trickle },
    };
  }

  #bitrate(kind, entry) {
    const previous = this.#previous[kind];
    this.#previous[kind] = { bytes: entry.bytesReceived || 0, at: entry.timestamp || 0 };
    if (
      !previous ||
      !entry.timestamp ||
      entry.timestamp <= previous.at ||
      entry.bytesReceived < previous.bytes
    ) {
      return null;
    }
    return Math.round(((entry.bytesReceived - previous.bytes) * 8) / (entry.timestamp - previous.at));
  }
}

const STAT_ROWS = [
  ["connection", "Connection", (s) => s.connection],
  ["transport", "ICE · DTLS", (s) => `${s.ice} · ${s.dtls}`],
  [
    "pair",
    "Candidate pair",
    (s) => (s.candidatePair ? `${s.candidatePair.local} ⇄ ${s.candidatePair.remote}` : "—"),
  ],
  ["rtt", "Round trip", (s) => (s.candidatePair?.rttMs != null ? `${s.candidatePair.rttMs} ms` : "—")],
  ["codec", "Video codec", (s) => (s.codec ? `${s.codec}${s.profile ? ` (${s.profile})` : ""}` : "—")],
  ["fmtp", "fmtp", (s) => s.fmtp || "—"],
  ["resolution", "Resolution", (s) => (s.width ? `${s.width}×${s.height}` : "—")],
  ["fps", "Frames per second", (s) => (s.fps != null ? String(s.fps) : "—")],
  ["framesDecoded", "Frames decoded", (s) => String(s.framesDecoded)],
  ["videoBitrate", "Video bitrate", (s) => (s.videoKbps != null ? `${s.videoKbps} kbit/s` : "—")],
  ["audioBitrate", "Audio bitrate", (s) => (s.audioKbps != null ? `${s.audioKbps} kbit/s` : "—")],
  ["audioPackets", "Audio packets", (s) => String(s.audioPacketsReceived)],
  ["packetsLost", "Packets lost", (s) => String(s.packetsLost)],
  ["jitterBuffer", "Jitter buffer delay", (s) => (s.jitterBufferMs != null ? `${s.jitterBufferMs} ms` : "—")],
  ["freezes", "Freezes", (s) => (s.freezeCount != null ? String(s.freezeCount) : "n/a")],
  ["firstFrame", "Play → first frame", (s) => (s.firstFrameMs != null ? `${s.firstFrameMs} ms` : "—")],
  [
    "trickle",
    "Trickled candidates",
    (s) =>
      `${s.trickle.candidates} in ${s.trickle.requests} PATCH${s.trickle.lastStatus ? ` (${s.trickle.lastStatus})` : ""}`,
  ],
];

// What the video area says while there is no picture.
const OVERLAY_TEXT = {
  idle: "Press Play",
  connecting: "Connecting…",
  connected: "Connecting…",
  waiting: "Waiting for the stream…",
  ended: "Stream ended",
  error: "Cannot play this stream",
};

/** A WhepPlayer with its video, unmute button, status line and stats table, built inside `container`. */
export class PlayerView {
  constructor(container) {
    container.classList.add("player");
    container.innerHTML = `
      <div class="player-video">
        <video muted autoplay playsinline></video>
        <p class="player-overlay"></p>
        <button type="button" class="player-unmute">Unmute</button>
      </div>
      <p class="player-status" data-state="idle" role="status" aria-live="polite">
        <span class="player-state"></span> <span class="player-message"></span>
        <small class="player-detail"></small>
      </p>
      <dl class="player-stats"></dl>`;
    this.video = container.querySelector("video");
    this.player = new WhepPlayer(this.video);
    this.status = container.querySelector(".player-status");
    this.statsList = container.querySelector(".player-stats");
    this.unmute = container.querySelector(".player-unmute");
    this.overlay = container.querySelector(".player-overlay");
    this.unmute.addEventListener("click", () => {
      this.video.muted = !this.video.muted;
      if (!this.video.muted) this.video.play().catch(() => {});
      this.#renderMute();
    });
    this.video.addEventListener("volumechange", () => this.#renderMute());
    this.cells = {};
    for (const [key, label] of STAT_ROWS) {
      const term = document.createElement("dt");
      term.textContent = label;
      const value = document.createElement("dd");
      value.dataset.stat = key;
      value.textContent = "—";
      this.statsList.append(term, value);
      this.cells[key] = value;
    }
    this.player.addEventListener("statechange", (event) => this.#renderState(event.detail));
    this.player.addEventListener("stats", (event) => this.#renderStats(event.detail));
    this.#renderState({ state: this.player.state, message: this.player.message, detail: "" });
  }

  play(url, token) {
    this.player.play(url, token);
  }

  stop() {
    this.player.stop();
  }

  #renderMute() {
    this.unmute.textContent = this.video.muted ? "Unmute" : "Mute";
    this.unmute.classList.toggle("is-muted", this.video.muted);
  }

  #renderState({ state, message, detail }) {
    this.status.dataset.state = state;
    this.status.querySelector(".player-state").textContent = state;
    this.status.querySelector(".player-message").textContent = message;
    this.status.querySelector(".player-detail").textContent = detail ? `Server: ${detail}` : "";
    this.overlay.textContent = OVERLAY_TEXT[state] || "";
    this.overlay.hidden = !this.overlay.textContent;
  }

  #renderStats(stats) {
    for (const [key, , format] of STAT_ROWS) this.cells[key].textContent = stats ? format(stats) : "—";
  }
}
