// The WebSocket link to chatd: requests and their replies, pushed events, and reconnecting.
//
// Every request carries a fresh numeric `id`; the server answers each request with exactly one
// `{type: "ok"|"error", re: id}` (see docs/protocol.md). Everything else that arrives — events,
// and the rare error without a usable `re` — goes to the `onEvent` handler.
//
// This module knows nothing about users or conversations: the app decides what to do when the
// socket opens (authenticate) and which events matter.

/** An `error` reply: `code` is the machine-readable reason, `message` is for people. */
export class ServerError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "ServerError";
    this.code = code;
  }
}

/** The socket closed before the reply came: the request may or may not have been carried out. */
export class ConnectionLost extends Error {
  constructor() {
    super("the connection to the server was lost");
    this.name = "ConnectionLost";
  }
}

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// The server pings idle connections, but a page cannot see pings. To notice a dead link
// (a laptop waking up, a vanished network) the client asks something harmless when it has
// heard nothing for a while, and gives up on the socket if even that goes unanswered.
const PROBE_AFTER_MS = 25_000;
const PROBE_TIMEOUT_MS = 10_000;

/**
 * The delay before reconnect attempt number `attempt` (0, 1, 2, ...): exponential backoff with
 * "equal jitter", so that clients dropped together by a restart do not all come back at once.
 */
export function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export class Connection {
  /**
   * @param {string} url  the WebSocket URL
   * @param {object} handlers
   *   onOpen()          the socket is open (the app authenticates here)
   *   onEvent(message)  an event, or a reply that no request is waiting for
   *   onStatus(status)  {state: "idle"|"connecting"|"open"|"waiting", retryAt?}
   */
  constructor(url, { onOpen, onEvent, onStatus }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map(); // request id -> {resolve, reject}
    this.keepAlive = false; // reconnect after a close?
    this.attempt = 0;
    this.retryTimer = null;
    this.probeTimer = null;
    this.lastHeard = 0;
    this.opened = null; // {promise, resolve, reject} while a socket is being opened
    this.status = { state: "idle" };
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Bytes handed to the socket that have not gone out yet. */
  get bufferedAmount() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  /** Opens the socket unless it is open or opening; resolves once it is open. */
  connect() {
    if (this.isOpen) return Promise.resolve();
    if (this.opened) return this.opened.promise;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;

    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {}); // a failed attempt is reported through onStatus as well
    this.opened = { promise, resolve, reject };

    const ws = new WebSocket(this.url);
    ws.binaryType = "arraybuffer";
    ws.addEventListener("open", () => this.handleOpen(ws));
    ws.addEventListener("message", (e) => this.handleMessage(ws, e.data));
    ws.addEventListener("close", () => this.handleClose(ws));
    // An "error" event is always followed by "close", which does the work.
    this.ws = ws;
    this.setStatus({ state: "connecting" });
    return promise;
  }

  /** Skips the wait before the next reconnect attempt. */
  reconnectNow() {
    if (this.status.state === "waiting") this.connect();
  }

  /** The link worked (the app authenticated): the next outage starts with a short wait again. */
  markHealthy() {
    this.attempt = 0;
  }

  /** Closes the socket for good (until the next connect()). */
  disconnect() {
    this.keepAlive = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.ws) this.drop(this.ws);
    this.setStatus({ state: "idle" });
  }

  /**
   * Sends a request; returns `{id, reply}` where `reply` is a promise of the `ok` reply (its
   * other members) that rejects with ServerError or ConnectionLost. Most callers want request().
   */
  start(type, args = {}) {
    const id = this.nextId++;
    const reply = new Promise((resolve, reject) => {
      if (!this.isOpen) {
        reject(new ConnectionLost());
        return;
      }
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...args, type, id }));
    });
    return { id, reply };
  }

  /** Sends a request and resolves with the `ok` reply. */
  request(type, args = {}) {
    return this.start(type, args).reply;
  }

  /**
   * A paged listing (`group.list`): asks for one page after another, each starting `after` the
   * `next` of the one before, until the server says there is no more or `maxPages` pages have
   * come. Resolves with `{items, complete}`: the members of `field` of every page, in order, and
   * whether the listing reached its end. A server that does not page answers everything at once
   * and no `more`: that is one complete page.
   */
  async requestPages(type, field, { args = {}, limit = 100, maxPages = 50 } = {}) {
    const items = [];
    let after;
    for (let page = 0; page < maxPages; page++) {
      const request = after === undefined ? { ...args, limit } : { ...args, limit, after };
      const reply = await this.request(type, request);
      items.push(...reply[field]);
      if (!reply.more || typeof reply.next !== "string") return { items, complete: true };
      after = reply.next;
    }
    return { items, complete: false };
  }

  /** Sends a binary message (file upload bytes). */
  sendBinary(bytes) {
    if (!this.isOpen) throw new ConnectionLost();
    this.ws.send(bytes);
  }

  // ---------------------------------------------------------------------------------------

  setStatus(status) {
    this.status = status;
    this.onStatus(status);
  }

  handleOpen(ws) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    this.scheduleProbe();
    this.setStatus({ state: "open" });
    this.opened?.resolve();
    this.opened = null;
    this.onOpen();
  }

  handleMessage(ws, data) {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    if (typeof data !== "string") return; // the server sends text only
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn("chatd: a frame that is not JSON", data);
      return;
    }
    const waiting = message.re !== undefined && this.pending.get(message.re);
    if (waiting && (message.type === "ok" || message.type === "error")) {
      this.pending.delete(message.re);
      if (message.type === "ok") {
        const { type, re, ...result } = message;
        waiting.resolve(result);
      } else {
        waiting.reject(new ServerError(message.code, message.message));
      }
      return;
    }
    this.onEvent(message);
  }

  handleClose(ws) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearTimeout(this.probeTimer);
    const lost = new ConnectionLost();
    for (const { reject } of this.pending.values()) reject(lost);
    this.pending.clear();
    this.opened?.reject(lost);
    this.opened = null;

    if (!this.keepAlive) {
      this.setStatus({ state: "idle" });
      return;
    }
    const delay = backoffDelay(this.attempt++);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.setStatus({ state: "waiting", retryAt: Date.now() + delay });
  }

  /** Forgets a socket at once, without waiting for a closing handshake that may never end. */
  drop(ws) {
    ws.close();
    this.handleClose(ws);
  }

  scheduleProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => this.probe(), PROBE_AFTER_MS);
  }

  probe() {
    const ws = this.ws;
    if (!ws || !this.isOpen) return;
    if (Date.now() - this.lastHeard < PROBE_AFTER_MS) {
      this.scheduleProbe();
      return;
    }
    // `whoami` answers in any state (`unauthenticated` before login), so any reply will do.
    const timeout = setTimeout(() => {
      if (ws === this.ws) this.drop(ws);
    }, PROBE_TIMEOUT_MS);
    this.request("whoami")
      .catch(() => {})
      .finally(() => {
        clearTimeout(timeout);
        if (ws === this.ws) this.scheduleProbe();
      });
  }
}
