//! The chat service: commands in, effects out.
//!
//! The service never touches a socket or a connection. The loop hands it each text message of
//! a `/ws` connection (by slab key) and gets back [`Effect`]s as values: frames to queue on
//! connections, closes, changes of authentication. A reply or event for many connections is
//! encoded once and shared.
//!
//! Password work goes to the [`Hasher`] thread. While a connection waits for it, its later
//! requests are held, so that replies keep the order of requests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use serde_json::{json, Value};

use super::auth;
use super::hasher::{Cost, Done, Hasher, Outcome, Work};
use super::names::{valid_name, valid_password};
use super::permissions::{self, Action, Actor, Denied};
use super::protocol::{self, Command, ErrorCode, Failure, Request};
use super::ratelimit::Bucket;
use super::upload::{self, Upload, WriteError};
use crate::metrics::CloseReason;
use crate::store::{
    FileMeta, Group, GroupId, NewMessage, Role, Store, StoreError, StoredMessage, Target, User,
    UserId,
};
use crate::ws::{frame, CloseCode, Opcode};

/// A connection, by its slab key.
pub type ConnId = usize;

/// Requests a connection may have waiting behind an earlier reply (a password check, a
/// commit); one more closes the connection with 1008, since answering it early would break the
/// order of replies.
const MAX_HELD: usize = 64;

/// Upload bytes a connection may have waiting behind a request (a `file.upload` still waiting
/// for an earlier reply); more close the connection with 1008.
const MAX_HELD_BYTES: usize = 16 << 20;

/// What the loop should do as a result of a message.
#[derive(Debug, Clone)]
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
}

/// The service's settings, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `register` is allowed.
    pub registration_open: bool,
    /// Server admins by name.
    pub admins: HashSet<String>,
    /// Secret for HS256 JWTs; `None` disables them.
    pub jwt_secret: Option<Vec<u8>>,
    /// Lifetime of session tokens.
    pub session_ttl: Duration,
    /// Commands per second per connection, sustained.
    pub command_rate: f64,
    /// Commands per connection in a burst.
    pub command_burst: f64,
    /// Refused commands in a row after which the connection is closed with 1008.
    pub rate_strikes: u32,
    /// `register`/`login` per second per remote address, sustained.
    pub login_rate: f64,
    /// `register`/`login` per remote address in a burst.
    pub login_burst: f64,
    /// Argon2id cost.
    pub argon2: Cost,
    /// Longest text, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Most messages one recovery replays.
    pub recovery_limit: usize,
    /// `typing` per second per connection, sustained.
    pub typing_rate: f64,
    /// `typing` per connection in a burst.
    pub typing_burst: f64,
    /// Where uploaded files are stored.
    pub files_dir: std::path::PathBuf,
    /// Largest file, in bytes.
    pub max_file_size: u64,
}

/// Who a connection is logged in as.
#[derive(Debug, Clone)]
struct Identity {
    user: User,
    /// The session token's hash, when authenticated by a session (not a JWT); `logout`
    /// revokes it.
    token_hash: Option<[u8; 32]>,
}

/// The service's state for one `/ws` connection.
#[derive(Debug)]
struct Session {
    ip: IpAddr,
    identity: Option<Identity>,
    bucket: Bucket,
    strikes: u32,
    typing: Bucket,
    /// A password job is out for this connection.
    busy: Option<u64>,
    /// Messages of this connection in the batch waiting for the next commit.
    in_batch: usize,
    /// Requests that arrived while an earlier one waits (for the password worker or a
    /// commit), already parsed.
    held: VecDeque<Inbound>,
    /// The upload in progress, with the id of its `file.upload` request.
    upload: Option<(Upload, PendingUpload)>,
}

type Parsed = Result<Request, (Option<Value>, Failure)>;

/// A message from a connection: a request, or bytes of the upload in progress.
#[derive(Debug)]
enum Inbound {
    Request(Parsed),
    Bytes(Vec<u8>),
}

/// Where an upload goes, known from its `file.upload`.
#[derive(Debug, Clone)]
struct PendingUpload {
    id: Option<Value>,
    to: String,
    target: Target,
    sender: UserId,
    from: String,
}

/// A `send` accepted in this iteration, waiting for the commit.
#[derive(Debug)]
struct Accepted {
    conn: ConnId,
    id: Option<Value>,
    from: String,
    to: String,
    /// Stored with this batch; `None` for a duplicate that answers with `dup`.
    message: Option<NewMessage>,
    /// For a duplicate: the msg_id and ts of the first copy.
    dup: Option<(i64, i64)>,
    /// For a duplicate of a message in the same batch: its index there.
    dup_of: Option<usize>,
    /// A finished upload: answered with `file.done` rather than `ok`.
    file_done: bool,
    /// Not a message: a reply that waits its turn behind the messages before it.
    answer: Option<Reply>,
}

/// Counters of the messaging path, rendered into `/metrics`.
#[derive(Debug, Default)]
pub struct ChatMetrics {
    /// Messages stored and acknowledged.
    pub accepted: u64,
    /// `message` events queued for delivery (one per recipient connection).
    pub delivered: u64,
    /// Sends answered from an earlier copy (repeated `client_id`).
    pub deduplicated: u64,
    /// Commits of a batch.
    pub commits: u64,
    /// Commits that failed (their senders got `unavailable`).
    pub commit_failures: u64,
    /// Messages over all commits (batch size sum).
    pub batched: u64,
    /// Largest batch.
    pub batch_max: u64,
    /// Commit latency histogram, by the bucket bounds in [`COMMIT_BUCKETS_US`].
    pub commit_latency: [u64; COMMIT_BUCKETS_US.len() + 1],
    /// Sum of commit latencies, microseconds.
    pub commit_latency_sum_us: u64,
}

/// Counters of file uploads.
#[derive(Debug, Default)]
pub struct FileMetrics {
    /// Bytes written to upload files.
    pub bytes_uploaded: u64,
    /// Uploads completed and stored.
    pub uploads: u64,
    /// Failed or abandoned uploads, by reason.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
}

/// Upper bounds (microseconds) of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS_US: [u64; 8] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000];

/// What a password job was for.
#[derive(Debug)]
enum Waiting {
    Register {
        name: String,
    },
    Login {
        user: Option<User>,
        since: Option<i64>,
    },
}

#[derive(Debug)]
struct Pending {
    conn: ConnId,
    id: Option<Value>,
    waiting: Waiting,
}

/// The chat service.
pub struct Service {
    store: Store,
    hasher: Hasher,
    settings: Settings,
    sessions: HashMap<ConnId, Session>,
    /// Authenticated connections by user name: who is online, and where to deliver.
    online: HashMap<String, Vec<ConnId>>,
    login_buckets: HashMap<IpAddr, Bucket>,
    pending: HashMap<u64, Pending>,
    next_ticket: u64,
    out: Vec<Effect>,
    done: Vec<Done>,
    /// The next msg_id to give.
    next_msg_id: i64,
    /// Sends accepted in this iteration, committed together.
    batch: Vec<Accepted>,
    /// Members by group, cached for delivery and presence; updated in place on joins, leaves
    /// and kicks.
    members_cache: HashMap<GroupId, Rc<Vec<String>>>,
    /// Users whose first session opened (`true`) or last one closed in this iteration, in
    /// order; announced together by `flush_presence`.
    presence_changes: Vec<(UserId, String, bool)>,
    /// Replays to send after a reply: (connection, user, since).
    replay: Option<(ConnId, UserId, i64)>,
    /// Messaging counters.
    pub metrics: ChatMetrics,
    /// Upload counters.
    pub file_metrics: FileMetrics,
}

type Reply = Result<Value, Failure>;

fn fail<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::new(code, message))
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::Conflict => Failure::new(ErrorCode::Conflict, "already exists"),
            StoreError::Unavailable(detail) => {
                warn!("store: {detail}");
                Failure::new(ErrorCode::Unavailable, "storage is unavailable, try again")
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Encodes a JSON text as a server text frame, once, for any number of connections.
fn text_frame(json: &str) -> Rc<[u8]> {
    frame::encode(Opcode::Text, true, json.as_bytes(), None).into()
}

impl Service {
    /// A service over an open store; password results wake the loop through `waker`.
    pub fn new(store: Store, settings: Settings, waker: Arc<mio::Waker>) -> Service {
        if let Ok(n) = store.purge_sessions(now_ms()) {
            if n > 0 {
                info!("removed {n} expired sessions");
            }
        }
        let next_msg_id = store.last_message_id().unwrap_or(0) + 1;
        let partials = upload::remove_partials(&settings.files_dir);
        if partials > 0 {
            info!("removed {partials} partial uploads left by an earlier run");
        }
        Service {
            store,
            hasher: Hasher::new(settings.argon2, waker),
            settings,
            sessions: HashMap::new(),
            online: HashMap::new(),
            login_buckets: HashMap::new(),
            pending: HashMap::new(),
            next_ticket: 1,
            out: Vec::new(),
            done: Vec::new(),
            next_msg_id,
            batch: Vec::new(),
            members_cache: HashMap::new(),
            presence_changes: Vec::new(),
            replay: None,
            metrics: ChatMetrics::default(),
            file_metrics: FileMetrics::default(),
        }
    }

    /// Takes the effects produced so far.
    pub fn drain_effects(&mut self, into: &mut Vec<Effect>) {
        into.append(&mut self.out);
    }

    /// Whether a connection still waits for replies: a password check, sends in the batch, or
    /// requests held behind them.
    pub fn owes_replies(&self, conn: ConnId) -> bool {
        self.sessions
            .get(&conn)
            .is_some_and(|s| s.busy.is_some() || s.in_batch > 0 || !s.held.is_empty())
    }

    /// Whether a connection is known to the service.
    pub fn has(&self, conn: ConnId) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// Number of users with at least one authenticated connection.
    pub fn users_online(&self) -> usize {
        self.online.len()
    }

    /// A `/ws` connection opened.
    pub fn open(&mut self, conn: ConnId, ip: IpAddr, now: Instant) {
        self.sessions.insert(
            conn,
            Session {
                ip,
                identity: None,
                bucket: Bucket::new(self.settings.command_burst, now),
                typing: Bucket::new(self.settings.typing_burst, now),
                strikes: 0,
                busy: None,
                in_batch: 0,
                held: VecDeque::new(),
                upload: None,
            },
        );
    }

    /// A `/ws` connection left the open phase.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.remove(&conn) {
            if let Some((up, _)) = session.upload {
                up.abort();
                self.upload_failed("disconnect");
            }
            if let Some(identity) = session.identity {
                self.set_offline(conn, &identity.user.name);
            }
        }
    }

    /// A message from a `/ws` connection.
    pub fn message(&mut self, conn: ConnId, opcode: Opcode, data: Vec<u8>, now: Instant) {
        let settings = &self.settings;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        // Upload bytes are not commands: the upload's declared size bounds them.
        let uploading = session.upload.is_some()
            || session.held.iter().any(|h| {
                matches!(
                    h,
                    Inbound::Request(Ok(Request {
                        command: Command::FileUpload { .. },
                        ..
                    }))
                )
            });
        let inbound = if opcode == Opcode::Binary && uploading {
            Inbound::Bytes(data)
        } else if !session
            .bucket
            .take(settings.command_rate, settings.command_burst, now)
        {
            session.strikes += 1;
            if session.strikes > settings.rate_strikes {
                debug!(
                    "conn {conn}: rate limit exceeded {} times, closing",
                    session.strikes
                );
                self.out
                    .push(Effect::Close(conn, CloseCode::POLICY, CloseReason::Policy));
                return;
            }
            // The refusal takes its place in line like any reply.
            let id = protocol::parse(&data).map_or_else(|(id, _)| id, |r| r.id);
            Inbound::Request(Err((
                id,
                Failure::new(ErrorCode::RateLimited, "too many requests, slow down"),
            )))
        } else if opcode == Opcode::Binary {
            session.strikes = 0;
            Inbound::Request(Err((
                None,
                Failure::new(
                    ErrorCode::BadRequest,
                    "binary frames carry file uploads only",
                ),
            )))
        } else {
            session.strikes = 0;
            Inbound::Request(protocol::parse(&data))
        };
        // A reply still owed (a password check, or sends waiting for the commit) keeps later
        // requests waiting, so replies come in request order. Sends may join the batch.
        if !session.held.is_empty() || must_wait(session, &inbound) {
            let held_bytes: usize = session
                .held
                .iter()
                .map(|h| match h {
                    Inbound::Bytes(b) => b.len(),
                    Inbound::Request(_) => 0,
                })
                .sum();
            let held_requests = session.held.len()
                - session
                    .held
                    .iter()
                    .filter(|h| matches!(h, Inbound::Bytes(_)))
                    .count();
            if held_requests >= MAX_HELD || held_bytes >= MAX_HELD_BYTES {
                // Answering now would break the order of replies; a client this far ahead of
                // its replies is flooding.
                debug!(
                    "conn {conn}: {held_requests} requests, {held_bytes} bytes waiting, closing"
                );
                self.out
                    .push(Effect::Close(conn, CloseCode::POLICY, CloseReason::Policy));
            } else {
                session.held.push_back(inbound);
            }
            return;
        }
        self.handle(conn, inbound, now);
    }

    /// The password worker has results: finish the requests that waited for them.
    pub fn collect_password_work(&mut self, now: Instant) {
        let mut done = std::mem::take(&mut self.done);
        self.hasher.collect(&mut done);
        for d in done.drain(..) {
            self.finish_job(d, now);
        }
        self.done = done;
    }

    // ------------------------------------------------------------------------------------
    // Dispatch
    // ------------------------------------------------------------------------------------

    fn handle(&mut self, conn: ConnId, inbound: Inbound, now: Instant) {
        let parsed = match inbound {
            Inbound::Request(parsed) => parsed,
            Inbound::Bytes(bytes) => return self.upload_bytes(conn, &bytes),
        };
        let req = match parsed {
            Ok(req) => req,
            Err((id, failure)) => {
                self.reply(conn, &id, Err(failure));
                return;
            }
        };
        let Request { id, command } = req;
        let identity = self.sessions.get(&conn).and_then(|s| s.identity.clone());
        // A newcomer's arrival is announced before anything its commands let others see.
        if let Some(me) = &identity {
            let user = me.user.id;
            if self.presence_changes.iter().any(|c| c.2 && c.0 == user) {
                self.flush_presence();
            }
        }
        let result = match (command, identity) {
            (Command::Register { user, password }, _) => {
                self.register(conn, &id, user, password, now)
            }
            (Command::Login { .. } | Command::Auth { .. }, Some(_)) => {
                fail(ErrorCode::Conflict, "already authenticated; logout first")
            }
            (
                Command::Login {
                    user,
                    password,
                    since,
                },
                None,
            ) => self.login(conn, &id, user, password, since, now),
            (Command::Auth { token, since }, None) => self.auth(conn, &token, since),
            (_, None) => fail(
                ErrorCode::Unauthenticated,
                "authenticate first (login or auth)",
            ),
            (
                Command::Send {
                    to,
                    text,
                    client_id,
                },
                Some(me),
            ) => self.send(conn, &id, &me, &to, text, client_id),
            (command, Some(me)) => self.authenticated(conn, &id, &me, command, now),
        };
        // `None`: the reply comes later, from the password worker or the commit.
        if let Some(result) = result.transpose() {
            self.reply_in_order(conn, &id, result);
        }
        // An empty file needs no bytes: it is complete as soon as its ok is out.
        let empty_upload = self
            .sessions
            .get_mut(&conn)
            .and_then(|s| s.upload.take_if(|(up, _)| up.is_complete()));
        if let Some((up, pending)) = empty_upload {
            self.finish_upload(conn, up, pending);
        }
        if let Some((conn, user, since)) = self.replay.take() {
            self.send_replay(conn, user, since);
        }
    }

    fn authenticated(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        me: &Identity,
        command: Command,
        now: Instant,
    ) -> Result<Option<Value>, Failure> {
        let reply = match command {
            Command::Typing { to } => self.typing(conn, me, &to, now),
            Command::History {
                with,
                before,
                limit,
            } => self.history(me, &with, before, limit),
            Command::Sync { since } => {
                self.replay = Some((conn, me.user.id, since));
                Ok(json!({}))
            }
            Command::FileUpload {
                to,
                name,
                size,
                mime,
            } => {
                return self.file_upload(conn, id, me, &to, name, size, mime);
            }
            Command::FileCancel => self.file_cancel(conn),
            Command::Logout => self.logout(conn, me),
            Command::Whoami => Ok(json!({
                "user": me.user.name,
                "groups": self.store.groups_of(me.user.id)?,
            })),
            Command::GroupCreate { group, private } => self.group_create(me, &group, private),
            Command::GroupJoin { group } => self.group_join(me, &group),
            Command::GroupLeave { group } => self.group_leave(me, &group),
            Command::GroupInvite { group, user } => self.group_invite(me, &group, &user),
            Command::GroupKick { group, user, ban } => self.group_kick(me, &group, &user, ban),
            Command::GroupRole { group, user, role } => self.group_role(me, &group, &user, &role),
            Command::GroupDelete { group } => self.group_delete(me, &group),
            Command::GroupMembers { group } => self.group_members(me, &group),
            Command::GroupList => self.group_list(me),
            Command::Register { .. }
            | Command::Login { .. }
            | Command::Auth { .. }
            | Command::Send { .. } => {
                unreachable!("handled in `handle`")
            }
        };
        reply.map(Some)
    }

    /// Replies now, or, when sends of this connection wait for the commit, after them.
    fn reply_in_order(&mut self, conn: ConnId, id: &Option<Value>, result: Reply) {
        if self.sessions.get(&conn).is_some_and(|s| s.in_batch > 0) {
            self.batch.push(Accepted {
                conn,
                id: id.clone(),
                from: String::new(),
                to: String::new(),
                message: None,
                dup: None,
                dup_of: None,
                file_done: false,
                answer: Some(result),
            });
        } else {
            self.reply(conn, id, result);
        }
    }

    fn reply(&mut self, conn: ConnId, id: &Option<Value>, result: Reply) {
        let text = match result {
            Ok(fields) => protocol::ok(id, fields),
            Err(failure) => protocol::error(id, &failure),
        };
        self.out.push(Effect::Send(conn, text_frame(&text)));
    }

    /// Sends one event to several connections, encoded once.
    fn broadcast(&mut self, conns: impl IntoIterator<Item = ConnId>, text: &str) {
        let frame = text_frame(text);
        for conn in conns {
            self.out.push(Effect::Send(conn, frame.clone()));
        }
    }

    fn sessions_of(&self, user: &str) -> Vec<ConnId> {
        self.online.get(user).cloned().unwrap_or_default()
    }

    fn sessions_of_members(&self, members: &[(String, Role)]) -> Vec<ConnId> {
        members
            .iter()
            .flat_map(|(name, _)| self.online.get(name).into_iter().flatten().copied())
            .collect()
    }

    fn sessions_of_names(&self, names: &[String]) -> Vec<ConnId> {
        names
            .iter()
            .flat_map(|name| self.online.get(name).into_iter().flatten().copied())
            .collect()
    }

    // ------------------------------------------------------------------------------------
    // Accounts
    // ------------------------------------------------------------------------------------

    fn login_allowed(&mut self, conn: ConnId, now: Instant) -> bool {
        let Some(ip) = self.sessions.get(&conn).map(|s| s.ip) else {
            return false;
        };
        let (rate, burst) = (self.settings.login_rate, self.settings.login_burst);
        if self.login_buckets.len() > 100_000 {
            // Forget addresses whose buckets have refilled, so the map stays bounded.
            self.login_buckets
                .retain(|_, b| !b.is_full(rate, burst, now));
        }
        self.login_buckets
            .entry(ip)
            .or_insert_with(|| Bucket::new(burst, now))
            .take(rate, burst, now)
    }

    fn submit(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        work: Work,
        waiting: Waiting,
    ) -> Result<Option<Value>, Failure> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if !self.hasher.submit(ticket, work) {
            return fail(ErrorCode::Internal, "password worker unavailable");
        }
        self.pending.insert(
            ticket,
            Pending {
                conn,
                id: id.clone(),
                waiting,
            },
        );
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.busy = Some(ticket);
        }
        Ok(None)
    }

    fn register(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        user: String,
        password: String,
        now: Instant,
    ) -> Result<Option<Value>, Failure> {
        if !self.settings.registration_open {
            return fail(
                ErrorCode::Forbidden,
                "registration is closed on this server",
            );
        }
        if !valid_name(&user) {
            return fail(
                ErrorCode::BadRequest,
                "user names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        if !valid_password(&password) {
            return fail(ErrorCode::BadRequest, "passwords are 8-1024 bytes");
        }
        if !self.login_allowed(conn, now) {
            return fail(
                ErrorCode::RateLimited,
                "too many attempts from this address, wait",
            );
        }
        if self.store.user(&user)?.is_some() {
            return fail(ErrorCode::Conflict, "user name taken");
        }
        self.submit(
            conn,
            id,
            Work::Hash(password),
            Waiting::Register { name: user },
        )
    }

    fn login(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        user: String,
        password: String,
        since: Option<i64>,
        now: Instant,
    ) -> Result<Option<Value>, Failure> {
        if !valid_name(&user) || password.len() > super::names::MAX_PASSWORD {
            return fail(ErrorCode::Unauthenticated, "unknown user or wrong password");
        }
        if !self.login_allowed(conn, now) {
            return fail(
                ErrorCode::RateLimited,
                "too many attempts from this address, wait",
            );
        }
        let found = self.store.user(&user)?;
        let stored = found.as_ref().and_then(|u| u.password.clone());
        self.submit(
            conn,
            id,
            Work::Verify(password, stored),
            Waiting::Login { user: found, since },
        )
    }

    fn finish_job(&mut self, done: Done, now: Instant) {
        let Some(Pending { conn, id, waiting }) = self.pending.remove(&done.ticket) else {
            return;
        };
        // The connection may have closed (and its slot been reused) meanwhile.
        match self.sessions.get_mut(&conn) {
            Some(s) if s.busy == Some(done.ticket) => s.busy = None,
            _ => return,
        }
        let result = match (waiting, done.outcome) {
            (Waiting::Register { name }, Outcome::Hashed(hash)) => {
                match self.store.create_user(&name, Some(&hash), now_ms()) {
                    Ok(_) => {
                        info!("registered user {name}");
                        Ok(json!({ "user": name }))
                    }
                    Err(StoreError::Conflict) => fail(ErrorCode::Conflict, "user name taken"),
                    Err(e) => Err(e.into()),
                }
            }
            (
                Waiting::Login {
                    user: Some(user),
                    since,
                },
                Outcome::Verified(true),
            ) => {
                let uid = user.id;
                let r = self.start_session(conn, user);
                if let (Ok(_), Some(since)) = (&r, since) {
                    self.replay = Some((conn, uid, since));
                }
                r
            }
            (Waiting::Login { .. }, Outcome::Verified(_)) => {
                fail(ErrorCode::Unauthenticated, "unknown user or wrong password")
            }
            _ => fail(ErrorCode::Internal, "password hashing failed"),
        };
        self.reply(conn, &id, result);
        if let Some((conn, user, since)) = self.replay.take() {
            self.send_replay(conn, user, since);
        }
        // Requests that waited behind this one, in order, until one waits again.
        self.run_held(conn, now);
    }

    fn start_session(&mut self, conn: ConnId, user: User) -> Reply {
        let (token, hash) = auth::new_session_token()
            .map_err(|_| Failure::new(ErrorCode::Internal, "no randomness for a token"))?;
        let expires = now_ms() + self.settings.session_ttl.as_millis() as i64;
        self.store.create_session(&hash, user.id, expires)?;
        let name = user.name.clone();
        self.set_identity(
            conn,
            Identity {
                user,
                token_hash: Some(hash),
            },
        );
        Ok(json!({ "user": name, "token": token, "expires": expires }))
    }

    fn auth(
        &mut self,
        conn: ConnId,
        token: &str,
        since: Option<i64>,
    ) -> Result<Option<Value>, Failure> {
        let identity = self.resolve_token(token)?;
        let name = identity.user.name.clone();
        if let Some(since) = since {
            self.replay = Some((conn, identity.user.id, since));
        }
        self.set_identity(conn, identity);
        Ok(Some(json!({ "user": name })))
    }

    /// The user a session token or JWT stands for.
    fn resolve_token(&mut self, token: &str) -> Result<Identity, Failure> {
        let refused = || Failure::new(ErrorCode::Unauthenticated, "invalid or expired token");
        match (&self.settings.jwt_secret, auth::looks_like_jwt(token)) {
            (Some(secret), true) => {
                let name = auth::verify_jwt(token, secret, now_ms()).map_err(|e| {
                    debug!("JWT refused: {e:?}");
                    refused()
                })?;
                let user = match self.store.user(&name)? {
                    Some(user) => user,
                    None => {
                        // A JWT user unknown here is created on first use, without a password.
                        let id = match self.store.create_user(&name, None, now_ms()) {
                            Ok(id) => id,
                            Err(StoreError::Conflict) => {
                                self.store.user(&name)?.ok_or_else(refused)?.id
                            }
                            Err(e) => return Err(e.into()),
                        };
                        info!("created user {name} from a JWT");
                        User {
                            id,
                            name,
                            password: None,
                        }
                    }
                };
                Ok(Identity {
                    user,
                    token_hash: None,
                })
            }
            _ => {
                let hash = auth::token_hash(token);
                let user = self
                    .store
                    .session_user(&hash, now_ms())?
                    .ok_or_else(refused)?;
                Ok(Identity {
                    user,
                    token_hash: Some(hash),
                })
            }
        }
    }

    fn logout(&mut self, conn: ConnId, me: &Identity) -> Reply {
        if let Some(hash) = &me.token_hash {
            self.store.delete_session(hash)?;
        }
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.identity = None;
            // An upload started as this user ends with the session.
            if let Some((up, _)) = s.upload.take() {
                up.abort();
                self.upload_failed("cancelled");
            }
        }
        self.set_offline(conn, &me.user.name);
        self.out.push(Effect::Authenticated(conn, false));
        Ok(json!({}))
    }

    fn set_identity(&mut self, conn: ConnId, identity: Identity) {
        let name = identity.user.name.clone();
        let user_id = identity.user.id;
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.identity = Some(identity);
        }
        let sessions = self.online.entry(name.clone()).or_default();
        sessions.push(conn);
        let first = sessions.len() == 1;
        self.out.push(Effect::Authenticated(conn, true));
        if first {
            self.presence_changes.push((user_id, name, true));
        }
    }

    fn set_offline(&mut self, conn: ConnId, name: &str) {
        let Some(conns) = self.online.get_mut(name) else {
            return;
        };
        conns.retain(|&c| c != conn);
        if conns.is_empty() {
            self.online.remove(name);
            if let Ok(Some(user)) = self.store.user(name) {
                self.presence_changes
                    .push((user.id, name.to_string(), false));
            }
        }
    }

    /// Whether `presence` events wait for `flush_presence`.
    pub fn has_presence(&self) -> bool {
        !self.presence_changes.is_empty()
    }

    /// Announces this iteration's presence changes to the online users who share a group
    /// with each changed user; the loop calls it once per iteration, before the flush.
    ///
    /// A user in exactly one group (the common case, and every member of one large group
    /// reconnecting at once) is announced with the group's other changes: their events are
    /// encoded back to back into one buffer that every online member's queue shares, so a
    /// member costs one reference and one write per iteration however many users came and
    /// went. A member that is itself among them gets its own copy without its own events. A
    /// user in several groups is announced alone, to each interested connection once.
    pub fn flush_presence(&mut self) {
        let changes = std::mem::take(&mut self.presence_changes);
        let mut by_group: Vec<(GroupId, Vec<usize>)> = Vec::new();
        for (i, (user, name, online)) in changes.iter().enumerate() {
            let groups = match self.store.group_ids_of(*user) {
                Ok(g) => g,
                Err(e) => {
                    warn!("presence of {name} not announced: {e}");
                    continue;
                }
            };
            match groups[..] {
                [] => {}
                [group] => match by_group.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, list)) => list.push(i),
                    None => by_group.push((group, vec![i])),
                },
                _ => self.announce_presence(&groups, name, *online),
            }
        }
        for (group, list) in by_group {
            let Ok(members) = self.members_of(group) else {
                warn!("presence not announced to group {group}");
                continue;
            };
            let frames: Vec<Rc<[u8]>> = list
                .iter()
                .map(|&i| {
                    let (_, name, online) = &changes[i];
                    text_frame(&protocol::event(
                        "presence",
                        json!({ "user": name, "online": online }),
                    ))
                })
                .collect();
            let all: Rc<[u8]> = frames.concat().into();
            let count = frames.len() as u32;
            let changed: HashSet<&str> = list.iter().map(|&i| changes[i].1.as_str()).collect();
            for member in members.iter() {
                let Some(sessions) = self.online.get(member) else {
                    continue;
                };
                let (buffer, count) = if changed.contains(member.as_str()) {
                    let others: Vec<&[u8]> = list
                        .iter()
                        .zip(&frames)
                        .filter(|(&i, _)| changes[i].1 != *member)
                        .map(|(_, f)| &f[..])
                        .collect();
                    if others.is_empty() {
                        continue;
                    }
                    (others.concat().into(), others.len() as u32)
                } else {
                    (all.clone(), count)
                };
                for &conn in sessions {
                    self.out
                        .push(Effect::SendFrames(conn, Rc::clone(&buffer), count));
                }
            }
        }
    }

    /// `presence` to the online users who share one of `groups` with `name`, once each.
    ///
    /// The members come from the per-group cache that deliveries use, so a user of a large
    /// group coming or going costs a walk over that group's names in memory, not a query
    /// returning every one of them.
    fn announce_presence(&mut self, groups: &[GroupId], name: &str, online: bool) {
        let mut conns: Vec<ConnId> = Vec::new();
        for &group in groups {
            let members = match self.members_of(group) {
                Ok(m) => m,
                Err(_) => {
                    warn!("presence of {name} not announced to group {group}");
                    continue;
                }
            };
            for member in members.iter().filter(|m| m.as_str() != name) {
                if let Some(sessions) = self.online.get(member) {
                    conns.extend_from_slice(sessions);
                }
            }
        }
        if groups.len() > 1 {
            // Someone sharing several groups with `name` hears of it once.
            conns.sort_unstable();
            conns.dedup();
        }
        if !conns.is_empty() {
            let event = protocol::event("presence", json!({ "user": name, "online": online }));
            self.broadcast(conns, &event);
        }
    }

    // ------------------------------------------------------------------------------------
    // Groups
    // ------------------------------------------------------------------------------------

    fn find_group(&self, name: &str) -> Result<Group, Failure> {
        if !valid_name(name) {
            return fail(
                ErrorCode::BadRequest,
                "group names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        self.store
            .group(name)?
            .ok_or_else(|| Failure::new(ErrorCode::NotFound, format!("no group {name}")))
    }

    fn find_user(&self, name: &str) -> Result<User, Failure> {
        if !valid_name(name) {
            return fail(
                ErrorCode::BadRequest,
                "user names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        self.store
            .user(name)?
            .ok_or_else(|| Failure::new(ErrorCode::NotFound, format!("no user {name}")))
    }

    fn actor(&self, me: &Identity, group: &Group) -> Result<Actor, Failure> {
        Ok(Actor {
            role: self.store.role(group.id, me.user.id)?,
            server_admin: self.settings.admins.contains(&me.user.name),
        })
    }

    fn allow(actor: Actor, action: Action) -> Result<(), Failure> {
        permissions::check(actor, action).map_err(|d| match d {
            Denied::Forbidden(why) => Failure::new(ErrorCode::Forbidden, why),
            Denied::Conflict(why) => Failure::new(ErrorCode::Conflict, why),
        })
    }

    /// The target's role, or `not_found` when not a member.
    fn member_role(&self, group: &Group, user: &User) -> Result<Role, Failure> {
        self.store.role(group.id, user.id)?.ok_or_else(|| {
            Failure::new(
                ErrorCode::NotFound,
                format!("{} is not a member of {}", user.name, group.name),
            )
        })
    }

    fn group_create(&mut self, me: &Identity, name: &str, private: bool) -> Reply {
        if !valid_name(name) {
            return fail(
                ErrorCode::BadRequest,
                "group names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        match self.store.create_group(name, private, me.user.id, now_ms()) {
            Ok(id) => {
                // A deleted group's id may come back: no stale member list may survive it.
                self.members_cache.remove(&id);
                Ok(json!({ "group": name }))
            }
            Err(StoreError::Conflict) => fail(ErrorCode::Conflict, format!("group {name} exists")),
            Err(e) => Err(e.into()),
        }
    }

    fn group_join(&mut self, me: &Identity, name: &str) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        let action = Action::Join {
            private: group.private,
            banned: self.store.is_banned(group.id, me.user.id)?,
            invited: self.store.is_invited(group.id, me.user.id)?,
        };
        Self::allow(actor, action)?;
        self.store.set_role(group.id, me.user.id, Role::Member)?;
        self.cache_membership(group.id, &me.user.name, true);
        self.announce_membership(&group, "group.joined", &me.user.name, None)?;
        Ok(json!({}))
    }

    fn group_leave(&mut self, me: &Identity, name: &str) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        Self::allow(actor, Action::Leave)?;
        self.store.remove_member(group.id, me.user.id, false)?;
        self.cache_membership(group.id, &me.user.name, false);
        self.announce_membership(&group, "group.left", &me.user.name, None)?;
        Ok(json!({}))
    }

    /// `group.joined` / `group.left`: to the group's members and every session of the user
    /// concerned (who, after leaving, is no longer a member).
    fn announce_membership(
        &mut self,
        group: &Group,
        kind: &str,
        user: &str,
        by: Option<&str>,
    ) -> Result<(), Failure> {
        let members = self.members_of(group.id)?;
        let mut conns = self.sessions_of_names(&members);
        if !members.iter().any(|n| n == user) {
            conns.extend(self.sessions_of(user));
        }
        let mut fields = json!({ "group": group.name, "user": user });
        if let Some(by) = by {
            fields["by"] = json!(by);
        }
        self.broadcast(conns, &protocol::event(kind, fields));
        Ok(())
    }

    fn group_invite(&mut self, me: &Identity, name: &str, user: &str) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        Self::allow(actor, Action::Invite)?;
        let target = self.find_user(user)?;
        if self.store.role(group.id, target.id)?.is_some() {
            return fail(ErrorCode::Conflict, format!("{user} is already a member"));
        }
        self.store.invite(group.id, target.id)?;
        let event = protocol::event(
            "group.invited",
            json!({ "group": group.name, "by": me.user.name }),
        );
        self.broadcast(self.sessions_of(&target.name), &event);
        Ok(json!({}))
    }

    fn group_kick(&mut self, me: &Identity, name: &str, user: &str, ban: bool) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        let target = self.find_user(user)?;
        let target_role = self.member_role(&group, &target)?;
        Self::allow(
            actor,
            Action::Kick {
                target: target_role,
                is_self: target.id == me.user.id,
            },
        )?;
        self.store.remove_member(group.id, target.id, ban)?;
        self.cache_membership(group.id, &target.name, false);
        let event = protocol::event(
            "group.kicked",
            json!({ "group": group.name, "by": me.user.name }),
        );
        self.broadcast(self.sessions_of(&target.name), &event);
        // The remaining members and every session of the kicked user see the member leave.
        let members = self.members_of(group.id)?;
        let left = protocol::event(
            "group.left",
            json!({ "group": group.name, "user": target.name, "by": me.user.name }),
        );
        let mut conns = self.sessions_of_names(&members);
        conns.extend(self.sessions_of(&target.name));
        self.broadcast(conns, &left);
        Ok(json!({}))
    }

    fn group_role(&mut self, me: &Identity, name: &str, user: &str, role: &str) -> Reply {
        let Some(new) = Role::parse(role) else {
            return fail(ErrorCode::BadRequest, "role is member, admin or owner");
        };
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        let target = self.find_user(user)?;
        let current = self.member_role(&group, &target)?;
        Self::allow(
            actor,
            Action::SetRole {
                target: current,
                new,
                is_self: target.id == me.user.id,
            },
        )?;
        let mut changes = vec![(target.name.clone(), new)];
        if new == Role::Owner && current != Role::Owner {
            let members = self.store.members(group.id)?;
            let owner = members
                .iter()
                .find(|(_, r)| *r == Role::Owner)
                .map(|(n, _)| n.clone());
            let owner = match owner {
                Some(n) => self.find_user(&n)?,
                None => return fail(ErrorCode::Internal, "group has no owner"),
            };
            self.store
                .transfer_ownership(group.id, owner.id, target.id)?;
            changes.push((owner.name, Role::Admin));
        } else if new != current {
            self.store.set_role(group.id, target.id, new)?;
        }
        let members = self.members_of(group.id)?;
        let conns = self.sessions_of_names(&members);
        for (user, role) in changes {
            let event = protocol::event(
                "group.role",
                json!({ "group": group.name, "user": user, "role": role.as_str() }),
            );
            self.broadcast(conns.clone(), &event);
        }
        Ok(json!({}))
    }

    fn group_delete(&mut self, me: &Identity, name: &str) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        Self::allow(actor, Action::Delete)?;
        let members = self.store.members(group.id)?;
        let files = self.store.delete_group(group.id)?;
        self.members_cache.remove(&group.id);
        // Sends to it waiting for this iteration's commit fail now: a group created later in
        // the same iteration may be given the same id, and must not receive them.
        let mut batch = std::mem::take(&mut self.batch);
        self.drop_sends_to_deleted(&mut batch, |g| g == group.id);
        self.batch = batch;
        for id in files {
            let _ = std::fs::remove_file(upload::path_of(&self.settings.files_dir, &id));
        }
        let event = protocol::event(
            "group.deleted",
            json!({ "group": group.name, "by": me.user.name }),
        );
        self.broadcast(self.sessions_of_members(&members), &event);
        Ok(json!({}))
    }

    fn group_members(&mut self, me: &Identity, name: &str) -> Reply {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        Self::allow(
            actor,
            Action::Members {
                private: group.private,
            },
        )?;
        let members: Vec<Value> = self
            .store
            .members(group.id)?
            .into_iter()
            .map(|(user, role)| {
                let online = self.online.contains_key(&user);
                json!({ "user": user, "role": role.as_str(), "online": online })
            })
            .collect();
        Ok(json!({ "members": members }))
    }

    fn group_list(&mut self, me: &Identity) -> Reply {
        let groups: Vec<Value> = self
            .store
            .list_groups(me.user.id)?
            .into_iter()
            .map(|g| {
                let mut v = json!({
                    "group": g.group.name,
                    "private": g.group.private,
                    "members": g.members,
                });
                if let Some(role) = g.role {
                    v["role"] = json!(role.as_str());
                }
                v
            })
            .collect();
        Ok(json!({ "groups": groups }))
    }
}

/// A conversation address resolved for one user.
struct Conversation {
    /// `#group` or `@user`, as addressed.
    address: String,
    target: Target,
    /// The other user of a direct conversation.
    peer: Option<String>,
}

impl Service {
    // ------------------------------------------------------------------------------------
    // Messaging
    // ------------------------------------------------------------------------------------

    /// Resolves `@user` / `#group` and checks that `me` may talk there.
    fn conversation(&self, me: &Identity, address: &str) -> Result<Conversation, Failure> {
        if let Some(name) = address.strip_prefix('#') {
            let group = self.find_group(name)?;
            let actor = self.actor(me, &group)?;
            Self::allow(actor, Action::Converse)?;
            Ok(Conversation {
                address: address.to_string(),
                target: Target::Group(group.id),
                peer: None,
            })
        } else if let Some(name) = address.strip_prefix('@') {
            let user = self.find_user(name)?;
            Ok(Conversation {
                address: address.to_string(),
                target: Target::Direct(user.id),
                peer: Some(user.name),
            })
        } else {
            fail(ErrorCode::BadRequest, "an address is @user or #group")
        }
    }

    /// Connections that see a conversation's traffic, except the one it came from: for a group,
    /// every session of every member; for a direct conversation, the peer's sessions and the
    /// sender's other sessions.
    fn audience(
        &mut self,
        sender: &str,
        from_conn: ConnId,
        target: Target,
        peer: Option<&str>,
    ) -> Result<Vec<ConnId>, Failure> {
        let mut conns = match target {
            Target::Group(gid) => {
                let members = self.members_of(gid)?;
                members
                    .iter()
                    .flat_map(|name| self.online.get(name).into_iter().flatten().copied())
                    .collect()
            }
            Target::Direct(_) => {
                let mut c = self.sessions_of(sender);
                if let Some(peer) = peer.filter(|p| *p != sender) {
                    c.extend(self.sessions_of(peer));
                }
                c
            }
        };
        conns.retain(|&c| c != from_conn);
        Ok(conns)
    }

    /// Keeps a cached member list in step with a join (`member`) or a departure, so that a
    /// large group's list is not read back from the store after every change.
    fn cache_membership(&mut self, group: GroupId, name: &str, member: bool) {
        let Some(list) = self.members_cache.get_mut(&group) else {
            return;
        };
        let list = Rc::make_mut(list);
        if !member {
            list.retain(|n| n != name);
        } else if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }

    fn members_of(&mut self, group: GroupId) -> Result<Rc<Vec<String>>, Failure> {
        if let Some(m) = self.members_cache.get(&group) {
            return Ok(m.clone());
        }
        let names: Vec<String> = self
            .store
            .members(group)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let names = Rc::new(names);
        self.members_cache.insert(group, names.clone());
        Ok(names)
    }

    /// Accepts a message into this iteration's batch; the reply comes after the commit.
    fn send(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        me: &Identity,
        to: &str,
        text: String,
        client_id: Option<String>,
    ) -> Result<Option<Value>, Failure> {
        let conversation = self.conversation(me, to)?;
        let chars = text.chars().count();
        if chars == 0 {
            return fail(ErrorCode::BadRequest, "text is empty");
        }
        if chars > self.settings.max_text_chars {
            return fail(
                ErrorCode::TooLarge,
                format!("text is over {} characters", self.settings.max_text_chars),
            );
        }
        if client_id
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 128)
        {
            return fail(ErrorCode::BadRequest, "client_id is 1-128 bytes");
        }
        let mut accepted = Accepted {
            conn,
            id: id.clone(),
            from: me.user.name.clone(),
            to: conversation.address,
            message: None,
            dup: None,
            dup_of: None,
            file_done: false,
            answer: None,
        };
        if let Some(cid) = &client_id {
            // A retry: answer with the first copy, deliver nothing.
            let in_batch = self.batch.iter().position(|a| {
                a.message
                    .as_ref()
                    .is_some_and(|m| m.sender == me.user.id && m.client_id.as_deref() == Some(cid))
            });
            if in_batch.is_some() {
                accepted.dup_of = in_batch;
            } else if let Some(first) = self.store.find_client_id(me.user.id, cid)? {
                accepted.dup = Some(first);
            }
        }
        if accepted.dup.is_none() && accepted.dup_of.is_none() {
            let msg_id = self.next_msg_id;
            self.next_msg_id += 1;
            accepted.message = Some(NewMessage {
                id: msg_id,
                sender: me.user.id,
                to: conversation.target,
                text,
                ts: now_ms(),
                client_id,
                file: None,
            });
        }
        self.batch.push(accepted);
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.in_batch += 1;
        }
        Ok(None)
    }

    /// Whether sends are waiting for a commit.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Commits the iteration's sends in one transaction, then acknowledges them and delivers
    /// them; on failure every sender in the batch gets `unavailable` and nothing is delivered.
    /// Requests held behind the sends run afterwards, and if they send, the loop commits again.
    pub fn commit(&mut self, now: Instant) {
        while !self.batch.is_empty() {
            let mut batch = std::mem::take(&mut self.batch);
            self.drop_deleted_groups(&mut batch);
            let rows: Vec<NewMessage> = batch.iter().filter_map(|a| a.message.clone()).collect();
            let started = Instant::now();
            let stored = if rows.is_empty() {
                Ok(())
            } else {
                self.store.insert_messages(&rows)
            };
            self.record_commit(rows.len(), started.elapsed(), stored.is_ok());
            match stored {
                Ok(()) => self.acknowledge(&batch),
                Err(e) => {
                    let failure: Failure = e.into();
                    for a in &batch {
                        if let Some(answer) = &a.answer {
                            self.reply(a.conn, &a.id, answer.clone());
                            continue;
                        }
                        if let Some(f) = a.message.as_ref().and_then(|m| m.file.as_ref()) {
                            let _ = std::fs::remove_file(upload::path_of(
                                &self.settings.files_dir,
                                &f.id,
                            ));
                            self.upload_failed("storage");
                            let fail = failure.clone().for_file(&f.id);
                            self.reply(a.conn, &None, Err(fail));
                            continue;
                        }
                        self.reply(a.conn, &a.id, Err(failure.clone()));
                    }
                }
            }
            let mut waiting: Vec<ConnId> = batch.iter().map(|a| a.conn).collect();
            waiting.dedup();
            for conn in waiting {
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.in_batch = 0;
                }
                self.run_held(conn, now);
            }
        }
    }

    /// A group deleted after a send to it was accepted (in the same iteration) takes the send
    /// with it: the sender gets `not_found`, in its place, and the rest of the batch is stored.
    fn drop_deleted_groups(&mut self, batch: &mut [Accepted]) {
        let mut exists: HashMap<GroupId, bool> = HashMap::new();
        let store = &self.store;
        let mut deleted = |g: GroupId| {
            !*exists
                .entry(g)
                .or_insert_with(|| store.group_exists(g).unwrap_or(true))
        };
        let gone: Vec<GroupId> = batch
            .iter()
            .filter_map(|a| match a.message.as_ref().map(|m| m.to) {
                Some(Target::Group(g)) if deleted(g) => Some(g),
                _ => None,
            })
            .collect();
        if !gone.is_empty() {
            self.drop_sends_to_deleted(batch, |g| gone.contains(&g));
        }
    }

    /// Answers the batch's sends to the groups `gone` says were deleted with `not_found`, and
    /// takes them out of what is stored.
    fn drop_sends_to_deleted(&mut self, batch: &mut [Accepted], gone: impl Fn(GroupId) -> bool) {
        for a in batch.iter_mut() {
            let Some(Target::Group(g)) = a.message.as_ref().map(|m| m.to) else {
                continue;
            };
            if !gone(g) {
                continue;
            }
            let message = a.message.take().expect("matched above");
            let failure = Failure::new(ErrorCode::NotFound, "the group was deleted");
            a.answer = Some(Err(match &message.file {
                Some(f) => {
                    let _ = std::fs::remove_file(upload::path_of(&self.settings.files_dir, &f.id));
                    a.id = None;
                    failure.for_file(&f.id)
                }
                None => failure,
            }));
        }
    }

    fn acknowledge(&mut self, batch: &[Accepted]) {
        for a in batch {
            if let Some(answer) = &a.answer {
                self.reply(a.conn, &a.id, answer.clone());
                continue;
            }
            let (msg_id, ts) = match (&a.message, a.dup, a.dup_of) {
                (Some(m), _, _) => (m.id, m.ts),
                (None, Some(first), _) => first,
                (None, None, Some(i)) => match &batch[i].message {
                    Some(m) => (m.id, m.ts),
                    // Its first copy went to a group deleted meanwhile.
                    None => {
                        let f = Failure::new(ErrorCode::NotFound, "the group was deleted");
                        self.reply(a.conn, &a.id, Err(f));
                        continue;
                    }
                },
                (None, None, None) => unreachable!("a batch entry is a message or a duplicate"),
            };
            if a.file_done {
                let file_id = a
                    .message
                    .as_ref()
                    .and_then(|m| m.file.as_ref())
                    .map(|f| f.id.clone());
                let done = protocol::event(
                    "file.done",
                    json!({ "file_id": file_id, "msg_id": msg_id, "ts": ts }),
                );
                self.out.push(Effect::Send(a.conn, text_frame(&done)));
                self.file_metrics.uploads += 1;
            } else {
                self.reply(a.conn, &a.id, Ok(json!({ "msg_id": msg_id, "ts": ts })));
            }
            let Some(m) = &a.message else {
                self.metrics.deduplicated += 1;
                continue;
            };
            self.metrics.accepted += 1;
            let peer = a.to.strip_prefix('@').map(str::to_string);
            let conns = match self.audience(&a.from, a.conn, m.to, peer.as_deref()) {
                Ok(c) => c,
                Err(f) => {
                    warn!(
                        "message {} stored but not delivered live: {}",
                        m.id, f.message
                    );
                    continue;
                }
            };
            let mut event = json!({
                "msg_id": m.id, "from": a.from, "to": a.to, "text": m.text, "ts": m.ts,
            });
            if let Some(cid) = &m.client_id {
                event["client_id"] = json!(cid);
            }
            if let Some(f) = &m.file {
                event["file"] = file_json(f);
            }
            self.metrics.delivered += conns.len() as u64;
            self.broadcast(conns, &protocol::event("message", event));
        }
    }

    /// Runs a connection's held requests until one has to wait again.
    fn run_held(&mut self, conn: ConnId, now: Instant) {
        while let Some(s) = self.sessions.get_mut(&conn) {
            if s.busy.is_some() {
                return;
            }
            if s.held
                .front()
                .is_some_and(|h| s.in_batch > 0 && !joins_batch(h))
            {
                return;
            }
            let Some(next) = s.held.pop_front() else {
                return;
            };
            self.handle(conn, next, now);
        }
    }

    fn record_commit(&mut self, rows: usize, took: Duration, ok: bool) {
        let m = &mut self.metrics;
        m.commits += 1;
        if !ok {
            m.commit_failures += 1;
        }
        m.batched += rows as u64;
        m.batch_max = m.batch_max.max(rows as u64);
        let us = took.as_micros() as u64;
        m.commit_latency_sum_us += us;
        let bucket = COMMIT_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(COMMIT_BUCKETS_US.len());
        m.commit_latency[bucket] += 1;
    }

    fn typing(&mut self, conn: ConnId, me: &Identity, to: &str, now: Instant) -> Reply {
        let conversation = self.conversation(me, to)?;
        let (rate, burst) = (self.settings.typing_rate, self.settings.typing_burst);
        let allowed = self
            .sessions
            .get_mut(&conn)
            .is_some_and(|s| s.typing.take(rate, burst, now));
        if !allowed {
            return fail(
                ErrorCode::RateLimited,
                "typing notices are limited, slow down",
            );
        }
        let conns = self.audience(
            &me.user.name,
            conn,
            conversation.target,
            conversation.peer.as_deref(),
        )?;
        let event = protocol::event(
            "typing",
            json!({ "from": me.user.name, "to": conversation.address }),
        );
        self.broadcast(conns, &event);
        Ok(json!({}))
    }

    fn history(
        &mut self,
        me: &Identity,
        with: &str,
        before: Option<i64>,
        limit: Option<i64>,
    ) -> Reply {
        let conversation = self.conversation(me, with)?;
        let limit = match limit {
            None => 50,
            Some(n) if n < 1 => return fail(ErrorCode::BadRequest, "limit is at least 1"),
            Some(n) => n.min(100) as usize,
        };
        let before = before.unwrap_or(i64::MAX);
        let (page, more) = self
            .store
            .history(me.user.id, conversation.target, before, limit)?;
        let messages: Vec<Value> = page.iter().map(message_json).collect();
        Ok(json!({ "messages": messages, "more": more }))
    }

    /// The recovery replay: the oldest missed messages as `message` events, then `recovered`.
    fn send_replay(&mut self, conn: ConnId, user: UserId, since: i64) {
        let limit = self.settings.recovery_limit;
        let (page, more) = match self.store.recover(user, since, limit) {
            Ok(r) => r,
            Err(e) => {
                let f: Failure = e.into();
                self.reply(conn, &None, Err(f));
                return;
            }
        };
        let last = page.last().map_or(since, |m| m.id);
        for m in &page {
            let text = protocol::event("message", message_json(m));
            self.out.push(Effect::Send(conn, text_frame(&text)));
        }
        let done = protocol::event(
            "recovered",
            json!({ "last_msg_id": last, "complete": !more }),
        );
        self.out.push(Effect::Send(conn, text_frame(&done)));
    }

    /// The messaging counters in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "chatd_users_online",
            "gauge",
            "Users with at least one authenticated connection.",
            self.online.len() as u64,
        );
        one(
            "chatd_messages_accepted_total",
            "counter",
            "Messages stored and acknowledged.",
            m.accepted,
        );
        one(
            "chatd_messages_delivered_total",
            "counter",
            "Message events queued to recipient connections.",
            m.delivered,
        );
        one(
            "chatd_messages_deduplicated_total",
            "counter",
            "Sends answered from an earlier copy (repeated client_id).",
            m.deduplicated,
        );
        one(
            "chatd_commit_failures_total",
            "counter",
            "Batch commits that failed; their senders got unavailable.",
            m.commit_failures,
        );
        one(
            "chatd_commit_batch_max",
            "gauge",
            "Largest batch committed at once.",
            m.batch_max,
        );
        let _ = writeln!(out, "# HELP chatd_commit_batch_size Messages per commit.\n# TYPE chatd_commit_batch_size summary\nchatd_commit_batch_size_sum {}\nchatd_commit_batch_size_count {}", m.batched, m.commits);
        let _ = writeln!(out, "# HELP chatd_commit_seconds Time to commit a batch.\n# TYPE chatd_commit_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in COMMIT_BUCKETS_US.iter().enumerate() {
            cumulative += m.commit_latency[i];
            let _ = writeln!(
                out,
                "chatd_commit_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += m.commit_latency[COMMIT_BUCKETS_US.len()];
        let _ = writeln!(
            out,
            "chatd_commit_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "chatd_commit_seconds_sum {}",
            m.commit_latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "chatd_commit_seconds_count {}", m.commits);
    }
}

/// A stored message as the fields of a `message` event or a history entry.
fn message_json(m: &StoredMessage) -> Value {
    let mut v = json!({ "msg_id": m.id, "from": m.from, "to": m.to, "text": m.text, "ts": m.ts });
    if let Some(cid) = &m.client_id {
        v["client_id"] = json!(cid);
    }
    if let Some(f) = &m.file {
        v["file"] = file_json(f);
    }
    v
}

/// The `file` field of a message.
fn file_json(f: &FileMeta) -> Value {
    json!({ "id": f.id, "name": f.name, "size": f.size, "mime": f.mime })
}

/// Whether a request can join the current batch instead of waiting for its commit.
fn joins_batch(inbound: &Inbound) -> bool {
    matches!(
        inbound,
        Inbound::Bytes(_)
            | Inbound::Request(Ok(Request {
                command: Command::Send { .. },
                ..
            }))
    )
}

/// Whether a connection's new message must wait behind a reply still owed.
fn must_wait(session: &Session, inbound: &Inbound) -> bool {
    session.busy.is_some() || (session.in_batch > 0 && !joins_batch(inbound))
}

/// Why a download is refused, as an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadRefusal {
    /// No valid token: 401.
    Unauthenticated,
    /// Not a participant of the conversation: 403.
    Forbidden,
    /// No such file: 404.
    NotFound,
    /// The store failed: 503.
    Unavailable,
}

impl Service {
    // ------------------------------------------------------------------------------------
    // Files
    // ------------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn file_upload(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        me: &Identity,
        to: &str,
        name: String,
        size: u64,
        mime: Option<String>,
    ) -> Result<Option<Value>, Failure> {
        if self.sessions.get(&conn).is_some_and(|s| s.upload.is_some()) {
            return fail(
                ErrorCode::Conflict,
                "an upload is already in progress on this connection",
            );
        }
        let conversation = self.conversation(me, to)?;
        if size > self.settings.max_file_size {
            return fail(
                ErrorCode::TooLarge,
                format!("files are at most {} bytes", self.settings.max_file_size),
            );
        }
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return fail(
                ErrorCode::BadRequest,
                "name is 1-255 bytes without control characters",
            );
        }
        if mime
            .as_deref()
            .is_some_and(|m| !crate::http::download::valid_mime(m))
        {
            return fail(ErrorCode::BadRequest, "mime is a media type like image/png");
        }
        let up = Upload::start(&self.settings.files_dir, name, mime, size).map_err(|e| {
            warn!("upload could not start: {e}");
            self.upload_failed("io");
            Failure::new(ErrorCode::Unavailable, "cannot store files right now")
        })?;
        let file_id = up.id.clone();
        let pending = PendingUpload {
            id: id.clone(),
            to: conversation.address,
            target: conversation.target,
            sender: me.user.id,
            from: me.user.name.clone(),
        };
        // An empty file is complete already; `handle` finishes it after this ok is queued.
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.upload = Some((up, pending));
        }
        Ok(Some(json!({ "file_id": file_id })))
    }

    fn file_cancel(&mut self, conn: ConnId) -> Reply {
        match self.sessions.get_mut(&conn).and_then(|s| s.upload.take()) {
            Some((up, _)) => {
                up.abort();
                self.upload_failed("cancelled");
                Ok(json!({}))
            }
            None => fail(ErrorCode::NotFound, "no upload in progress"),
        }
    }

    /// Bytes of the upload in progress.
    fn upload_bytes(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some((up, _)) = session.upload.as_mut() else {
            self.reply(
                conn,
                &None,
                fail(
                    ErrorCode::BadRequest,
                    "binary frames carry file uploads only",
                ),
            );
            return;
        };
        match up.write(bytes) {
            Ok(false) => self.file_metrics.bytes_uploaded += bytes.len() as u64,
            Ok(true) => {
                self.file_metrics.bytes_uploaded += bytes.len() as u64;
                let (up, pending) = session.upload.take().expect("checked above");
                self.finish_upload(conn, up, pending);
            }
            Err(e) => {
                let (up, _) = session.upload.take().expect("checked above");
                let (size, file_id) = (up.size, up.id.clone());
                up.abort();
                let failure = match e {
                    WriteError::Overrun => {
                        self.upload_failed("overrun");
                        Failure::new(
                            ErrorCode::TooLarge,
                            format!("more bytes than the declared size ({size}); upload dropped"),
                        )
                    }
                    WriteError::Io(e) => {
                        warn!("upload write failed: {e}");
                        self.upload_failed("io");
                        Failure::new(
                            ErrorCode::Unavailable,
                            "the file could not be stored; upload dropped",
                        )
                    }
                };
                self.reply_in_order(conn, &None, Err(failure.for_file(&file_id)));
            }
        }
    }

    /// All bytes are in: sync the file and post its message in the batch.
    fn finish_upload(&mut self, conn: ConnId, up: Upload, pending: PendingUpload) {
        let file_id = up.id.clone();
        // The sender may have left or been removed from the group while uploading.
        if let Target::Group(g) = pending.target {
            let refusal = match self.store.role(g, pending.sender) {
                Ok(Some(_)) => None,
                Ok(None) => Some((
                    "forbidden",
                    Failure::new(ErrorCode::Forbidden, "no longer a member of this group"),
                )),
                Err(e) => Some(("storage", Failure::from(e))),
            };
            if let Some((reason, f)) = refusal {
                up.abort();
                self.upload_failed(reason);
                self.reply_in_order(conn, &None, Err(f.for_file(&file_id)));
                return;
            }
        }
        let meta = match up.finish() {
            Ok(meta) => meta,
            Err(e) => {
                warn!("upload could not be synced: {e}");
                self.upload_failed("io");
                let f = Failure::new(ErrorCode::Unavailable, "the file could not be stored");
                self.reply_in_order(conn, &None, Err(f.for_file(&file_id)));
                return;
            }
        };
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        self.batch.push(Accepted {
            conn,
            id: pending.id,
            from: pending.from,
            to: pending.to,
            message: Some(NewMessage {
                id: msg_id,
                sender: pending.sender,
                to: pending.target,
                text: String::new(),
                ts: now_ms(),
                client_id: None,
                file: Some(meta),
            }),
            dup: None,
            dup_of: None,
            file_done: true,
            answer: None,
        });
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.in_batch += 1;
        }
    }

    fn upload_failed(&mut self, reason: &'static str) {
        *self.file_metrics.failures.entry(reason).or_default() += 1;
    }

    /// Uploads in progress.
    pub fn uploads_in_progress(&self) -> usize {
        self.sessions
            .values()
            .filter(|s| s.upload.is_some())
            .count()
    }

    /// Checks a download: the token's user must take part in the conversation the file was
    /// posted to. Returns the metadata and the path of the bytes.
    pub fn authorize_download(
        &mut self,
        token: Option<&str>,
        file_id: &str,
    ) -> Result<(FileMeta, std::path::PathBuf), DownloadRefusal> {
        let token = token.ok_or(DownloadRefusal::Unauthenticated)?;
        let user = self
            .resolve_token(token)
            .map_err(|f| match f.code {
                ErrorCode::Unavailable => DownloadRefusal::Unavailable,
                _ => DownloadRefusal::Unauthenticated,
            })?
            .user;
        if !upload::valid_file_id(file_id) {
            return Err(DownloadRefusal::NotFound);
        }
        let record = self
            .store
            .file(file_id)
            .map_err(|_| DownloadRefusal::Unavailable)?
            .ok_or(DownloadRefusal::NotFound)?;
        let allowed = match record.to {
            Target::Group(g) => self
                .store
                .role(g, user.id)
                .map_err(|_| DownloadRefusal::Unavailable)?
                .is_some(),
            Target::Direct(recipient) => user.id == record.sender || user.id == recipient,
        };
        if !allowed {
            return Err(DownloadRefusal::Forbidden);
        }
        let path = upload::path_of(&self.settings.files_dir, &record.meta.id);
        Ok((record.meta, path))
    }

    /// The file counters in Prometheus text format.
    pub fn render_file_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.file_metrics;
        let _ = writeln!(out, "# HELP chatd_file_bytes_uploaded_total Bytes received in uploads.\n# TYPE chatd_file_bytes_uploaded_total counter\nchatd_file_bytes_uploaded_total {}", m.bytes_uploaded);
        let _ = writeln!(out, "# HELP chatd_file_uploads_total Uploads completed and stored.\n# TYPE chatd_file_uploads_total counter\nchatd_file_uploads_total {}", m.uploads);
        let _ = writeln!(out, "# HELP chatd_file_uploads_in_progress Uploads in progress.\n# TYPE chatd_file_uploads_in_progress gauge\nchatd_file_uploads_in_progress {}", self.uploads_in_progress());
        let _ = writeln!(out, "# HELP chatd_file_upload_failures_total Uploads that failed or were dropped, by reason.\n# TYPE chatd_file_upload_failures_total counter");
        for reason in [
            "cancelled",
            "disconnect",
            "overrun",
            "forbidden",
            "io",
            "storage",
        ] {
            let _ = writeln!(
                out,
                "chatd_file_upload_failures_total{{reason=\"{reason}\"}} {}",
                m.failures.get(reason).copied().unwrap_or(0)
            );
        }
    }
}
