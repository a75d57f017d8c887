// What the client knows about conversations and messages, without any DOM.
//
// A conversation is named by its address: "#group" or "@user". A message is the object the
// server sends ({msg_id, from, to, text, ts, client_id?, file?}), plus, for our own messages
// still on their way, {pending: true} or {failed: "reason"} and no msg_id yet.

/** User and group names: 1 to 32 of a-z 0-9 _ . - (docs/protocol.md, "Names"). */
export const NAME_PATTERN = /^[a-z0-9_.-]{1,32}$/;

export function isValidName(name) {
  return NAME_PATTERN.test(name);
}

/**
 * The conversation a message belongs to, seen by user `me`. A direct message keeps the address
 * its sender wrote ("@bob" on both sides), so it is the sender's conversation when it was sent to me.
 */
export function conversationOf(message, me) {
  if (message.to.startsWith("#")) return message.to;
  return message.to === `@${me}` ? `@${message.from}` : message.to;
}

export class Conversation {
  constructor(address) {
    this.address = address;
    this.kind = address.startsWith("#") ? "group" : "direct";
    this.name = address.slice(1);
    this.confirmed = []; // stored messages, ascending msg_id
    this.pending = []; // own messages without a msg_id yet, in the order they were written
    this.byId = new Map(); // msg_id -> message
    this.unread = 0;
    this.historyLoaded = false; // the latest page has been fetched
    this.more = false; // the server has older messages than the oldest we hold
    this.loadingOlder = false;
    // Groups only:
    this.joined = false;
    this.role = null; // "owner" | "admin" | "member" while joined
    this.isPrivate = false;
    this.memberCount = null;
    this.members = null; // Map user -> role, once fetched
  }

  /** Everything to show, in order: stored messages, then our own still on their way. */
  get messages() {
    return this.confirmed.concat(this.pending);
  }

  get oldestId() {
    return this.confirmed.length ? this.confirmed[0].msg_id : null;
  }

  get lastActivity() {
    const last = this.confirmed[this.confirmed.length - 1];
    return last ? last.ts : 0;
  }

  /** Adds a stored message unless it is already here; true when it was new. */
  add(message) {
    if (this.byId.has(message.msg_id)) return false;
    message.key ??= `m${message.msg_id}`;
    this.byId.set(message.msg_id, message);
    const list = this.confirmed;
    let i = list.length;
    while (i > 0 && list[i - 1].msg_id > message.msg_id) i--;
    list.splice(i, 0, message);
    return true;
  }

  /** Adds one of our own messages that has no msg_id yet. */
  addPending(message) {
    message.key = `c${message.client_id}`;
    this.pending.push(message);
  }

  /**
   * A pending message was stored as `msg_id` at `ts`. If that message already arrived by
   * another way (the replay after a reconnect), the pending copy simply goes.
   */
  confirm(pendingMessage, msgId, ts) {
    this.pending = this.pending.filter((m) => m !== pendingMessage);
    delete pendingMessage.pending;
    delete pendingMessage.failed;
    pendingMessage.msg_id = msgId;
    pendingMessage.ts = ts;
    this.add(pendingMessage);
  }

  /** Our pending message with this client_id, if any. */
  pendingWithClientId(clientId) {
    return this.pending.find((m) => m.client_id === clientId);
  }

  removePending(message) {
    this.pending = this.pending.filter((m) => m !== message);
  }

  /** Forgets the messages (they are fetched again with `history` when needed). */
  clearMessages() {
    this.confirmed = [];
    this.byId.clear();
    this.historyLoaded = false;
    this.more = false;
  }
}

// ------------------------------------------------------------------------------------------
// Formatting
// ------------------------------------------------------------------------------------------

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** "14:05" today, "3 Jan, 14:05" on other days. */
export function shortTime(ts) {
  const date = new Date(ts);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? timeFormat.format(date)
    : dayTimeFormat.format(date);
}

export function fullTime(ts) {
  return fullFormat.format(new Date(ts));
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ${units[unit]}`;
}

/** "alice is typing…", "alice and bob are typing…", "3 people are typing…". */
export function typingText(users) {
  if (users.length === 0) return "";
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length === 2) return `${users[0]} and ${users[1]} are typing…`;
  return `${users.length} people are typing…`;
}
