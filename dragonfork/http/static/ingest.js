// Where encoders publish: the server URL and stream key of each ingest protocol, from GET /api/v3/ingest.
//
// The API says which port and app the RTMP server uses; the host is the one this page was loaded from (the
// server's own "localhost" means nothing to OBS on another machine). OBS and most encoders take the server
// URL and the stream key apart; FFmpeg takes them joined. WHIP has one URL per stream (OBS: "Server") and,
// when the API needs authentication, an access token as the Bearer token.

const RTMP_INPUT = /\{rtmp,name=([^{}]*)\}/;
const SRT_INPUT = /\{srt,name=([^{},]*)[^{}]*\}/;
const WHIP_INPUT = /\{whip,name=([^{}]*)\}/;

/** The WHIP endpoint of stream NAME on this server, or null when WHIP ingest is off. */
export function whipUrl(whip, name) {
  if (!whip?.enabled) return null;
  return `${location.origin}${whip.path}/${encodeURIComponent(name)}`;
}

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
      const fields = [["RTMP server", server], ["Stream key", key], ["FFmpeg URL", `${server}/${key}`]];
      targets.push({ protocol: "RTMP", fields });
    }
    const whip = WHIP_INPUT.exec(address);
    const endpoint = whip && whipUrl(ingest?.whip, whip[1]);
    if (endpoint) {
      const token = ingest.whip.bearer_token_required;
      targets.push({ protocol: "WHIP", fields: [["WHIP URL", endpoint]], token });
    }
    const srt = SRT_INPUT.exec(address);
    if (srt && ingest?.srt?.enabled) {
      const key = srtStreamId(ingest.srt, srt[1]);
      const url = srtPublishUrl(ingest.srt, srt[1]);
      const fields = [["SRT server", srtServerUrl(ingest.srt)], ["Stream id", key], ["FFmpeg URL", url]];
      targets.push({ protocol: "SRT", fields });
    }
  }
  return targets;
}

/** Every live publisher of every protocol, as table rows. */
export function publisherRows(ingest) {
  const rows = [];
  for (const publisher of ingest?.rtmp?.publishers || []) rows.push({ protocol: "RTMP", ...publisher });
  for (const publisher of ingest?.srt?.publishers || []) rows.push({ protocol: "SRT", ...publisher });
  for (const publisher of ingest?.whip?.publishers || []) rows.push({ protocol: "WHIP", ...publisher });
  return rows;
}

/** The ingest servers that are down and why (a config reload could not restart them: address in use, ...). */
export function ingestErrors(ingest) {
  return [
    ["RTMP", ingest?.rtmp],
    ["SRT", ingest?.srt],
    ["WHIP", ingest?.whip],
  ]
    .filter(([, server]) => server?.error)
    .map(([protocol, server]) => ({ protocol, error: server.error }));
}

/** The clients the RTMP and SRT servers refused last (wrong token, name taken, ...), newest first. */
export function ingestRefusals(ingest) {
  return [
    ...(ingest?.rtmp?.refused || []).map((refusal) => ({ protocol: "RTMP", ...refusal })),
    ...(ingest?.srt?.refused || []).map((refusal) => ({ protocol: "SRT", ...refusal })),
  ].sort((a, b) => b.at - a.at);
}

/** The address of an input fed by a publisher of `protocol` under `name` (the process form's shortcut). */
export function ingestAddress(protocol, name) {
  return `{${protocol},name=${name}}`;
}
