// The create/edit dialog of a process: a form for the usual fields, a raw JSON editor for everything, and the
// API's validation errors shown beside the field they name.
//
// The form edits a copy of the stored config, so fields it does not show (cleanup rules, fields of newer
// versions) survive an edit. The API is the only validator (the form is novalidate): what it says is shown.

import { ApiError } from "./api.js";
import { ingestAddress } from "./ingest.js";

/** Split FFmpeg options typed as one line, shell-like: whitespace separates, quotes group. */
export function splitOptions(text) {
  const options = [];
  const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let current = null;
  let lastEnd = -1;
  for (const match of text.matchAll(pattern)) {
    const part = match[1] ?? match[2] ?? match[3];
    if (current !== null && match.index === lastEnd)
      current += part; // -metadata title="a b" is one option
    else {
      if (current !== null) options.push(current);
      current = part;
    }
    lastEnd = match.index + match[0].length;
  }
  if (current !== null) options.push(current);
  return options;
}

/** The inverse of splitOptions: quote what needs quoting. */
export function joinOptions(options) {
  return (options || [])
    .map((option) => {
      if (option !== "" && !/[\s"']/.test(option)) return option;
      return option.includes('"') ? `'${option}'` : `"${option}"`;
    })
    .join(" ");
}

const NUMBER_FIELDS = [
  ["reconnect_delay_seconds"],
  ["stale_timeout_seconds"],
  ["limits", "cpu_usage"],
  ["limits", "memory_mbytes"],
  ["limits", "waitfor_seconds"],
  ["webrtc", "keyframe_interval_seconds"],
  ["webrtc", "video_bitrate_kbit"],
];
const TEXT_FIELDS = [["id"], ["reference"], ["webrtc", "video_map"], ["webrtc", "audio_map"]];
const BOOLEAN_FIELDS = [["autostart"], ["reconnect"], ["webrtc", "enabled"], ["webrtc", "force_transcode"]];

const IO_PLACEHOLDERS = {
  input: ["rtmp://…, srt://…, a file in the data directory, or a lavfi graph", "-re -f lavfi"],
  output: ["{diskfs}/{processid}.m3u8, rtmp://…", "-c:v libx264 -preset veryfast -f hls"],
};

// The order of the keys in the JSON editor for a new process (undefined ones are left out).
const CONFIG_KEY_ORDER = Object.fromEntries(
  ["id", "reference", "input", "output", "options", "autostart", "reconnect", "reconnect_delay_seconds"]
    .concat(["stale_timeout_seconds", "limits", "webrtc"])
    .map((key) => [key, undefined]),
);

function getPath(object, path) {
  return path.reduce((value, key) => (value == null ? undefined : value[key]), object);
}

function setPath(object, path, value) {
  let target = object;
  for (const key of path.slice(0, -1)) {
    if (typeof target[key] !== "object" || target[key] === null) target[key] = {};
    target = target[key];
  }
  if (value === undefined) delete target[path.at(-1)];
  else target[path.at(-1)] = value;
}

export class ProcessEditor {
  /** `dialog` holds the form of index.html; `save(config, originalId)` returns a promise (rejects with ApiError). */
  constructor(dialog, save) {
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.save = save;
    this.base = {};
    this.originalId = null;
    this.mode = "form";
    this.rowTemplate = document.getElementById("io-row");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
    this.form.querySelector("[data-action=cancel]").addEventListener("click", () => dialog.close());
    for (const kind of ["input", "output"]) {
      this.form.querySelector(`[data-add=${kind}]`).addEventListener("click", () => this.#addRow(kind, {}));
    }
    for (const tab of this.form.querySelectorAll("[data-tab]")) {
      tab.addEventListener("click", () => this.#switchTo(tab.dataset.tab));
    }
    this.form.querySelector("[data-add=ingest]").addEventListener("click", () => this.#addIngestInput());
  }

  /** "From a publisher": an input reading {rtmp,name=NAME}, in place of an empty first input. */
  #addIngestInput() {
    const elements = this.form.elements;
    const name = elements["ingest-name"].value.trim();
    if (!name) {
      elements["ingest-name"].focus();
      return;
    }
    const address = ingestAddress(elements["ingest-protocol"].value, name);
    const rows = [...this.form.querySelectorAll("[data-io=input] > .io-row")];
    const empty = rows.find((row) => !row.querySelector("[name=io-address]").value.trim());
    if (empty) empty.querySelector("[name=io-address]").value = address;
    else this.#addRow("input", { address });
    elements["ingest-name"].value = "";
  }

  /** Open for a new process (config null) or to edit `config`. */
  open(config = null) {
    this.originalId = config ? config.id : null;
    this.base = config ? structuredClone(config) : {};
    this.form.querySelector(".editor-title").textContent = config ? `Edit ${config.id}` : "New process";
    this.form.elements.id.readOnly = Boolean(config);
    this.#fill(config || { input: [{}], output: [{}], autostart: true, webrtc: {} });
    this.#switchTo("form", { force: true });
    this.#clearErrors();
    this.dialog.showModal();
    (config ? this.form.elements.reference : this.form.elements.id).focus();
  }

  #fill(config) {
    const elements = this.form.elements;
    for (const path of TEXT_FIELDS) elements[path.join(".")].value = getPath(config, path) ?? "";
    for (const path of NUMBER_FIELDS) elements[path.join(".")].value = getPath(config, path) ?? "";
    for (const path of BOOLEAN_FIELDS) elements[path.join(".")].checked = Boolean(getPath(config, path));
    elements.options.value = joinOptions(config.options);
    for (const kind of ["input", "output"]) {
      this.form.querySelector(`[data-io=${kind}]`).replaceChildren();
      for (const io of config[kind] || []) this.#addRow(kind, io);
    }
  }

  #addRow(kind, io) {
    const list = this.form.querySelector(`[data-io=${kind}]`);
    const row = this.rowTemplate.content.firstElementChild.cloneNode(true);
    row.base = io; // keeps the fields the form does not show (cleanup rules)
    const defaultId = `${kind === "input" ? "in" : "out"}${list.children.length || ""}`;
    row.querySelector("[name=io-id]").value = io.id ?? defaultId;
    row.querySelector("[name=io-address]").value = io.address ?? "";
    row.querySelector("[name=io-options]").value = joinOptions(io.options);
    const [addressHint, optionsHint] = IO_PLACEHOLDERS[kind];
    row.querySelector("[name=io-address]").placeholder = addressHint;
    row.querySelector("[name=io-options]").placeholder = optionsHint;
    row.querySelector("[data-action=remove]").addEventListener("click", () => {
      row.remove();
      this.#numberRows(kind);
    });
    list.append(row);
    this.#numberRows(kind);
  }

  /** data-field paths follow the API's (input.0.address), so errors find their field. */
  #numberRows(kind) {
    const rows = this.form.querySelectorAll(`[data-io=${kind}] > .io-row`);
    rows.forEach((row, index) => {
      row.dataset.field = `${kind}.${index}`;
      row.querySelector(".io-title").textContent = `${kind === "input" ? "Input" : "Output"} ${index + 1}`;
      for (const name of ["id", "address", "options"]) {
        row.querySelector(`[name=io-${name}]`).dataset.field = `${kind}.${index}.${name}`;
      }
    });
  }

  /** The config the form describes, built over the stored one. */
  #fromForm() {
    const config = { ...CONFIG_KEY_ORDER, ...structuredClone(this.base) };
    const elements = this.form.elements;
    for (const path of TEXT_FIELDS) setPath(config, path, elements[path.join(".")].value.trim() || undefined);
    for (const path of NUMBER_FIELDS) {
      const text = elements[path.join(".")].value.trim();
      setPath(config, path, text === "" ? undefined : Number(text));
    }
    for (const path of BOOLEAN_FIELDS) setPath(config, path, elements[path.join(".")].checked);
    config.options = splitOptions(elements.options.value);
    for (const kind of ["input", "output"]) {
      config[kind] = [...this.form.querySelectorAll(`[data-io=${kind}] > .io-row`)].map((row) => ({
        ...row.base,
        id: row.querySelector("[name=io-id]").value.trim(),
        address: row.querySelector("[name=io-address]").value.trim(),
        options: splitOptions(row.querySelector("[name=io-options]").value),
      }));
    }
    return config;
  }

  #switchTo(mode, { force = false } = {}) {
    if (mode === this.mode && !force) return;
    const json = this.form.elements.json;
    if (mode === "json" && !force) {
      json.value = JSON.stringify(this.#fromForm(), null, 2);
    } else if (mode === "form" && !force) {
      let config;
      try {
        config = JSON.parse(json.value);
      } catch (error) {
        this.#showErrors([{ field: "json", message: `Not valid JSON: ${error.message}` }]);
        return;
      }
      this.base = config;
      this.#fill(config);
    }
    this.mode = mode;
    this.#clearErrors();
    for (const tab of this.form.querySelectorAll("[data-tab]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.tab === mode));
    }
    for (const pane of this.form.querySelectorAll("[data-pane]")) pane.hidden = pane.dataset.pane !== mode;
  }

  async #submit() {
    this.#clearErrors();
    let config;
    if (this.mode === "json") {
      try {
        config = JSON.parse(this.form.elements.json.value);
      } catch (error) {
        this.#showErrors([{ field: "json", message: `Not valid JSON: ${error.message}` }]);
        return;
      }
    } else {
      config = this.#fromForm();
    }
    const button = this.form.querySelector("[type=submit]");
    button.disabled = true;
    try {
      await this.save(config, this.originalId);
      this.dialog.close();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      this.#showErrors(error.fieldErrors);
    } finally {
      button.disabled = false;
    }
  }

  #clearErrors() {
    for (const element of this.form.querySelectorAll(".field-error")) element.remove();
    for (const element of this.form.querySelectorAll("[aria-invalid]"))
      element.removeAttribute("aria-invalid");
    this.form.querySelector(".form-errors").replaceChildren();
  }

  /** Put each error beside its field (or the nearest enclosing one); the rest go to the top of the form. */
  #showErrors(errors) {
    const pane = this.form.querySelector(`[data-pane=${this.mode}]`);
    for (const { field, message } of errors) {
      const target =
        this.mode === "json" ? pane.querySelector("[data-field=json]") : this.#fieldElement(pane, field);
      const note = document.createElement("small");
      note.className = "field-error";
      note.textContent = this.mode === "json" || !target ? `${field ? `${field}: ` : ""}${message}` : message;
      if (!target) {
        this.form.querySelector(".form-errors").append(note);
        continue;
      }
      target.setAttribute("aria-invalid", "true");
      if (target.matches("fieldset, .io-row")) target.querySelector("legend, .io-head").after(note);
      else target.after(note);
    }
    const first = this.form.querySelector("[aria-invalid=true], .form-errors .field-error");
    first?.scrollIntoView({ block: "center" });
  }

  #fieldElement(pane, field) {
    const parts = field ? field.split(".") : [];
    while (parts.length) {
      const element = pane.querySelector(`[data-field="${CSS.escape(parts.join("."))}"]`);
      if (element) return element;
      parts.pop();
    }
    return null;
  }
}
