//! Every limit and setting of the server, each a named field with a default, a flag and an
//! environment variable. `chatd --help` prints the same text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::http::forwarded::Cidr;
use crate::ws::frame;

/// chatd: a single-threaded WebSocket instant-messaging server.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatd", version, about, args_override_self = true)]
pub struct Config {
    /// Address and port to listen on; `:0` picks a free port (the chosen address is logged).
    /// A bare `:PORT` means 127.0.0.1.
    #[arg(long, env = "CHATD_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// Where the embedded database (`chatd.db`) and uploaded files (`files/`) live; created if
    /// missing.
    #[arg(long, env = "CHATD_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Secret for HS256 JWTs accepted by `auth`; without it only session tokens work. At least
    /// 32 bytes (RFC 7518 3.2), or the server refuses to start.
    #[arg(long, env = "CHATD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Longest JWT lifetime accepted: `exp - iat`, or `exp - now` when the token has no `iat`.
    /// A longer one (an `exp` in milliseconds among them) is refused with `unauthenticated`.
    #[arg(long, env = "CHATD_JWT_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,

    /// When set, a JWT's `iss` must be exactly this; otherwise `iss` is not checked.
    #[arg(long, env = "CHATD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, a JWT's `aud` (a string or an array of strings) must contain this; otherwise
    /// `aud` is not checked.
    #[arg(long, env = "CHATD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// No longer grants anything: accepted for old command lines and ignored with a warning,
    /// because whoever registered the name first would have become an admin. Server admins
    /// are granted with `chatd admin grant NAME`.
    #[arg(long = "admin", env = "CHATD_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,

    /// Whether `register` is allowed.
    #[arg(long, env = "CHATD_REGISTRATION", default_value = "open")]
    pub registration: Registration,

    /// A `/ws` connection not authenticated within this time is closed with 1008.
    #[arg(long, env = "CHATD_AUTH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Lifetime of session tokens from `login`.
    #[arg(long, env = "CHATD_SESSION_TTL", default_value = "30d", value_parser = parse_duration)]
    pub session_ttl: Duration,

    /// Commands per second one connection may send, sustained; over it: `rate_limited`.
    #[arg(long, env = "CHATD_COMMAND_RATE", default_value_t = 50.0)]
    pub command_rate: f64,

    /// Commands one connection may send in a burst before the rate applies.
    #[arg(long, env = "CHATD_COMMAND_BURST", default_value_t = 100.0)]
    pub command_burst: f64,

    /// Seconds a connection may keep going over the command rate (refused commands with no
    /// second-long pause between them) before it is closed with 1008. A client that sends a
    /// burst once (an offline outbox) gets `rate_limited` replies and stays open.
    #[arg(long, env = "CHATD_RATE_STRIKES", default_value_t = 10)]
    pub rate_strikes: u32,

    /// `register` and `login` attempts per minute from one remote address, sustained; over it:
    /// `rate_limited` (against password guessing).
    #[arg(long, env = "CHATD_LOGIN_RATE", default_value_t = 30.0)]
    pub login_rate: f64,

    /// `register` and `login` attempts from one remote address in a burst.
    #[arg(long, env = "CHATD_LOGIN_BURST", default_value_t = 10.0)]
    pub login_burst: f64,

    /// Names of users who do not exist that one user may look up per minute, sustained, across
    /// its connections (`history @name`, `send` to `@name`, `group.invite`...). Once the budget
    /// is spent, every lookup of a user by name answers `rate_limited` (against listing users).
    #[arg(long, env = "CHATD_UNKNOWN_USER_RATE", default_value_t = 10.0)]
    pub unknown_user_rate: f64,

    /// Names of users who do not exist that one user may look up in a burst.
    #[arg(long, env = "CHATD_UNKNOWN_USER_BURST", default_value_t = 20.0)]
    pub unknown_user_burst: f64,

    /// Most groups one user may be a member of, created ones included; beyond it `group.join`
    /// and `group.create` answer `forbidden`.
    #[arg(long, env = "CHATD_MAX_GROUPS_PER_USER", default_value_t = 500)]
    pub max_groups_per_user: u32,

    /// Most groups one user may own; beyond it `group.create`, and handing a group over to
    /// that user, answer `forbidden`.
    #[arg(long, env = "CHATD_MAX_OWNED_GROUPS_PER_USER", default_value_t = 100)]
    pub max_owned_groups_per_user: u32,

    /// Argon2id memory cost in KiB (the OWASP-recommended 19 MiB by default).
    #[arg(long, env = "CHATD_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,

    /// Argon2id passes over the memory.
    #[arg(long, env = "CHATD_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,

    /// What an acknowledged message survives: `normal` (a crash of the process; the OS writes
    /// the log to disk later) or `full` (a power loss too; every commit waits for the disk).
    #[arg(long, env = "CHATD_SYNC", default_value = "normal")]
    pub sync: SyncMode,

    /// Largest file accepted by `file.upload`, in bytes; checked against the declared size and
    /// against the bytes received (more: `too_large`, upload dropped).
    #[arg(long, env = "CHATD_MAX_FILE_SIZE", default_value_t = 100 << 20)]
    pub max_file_size: u64,

    /// Bytes of files one user may have stored (its uploads in progress count at their
    /// declared size); an upload past it: `too_large`. 0: no limit.
    #[arg(long, env = "CHATD_USER_FILE_QUOTA", default_value_t = 1 << 30)]
    pub user_file_quota: u64,

    /// Free disk space, in bytes, that uploads must leave on the file system of the data dir;
    /// an upload that would go below it: `unavailable`.
    #[arg(long, env = "CHATD_MIN_FREE_DISK", default_value_t = 1 << 30)]
    pub min_free_disk: u64,

    /// Groups with more members than this announce joins and leaves (`group.joined`,
    /// `group.left`) only to the users they concern, not to every member: each announcement
    /// costs a write per member, so a group filling up would cost O(members²).
    #[arg(long, env = "CHATD_LARGE_GROUP", default_value_t = 1000)]
    pub large_group: usize,

    /// Lifetime of a signed download link from `file.link` (at most 1 day). A link used later
    /// gets `401`; clients ask for a fresh one. Links also end when the server restarts.
    #[arg(long, env = "CHATD_FILE_LINK_TTL", default_value = "5m", value_parser = parse_duration)]
    pub file_link_ttl: Duration,

    /// Deprecated: also accept a session token or JWT in the query string of a download
    /// (`/files/{id}?token=...`), as old clients send it. Off by default: a long-lived
    /// credential in a URL ends up in proxy logs and browser history. Without it such a
    /// download gets `401`; clients use `Authorization: Bearer` or a signed link instead.
    #[arg(long, env = "CHATD_QUERY_TOKEN_DOWNLOADS")]
    pub query_token_downloads: bool,

    /// Delete messages (with their files) older than this, e.g. `365d`. Unset: keep them.
    #[arg(long, env = "CHATD_MESSAGE_RETENTION", value_parser = parse_duration)]
    pub message_retention: Option<Duration>,

    /// Delete messages that carry a file (file posts) older than this, e.g. `30d`, sooner than
    /// other messages. Unset: they follow `--message-retention`.
    #[arg(long, env = "CHATD_FILE_RETENTION", value_parser = parse_duration)]
    pub file_retention: Option<Duration>,

    /// Longest message text, in Unicode scalar values; longer: `too_large`.
    #[arg(long, env = "CHATD_MAX_TEXT_CHARS", default_value_t = 4000)]
    pub max_text_chars: usize,

    /// Most messages replayed by one recovery (`since` at login/auth, or `sync`); the rest
    /// are signalled by `complete: false`.
    #[arg(long, env = "CHATD_RECOVERY_LIMIT", default_value_t = 1000)]
    pub recovery_limit: usize,

    /// `typing` notices per second one user may send, sustained, across all its connections;
    /// over it: `rate_limited`.
    #[arg(long, env = "CHATD_TYPING_RATE", default_value_t = 2.0)]
    pub typing_rate: f64,

    /// `typing` notices one user may send in a burst.
    #[arg(long, env = "CHATD_TYPING_BURST", default_value_t = 5.0)]
    pub typing_burst: f64,

    /// Messages (`send`) per second one user may send, sustained, across all its connections;
    /// over it: `rate_limited`.
    #[arg(long, env = "CHATD_SEND_RATE", default_value_t = 20.0)]
    pub send_rate: f64,

    /// Messages one user may send in a burst.
    #[arg(long, env = "CHATD_SEND_BURST", default_value_t = 200.0)]
    pub send_burst: f64,

    /// Groups one user may create per minute, sustained; over it: `rate_limited`.
    #[arg(long, env = "CHATD_GROUP_CREATE_RATE", default_value_t = 10.0)]
    pub group_create_rate: f64,

    /// Groups one user may create in a burst.
    #[arg(long, env = "CHATD_GROUP_CREATE_BURST", default_value_t = 20.0)]
    pub group_create_burst: f64,

    /// Uploads (`file.upload`) one user may start per minute, sustained; over it:
    /// `rate_limited`.
    #[arg(long, env = "CHATD_UPLOAD_RATE", default_value_t = 30.0)]
    pub upload_rate: f64,

    /// Uploads one user may start in a burst.
    #[arg(long, env = "CHATD_UPLOAD_BURST", default_value_t = 10.0)]
    pub upload_burst: f64,

    /// Listen backlog: connections the kernel may hold before the server accepts them (capped by
    /// the kernel's `net.core.somaxconn`). Over it, connecting clients wait a second and retry.
    #[arg(long, env = "CHATD_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Serve `/echo`, which echoes every message with its opcode (for conformance tools), and
    /// `/broadcast`, which sends every message to every other `/broadcast` connection (for
    /// transport benchmarks).
    #[arg(long, env = "CHATD_ECHO")]
    pub echo: bool,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "CHATD_LOG", default_value = "info")]
    pub log_level: log::LevelFilter,

    /// Largest message after reassembly of its fragments; a bigger one closes the connection
    /// with 1009.
    #[arg(long, env = "CHATD_MAX_MESSAGE_SIZE", default_value_t = 1 << 20)]
    pub max_message_size: usize,

    /// Largest payload of a single frame; a bigger one closes with 1009. Defaults to the
    /// message size limit.
    #[arg(long, env = "CHATD_MAX_FRAME_SIZE")]
    pub max_frame_size: Option<usize>,

    /// Outgoing bytes a connection may have queued (not yet taken by its socket). A peer that
    /// reads too slowly to stay under it is closed with 1008 and counted in
    /// `chatd_backpressure_closes_total`. Defaults to 16 MiB, or to room for two of the largest
    /// messages with their frame headers if that is more; at least one is required.
    #[arg(long, env = "CHATD_MAX_QUEUED_BYTES")]
    pub max_queued_bytes: Option<usize>,

    /// A connection with output queued that its socket takes none of for this long (a peer
    /// that stopped reading) is dropped and counted in `chatd_stalled_closes_total`.
    #[arg(long, env = "CHATD_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// Least average speed of a file download, in bytes per second since its response began,
    /// after a head start of the stall timeout; a slower download is dropped and counted in
    /// `chatd_slow_download_closes_total`. 0: no minimum.
    #[arg(long, env = "CHATD_DOWNLOAD_MIN_RATE", default_value_t = 1024)]
    pub download_min_rate: u64,

    /// Most simultaneous connections; the surplus is answered `503` and closed. Defaults to
    /// what the open-file limit allows, less a reserve for the server's own files.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest HTTP request head (request line and headers); bigger: `431`.
    #[arg(long, env = "CHATD_MAX_REQUEST_SIZE", default_value_t = 8192)]
    pub max_request_size: usize,

    /// Most header fields in an HTTP request; more: `431`.
    #[arg(long, env = "CHATD_MAX_HEADERS", default_value_t = 64)]
    pub max_headers: usize,

    /// Time a new connection has to send its whole HTTP request; then it is closed
    /// (`408` when part of a request has arrived).
    #[arg(long, env = "CHATD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// A WebSocket peer silent for this long is sent a ping.
    #[arg(long, env = "CHATD_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A WebSocket peer silent for this long (no frame of any kind, pongs included) is closed
    /// with 1001. Must be longer than the ping interval.
    #[arg(long, env = "CHATD_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// After the server sends a close frame, how long it waits for the peer's close frame (and
    /// for its own queued bytes to leave) before it drops the connection.
    #[arg(long, env = "CHATD_CLOSE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long the server waits for connections to finish their close
    /// handshakes before it exits anyway.
    #[arg(long, env = "CHATD_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Origins allowed to open WebSocket connections (comma-separated or repeated). Empty:
    /// any. Requests that carry no Origin header (non-browser clients) are not checked.
    #[arg(
        long = "allowed-origin",
        env = "CHATD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// A reverse proxy whose forwarding headers are believed: an address or a block such as
    /// `10.0.0.0/8` (repeatable, or comma-separated in the environment). A request from one
    /// of them counts as coming from the right-most address in `X-Forwarded-For` that is not
    /// itself a trusted proxy (else `X-Real-IP`), for every per-address limit and in the
    /// logs. Anyone else's forwarding headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "CHATD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_cidr
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Most connections from one client address (an IPv6 client by its /64), in any phase,
    /// handshakes included; 0: no cap. The surplus is answered `429` and closed.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,

    /// Most authenticated connections of one user; 0: no cap. A `login` or `auth` past it is
    /// answered `rate_limited` and the connection stays unauthenticated.
    #[arg(long, env = "CHATD_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,

    /// Failed logins one account may take per `--login-failure-window`, from all addresses
    /// together. Past it only an address without recent failures for the account gets its
    /// password checked; the others get `rate_limited`.
    #[arg(long, env = "CHATD_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 20)]
    pub login_failures_per_account: u32,

    /// Failed logins one account may take from one client address per
    /// `--login-failure-window`; past it, logins to that account from there get `rate_limited`.
    #[arg(
        long,
        env = "CHATD_LOGIN_FAILURES_PER_ACCOUNT_ADDRESS",
        default_value_t = 5
    )]
    pub login_failures_per_account_address: u32,

    /// The window of the failed-login budgets: each refills in this time.
    #[arg(long, env = "CHATD_LOGIN_FAILURE_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub login_failure_window: Duration,

    /// Bearer token that `GET /metrics` must present (`Authorization: Bearer TOKEN`), at
    /// least 16 bytes. Without one, `/metrics` is not served (404).
    #[arg(long, env = "CHATD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// An operator command on the data dir instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands: they work on the data dir and exit; without one, chatd serves.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Server admins, who may do in any group what its owner may.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `chatd admin ...`: grants and revokes server admin rights on existing accounts. Works while
/// the server runs: a grant applies from the user's next `login` or `auth`, a revocation at once.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Makes an existing account a server admin.
    Grant {
        /// The account's user name.
        name: String,
    },
    /// Takes server admin rights away from an account.
    Revoke {
        /// The account's user name.
        name: String,
    },
    /// Lists the server admins, one name a line.
    List,
}

/// What "durably stored" means for an acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Survives a crash of the process (kill -9); the OS flushes the log to disk later.
    Normal,
    /// Survives a power loss: every commit waits for the disk.
    Full,
}

/// Whether anyone may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Registration {
    /// `register` works.
    Open,
    /// `register` answers `forbidden`; accounts come from JWTs or an existing database.
    Closed,
}

impl Default for Config {
    fn default() -> Config {
        Config::parse_from(["chatd"])
    }
}

/// Longest `--file-link-ttl` accepted.
pub const MAX_FILE_LINK_TTL: Duration = Duration::from_secs(86_400);

/// The outgoing queue cap unless the message size asks for more.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 16 << 20;

impl Config {
    /// The outgoing queue cap in force: the flag, or by default 16 MiB or two of the largest
    /// frames, whichever is more (one being written while the next waits behind it).
    pub fn queue_limit(&self) -> usize {
        self.max_queued_bytes
            .unwrap_or_else(|| DEFAULT_MAX_QUEUED_BYTES.max(self.largest_frame().saturating_mul(2)))
    }

    /// The largest frame the server may have to queue: the echo of the largest message, which
    /// goes out as one unmasked frame, header included.
    pub fn largest_frame(&self) -> usize {
        frame::header_len(self.max_message_size, false).saturating_add(self.max_message_size)
    }

    /// The frame size limit in force.
    pub fn frame_limit(&self) -> usize {
        self.max_frame_size
            .unwrap_or(self.max_message_size)
            .min(self.max_message_size)
    }

    /// Problems with combinations of settings, as messages for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_timeout <= self.ping_interval {
            return Err(format!(
                "--idle-timeout ({:?}) must be longer than --ping-interval ({:?})",
                self.idle_timeout, self.ping_interval
            ));
        }
        let rates = [
            (self.command_rate, self.command_burst),
            (self.login_rate, self.login_burst),
            (self.typing_rate, self.typing_burst),
            (self.send_rate, self.send_burst),
            (self.group_create_rate, self.group_create_burst),
            (self.upload_rate, self.upload_burst),
            (self.unknown_user_rate, self.unknown_user_burst),
        ];
        if rates
            .iter()
            .any(|&(rate, burst)| rate <= 0.0 || burst < 1.0)
        {
            return Err("rates must be positive and bursts at least 1".into());
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < crate::chat::auth::MIN_SECRET_BYTES {
                return Err(format!(
                    "--jwt-secret is {} bytes; HS256 needs at least {} (RFC 7518 section 3.2). A random one: openssl rand -base64 32",
                    secret.len(),
                    crate::chat::auth::MIN_SECRET_BYTES
                ));
            }
        }
        if self.jwt_max_lifetime.is_zero() {
            return Err("--jwt-max-lifetime must be above zero".into());
        }
        if self.login_failures_per_account < 1
            || self.login_failures_per_account_address < 1
            || self.login_failure_window.is_zero()
        {
            return Err("failed-login budgets must be at least 1, over a window above 0".into());
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("--metrics-token must be at least 16 bytes".into());
        }
        if self.queue_limit() < self.largest_frame() {
            return Err(format!(
                "--max-queued-bytes ({}) must be at least {} (--max-message-size {} and its frame header), or an echo of the largest message could never be queued",
                self.queue_limit(),
                self.largest_frame(),
                self.max_message_size
            ));
        }
        if self.file_link_ttl.is_zero() || self.file_link_ttl > MAX_FILE_LINK_TTL {
            return Err(
                "--file-link-ttl must be above zero and at most 1d: a long-lived link is a credential in a URL again".into(),
            );
        }
        if self.stall_timeout.is_zero() {
            return Err("--stall-timeout must be above zero, or any socket that is full for a moment would end its connection".into());
        }
        Ok(())
    }
}

/// `10.0.0.0/8`, `::1`, `fd00::/8`.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse()
}

/// `127.0.0.1:8080`, `[::1]:0`, or `:PORT` for 127.0.0.1.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("127.0.0.1{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|e| format!("not an address like 127.0.0.1:8080: {e}"))
}

/// `30` or `30s` (seconds, fractions allowed), `500ms`, `5m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration like 30s, 500ms or 5m: {s:?}"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen(":0").unwrap().to_string(), "127.0.0.1:0");
        assert_eq!(parse_listen("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_listen("nowhere").is_err());
    }

    #[test]
    fn defaults_are_consistent() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.frame_limit(), 1 << 20);
        assert!(c.validate().is_ok());
        assert!(c.trusted_proxies.is_empty() && c.metrics_token.is_none());
    }

    #[test]
    fn trusted_proxies_repeat_and_short_metrics_tokens_are_refused() {
        let c = Config::parse_from([
            "chatd",
            "--trusted-proxy",
            "127.0.0.1",
            "--trusted-proxy",
            "10.0.0.0/8",
        ]);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["chatd", "--trusted-proxy", "10.0.0.1/8"]).is_err());
        let c = Config::parse_from(["chatd", "--metrics-token", "short"]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_jwt_secret_under_32_bytes_is_refused() {
        let short = Config::parse_from(["chatd", "--jwt-secret", "bench-secret"]);
        assert!(short.validate().unwrap_err().contains("--jwt-secret"));
        let enough = Config::parse_from(["chatd", "--jwt-secret", &"k".repeat(32)]);
        assert!(enough.validate().is_ok());
    }

    #[test]
    fn operator_commands_take_the_data_dir_after_them() {
        let c = Config::parse_from(["chatd", "admin", "grant", "root", "--data-dir", "/d"]);
        assert_eq!(c.data_dir, PathBuf::from("/d"));
        assert!(matches!(
            c.command,
            Some(Command::Admin(AdminCommand::Grant { name })) if name == "root"
        ));
        assert!(Config::default().command.is_none());
    }

    #[test]
    fn queue_cap_follows_the_message_size() {
        assert_eq!(Config::default().queue_limit(), 16 << 20);
        let big = Config::parse_from(["chatd", "--max-message-size", "16777216"]);
        assert_eq!(big.largest_frame(), (16 << 20) + 10);
        assert_eq!(big.queue_limit(), 2 * ((16 << 20) + 10));
        assert!(big.validate().is_ok());
        // Room for the message but not its 10-byte header: refused.
        let tight = Config::parse_from([
            "chatd",
            "--max-message-size",
            "16777216",
            "--max-queued-bytes",
            "16777225",
        ]);
        assert!(tight.validate().unwrap_err().contains("16777226"));
        let exact = Config::parse_from([
            "chatd",
            "--max-message-size",
            "16777216",
            "--max-queued-bytes",
            "16777226",
        ]);
        assert!(exact.validate().is_ok());
    }

    #[test]
    fn file_link_lifetime_is_bounded() {
        let c = Config::default();
        assert_eq!(c.file_link_ttl, Duration::from_secs(300));
        assert!(!c.query_token_downloads);
        for bad in ["0", "2d"] {
            let c = Config::parse_from(["chatd", "--file-link-ttl", bad]);
            assert!(
                c.validate().unwrap_err().contains("--file-link-ttl"),
                "{bad}"
            );
        }
        assert!(Config::parse_from(["chatd", "--file-link-ttl", "1d"])
            .validate()
            .is_ok());
    }

    #[test]
    fn zero_stall_timeout_is_refused() {
        let c = Config::parse_from(["chatd", "--stall-timeout", "0"]);
        assert!(c.validate().is_err());
    }

    #[test]
    fn inconsistent_timeouts_are_refused() {
        let c = Config::parse_from(["chatd", "--ping-interval", "10", "--idle-timeout", "5"]);
        assert!(c.validate().is_err());
    }
}
