// Where encoders publish: the server URL and stream key of each ingest protocol, from GET /api/v3/ingest.
//
// The API says which port and app the RTMP server uses; the host is the one this page was loaded from (the
// server's own "localhost" means nothing to OBS on another machine). OBS and most encoders take the server
// URL and the stream key apart; FFmpeg takes them joined.

const RTMP_INPUT = /\{rtmp,name=([^{}]*)\}/;
const SRT_INPUT = /\{srt,name=([^{},]*)[^{}]*\}/;

/** The RTMP server URL an encoder connects to, or null when the RTMP server is off. */
export function rtmpServerUrl(rtmp, secure = false) {
  if (!rtmp?.enabled) return null;
  const port = secure ? rtmp.tls_port : rtmp.port;
  if (port == null) return null;
  const app = rtmp.app === "/" ? "" : rtmp.app;
  return `${secure ? "rtmps" : "rtmp"}://${location.hostname}:${port}${app}`;
}

/** The stream key for stream NAME: the name, with the token when the server wants one. */
export function rtmpStreamKey(rtmp, name) {
  return rtmp.token ? `${name}?token=${rtmp.token}` : name;
}

/** The SRT server an encoder calls, or null when the SRT server is off. */
export function srtServerUrl(srt) {
  if (!srt?.enabled) return null;
  return `srt://${location.hostname}:${srt.port}`;
}

/** The stream id that publishes stream NAME (datarhei's form, with the token when the server wants one). */
export function srtStreamId(srt, name) {
  return `${name},mode:publish${srt.token ? `,token:${srt.token}` : ""}`;
}

/** The whole SRT URL for FFmpeg; the passphrase (when the server has one) is left for the user to add. */
export function srtPublishUrl(srt, name) {
  const passphrase = srt.passphrase_set ? "&passphrase=PASSPHRASE" : "";
  return `${srtServerUrl(srt)}?streamid=${srtStreamId(srt, name)}${passphrase}`;
}

/** What to paste into an encoder for each input of `config` that an ingest protocol feeds. */
export function publishTargets(config, ingest) {
  const targets = [];
  for (const input of config.input || []) {
    const address = input.address || "";
    const match = RTMP_INPUT.exec(address);
    const server = rtmpServerUrl(ingest?.rtmp);
    if (match && server) {
      const key = rtmpStreamKey(ingest.rtmp, match[1]);
      targets.push({ protocol: "RTMP", server, key, url: `${server}/${key}` });
    }
    const srt = SRT_INPUT.exec(address);
    if (srt && ingest?.srt?.enabled) {
      const key = srtStreamId(ingest.srt, srt[1]);
      const url = srtPublishUrl(ingest.srt, srt[1]);
      targets.push({ protocol: "SRT", server: srtServerUrl(ingest.srt), keyLabel: "Stream id", key, url });
    }
  }
  return targets;
}

/** Every live publisher of every protocol, as table rows. */
export function publisherRows(ingest) {
  const rows = [];
  for (const publisher of ingest?.rtmp?.publishers || []) rows.push({ protocol: "RTMP", ...publisher });
  for (const publisher of ingest?.srt?.publishers || []) rows.push({ protocol: "SRT", ...publisher });
  return rows;
}

/** The address of an input fed by a publisher of `protocol` under `name` (the process form's shortcut). */
export function ingestAddress(protocol, name) {
  return `{${protocol},name=${name}}`;
}
