//! The service's state for one connection, and its settings.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use super::hasher::Cost;
use super::held::Held;
use super::ratelimit::{Bucket, UserRates};
use super::upload::Upload;
use crate::store::UserId;

/// The service's settings, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether `register` is allowed.
    pub registration_open: bool,
    /// Secret for HS256 JWTs; `None` disables them.
    pub jwt_secret: Option<Vec<u8>>,
    /// What a JWT must satisfy besides its signature.
    pub jwt_rules: super::auth::JwtRules,
    /// Lifetime of session tokens.
    pub session_ttl: Duration,
    /// Commands per second per connection, sustained.
    pub command_rate: f64,
    /// Commands per connection in a burst.
    pub command_burst: f64,
    /// Seconds in a row with refused commands after which the connection is closed with 1008.
    pub rate_strikes: u32,
    /// `register`/`login` per second per remote address, sustained.
    pub login_rate: f64,
    /// `register`/`login` per remote address in a burst.
    pub login_burst: f64,
    /// Failed-login budgets per account, and per account and address.
    pub login_budgets: super::login_guard::Budgets,
    /// Most authenticated connections of one user; 0: no cap.
    pub max_connections_per_user: usize,
    /// Argon2id cost.
    pub argon2: Cost,
    /// Longest text, in Unicode scalar values.
    pub max_text_chars: usize,
    /// Most messages one recovery replays.
    pub recovery_limit: usize,
    /// What one user may do, across its connections: sends, typing notices, new groups and
    /// uploads.
    pub user_rates: UserRates,
    /// Where uploaded files are stored.
    pub files_dir: std::path::PathBuf,
    /// Largest file, in bytes.
    pub max_file_size: u64,
    /// Lifetime of a signed download link from `file.link`.
    pub file_link_ttl: Duration,
    /// The key that signs download links.
    pub file_link_key: super::links::LinkKey,
    /// Bytes of files one user may have stored (0: no limit).
    pub user_file_quota: u64,
    /// Uploads are refused while the disk would have less than this free after them.
    pub min_free_disk: u64,
    /// Groups with more members than this announce joins and leaves only to the users concerned.
    pub large_group: usize,
    /// Messages older than this are deleted.
    pub message_retention: Option<Duration>,
    /// Messages carrying a file older than this are deleted.
    pub file_retention: Option<Duration>,
    /// Most groups a user may be a member of (joined or created).
    pub max_groups_per_user: u32,
    /// Most groups a user may own (created, or handed over to it).
    pub max_owned_groups_per_user: u32,
}

/// Who a connection is logged in as.
#[derive(Debug)]
pub struct Identity {
    /// The user's id.
    pub id: UserId,
    /// The user's name.
    pub name: String,
    /// The session token's hash, when authenticated by a session (not a JWT); `logout`
    /// revokes it.
    pub token_hash: Option<[u8; 32]>,
    /// When the credential stops being valid (ms since the epoch): the connection's
    /// authentication ends then (see [`super::sessions`]).
    pub expires_ms: i64,
    /// Whether the account was a server admin when it authenticated. Checked again against the
    /// store at each use, so that a revocation applies at once.
    pub admin: bool,
}

/// The replies a connection is still owed (see [`super::held`]).
#[derive(Debug, Default)]
pub struct Owed {
    /// The ticket of its password job, while one is out.
    pub password: Option<u64>,
    /// Its entries in the batches gathering or being committed.
    pub entries: u32,
    /// Of those, the ones later requests may not overtake: writes other than messages, whose
    /// effects the next request may read.
    pub barriers: u32,
    /// Waiting for its output queue to drain ([`Effect::AwaitDrain`](super::service::Effect)),
    /// before a replay goes on or a large read runs.
    pub drain: bool,
    /// A replay is under way: the rest of it comes before any later reply.
    pub replay: Option<Replay>,
}

impl Owed {
    /// Whether nothing is owed.
    pub fn is_clear(&self) -> bool {
        self.password.is_none() && self.entries == 0 && !self.drain && self.replay.is_none()
    }
}

/// A recovery replay sent in steps as the connection's output drains (see
/// [`Service::replay_step`](super::service::Service)).
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// Whose conversations.
    pub user: UserId,
    /// The last msg_id sent so far (or the `since` asked for).
    pub after: i64,
    /// Messages sent so far.
    pub sent: usize,
}

/// The service's state for one `/ws` connection.
#[derive(Debug)]
pub struct Client {
    /// Tells this client from earlier ones of the same slab key.
    pub serial: u64,
    /// The client's address as per-address limits count it (the forwarded address behind a
    /// trusted proxy, an IPv6 address's /64).
    pub ip: IpAddr,
    /// Who it is logged in as.
    pub identity: Option<Rc<Identity>>,
    /// Command rate.
    pub bucket: Bucket,
    /// When the current run of refused commands began, and the last refusal: a run ends after
    /// a second without one.
    pub strikes: Option<(std::time::Instant, std::time::Instant)>,
    /// What it is still owed.
    pub owed: Owed,
    /// Requests that arrived while an earlier reply is owed, in order.
    pub held: Held,
    /// The connection ends once what it is owed is out.
    pub finishing: bool,
    /// Its output queue was just found drained: the large read at the head of its requests
    /// may run.
    pub drained: bool,
    /// The loop was told to stop reading it while its held requests are many
    /// ([`Effect::Resume`](super::service::Effect) starts it again).
    pub paused: bool,
    /// The upload in progress.
    pub upload: Option<(Upload, super::files::Destination)>,
}
