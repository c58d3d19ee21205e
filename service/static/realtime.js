// realtime.js: a dependency-free ES module client for realtime-gateway's native WebSocket
// protocol (docs/asyncapi.yaml). One RealtimeClient holds one socket to one namespace and
// keeps it alive:
//
// - connects with a token from `getToken()` (the `access_token` query parameter: browsers
//   cannot set headers on a WebSocket);
// - reconnects after any close it did not ask for, with exponential backoff and jitter
//   (at once after 4001 "token expired", with a fresh token);
// - after every (re)connect restores its state: dashboard subscriptions, then a
//   `dashboard_refresh` so charts get the last values at once; notifications pass the last
//   `offset` seen as `since`, so a gateway with recovery replays what was missed and answers
//   `resumed` (a gateway without it simply sends live traffic);
// - turns acks into promises that settle with the ack's data, reject with a RealtimeError
//   for an `error` answer, and time out;
// - refreshes the token before it expires with the `auth` event, on the open socket.
//
// Usage:
//   const client = new RealtimeClient("notifications", { getToken: async () => jwt });
//   client.on("notification_new", (data, frame) => ...);
//   client.connect();
//   await client.request("notification_read", { id });

const DEFAULTS = Object.freeze({
  url: null, // ws[s]://host[:port]; null = the page's own origin
  ackTimeoutMs: 10000,
  backoffInitialMs: 500,
  backoffMaxMs: 15000,
  backoffFactor: 2,
  drainReconnectMs: 2000, // after 1001 (server draining): a short random delay
  refreshMarginS: 60, // refresh the token this long before it expires (at most half its life)
  refreshRetryMs: 3000,
  dedupeSize: 1000, // notification ids remembered to drop copies around a resume
});

/** Close codes of the gateway (contract §3). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  TOKEN_EXPIRED: 4001,
  SLOW_CONSUMER: 4008,
  RATE_LIMITED: 4029,
});

/** The error a request rejects with: a server `error` answer, a timeout or a disconnect. */
export class RealtimeError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
  }
}

/** The claims of a JWT, without verifying it (the gateway does that). */
export function jwtClaims(token) {
  const part = String(token).split(".")[1];
  if (!part) return {};
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
  } catch {
    return {};
  }
}

/** Equal jitter: half the capped exponential delay, plus a random part of the other half. */
export function backoffDelay(attempt, { initialMs, maxMs, factor }, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * factor ** attempt);
  return cap / 2 + random() * (cap / 2);
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("RealtimeClient: pass options.url outside a browser page");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}`;
}

export class RealtimeClient {
  /**
   * @param {"dashboard"|"notifications"} namespace
   * @param {object} options `getToken` (async () => jwt string), and any of DEFAULTS;
   *   `WebSocket` to inject an implementation (tests, Node).
   */
  constructor(namespace, options = {}) {
    if (typeof options.getToken !== "function") {
      throw new TypeError("RealtimeClient: options.getToken must be a function");
    }
    this.namespace = namespace;
    this.options = { ...DEFAULTS, ...options };
    this.url = (this.options.url || defaultUrl()).replace(/\/+$/, "");
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this.state = "idle"; // idle | connecting | open | reconnecting | closed
    this.lastOffset = null; // the largest notification offset seen (recovery)
    this.topics = null; // null: never subscribed (the server sends every topic); else a Set
    this.stats = { connects: 0, reconnects: 0, refreshes: 0, attempts: 0, lastClose: null };
    this._listeners = new Map();
    this._pending = new Map();
    this._nextAck = 1;
    this._attempt = 0;
    this._ws = null;
    this._opened = false; // whether the current socket completed its handshake
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._token = null;
    this._tokenDeadline = 0; // local ms clock when the token expires (skew-free, from iat/exp)
    this._forceToken = false;
    this._seen = new Set();
    this._onOnline = () => this._reconnectNow();
  }

  // -- events ---------------------------------------------------------------------------

  /** Call `handler(data, frame)` for an event; returns a function that removes it.
   * Events: every server event (`dashboard_update`, `notification_new`, ...), and `state`,
   * `open`, `close`, `reconnecting`, `restored`, `resumed`, `reset`, `token`, `error`. */
  on(event, handler) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(handler);
    return () => this._listeners.get(event)?.delete(handler);
  }

  _emit(event, data, frame) {
    for (const handler of [...(this._listeners.get(event) || [])]) {
      try {
        handler(data, frame);
      } catch (err) {
        console.error(`realtime: ${event} handler failed`, err);
      }
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  // -- lifecycle ------------------------------------------------------------------------

  /** Open the connection (and keep it open until close()). */
  connect() {
    if (this.state !== "idle" && this.state !== "closed") return;
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** Close for good: no reconnect; pending requests reject with `closed`. */
  close() {
    this._setState("closed");
    globalThis.removeEventListener?.("online", this._onOnline);
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._refreshTimer);
    const ws = this._ws;
    this._ws = null;
    this._failPending("closed", "client closed");
    if (ws && ws.readyState <= 1) ws.close(CloseCode.NORMAL, "client closed");
  }

  async _open() {
    this._setState(this.stats.connects ? "reconnecting" : "connecting");
    this.stats.attempts += 1;
    let token;
    try {
      token = await this._currentToken(this._forceToken);
    } catch (err) {
      this._emit("error", new RealtimeError("token", `cannot get a token: ${err.message || err}`));
      this._scheduleReconnect(null);
      return;
    }
    if (this.state === "closed") return;
    const params = new URLSearchParams({ access_token: token });
    if (this.namespace === "notifications" && this.lastOffset !== null) {
      params.set("since", String(this.lastOffset));
    }
    let ws;
    try {
      ws = new this._WebSocket(`${this.url}/ws/${this.namespace}?${params}`);
    } catch (err) {
      this._emit("error", new RealtimeError("connect", String(err.message || err)));
      this._scheduleReconnect(null);
      return;
    }
    this._ws = ws;
    this._opened = false;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (ev) => ws === this._ws && this._onMessage(ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    this._opened = true;
    this._forceToken = false;
    const reconnect = this.stats.connects > 0;
    this.stats.connects += 1;
    if (reconnect) this.stats.reconnects += 1;
    this._setState("open");
    this._emit("open", { reconnect });
    this._scheduleRefresh();
    this._restore(ws);
  }

  async _restore(ws) {
    try {
      if (this.namespace === "dashboard") {
        if (this.topics !== null) {
          // An explicit empty set must stay empty: a fresh socket would receive every topic.
          if (this.topics.size) await this.request("subscribe", { topics: [...this.topics] });
          else await this.request("unsubscribe", { topics: ["*"] });
        }
        await this.request("dashboard_refresh", {});
      }
    } catch (err) {
      if (ws !== this._ws) return; // the socket went away meanwhile: the reconnect restores
      // Without its subscriptions the socket is wrong, not just late: start over, with backoff.
      this._emit("error", err);
      ws.close(4000, "restore failed");
      return;
    }
    if (ws !== this._ws) return;
    this._attempt = 0; // only a socket that is fully back counts as a success
    this._emit("restored", { topics: this.topics ? [...this.topics] : null });
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._refreshTimer);
    this._failPending("disconnected", `connection closed (${code})`);
    this.stats.lastClose = { code, reason };
    this._emit("close", { code, reason, opened: this._opened });
    if (this.state === "closed") return;
    if (!this._opened) this._forceToken = true; // a refused handshake may be a stale token
    this._scheduleReconnect(code);
  }

  _scheduleReconnect(code) {
    clearTimeout(this._reconnectTimer);
    let delay;
    if (code === CloseCode.TOKEN_EXPIRED) {
      this._forceToken = true;
      delay = 0;
    } else if (code === CloseCode.GOING_AWAY) {
      delay = Math.random() * this.options.drainReconnectMs; // spread a replica's clients
    } else {
      delay = backoffDelay(this._attempt, {
        initialMs: this.options.backoffInitialMs,
        maxMs: this.options.backoffMaxMs,
        factor: this.options.backoffFactor,
      });
      this._attempt += 1;
    }
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this._attempt, delayMs: Math.round(delay), code });
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  _reconnectNow() {
    if (this.state === "reconnecting" && !this._ws) {
      clearTimeout(this._reconnectTimer);
      this._open();
    }
  }

  // -- tokens ---------------------------------------------------------------------------

  _setToken(token) {
    const claims = jwtClaims(token);
    this._token = token;
    if (typeof claims.exp === "number") {
      // With `iat`, the lifetime is measured on our own clock, immune to clock skew.
      const lifeS = typeof claims.iat === "number" ? claims.exp - claims.iat : null;
      this._tokenDeadline = lifeS !== null ? Date.now() + lifeS * 1000 : claims.exp * 1000;
    } else {
      this._tokenDeadline = Infinity;
    }
  }

  _marginMs(lifeMs) {
    return Math.min(this.options.refreshMarginS * 1000, lifeMs / 2);
  }

  async _currentToken(force) {
    const left = this._tokenDeadline - Date.now();
    if (!force && this._token && left > this._marginMs(left)) return this._token;
    try {
      this._setToken(await this.options.getToken());
    } catch (err) {
      // The token service may be down with the gateway; a token still valid will do.
      if (this._token && this._tokenDeadline - Date.now() > 5000) return this._token;
      throw err;
    }
    return this._token;
  }

  _scheduleRefresh(delayMs) {
    clearTimeout(this._refreshTimer);
    const left = this._tokenDeadline - Date.now();
    if (!Number.isFinite(left)) return;
    const delay = delayMs ?? Math.max(0, left - this._marginMs(left));
    this._refreshTimer = setTimeout(() => this._refreshToken(), delay);
  }

  async _refreshToken() {
    const ws = this._ws;
    if (this.state !== "open" || !ws) return;
    try {
      this._setToken(await this.options.getToken());
      const result = await this.request("auth", { token: this._token });
      this.stats.refreshes += 1;
      this._emit("token", result);
      this._scheduleRefresh();
    } catch (err) {
      if (ws !== this._ws) return;
      this._emit("error", err);
      // Try again while there is time; at `exp` the server closes with 4001 and we reconnect.
      if (this._tokenDeadline - Date.now() > 1000) this._scheduleRefresh(this.options.refreshRetryMs);
    }
  }

  // -- requests -------------------------------------------------------------------------

  /** Send an event with an ack id; resolves with the ack's data, rejects with RealtimeError
   * (the server's error code, `timeout`, `disconnected` or `closed`). */
  request(event, data = null, { timeoutMs = this.options.ackTimeoutMs } = {}) {
    const ws = this._ws;
    if (this.state !== "open" || !ws) {
      return Promise.reject(new RealtimeError("disconnected", `not connected (${this.state})`));
    }
    const ack = this._nextAck;
    this._nextAck = this._nextAck >= 2 ** 31 ? 1 : this._nextAck + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ack);
        reject(new RealtimeError("timeout", `no answer to ${event} within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pending.set(ack, { resolve, reject, timer });
      ws.send(JSON.stringify({ event, data, ack }));
    });
  }

  /** Send an event without waiting for an answer (errors arrive as `error` events). */
  send(event, data = null) {
    if (this.state !== "open" || !this._ws) return false;
    this._ws.send(JSON.stringify({ event, data }));
    return true;
  }

  _failPending(code, message) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new RealtimeError(code, message));
    }
    this._pending.clear();
  }

  // -- dashboard ------------------------------------------------------------------------

  /** Receive these topics (kept across reconnects). Offline, applied on the next connect. */
  async subscribe(topics) {
    this.topics ??= new Set();
    for (const topic of topics) this.topics.add(topic);
    if (this.state !== "open") return { topics: [...this.topics], pending: true };
    return this.request("subscribe", { topics });
  }

  /** Stop receiving these topics (`"*"`: all of them). */
  async unsubscribe(topics) {
    this.topics ??= new Set();
    for (const topic of topics) {
      if (topic === "*") this.topics.clear();
      else this.topics.delete(topic);
    }
    if (this.state !== "open") return { topics: [...this.topics], pending: true };
    return this.request("unsubscribe", { topics });
  }

  /** Ask for the last value of one topic, or of every topic received. */
  refresh(topic) {
    return this.request("dashboard_refresh", topic ? { topic } : {});
  }

  // -- notifications --------------------------------------------------------------------

  /** Mark a notification read; the user's other sockets get `notification_read`. */
  markRead(id) {
    return this.request("notification_read", { id });
  }

  // -- inbound --------------------------------------------------------------------------

  _onMessage(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return; // the gateway sends JSON only
    }
    if (!frame || typeof frame.event !== "string") return;
    const { event } = frame;
    if (event === "ack" || (event === "error" && this._pending.has(frame.ack))) {
      const pending = this._pending.get(frame.ack);
      if (!pending) return; // answered after its timeout
      this._pending.delete(frame.ack);
      clearTimeout(pending.timer);
      if (event === "ack") pending.resolve(frame.data);
      else pending.reject(new RealtimeError(frame.error?.code, frame.error?.message));
      return;
    }
    if (event === "error") {
      this._emit("error", new RealtimeError(frame.error?.code, frame.error?.message), frame);
      return;
    }
    if (typeof frame.offset === "number" && (this.lastOffset === null || frame.offset > this.lastOffset)) {
      this.lastOffset = frame.offset;
    }
    if (event === "notification_new" && frame.id) {
      if (this._seen.has(frame.id)) return; // a copy around the switch to live traffic
      this._seen.add(frame.id);
      if (this._seen.size > this.options.dedupeSize) {
        this._seen.delete(this._seen.values().next().value);
      }
    }
    if (event === "resumed" && frame.data && frame.data.recovered === false) {
      this._emit("resumed", frame.data, frame);
      this._emit("reset", frame.data, frame); // the gap is lost: reload state from the source
      return;
    }
    this._emit(event, frame.data, frame);
  }
}
