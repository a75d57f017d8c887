//! The chat service: commands in, effects out.
//!
//! The service never touches a socket, a thread or the clock. The loop hands it each message of
//! a `/ws` connection (by slab key) with the time, and the results of the work it asked others
//! to do: password checks from the hasher, commits from the store writer. What it decides comes
//! back as [`Effect`] values through one queue ([`Service::drain`]): frames to queue, closes,
//! changes of authentication, password jobs, batches to commit. A reply or event for many
//! connections is encoded once and shared.
//!
//! Every handler says what happens to its request with an [`Outcome`]: a reply now, a reply
//! after the batch it joins is committed, or a reply after the password check. The rest of the
//! service is split by job: [`held`](super::held) (ordering of replies), [`accounts`](super::accounts),
//! [`presence`](super::presence), [`groups`](super::groups), [`messaging`](super::messaging),
//! [`batch`](super::batch) (the writes of an iteration and their completion), [`files`](super::files),
//! [`metrics`](super::metrics).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use serde_json::{json, Value};

use super::batch::{Batch, Then};
pub use super::client::{Client, Identity, Owed, Settings};
use super::hasher::Work;
use super::held::Inbound;
use super::login_guard::LoginGuard;
use super::metrics::{ChatMetrics, FileMetrics};
use super::protocol::{self, Command, ErrorCode, Failure};
use super::ratelimit::{Act, Bucket, PerUser};
use super::upload;
use crate::metrics::CloseReason;
use crate::store::{GroupId, Store, StoreError, User, UserId, Write};
use crate::ws::{frame, CloseCode, Opcode};

/// A connection, by its slab key.
pub type ConnId = usize;

/// Stands for a connection that closed before what it was owed came back: effects for it are
/// not queued.
pub const GONE: ConnId = usize::MAX;

/// The time, read once per iteration by the loop and passed in.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The monotonic clock, for rate limits.
    pub mono: Instant,
    /// Milliseconds since the Unix epoch, for timestamps and expiries.
    pub wall_ms: i64,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall_ms: now_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the loop should do as a result of what the service was told.
#[derive(Debug)]
pub enum Effect {
    /// Queue this encoded text frame on this connection.
    Send(ConnId, Rc<[u8]>),
    /// Queue these encoded frames (how many), back to back in one buffer, on this connection.
    SendFrames(ConnId, Rc<[u8]>, u32),
    /// Close this connection with a close frame.
    Close(ConnId, CloseCode, CloseReason),
    /// The connection is now authenticated (`true`: stop its auth timeout) or no longer
    /// (`false`: start it again).
    Authenticated(ConnId, bool),
    /// Every reply this connection was owed is queued: the close it asked for may go out
    /// (see [`Service::finish_after_replies`]).
    Finish(ConnId),
    /// Check or hash a password on the worker; the result comes back through
    /// [`Service::password_done`] with this ticket.
    Hash(u64, Work),
    /// Commit these writes on the store writer; the result comes back through
    /// [`Service::committed`]. At most one batch is out at a time.
    Commit(crate::store::Batch),
    /// Tell [`Service::output_drained`] once this connection's output queue is short (at
    /// once if it already is): a replay goes on in steps, and a large read waits, so that
    /// neither fills the queue up to its cap.
    AwaitDrain(ConnId),
    /// Read this connection again: it had stopped, its held requests at their bound (see
    /// [`Service::room`]).
    Resume(ConnId),
}

/// What a handler decided about its request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // made and taken apart at once, never stored
pub enum Outcome {
    /// Reply now (in its turn: behind the replies this connection is still owed).
    Reply(Reply),
    /// Reply now, then replay what the user missed since this `msg_id`.
    ReplyAndRecover(Reply, UserId, i64),
    /// Authenticate the connection as this user, reply `ok` with the name, then replay what
    /// the user missed since the `msg_id` given.
    Authenticate(Identity, Option<i64>),
    /// Write this; the reply, and whatever else follows, comes after the commit.
    AfterCommit(Write, Then),
    /// Check or hash a password first; then go on as [`Waiting`] says.
    AfterPassword(Work, Waiting),
}

/// A reply's fields, or the refusal.
pub type Reply = Result<Value, Failure>;

/// What a password job was for.
#[derive(Debug)]
pub enum Waiting {
    /// `register` of this name.
    Register {
        /// The name.
        name: String,
    },
    /// `login` as this user (`None`: unknown, checked against a dummy hash all the same).
    Login {
        /// The name asked for.
        name: String,
        /// The user (`None`: unknown, checked against a dummy hash all the same).
        user: Option<User>,
        /// Recovery asked for.
        since: Option<i64>,
    },
}

/// The chat service.
pub struct Service {
    pub(super) store: Store,
    pub(super) settings: Settings,
    pub(super) clients: HashMap<ConnId, Client>,
    /// Authenticated connections by user name: who is online, and where to deliver.
    pub(super) online: HashMap<String, Vec<ConnId>>,
    pub(super) login_buckets: HashMap<IpAddr, Bucket>,
    /// Bytes of files each user has stored, as far as read (see `Service::check_storage`);
    /// forgotten when files are deleted.
    pub(super) stored_bytes: HashMap<UserId, u64>,
    /// When the next prune is due (`None`: now), and whether one is out.
    pub(super) next_prune: Option<Instant>,
    pub(super) pruning: bool,
    /// Membership changes of the commit being completed, for the members not told yet.
    pub(super) membership_news: Vec<super::announce::News>,
    /// What each user may still do, across its connections.
    pub(super) per_user: PerUser,
    /// Failed logins per account, and per account and address.
    pub(super) login_guard: LoginGuard,
    /// Password jobs out, by ticket.
    pub(super) password_jobs: HashMap<u64, (ConnId, Option<Value>, Waiting)>,
    pub(super) next_ticket: u64,
    next_serial: u64,
    /// The effects decided so far, in order; the loop drains them.
    out: Vec<Effect>,
    /// The next msg_id and group id to give; both only grow while the server runs.
    pub(super) next_msg_id: i64,
    pub(super) next_group_id: GroupId,
    /// The highest msg_id whose commit came back and whose delivery was queued: replays and
    /// history read no further, so a message never reaches a connection both ways.
    pub(super) delivered_through: i64,
    /// Connections with a replay under way, which live deliveries skip.
    pub(super) replays: usize,
    /// The writes of this iteration, and the batch being committed.
    pub(super) batch: Batch,
    /// Members by group, cached for delivery and presence; changed in place as commits land.
    pub(super) members_cache: HashMap<GroupId, Rc<Vec<String>>>,
    /// Users, groups and roles remembered from the store.
    pub(super) directory: super::directory::Directory,
    /// Users whose first connection authenticated (`true`) or last one left, in order;
    /// announced together by [`Service::flush_presence`].
    pub(super) presence_changes: Vec<(UserId, String, bool)>,
    /// Authenticated connections by the moment their credential expires (ms since the epoch);
    /// see [`super::sessions`].
    pub(super) expiries: BTreeSet<(i64, ConnId)>,
    /// Messaging counters.
    pub metrics: ChatMetrics,
    /// Upload counters.
    pub file_metrics: FileMetrics,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::Conflict => Failure::new(ErrorCode::Conflict, "already exists"),
            StoreError::Unavailable(detail) => {
                warn!("store: {detail}");
                unavailable()
            }
        }
    }
}

/// The refusal for a user over one of its rates (across all its connections).
pub fn over_rate<T>(what: &str) -> Result<T, Failure> {
    fail(
        ErrorCode::RateLimited,
        format!("too many {what} from this account, slow down"),
    )
}

/// The refusal for anything the store could not do.
pub fn unavailable() -> Failure {
    Failure::new(ErrorCode::Unavailable, "storage is unavailable, try again")
}

/// A refusal.
pub fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::new(code, message))
}

/// Encodes a JSON text as a server text frame, once, for any number of connections.
pub fn text_frame(json: &str) -> Rc<[u8]> {
    frame::encode(Opcode::Text, true, json.as_bytes(), None).into()
}

impl Service {
    /// A service over an open store (used for reads only; writes go out as batches).
    pub fn new(store: Store, settings: Settings) -> Result<Service, StoreError> {
        let next_msg_id = store.last_message_id()? + 1;
        let next_group_id = store.last_group_id()? + 1;
        let partials = upload::remove_partials(&settings.files_dir);
        if partials > 0 {
            info!("removed {partials} partial uploads left by an earlier run");
        }
        Ok(Service {
            store,
            per_user: PerUser::new(settings.user_rates),
            settings,
            clients: HashMap::new(),
            online: HashMap::new(),
            login_buckets: HashMap::new(),
            stored_bytes: HashMap::new(),
            membership_news: Vec::new(),
            next_prune: None,
            pruning: false,
            login_guard: LoginGuard::default(),
            password_jobs: HashMap::new(),
            next_ticket: 1,
            next_serial: 1,
            out: Vec::new(),
            next_msg_id,
            next_group_id,
            delivered_through: next_msg_id - 1,
            replays: 0,
            batch: Batch::default(),
            members_cache: HashMap::new(),
            directory: Default::default(),
            presence_changes: Vec::new(),
            expiries: BTreeSet::new(),
            metrics: ChatMetrics::default(),
            file_metrics: FileMetrics::default(),
        })
    }

    /// Takes the effects decided so far, in order: the one way out of the service.
    pub fn drain(&mut self, into: &mut Vec<Effect>) {
        into.append(&mut self.out);
    }

    /// Whether a connection is known to the service.
    pub fn has(&self, conn: ConnId) -> bool {
        self.clients.contains_key(&conn)
    }

    /// Number of users with at least one authenticated connection.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }

    /// A `/ws` connection opened.
    pub fn open(&mut self, conn: ConnId, ip: IpAddr, now: Now) {
        self.next_serial += 1;
        let client = Client {
            serial: self.next_serial,
            ip,
            identity: None,
            bucket: Bucket::new(self.settings.command_burst, now.mono),
            strikes: None,
            owed: Owed::default(),
            held: Default::default(),
            finishing: false,
            drained: false,
            paused: false,
            upload: None,
        };
        self.clients.insert(conn, client);
    }

    /// A `/ws` connection left the open phase. What it is still owed is dropped with it; its
    /// entries in a batch are still committed (their replies go nowhere).
    pub fn close(&mut self, conn: ConnId) {
        let Some(client) = self.clients.remove(&conn) else {
            return;
        };
        if client.owed.replay.is_some() {
            self.replays -= 1;
        }
        if let Some((up, _)) = client.upload {
            up.abort();
            self.upload_failed("disconnect");
        }
        if let Some(me) = client.identity {
            self.forget_expiry(conn, &me);
            self.set_offline(conn, &me);
        }
    }

    /// The end of the loop's iteration: credentials that expired end their connections'
    /// authentication, presence changes are announced, and the iteration's writes go to the
    /// store writer if it is free (otherwise they wait for the next completion, gathering more).
    pub fn end_iteration(&mut self, now: Now) {
        self.end_expired(now);
        if !self.presence_changes.is_empty() {
            self.flush_presence();
        }
        self.prune_if_due(now);
        self.submit_batch(now);
    }

    /// Whether the loop should come back without sleeping: presence changes wait.
    pub fn has_work(&self) -> bool {
        !self.presence_changes.is_empty()
    }

    // ------------------------------------------------------------------------------------
    // Dispatch: one request, one outcome
    // ------------------------------------------------------------------------------------

    /// Handles one request or upload piece, whose turn it is.
    pub(super) fn handle(&mut self, conn: ConnId, inbound: Inbound, now: Now) {
        let request = match inbound {
            Inbound::Bytes(bytes) => return self.upload_bytes(conn, bytes, now),
            Inbound::Request(Err((id, failure))) => return self.answer(conn, id, Err(failure)),
            Inbound::Request(Ok(request)) => request,
        };
        let request = if super::held::reads_much(&request.command) {
            match self.wait_for_drain(conn, request) {
                Some(request) => request,
                None => return,
            }
        } else {
            request
        };
        let me = self.clients.get(&conn).and_then(|c| c.identity.clone());
        // A newcomer's arrival is announced before anything its commands let others see.
        if let Some(me) = &me {
            if self.presence_changes.iter().any(|c| c.2 && c.0 == me.id) {
                self.flush_presence();
            }
        }
        let outcome = self.decide(conn, &request.id, request.command, me, now);
        self.settle(conn, request.id, outcome);
        // An empty file needs no bytes: it is complete as soon as its ok is out.
        self.finish_empty_upload(conn, now);
    }

    /// The command table: who may do what, and which handler decides.
    fn decide(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        command: Command,
        me: Option<Rc<Identity>>,
        now: Now,
    ) -> Outcome {
        let reply = Outcome::Reply;
        let Some(me) = me else {
            return match command {
                Command::Register { user, password } => self.register(conn, user, password, now),
                Command::Login {
                    user,
                    password,
                    since,
                } => self.login(conn, user, password, since, now),
                Command::Auth { token, since } => self.auth(&token, since, now),
                _ => reply(fail(
                    ErrorCode::Unauthenticated,
                    "authenticate first (login or auth)",
                )),
            };
        };
        match command {
            Command::Register { user, password } => self.register(conn, user, password, now),
            Command::Login { .. } => reply(fail(
                ErrorCode::Conflict,
                "already authenticated; logout first",
            )),
            Command::Auth { token, since } => self.reauth(&me, &token, since, now),
            Command::Logout => self.logout(conn, &me),
            Command::Whoami => reply(self.whoami(&me)),
            Command::Send {
                to,
                text,
                client_id,
            } => match self.per_user.take(me.id, Act::Send, now.mono) {
                true => self.send(&me, &to, text, client_id, now),
                false => reply(over_rate("messages")),
            },
            Command::Typing { to } => reply(self.typing(conn, &me, &to, now)),
            Command::History {
                with,
                before,
                limit,
            } => reply(self.history(&me, &with, before, limit, now)),
            Command::Sync { since } => Outcome::ReplyAndRecover(Ok(json!({})), me.id, since),
            Command::FileUpload {
                to,
                name,
                size,
                mime,
            } => match self.per_user.take(me.id, Act::Upload, now.mono) {
                true => reply(self.file_upload(conn, id, &me, &to, name, size, mime, now)),
                false => reply(over_rate("uploads")),
            },
            Command::FileCancel => reply(self.file_cancel(conn)),
            Command::FileLink { file_id } => reply(self.file_link(&me, &file_id, now)),
            Command::GroupCreate { group, private } => {
                match self.per_user.take(me.id, Act::GroupCreate, now.mono) {
                    true => self.group_create(&me, group, private, now),
                    false => reply(over_rate("new groups")),
                }
            }
            Command::GroupJoin { group } => self.group_join(&me, &group),
            Command::GroupLeave { group } => self.group_leave(&me, &group),
            Command::GroupInvite { group, user } => self.group_invite(&me, &group, &user, now),
            Command::GroupKick { group, user, ban } => {
                self.group_kick(&me, &group, &user, ban, now)
            }
            Command::GroupRole { group, user, role } => {
                self.group_role(&me, (&group, &user, &role), now)
            }
            Command::GroupDelete { group } => self.group_delete(&me, &group),
            Command::GroupMembers { group } => reply(self.group_members(&me, &group)),
            Command::GroupList { limit, after } => {
                reply(self.group_list(&me, limit, after.as_deref()))
            }
        }
    }

    /// Carries out a handler's outcome.
    pub(super) fn settle(&mut self, conn: ConnId, id: Option<Value>, outcome: Outcome) {
        match outcome {
            Outcome::Reply(reply) => self.answer(conn, id, reply),
            Outcome::ReplyAndRecover(reply, user, since) => {
                let ok = reply.is_ok();
                self.answer(conn, id, reply);
                if ok {
                    self.start_replay(conn, user, since);
                }
            }
            Outcome::Authenticate(identity, since) => {
                let (user, reply) = (identity.id, Ok(json!({ "user": identity.name })));
                self.set_identity(conn, identity);
                self.answer(conn, id, reply);
                if let Some(since) = since {
                    self.start_replay(conn, user, since);
                }
            }
            Outcome::AfterCommit(write, then) => self.join_batch(conn, id, Some(write), then),
            Outcome::AfterPassword(work, waiting) => self.submit_password(conn, id, work, waiting),
        }
    }

    /// Replies now, or, while this connection is owed earlier replies from a commit, in its
    /// turn after them.
    pub(super) fn answer(&mut self, conn: ConnId, id: Option<Value>, reply: Reply) {
        if self.clients.get(&conn).is_some_and(|c| c.owed.entries > 0) {
            self.join_batch(conn, id, None, Then::Answer(reply));
        } else {
            self.reply(conn, &id, reply);
        }
    }

    /// Queues a reply on a connection at once.
    pub(super) fn reply(&mut self, conn: ConnId, id: &Option<Value>, reply: Reply) {
        let text = match reply {
            Ok(fields) => protocol::ok(id, fields),
            Err(failure) => protocol::error(id, &failure),
        };
        self.push(Effect::Send(conn, text_frame(&text)));
    }

    /// Sends one event to several connections, encoded once.
    pub(super) fn broadcast(&mut self, conns: impl IntoIterator<Item = ConnId>, text: &str) {
        let frame = text_frame(text);
        for conn in conns.into_iter().filter(|&c| c != GONE) {
            self.out.push(Effect::Send(conn, frame.clone()));
        }
    }

    /// Queues an effect.
    pub(super) fn push(&mut self, effect: Effect) {
        let conn = match &effect {
            Effect::Send(c, _) | Effect::SendFrames(c, _, _) | Effect::Close(c, _, _) => *c,
            Effect::Authenticated(c, _) | Effect::Finish(c) => *c,
            Effect::AwaitDrain(c) | Effect::Resume(c) => *c,
            Effect::Hash(..) | Effect::Commit(_) => 0,
        };
        if conn != GONE {
            self.out.push(effect);
        }
    }

    /// Connections of one user.
    pub(super) fn conns_of(&self, user: &str) -> Vec<ConnId> {
        self.online.get(user).cloned().unwrap_or_default()
    }

    /// Connections of several users.
    pub(super) fn conns_of_names(&self, names: &[String]) -> Vec<ConnId> {
        names
            .iter()
            .flat_map(|name| self.online.get(name).into_iter().flatten().copied())
            .collect()
    }

    /// Closes a connection that broke a limit of the service.
    pub(super) fn refuse_connection(&mut self, conn: ConnId) {
        self.push(Effect::Close(conn, CloseCode::POLICY, CloseReason::Policy));
    }
}
