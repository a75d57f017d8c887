// The chatd web client: a single page in plain JavaScript, no framework and no build step.
//
// How it fits together:
//   connection.js  the WebSocket: requests and replies, events, reconnecting with backoff
//   upload.js      sending a file as binary messages
//   links.js       signed download links for files, so that no token ever goes into a URL
//   model.js       conversations and messages as plain data, and formatting helpers
//   app.js         (this file) the state of the session, the protocol flows, and the page
//
// The page is redrawn from `state` by render(). Event handlers change `state` and call
// scheduleRender(), which folds a burst of changes into one redraw. Text that comes from users
// (names, messages, file names) reaches the page only through textContent and text nodes, never
// as markup: see h() below. The server's Content-Security-Policy forbids inline scripts as well.

import { Connection, ConnectionLost, ServerError } from "./connection.js";
import { Upload, UploadCancelled } from "./upload.js";
import { FileLinks } from "./links.js";
import {
  Conversation,
  conversationOf,
  formatBytes,
  fullTime,
  isValidName,
  shortTime,
  typingText,
} from "./model.js";

const HISTORY_PAGE = 50;
const TYPING_SEND_EVERY_MS = 3000; // while the user types, tell the others this often
const TYPING_SHOW_MS = 5000; // show someone as typing this long after their last signal
const RUN_WINDOW_MS = 5 * 60_000; // messages of one author this close share one heading
const TOAST_MS = 8000;
const MAX_TOASTS = 4;
const MEMBER_REFRESH_LIMIT = 50; // groups whose members (and so presence) we fetch at sign-in
// No event announces a new public group, so the list of groups to join is fetched again now and
// then, when the sidebar opens, and with its Refresh button.
const GROUP_REFRESH_MS = 60_000;
// group.list comes a page at a time; beyond this many pages the list of groups to join is cut
// short (our own groups are in every page that covers their names).
const GROUP_PAGE = 100;
const GROUP_PAGES_MAX = 50;
const SESSION_KEY = "chatd.session";
const userStateKey = (user) => `chatd.user.${user}`;
const narrowScreen = window.matchMedia("(max-width: 700px)"); // the sidebar slides in
const mediumScreen = window.matchMedia("(max-width: 1000px)"); // no room for members beside

// ------------------------------------------------------------------------------------------
// State
// ------------------------------------------------------------------------------------------

const state = {
  session: null, // {user, token, expires} while logged in
  authenticated: false, // the current socket has authenticated
  conversations: new Map(), // address -> Conversation
  active: null, // address of the open conversation
  presence: new Map(), // user -> true/false, as last heard (unknown users are absent)
  typing: new Map(), // address -> Map(user -> time until which they count as typing)
  invitations: new Set(), // groups we were invited to during this session
  lastMsgId: null, // highest msg_id seen: where recovery starts after a reconnect or reload
  outbox: [], // our messages not acknowledged yet; sent again after a reconnect
  upload: null, // the Upload in progress
  uploadQueue: [], // [{file, to}] waiting for it
  lastTypingSent: 0,
  lastTypingTo: null,
  membersVisible: !mediumScreen.matches,
};

const conn = new Connection(webSocketUrl(), {
  onOpen: handleOpen,
  onEvent: handleEvent,
  onStatus: handleStatus,
});

// Links to files (hrefs and image sources) are short-lived URLs the server signs for one file.
const links = new FileLinks((type, args) => conn.request(type, args));

function webSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function me() {
  return state.session?.user;
}

/** The conversation with this address, created on first use. */
function conversation(address) {
  let conv = state.conversations.get(address);
  if (!conv) {
    conv = new Conversation(address);
    state.conversations.set(address, conv);
  }
  return conv;
}

function activeConversation() {
  return state.active ? state.conversations.get(state.active) : null;
}

function removeConversation(address) {
  state.conversations.delete(address);
  state.typing.delete(address);
  if (state.active === address) state.active = null;
}

function noteMsgId(msgId) {
  if (state.lastMsgId === null || msgId > state.lastMsgId) state.lastMsgId = msgId;
}

/** A client_id for `send`: random, so that a retry is recognised as the same message. */
function newClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "w" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------------------------------
// What survives a reload: the session token, and per user where recovery should start, the
// direct conversations (the server has no command that lists them) and the open conversation.
// ------------------------------------------------------------------------------------------

function loadSession() {
  try {
    const session = JSON.parse(localStorage.getItem(SESSION_KEY));
    return session && session.token && session.expires > Date.now() ? session : null;
  } catch {
    return null;
  }
}

function loadUserState(user) {
  try {
    return JSON.parse(localStorage.getItem(userStateKey(user))) ?? {};
  } catch {
    return {};
  }
}

function saveUserState() {
  if (!state.session) return;
  const directs = [...state.conversations.values()]
    .filter((c) => c.kind === "direct")
    .map((c) => c.address);
  const saved = { lastMsgId: state.lastMsgId, directs, active: state.active };
  localStorage.setItem(userStateKey(me()), JSON.stringify(saved));
}

// ------------------------------------------------------------------------------------------
// Signing in and out
// ------------------------------------------------------------------------------------------

function startSession(session) {
  const saved = loadUserState(session.user);
  state.session = session;
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
  state.lastMsgId = Number.isInteger(saved.lastMsgId) ? saved.lastMsgId : null;
  for (const address of saved.directs ?? []) conversation(address);
  state.active = saved.active ?? null;
  conn.keepAlive = true;
  showChatView();
}

/** Forgets the session (after logout, or when the server no longer accepts the token). */
function endSession(message = "") {
  conn.disconnect();
  links.clear();
  state.upload?.cancel();
  Object.assign(state, {
    session: null,
    authenticated: false,
    active: null,
    lastMsgId: null,
    outbox: [],
    uploadQueue: [],
  });
  state.conversations.clear();
  state.presence.clear();
  state.typing.clear();
  state.invitations.clear();
  localStorage.removeItem(SESSION_KEY);
  showAuthView(message);
}

/** The "Log in" and "Create account" buttons. */
async function submitAuth(mode) {
  const user = el.authUser.value.trim().toLowerCase();
  const password = el.authPassword.value;
  el.authUser.value = user;
  if (!isValidName(user)) {
    return authFailed("A user name is 1–32 characters: a–z, 0–9, _ . -", el.authUser);
  }
  if (new TextEncoder().encode(password).length < 8) {
    return authFailed("A password has at least 8 characters.", el.authPassword);
  }
  el.authError.textContent = "";
  setAuthBusy(true);
  try {
    await conn.connect();
    if (mode === "register") await conn.request("register", { user, password });
    const args = { user, password };
    const since = loadUserState(user).lastMsgId;
    if (Number.isInteger(since)) args.since = since;
    const reply = await conn.request("login", args);
    el.authPassword.value = "";
    startSession({ user: reply.user, token: reply.token, expires: reply.expires });
    becameAuthenticated(args.since !== undefined);
  } catch (e) {
    authFailed(e instanceof ConnectionLost ? "Cannot reach the server. Try again." : describe(e));
  } finally {
    setAuthBusy(false);
  }
}

function authFailed(message, field = null) {
  el.authError.textContent = message;
  field?.focus();
}

function setAuthBusy(busy) {
  el.loginButton.disabled = busy;
  el.registerButton.disabled = busy;
}

/** The socket opened: with a session, authenticate it with the token. */
async function handleOpen() {
  if (!state.session) return;
  const args = { token: state.session.token };
  if (state.lastMsgId !== null) args.since = state.lastMsgId;
  try {
    await conn.request("auth", args);
  } catch (e) {
    if (e instanceof ServerError && e.code === "unauthenticated") {
      endSession("Your session has ended. Please log in again.");
    } else if (e instanceof ServerError) {
      showError(`Could not sign in: ${e.message}`);
    }
    return; // a lost connection is retried by the Connection
  }
  becameAuthenticated(args.since !== undefined);
}

/**
 * After `login` or `auth` succeeded. With `since`, the server now replays what we missed as
 * `message` events, then `recovered` (handled in handleEvent). Without it we had seen no
 * message at all, so what we show is fetched again with `history` instead.
 */
async function becameAuthenticated(recovering) {
  state.authenticated = true;
  state.presence.set(me(), true);
  conn.markHealthy();
  // Links from before may be signed by a server that has restarted since: sign them again.
  links.clear();
  for (const node of el.messages.querySelectorAll("[data-file-id]")) resolveFileUrl(node);
  if (!recovering) {
    for (const conv of state.conversations.values()) conv.clearMessages();
  }
  renderStatus();
  flushOutbox();
  try {
    await refreshGroups();
    await refreshMembers();
  } catch (e) {
    reportFailure("Could not load your groups", e);
  }
  const conv = activeConversation();
  if (conv) loadConversation(conv);
  scheduleRender();
}

async function logout() {
  if (state.authenticated) {
    try {
      await conn.request("logout");
    } catch {
      // Not connected: the token stays valid on the server until it expires.
    }
  }
  const user = me();
  endSession();
  if (user) localStorage.removeItem(userStateKey(user));
}

// ------------------------------------------------------------------------------------------
// The connection
// ------------------------------------------------------------------------------------------

function handleStatus(status) {
  if (status.state !== "open" && state.authenticated) {
    // The socket is gone: what we knew about who is online and typing is stale now.
    state.authenticated = false;
    state.presence.clear();
    state.typing.clear();
    state.upload?.handleDisconnect();
    scheduleRender();
  }
  renderStatus();
}

let countdownTimer = null;

function renderStatus() {
  const status = conn.status;
  let kind;
  let text;
  if (status.state === "open") {
    [kind, text] = state.authenticated ? ["online", "Connected"] : ["connecting", "Signing in…"];
  } else if (status.state === "connecting") {
    [kind, text] = ["connecting", "Connecting…"];
  } else if (status.state === "waiting") {
    const seconds = Math.max(0, Math.ceil((status.retryAt - Date.now()) / 1000));
    [kind, text] = ["offline", `Offline, retrying in ${seconds} s`];
  } else {
    [kind, text] = ["offline", "Offline"];
  }
  el.status.dataset.state = kind;
  el.status.textContent = text;

  const waiting = status.state === "waiting";
  el.offlineBanner.hidden = !waiting || !state.session;
  if (waiting) {
    el.offlineText.textContent = `The connection to the server was lost. ${text}…`;
  }
  clearTimeout(countdownTimer);
  if (waiting) countdownTimer = setTimeout(renderStatus, 1000);
}

// ------------------------------------------------------------------------------------------
// Events from the server
// ------------------------------------------------------------------------------------------

function handleEvent(event) {
  switch (event.type) {
    case "message":
      receiveMessage(event);
      break;
    case "recovered":
      noteMsgId(event.last_msg_id);
      if (!event.complete) {
        // More than one replay's worth was missed: ask for the next part.
        conn.request("sync", { since: event.last_msg_id }).catch((e) => {
          reportFailure("Could not catch up with missed messages", e);
        });
      }
      break;
    case "typing":
      receiveTyping(event);
      break;
    case "presence":
      state.presence.set(event.user, event.online);
      scheduleRender();
      break;
    case "file.done":
      state.upload?.handleDone(event);
      break;
    case "group.joined":
    case "group.left":
    case "group.invited":
    case "group.kicked":
    case "group.role":
    case "group.deleted":
      receiveGroupEvent(event);
      scheduleRender();
      break;
    case "session_ended":
      // The server signed this connection out: our token was logged out elsewhere (another
      // tab shares it), or it expired. Either way it is no good any more.
      endSession(
        event.reason === "logout"
          ? "You logged out in another window."
          : "Your session has ended. Please log in again.",
      );
      break;
    case "error":
      // An error nobody waits for: the end of a failed upload, or a request the server could
      // not read at all.
      if (!state.upload?.handleLateReply(event)) showError(`Server: ${event.message}`);
      break;
    case "ok":
      break; // a late reply to a request whose caller has gone
    default:
      console.debug("chatd: unhandled event", event);
  }
}

function receiveMessage(message) {
  const address = conversationOf(message, me());
  const conv = conversation(address);
  noteMsgId(message.msg_id);
  if (conv.kind === "group") conv.joined = true; // only members receive group messages

  // One of ours coming back: from another tab, or replayed after a reconnect.
  if (message.from === me() && message.client_id) {
    const pending = conv.pendingWithClientId(message.client_id);
    if (pending) {
      conv.confirm(pending, message.msg_id, message.ts);
      state.outbox = state.outbox.filter((m) => m !== pending);
      scheduleRender();
      return;
    }
  }
  if (!conv.add(message)) return; // already shown (replays overlap with what we had)
  state.typing.get(address)?.delete(message.from);
  if (message.from !== me() && address !== state.active) conv.unread++;
  scheduleRender();
}

function receiveTyping(event) {
  if (event.from === me()) return;
  const address = conversationOf(event, me());
  if (!state.typing.has(address)) state.typing.set(address, new Map());
  state.typing.get(address).set(event.from, Date.now() + TYPING_SHOW_MS);
  scheduleRender();
  setTimeout(scheduleRender, TYPING_SHOW_MS + 50); // to hide it again
}

function receiveGroupEvent(event) {
  const address = `#${event.group}`;
  const conv = conversation(address);
  const aboutMe = event.user === me();
  switch (event.type) {
    case "group.joined":
      if (conv.members && !conv.members.has(event.user)) {
        conv.members.set(event.user, "member");
      }
      if (conv.memberCount !== null && !(aboutMe && conv.joined)) conv.memberCount++;
      state.presence.set(event.user, true); // joining takes an authenticated connection
      if (aboutMe) {
        conv.joined = true;
        conv.role ??= "member";
        state.invitations.delete(event.group);
      }
      break;
    case "group.left":
      if (aboutMe) {
        leftGroup(conv);
      } else {
        conv.members?.delete(event.user);
        if (conv.memberCount) conv.memberCount--;
      }
      break;
    case "group.kicked":
      showInfo(`${event.by} removed you from ${address}.`);
      leftGroup(conv);
      break;
    case "group.invited":
      state.invitations.add(event.group);
      showInfo(`${event.by} invited you to ${address}. You can join it from the sidebar.`);
      break;
    case "group.role":
      conv.members?.set(event.user, event.role);
      if (aboutMe) conv.role = event.role;
      break;
    case "group.deleted":
      if (event.by !== me()) showInfo(`${event.by} deleted ${address}.`);
      removeConversation(address);
      break;
  }
}

/** We are no longer a member: a public group stays in the list of groups to join. */
function leftGroup(conv) {
  if (conv.isPrivate) {
    removeConversation(conv.address);
    return;
  }
  conv.joined = false;
  conv.role = null;
  conv.members = null;
  conv.unread = 0;
  conv.clearMessages();
  if (conv.memberCount) conv.memberCount--;
  if (state.active === conv.address) state.active = null;
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/** A human sentence for a failed request. */
function describe(error) {
  if (error instanceof ServerError) return error.message;
  if (error instanceof ConnectionLost) return "the connection to the server was lost";
  return String(error?.message ?? error);
}

function reportFailure(what, error) {
  if (error instanceof ConnectionLost) return; // the status bar already says so
  showError(`${what}: ${describe(error)}`);
}

function refreshGroupsQuietly() {
  if (state.authenticated) refreshGroups().catch(() => {});
}

async function refreshGroups() {
  const { items: groups, complete } = await conn.requestPages("group.list", "groups", {
    limit: GROUP_PAGE,
    maxPages: GROUP_PAGES_MAX,
  });
  const listed = new Set();
  for (const g of groups) {
    const conv = conversation(`#${g.group}`);
    conv.isPrivate = g.private;
    conv.memberCount = g.members;
    conv.role = g.role ?? null;
    conv.joined = g.role !== undefined;
    listed.add(conv.address);
  }
  // Groups that were deleted, or private ones we are no longer in, while we were away: those
  // missing from the part of the list we read (names sort as the server sorts them, by code unit).
  const readThrough = complete ? null : groups[groups.length - 1]?.group;
  for (const conv of [...state.conversations.values()]) {
    if (conv.kind !== "group" || listed.has(conv.address) || state.invitations.has(conv.name)) continue;
    if (readThrough === null || (readThrough !== undefined && conv.name < readThrough)) {
      removeConversation(conv.address);
    }
  }
  scheduleRender();
}

/** Fetches the members of our groups: the only way to learn who is online right now. */
async function refreshMembers() {
  const joined = [...state.conversations.values()].filter((c) => c.kind === "group" && c.joined);
  await Promise.all(joined.slice(0, MEMBER_REFRESH_LIMIT).map((conv) => loadMembers(conv)));
}

async function loadMembers(conv) {
  try {
    const { members } = await conn.request("group.members", { group: conv.name });
    conv.members = new Map(members.map((m) => [m.user, m.role]));
    conv.memberCount = members.length;
    for (const m of members) state.presence.set(m.user, m.online);
    scheduleRender();
  } catch (e) {
    reportFailure(`Could not load the members of ${conv.address}`, e);
  }
}

/** Fetches the latest page of a conversation. */
async function loadLatest(conv) {
  if (conv.loadingLatest || !state.authenticated) return;
  conv.loadingLatest = true;
  try {
    const { messages, more } = await conn.request("history", {
      with: conv.address,
      limit: HISTORY_PAGE,
    });
    addHistory(conv, messages);
    conv.historyLoaded = true;
    conv.more = more;
  } catch (e) {
    reportFailure(`Could not load ${conv.address}`, e);
  } finally {
    conv.loadingLatest = false;
    scheduleRender();
  }
}

/** Fetches the page before the oldest message we hold (scrolling up, or the button). */
async function loadOlder(conv) {
  if (!conv || conv.loadingOlder || !conv.more || !state.authenticated) return;
  conv.loadingOlder = true;
  scheduleRender();
  try {
    const { messages, more } = await conn.request("history", {
      with: conv.address,
      before: conv.oldestId,
      limit: HISTORY_PAGE,
    });
    addHistory(conv, messages);
    conv.more = more;
  } catch (e) {
    reportFailure("Could not load older messages", e);
  } finally {
    conv.loadingOlder = false;
    scheduleRender();
  }
}

function addHistory(conv, messages) {
  for (const m of messages) {
    conv.add(m);
    noteMsgId(m.msg_id);
  }
}

// Sending. Each message gets a client_id when it is written and keeps it through every retry,
// so the server stores it once however often it is sent (docs/protocol.md, "send").

function sendMessage(address, text) {
  const message = {
    client_id: newClientId(),
    from: me(),
    to: address,
    text,
    ts: Date.now(),
    pending: true,
  };
  conversation(address).addPending(message);
  state.outbox.push(message);
  forceScrollToBottom = true;
  scheduleRender();
  deliver(message);
}

function deliver(message) {
  if (!state.authenticated) return; // flushOutbox() sends it once we are back
  conn
    .request("send", { to: message.to, text: message.text, client_id: message.client_id })
    .then(({ msg_id: msgId, ts }) => {
      state.outbox = state.outbox.filter((m) => m !== message);
      noteMsgId(msgId);
      state.conversations.get(message.to)?.confirm(message, msgId, ts);
      scheduleRender();
    })
    .catch((e) => {
      if (e instanceof ConnectionLost) return; // stays in the outbox
      state.outbox = state.outbox.filter((m) => m !== message);
      delete message.pending;
      message.failed = describe(e);
      showError(`Message not sent: ${describe(e)}`);
      scheduleRender();
    });
}

function flushOutbox() {
  for (const message of state.outbox) deliver(message);
}

function retry(message) {
  delete message.failed;
  message.pending = true;
  state.outbox.push(message);
  scheduleRender();
  deliver(message);
}

function discard(message) {
  state.conversations.get(message.to)?.removePending(message);
  scheduleRender();
}

function sendTyping() {
  const to = state.active;
  if (!state.authenticated || !to || !el.messageInput.value.trim()) return;
  const now = Date.now();
  if (to === state.lastTypingTo && now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
  state.lastTypingSent = now;
  state.lastTypingTo = to;
  conn.request("typing", { to }).catch(() => {}); // best effort; `rate_limited` is harmless
}

// Groups

async function createGroup(name, isPrivate) {
  if (!isValidName(name)) {
    showError("A group name is 1–32 characters: a–z, 0–9, _ . -");
    return false;
  }
  try {
    await conn.request("group.create", { group: name, private: isPrivate });
  } catch (e) {
    reportFailure(`Could not create #${name}`, e);
    return false;
  }
  const conv = conversation(`#${name}`);
  Object.assign(conv, { joined: true, role: "owner", isPrivate, memberCount: 1 });
  conv.members = new Map([[me(), "owner"]]);
  conv.historyLoaded = true; // a new group has no history
  openConversation(conv.address);
  return true;
}

async function joinGroup(name) {
  try {
    await conn.request("group.join", { group: name });
  } catch (e) {
    reportFailure(`Could not join #${name}`, e);
    return;
  }
  const conv = conversation(`#${name}`);
  conv.joined = true;
  conv.role ??= "member";
  state.invitations.delete(name);
  loadMembers(conv);
  openConversation(conv.address);
}

async function leaveGroup(conv) {
  try {
    await conn.request("group.leave", { group: conv.name });
  } catch (e) {
    reportFailure(`Could not leave ${conv.address}`, e);
  }
}

async function deleteGroup(conv) {
  if (!window.confirm(`Delete ${conv.address} with all its messages for everyone?`)) return;
  try {
    await conn.request("group.delete", { group: conv.name });
  } catch (e) {
    reportFailure(`Could not delete ${conv.address}`, e);
  }
}

async function inviteUser(conv, user) {
  if (!isValidName(user)) {
    showError("A user name is 1–32 characters: a–z, 0–9, _ . -");
    return false;
  }
  try {
    await conn.request("group.invite", { group: conv.name, user });
    showInfo(`Invited ${user} to ${conv.address}.`);
    return true;
  } catch (e) {
    reportFailure(`Could not invite ${user}`, e);
    return false;
  }
}

async function kickUser(conv, user) {
  try {
    await conn.request("group.kick", { group: conv.name, user });
  } catch (e) {
    reportFailure(`Could not remove ${user}`, e);
  }
}

/** Opens a direct conversation; its history doubles as the check that the user exists. */
async function startDirect(user) {
  if (!isValidName(user)) {
    showError("A user name is 1–32 characters: a–z, 0–9, _ . -");
    return false;
  }
  const address = `@${user}`;
  if (state.conversations.has(address)) {
    openConversation(address);
    return true;
  }
  try {
    const { messages, more } = await conn.request("history", { with: address, limit: HISTORY_PAGE });
    const conv = conversation(address);
    addHistory(conv, messages);
    conv.historyLoaded = true;
    conv.more = more;
  } catch (e) {
    if (e instanceof ServerError && e.code === "not_found") {
      showError(`There is no user named ${user}.`);
    } else {
      reportFailure(`Could not open a conversation with ${user}`, e);
    }
    return false;
  }
  openConversation(address);
  return true;
}

function openConversation(address) {
  const conv = conversation(address);
  state.active = address;
  conv.unread = 0;
  loadConversation(conv);
  setSidebarOpen(false);
  render(); // now, so that the message box can take the focus
  // On a phone, focusing the message box would pop up the keyboard over the messages.
  if (!narrowScreen.matches) el.messageInput.focus();
}

/** Fetches what an open conversation still lacks: its latest messages, its members. */
function loadConversation(conv) {
  if (!state.authenticated) return; // becameAuthenticated() calls again
  const readable = conv.kind === "direct" || conv.joined;
  if (readable && !conv.historyLoaded) loadLatest(conv);
  if (conv.kind === "group" && conv.joined && !conv.members) loadMembers(conv);
}

// Files

function queueUploads(files) {
  const to = state.active;
  if (!to) return;
  for (const file of files) state.uploadQueue.push({ file, to });
  runUploads();
}

/** Uploads the queued files one after another (the server takes one at a time). */
async function runUploads() {
  if (state.upload) return;
  while (state.uploadQueue.length > 0) {
    const { file, to } = state.uploadQueue.shift();
    if (!state.authenticated) {
      showError(`${file.name} was not uploaded: not connected to the server.`);
      continue;
    }
    const upload = new Upload(conn, to, file, (fraction) => showUploadProgress(file, fraction));
    state.upload = upload;
    showUploadProgress(file, 0);
    try {
      const done = await upload.run();
      noteMsgId(done.msg_id);
      conversation(to).add({
        msg_id: done.msg_id,
        from: me(),
        to,
        text: "",
        ts: done.ts,
        file: { id: done.file_id, name: file.name, size: file.size, mime: file.type || null },
      });
      forceScrollToBottom = true;
      scheduleRender();
    } catch (e) {
      if (!(e instanceof UploadCancelled)) showError(`Could not upload ${file.name}: ${describe(e)}`);
    } finally {
      state.upload = null;
      el.uploadStatus.hidden = true;
    }
  }
}

function showUploadProgress(file, fraction) {
  el.uploadStatus.hidden = false;
  el.uploadName.textContent = file.name;
  el.uploadProgress.value = fraction;
  el.uploadPercent.textContent = `${Math.floor(fraction * 100)} %`;
}

// ------------------------------------------------------------------------------------------
// Rendering
// ------------------------------------------------------------------------------------------

/**
 * Creates an element. `options`: className, text (set as textContent), attrs (set with
 * setAttribute; null/undefined/false leave it out) and on (event listeners). Children are
 * nodes or strings, and strings become text nodes. Nothing here parses HTML.
 */
function h(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.className) node.className = options.className;
  if (options.text !== undefined) node.textContent = options.text;
  for (const [name, value] of Object.entries(options.attrs ?? {})) {
    if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const [type, listener] of Object.entries(options.on ?? {})) {
    node.addEventListener(type, listener);
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** Replaces a list's items, keeping keyboard focus on the element with the same focus key. */
function replaceItems(list, items) {
  const focusKey = list.contains(document.activeElement)
    ? document.activeElement.dataset.focusKey
    : undefined;
  list.replaceChildren(...items);
  if (focusKey) list.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
}

let renderQueued = false;

/**
 * Asks for render() soon. Bursts of events (a replay brings up to 1000 messages) come out as
 * one update. A page in the background gets no animation frames, so a timer stands in.
 */
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => {
    if (renderQueued) render();
  };
  requestAnimationFrame(run);
  setTimeout(run, 100);
}

function render() {
  renderQueued = false; // a render still scheduled has nothing left to do
  if (!state.session) return;
  renderSidebar();
  renderConversation();
  renderTitle();
  saveUserState();
}

function renderTitle() {
  let unread = 0;
  for (const conv of state.conversations.values()) unread += conv.unread;
  document.title = unread > 0 ? `(${unread}) chatd` : "chatd";
  el.toggleUnread.hidden = unread === 0;
  el.toggleUnread.textContent = String(unread);
}

function presenceDot(user) {
  const online = state.presence.get(user);
  const word = online === undefined ? "unknown" : online ? "online" : "offline";
  return h("span", {
    className: `presence ${word}`,
    attrs: {
      role: "img",
      "aria-label": word === "unknown" ? "presence unknown" : word,
      title: word === "unknown" ? "presence unknown" : word,
      "data-testid": "presence",
      "data-user": user,
      "data-online": word === "unknown" ? "unknown" : String(online),
    },
  });
}

function unreadBadge(count) {
  if (!count) return null;
  return h("span", { className: "badge", attrs: { "data-testid": "unread-badge", "data-count": count } }, [
    String(count),
    h("span", { className: "visually-hidden", text: " unread" }),
  ]);
}

function conversationItem(conv) {
  const marker =
    conv.kind === "group"
      ? h("span", { className: "marker", attrs: { "aria-hidden": "true" }, text: "#" })
      : presenceDot(conv.name);
  const tag = conv.kind === "group" && conv.isPrivate ? h("span", { className: "tag", text: "private" }) : null;
  const button = h(
    "button",
    {
      className: "conversation-item",
      attrs: {
        type: "button",
        "data-testid": "conversation-item",
        "data-address": conv.address,
        "data-focus-key": conv.address,
        "aria-current": conv.address === state.active ? "page" : null,
      },
      on: { click: () => openConversation(conv.address) },
    },
    [
      marker,
      h("span", { className: "name", text: conv.kind === "group" ? conv.name : conv.address }),
      tag,
      unreadBadge(conv.unread),
    ],
  );
  return h("li", {}, [button]);
}

function renderSidebar() {
  const all = [...state.conversations.values()];
  const byName = (a, b) => a.name.localeCompare(b.name);
  const groups = all.filter((c) => c.kind === "group" && c.joined).sort(byName);
  const directs = all
    .filter((c) => c.kind === "direct")
    .sort((a, b) => b.lastActivity - a.lastActivity || a.name.localeCompare(b.name));
  const joinable = all
    .filter((c) => c.kind === "group" && !c.joined && (!c.isPrivate || state.invitations.has(c.name)))
    .sort(byName);

  replaceItems(el.groupList, groups.length ? groups.map(conversationItem) : [emptyItem("No groups yet.")]);
  replaceItems(el.directList, directs.length ? directs.map(conversationItem) : [emptyItem("No direct messages yet.")]);
  replaceItems(el.publicList, joinable.map(joinableItem));
  el.publicEmpty.hidden = joinable.length > 0;
}

function emptyItem(text) {
  return h("li", { className: "hint empty", text });
}

function joinableItem(conv) {
  const invited = state.invitations.has(conv.name);
  const detail = invited
    ? "invited"
    : conv.memberCount === null
      ? ""
      : `${conv.memberCount} member${conv.memberCount === 1 ? "" : "s"}`;
  return h("li", { className: "joinable", attrs: { "data-testid": "joinable-group", "data-group": conv.name } }, [
    h("span", { className: "name", text: conv.address }),
    h("span", { className: "hint", text: detail }),
    h("button", {
      text: "Join",
      attrs: {
        type: "button",
        "data-testid": "join-button",
        "data-focus-key": `join:${conv.name}`,
        "aria-label": `Join ${conv.address}`,
      },
      on: { click: () => joinGroup(conv.name) },
    }),
  ]);
}

function renderConversation() {
  const conv = activeConversation();
  el.noConversation.hidden = Boolean(conv);
  el.conversationView.hidden = !conv;
  document.body.classList.toggle("has-conversation", Boolean(conv));
  if (!conv) {
    renderedAddress = null;
    return;
  }
  const isGroup = conv.kind === "group";
  el.conversationTitle.textContent = conv.address;
  el.conversationPresence.hidden = isGroup;
  if (!isGroup) {
    const dot = presenceDot(conv.name);
    el.conversationPresence.className = dot.className;
    for (const attr of ["role", "aria-label", "title", "data-online", "data-user", "data-testid"]) {
      el.conversationPresence.setAttribute(attr, dot.getAttribute(attr));
    }
  }
  if (isGroup) {
    const count = conv.memberCount ?? conv.members?.size;
    const members = count === undefined || count === null ? "" : ` · ${count} member${count === 1 ? "" : "s"}`;
    el.conversationInfo.textContent = `${conv.isPrivate ? "private" : "public"} group${members}`;
  } else {
    const online = state.presence.get(conv.name);
    el.conversationInfo.textContent = online === undefined ? "" : online ? "online" : "offline";
  }
  el.membersToggle.hidden = !isGroup;
  el.membersToggle.setAttribute("aria-expanded", String(state.membersVisible));
  el.leaveButton.hidden = !isGroup || !conv.joined || conv.role === "owner";
  el.deleteButton.hidden = !isGroup || conv.role !== "owner";
  el.membersPanel.hidden = !isGroup || !state.membersVisible;
  if (isGroup) renderMembers(conv);

  el.messageInput.placeholder = `Message ${conv.address}`;
  el.loadOlder.hidden = !conv.more;
  el.loadOlder.disabled = conv.loadingOlder;
  el.loadOlder.textContent = conv.loadingOlder ? "Loading…" : "Load older messages";
  el.historyStart.hidden = !conv.historyLoaded || conv.more;
  renderMessages(conv);
  renderTyping(conv);
}

function renderMembers(conv) {
  const members = conv.members ? [...conv.members.entries()] : [];
  members.sort(([a], [b]) => a.localeCompare(b));
  const items = members.map(([user, role]) => {
    const kick = canKick(conv.role, role) && user !== me();
    return h("li", { attrs: { "data-testid": "member", "data-user": user } }, [
      presenceDot(user),
      h("span", { className: "name", text: user === me() ? `${user} (you)` : user }),
      role === "member" ? null : h("span", { className: "role", text: role }),
      kick
        ? h("button", {
            className: "small",
            text: "Remove",
            attrs: {
              type: "button",
              "data-testid": "kick-button",
              "data-focus-key": `kick:${user}`,
              "aria-label": `Remove ${user} from ${conv.address}`,
            },
            on: { click: () => kickUser(conv, user) },
          })
        : null,
    ]);
  });
  replaceItems(el.memberList, items.length ? items : [emptyItem(conv.members ? "No members." : "Loading…")]);
  el.inviteForm.hidden = !(conv.role === "owner" || conv.role === "admin");
}

/** What the permission table (docs/protocol.md, "Permissions") lets our role remove. */
function canKick(myRole, theirRole) {
  if (myRole === "owner") return theirRole !== "owner";
  if (myRole === "admin") return theirRole === "member";
  return false;
}

// The message list is updated in place, keyed by message, so that images are not fetched again
// and the reading position stays where it is when older messages are added above.

let renderedAddress = null;
const messageNodes = new Map(); // message key -> {node, signature}
let stickToBottom = true; // the list was scrolled to the end: keep it there as things arrive
let forceScrollToBottom = false; // we just sent something: show it

function messageSignature(m) {
  return [m.msg_id, m.ts, m.pending ? "p" : "", m.failed ?? ""].join("|");
}

function renderMessages(conv) {
  const scroller = el.messageScroller;
  const list = el.messages;
  const switched = renderedAddress !== conv.address;
  if (switched) {
    list.replaceChildren();
    messageNodes.clear();
    renderedAddress = conv.address;
  }
  const anchor = switched || stickToBottom ? null : firstVisibleMessage();
  const anchorOffset = anchor ? anchor.offsetTop - scroller.scrollTop : 0;

  const wanted = conv.messages;
  const keys = new Set(wanted.map((m) => m.key));
  for (const [key, entry] of messageNodes) {
    if (!keys.has(key)) {
      entry.node.remove();
      messageNodes.delete(key);
    }
  }
  wanted.forEach((m, i) => {
    const signature = messageSignature(m);
    let entry = messageNodes.get(m.key);
    if (!entry || entry.signature !== signature) {
      const node = messageNode(m);
      entry?.node.replaceWith(node);
      entry = { node, signature };
      messageNodes.set(m.key, entry);
    }
    if (list.children[i] !== entry.node) list.insertBefore(entry.node, list.children[i] ?? null);
    // A message that follows one of the same author closely goes without author and time
    // (the time stays in its tooltip).
    const continued = i > 0 && continues(wanted[i - 1], m);
    entry.node.classList.toggle("continued", continued);
    if (continued) entry.node.title = fullTime(m.ts);
    else entry.node.removeAttribute("title");
  });

  if (switched || stickToBottom || forceScrollToBottom) {
    scroller.scrollTop = scroller.scrollHeight;
    stickToBottom = true;
  } else if (anchor && anchor.isConnected) {
    scroller.scrollTop = anchor.offsetTop - anchorOffset;
  }
  forceScrollToBottom = false;
}

function continues(previous, m) {
  return (
    previous.from === m.from &&
    !previous.failed &&
    !m.pending &&
    !m.failed &&
    m.ts - previous.ts < RUN_WINDOW_MS
  );
}

function firstVisibleMessage() {
  const top = el.messageScroller.scrollTop;
  for (const node of el.messages.children) {
    if (node.offsetTop + node.offsetHeight > top) return node;
  }
  return null;
}

function isScrolledToBottom() {
  const s = el.messageScroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < 40;
}

function messageNode(m) {
  const own = m.from === me();
  const classes = ["message", own ? "own" : "", m.pending ? "pending" : "", m.failed ? "failed" : ""];
  const time = h("time", {
    text: shortTime(m.ts),
    attrs: { datetime: new Date(m.ts).toISOString(), title: fullTime(m.ts) },
  });
  const meta = h("div", { className: "meta" }, [
    h("span", { className: "author", text: own ? "You" : m.from, attrs: { "data-testid": "message-author" } }),
    time,
    m.pending ? h("span", { className: "state", text: "Sending…" }) : null,
  ]);
  const body = [meta];
  if (m.text) body.push(h("div", { className: "text", text: m.text, attrs: { "data-testid": "message-text" } }));
  if (m.file) body.push(fileNode(m.file));
  if (m.failed) {
    body.push(
      h("div", { className: "state error" }, [
        h("span", { text: `Not sent: ${m.failed}` }),
        h("button", { className: "small", text: "Retry", attrs: { type: "button" }, on: { click: () => retry(m) } }),
        h("button", { className: "small", text: "Discard", attrs: { type: "button" }, on: { click: () => discard(m) } }),
      ]),
    );
  }
  return h(
    "li",
    {
      className: classes.filter(Boolean).join(" "),
      attrs: { "data-testid": "message", "data-msg-id": m.msg_id ?? null, "data-from": m.from },
    },
    body,
  );
}

/**
 * A file in a message: a download link, and the image itself for images. Their URLs are signed
 * links that the server gives for this one file (links.js); they are filled in once known.
 */
function fileNode(file) {
  const link = h(
    "a",
    {
      className: "file-link",
      attrs: { download: file.name, "data-file-id": file.id, "data-testid": "file-link" },
      on: { click: (event) => followFileLink(event, link) },
    },
    [file.name],
  );
  resolveFileUrl(link);
  const caption = [link, " ", h("span", { className: "hint", text: formatBytes(file.size) })];
  if (!file.mime || !file.mime.startsWith("image/")) {
    return h("div", { className: "file" }, caption);
  }
  const image = h("img", {
    attrs: { alt: file.name, loading: "lazy", "data-file-id": file.id, "data-testid": "message-image" },
    on: { load: keepAtBottom, error: () => fileImageFailed(image) },
  });
  resolveFileUrl(image);
  return h("figure", { className: "file image" }, [image, h("figcaption", {}, caption)]);
}

/** Gives a file's link or image the URL of a good signed link (once signed in). */
function resolveFileUrl(node) {
  if (!state.authenticated) return; // becameAuthenticated() comes back to it
  const loaded = node.tagName === "IMG" && node.complete && node.naturalWidth > 0;
  if (loaded) return;
  links.get(node.dataset.fileId).then(
    (url) => {
      const attribute = node.tagName === "IMG" ? "src" : "href";
      if (node.getAttribute(attribute) !== url) node.setAttribute(attribute, url);
    },
    () => {}, // signed out, or the file is gone: nothing to show
  );
}

/** A click on a file's link: follow it while it is good, otherwise get a new one first. */
function followFileLink(event, link) {
  const href = link.getAttribute("href");
  if (link.dataset.following === href || (href && links.fresh(link.dataset.fileId) === href)) {
    delete link.dataset.following;
    return; // the browser follows it
  }
  event.preventDefault();
  links.get(link.dataset.fileId).then(
    (url) => {
      link.setAttribute("href", url);
      link.dataset.following = url;
      link.click();
    },
    (e) => reportFailure(`Could not open ${link.textContent}`, e),
  );
}

/** An image's link was refused (expired, or the server restarted): ask once for a new one. */
function fileImageFailed(image) {
  const src = image.getAttribute("src");
  if (!src || image.dataset.failed === src) return;
  image.dataset.failed = src;
  links.forget(image.dataset.fileId);
  resolveFileUrl(image);
}

/** An image finished loading and grew the list: stay at the end if we were there. */
function keepAtBottom() {
  if (stickToBottom) el.messageScroller.scrollTop = el.messageScroller.scrollHeight;
}

function renderTyping(conv) {
  const typing = state.typing.get(conv.address);
  const now = Date.now();
  const users = typing ? [...typing].filter(([, until]) => until > now).map(([user]) => user) : [];
  el.typing.textContent = typingText(users);
}

// Toasts: errors from the server and notices, shown for a while at the bottom.

function showToast(text, kind) {
  const toast = h(
    "div",
    { className: `toast ${kind}`, attrs: { role: kind === "error" ? "alert" : "status", "data-testid": "toast" } },
    [h("span", { text })],
  );
  const close = h("button", {
    className: "icon-button",
    text: "×",
    attrs: { type: "button", "aria-label": "Dismiss" },
    on: { click: () => toast.remove() },
  });
  toast.append(close);
  el.toasts.append(toast);
  while (el.toasts.children.length > MAX_TOASTS) el.toasts.firstChild.remove();
  setTimeout(() => toast.remove(), TOAST_MS);
}

function showError(text) {
  showToast(text, "error");
}

function showInfo(text) {
  showToast(text, "info");
}

// ------------------------------------------------------------------------------------------
// The page
// ------------------------------------------------------------------------------------------

const el = {};
for (const [name, id] of Object.entries({
  authView: "auth-view",
  authForm: "auth-form",
  authUser: "auth-user",
  authPassword: "auth-password",
  authError: "auth-error",
  loginButton: "login-button",
  registerButton: "register-button",
  chatView: "chat-view",
  sidebarToggle: "sidebar-toggle",
  toggleUnread: "toggle-unread",
  status: "connection-status",
  meName: "me-name",
  logoutButton: "logout-button",
  offlineBanner: "offline-banner",
  offlineText: "offline-text",
  reconnectButton: "reconnect-button",
  sidebar: "sidebar",
  groupList: "group-list",
  directList: "direct-list",
  directForm: "direct-form",
  directUser: "direct-user",
  createGroupForm: "create-group-form",
  newGroupName: "new-group-name",
  newGroupPrivate: "new-group-private",
  publicList: "public-list",
  publicEmpty: "public-empty",
  refreshGroups: "refresh-groups",
  noConversation: "no-conversation",
  conversationView: "conversation-view",
  conversationPresence: "conversation-presence",
  conversationTitle: "conversation-title",
  conversationInfo: "conversation-info",
  membersToggle: "members-toggle",
  leaveButton: "leave-button",
  deleteButton: "delete-button",
  messageScroller: "message-scroller",
  loadOlder: "load-older",
  historyStart: "history-start",
  messages: "messages",
  typing: "typing-indicator",
  uploadStatus: "upload-status",
  uploadName: "upload-name",
  uploadProgress: "upload-progress",
  uploadPercent: "upload-percent",
  uploadCancel: "upload-cancel",
  composer: "composer",
  fileInput: "file-input",
  attachButton: "attach-button",
  messageInput: "message-input",
  membersPanel: "members-panel",
  memberList: "member-list",
  inviteForm: "invite-form",
  inviteUser: "invite-user",
  toasts: "toasts",
})) {
  el[name] = document.getElementById(id);
}

function showAuthView(message = "") {
  el.chatView.hidden = true;
  el.authView.hidden = false;
  el.authError.textContent = message;
  document.title = "chatd";
  (el.authUser.value ? el.authPassword : el.authUser).focus();
}

function showChatView() {
  el.authView.hidden = true;
  el.chatView.hidden = false;
  el.meName.textContent = me();
  renderedAddress = null;
  // On a phone, start in the list of conversations unless one is open.
  setSidebarOpen(narrowScreen.matches && !state.active);
  renderStatus();
  scheduleRender();
}

function setSidebarOpen(open) {
  document.body.classList.toggle("sidebar-open", open);
  el.sidebarToggle.setAttribute("aria-expanded", String(open));
}

function bindEvents() {
  el.authForm.addEventListener("submit", (e) => {
    e.preventDefault();
    submitAuth("login");
  });
  el.registerButton.addEventListener("click", () => submitAuth("register"));
  el.logoutButton.addEventListener("click", logout);
  el.reconnectButton.addEventListener("click", () => conn.reconnectNow());
  window.addEventListener("online", () => conn.reconnectNow());

  el.sidebarToggle.addEventListener("click", () => {
    const open = !document.body.classList.contains("sidebar-open");
    setSidebarOpen(open);
    if (open) {
      el.sidebar.querySelector("button, input")?.focus();
      refreshGroupsQuietly();
    }
  });
  el.refreshGroups.addEventListener("click", () => {
    refreshGroups().catch((e) => reportFailure("Could not load the groups", e));
  });
  setInterval(refreshGroupsQuietly, GROUP_REFRESH_MS);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && document.body.classList.contains("sidebar-open") && state.active) {
      setSidebarOpen(false);
      el.sidebarToggle.focus();
    }
  });

  el.directForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (await startDirect(el.directUser.value.trim().toLowerCase())) el.directUser.value = "";
  });
  el.createGroupForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = el.newGroupName.value.trim().toLowerCase();
    if (await createGroup(name, el.newGroupPrivate.checked)) {
      el.newGroupName.value = "";
      el.newGroupPrivate.checked = false;
    }
  });
  el.inviteForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const conv = activeConversation();
    if (conv && (await inviteUser(conv, el.inviteUser.value.trim().toLowerCase()))) {
      el.inviteUser.value = "";
    }
  });

  el.membersToggle.addEventListener("click", () => {
    state.membersVisible = !state.membersVisible;
    scheduleRender();
  });
  el.leaveButton.addEventListener("click", () => {
    const conv = activeConversation();
    if (conv) leaveGroup(conv);
  });
  el.deleteButton.addEventListener("click", () => {
    const conv = activeConversation();
    if (conv) deleteGroup(conv);
  });

  el.loadOlder.addEventListener("click", () => loadOlder(activeConversation()));
  el.messageScroller.addEventListener("scroll", () => {
    stickToBottom = isScrolledToBottom();
    if (el.messageScroller.scrollTop < 80) loadOlder(activeConversation());
  });

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.messageInput.value.replace(/\s+$/, "");
    if (!state.active || !text.trim()) return;
    sendMessage(state.active, text);
    el.messageInput.value = "";
    state.lastTypingSent = 0;
    fitComposer();
  });
  el.messageInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.messageInput.addEventListener("input", () => {
    fitComposer();
    sendTyping();
  });
  el.messageInput.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files ?? [])];
    if (files.length) {
      e.preventDefault();
      queueUploads(files);
    }
  });

  el.attachButton.addEventListener("click", () => el.fileInput.click());
  el.fileInput.addEventListener("change", () => {
    queueUploads([...el.fileInput.files]);
    el.fileInput.value = "";
  });
  el.uploadCancel.addEventListener("click", () => state.upload?.cancel());
  el.conversationView.addEventListener("dragover", (e) => {
    if (e.dataTransfer?.types.includes("Files")) e.preventDefault();
  });
  el.conversationView.addEventListener("drop", (e) => {
    const files = [...(e.dataTransfer?.files ?? [])];
    if (files.length) {
      e.preventDefault();
      queueUploads(files);
    }
  });
}

/** The message box grows with its text (up to a limit set in the CSS). */
function fitComposer() {
  const input = el.messageInput;
  input.style.height = "auto";
  input.style.height = `${input.scrollHeight}px`;
}

function main() {
  bindEvents();
  const session = loadSession();
  if (session) {
    startSession(session);
    conn.connect();
  } else {
    localStorage.removeItem(SESSION_KEY);
    showAuthView();
  }
}

main();
