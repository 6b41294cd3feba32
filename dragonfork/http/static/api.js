// The dragonfork API from the browser: JSON requests carrying the JWT, login, refresh before expiry, logout.
//
// Tokens live in sessionStorage (they survive a reload, not the tab). The access token is refreshed a minute
// before it expires, timed from its own iat/exp claims so a skewed client clock does not matter; a 401 also
// triggers one refresh and a retry. When nothing helps, the "loginrequired" event asks the page to log in.

const STORAGE_KEY = "dragonfork.session";
const REFRESH_MARGIN_S = 60;

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }

  /** The errors as [{field, message}] with form paths ("input.0.address"); "" for the whole request.
   * datarhei's details are strings, each naming its field first: "input.0.address: must not be empty". */
  get fieldErrors() {
    const details = Array.isArray(this.body.details) ? this.body.details : [];
    const list = details.map((entry) => {
      const named = /^([\w.]+): (.*)$/s.exec(String(entry));
      return named ? { field: named[1], message: named[2] } : { field: "", message: String(entry) };
    });
    return list.length ? list : [{ field: "", message: this.message }];
  }
}

function jwtLifetimeSeconds(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload));
    return claims.exi ?? claims.exp - claims.iat; // datarhei's "exi": the lifetime in seconds
  } catch {
    return 0;
  }
}

export class Api extends EventTarget {
  authRequired = false;
  about = null;
  #session = null; // {username, access, refresh, refreshAt (ms, local clock)}
  #refreshTimer = null;

  constructor() {
    super();
    try {
      this.#session = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    } catch {
      this.#session = null;
    }
    if (this.#session) this.#scheduleRefresh();
  }

  get accessToken() {
    return this.#session?.access || "";
  }

  get username() {
    return this.#session?.username || "";
  }

  get loggedIn() {
    return Boolean(this.#session);
  }

  /** GET /api (never needs a token): the server's name, version and whether it wants a login. */
  async loadAbout() {
    this.about = await this.#fetchJson("GET", "/api", undefined, false);
    this.authRequired = (this.about.auths || []).includes("localjwt");
    return this.about;
  }

  async login(username, password) {
    const tokens = await this.#fetchJson("POST", "/api/login", { username, password }, false);
    this.#store({ username, access: tokens.access_token, refresh: tokens.refresh_token });
  }

  logout() {
    clearTimeout(this.#refreshTimer);
    this.#session = null;
    sessionStorage.removeItem(STORAGE_KEY);
  }

  /** A JSON request to the API; a 401 gets one refresh and a retry, then "loginrequired". */
  async request(method, path, body) {
    try {
      return await this.#fetchJson(method, path, body, true);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      if (!this.#session) {
        this.dispatchEvent(new CustomEvent("loginrequired", { detail: "Log in to manage this server." }));
        throw error;
      }
      if ((await this.#refresh()) === "ok") return this.#fetchJson(method, path, body, true);
      throw error;
    }
  }

  async #fetchJson(method, path, body, authorized) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (authorized && this.#session) headers.Authorization = `Bearer ${this.#session.access}`;
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { message: text };
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  #store(session) {
    const lifetime = jwtLifetimeSeconds(session.access);
    session.refreshAt = Date.now() + Math.max(5, lifetime - REFRESH_MARGIN_S) * 1000;
    this.#session = session;
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    this.#scheduleRefresh();
  }

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    const delay = Math.max(0, this.#session.refreshAt - Date.now());
    this.#refreshTimer = setTimeout(() => this.#refresh(), delay);
  }

  /** Trade the refresh token for a new access token: "ok", "rejected" (logged out) or "unreachable". */
  async #refresh() {
    const session = this.#session;
    if (!session) return "rejected";
    let response;
    try {
      response = await fetch("/api/login/refresh", {
        headers: { Authorization: `Bearer ${session.refresh}` },
      });
    } catch {
      this.#refreshTimer = setTimeout(() => this.#refresh(), 10_000); // the server is away for a moment
      return "unreachable";
    }
    if (!response.ok) {
      this.logout();
      this.dispatchEvent(new CustomEvent("loginrequired", { detail: "Your session expired; log in again." }));
      return "rejected";
    }
    const tokens = await response.json();
    if (this.#session === session) this.#store({ ...session, access: tokens.access_token });
    return "ok";
  }
}
