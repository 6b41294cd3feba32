// Live trends per process: the last 10 minutes of FPS, bitrate, CPU, memory and viewers from the server's
// metrics history (datarhei's POST /api/v3/metrics), drawn as small SVG lines beside the current figures.

const SVG = "http://www.w3.org/2000/svg";
export const TREND_SECONDS = 600;
const INTERVAL_SECONDS = 5; // one point per 5 s: up to 120 points per line
const MIN_SPAN_SECONDS = 30; // a young process's line spans at least this, so two points are not a wall
const REFRESH_MS = 5000;

// table cell → the metric that draws its line
export const TREND_METRICS = {
  fps: "dragonfork_process_fps",
  bitrate: "dragonfork_process_bitrate_kbits",
  cpu: "dragonfork_process_cpu_percent",
  memory: "dragonfork_process_memory_bytes",
  viewers: "dragonfork_webrtc_viewers_active",
};

/** Polls the metrics history; `series(processId, cell)` is that process's [[unix s, value], ...]. */
export class Trends {
  #api;
  #byProcess = new Map(); // id → {cell: values}
  #timer = null;
  #onUpdate;

  constructor(api, onUpdate) {
    this.#api = api;
    this.#onUpdate = onUpdate;
  }

  start() {
    this.stop();
    const tick = async () => {
      try {
        await this.#load();
        this.#onUpdate();
      } catch {
        // the table keeps its numbers; the lines come back with the next answer (metrics may be off)
      }
      this.#timer = setTimeout(tick, REFRESH_MS);
    };
    tick();
  }

  stop() {
    clearTimeout(this.#timer);
    this.#timer = null;
  }

  series(processId, cell) {
    return this.#byProcess.get(processId)?.[cell] || [];
  }

  async #load() {
    const cells = Object.keys(TREND_METRICS);
    const answer = await this.#api.request("POST", "/api/v3/metrics", {
      timerange_sec: TREND_SECONDS,
      interval_sec: INTERVAL_SECONDS,
      metrics: cells.map((cell) => ({ name: TREND_METRICS[cell] })),
    });
    const byProcess = new Map();
    for (const series of answer.metrics) {
      const cell = cells.find((key) => TREND_METRICS[key] === series.name);
      const id = series.labels?.process;
      if (!cell || !id) continue;
      if (!byProcess.has(id)) byProcess.set(id, {});
      byProcess.get(id)[cell] = series.values;
    }
    this.#byProcess = byProcess;
  }
}

/** An SVG line of `values` ([[unix s, value], ...]) from its first point (at most TREND_SECONDS ago) to now,
 * scaled to its own maximum, over a faint baseline. */
export function sparkline(values, label, width = 72, height = 22) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "trend");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${label}, last ${TREND_SECONDS / 60} minutes`);
  if (values.length < 2) return svg;
  const now = Math.max(Date.now() / 1000, values[values.length - 1][0]);
  const span = Math.min(TREND_SECONDS, Math.max(MIN_SPAN_SECONDS, now - values[0][0]));
  const top = Math.max(...values.map(([, value]) => value)) || 1;
  const points = values.map(([at, value]) => {
    const x = width - ((now - at) / span) * width;
    const y = height - 1 - (value / top) * (height - 3);
    return `${Math.max(0, x).toFixed(1)},${y.toFixed(1)}`;
  });
  const baseline = document.createElementNS(SVG, "line");
  for (const [name, value] of Object.entries({ x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 })) {
    baseline.setAttribute(name, String(value));
  }
  baseline.setAttribute("class", "baseline");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(baseline, line);
  return svg;
}
