//! Start-up: the store opened twice (the loop's reads, the writer's connection) and the chat
//! service's settings from the configuration.

use std::io;
use std::sync::Arc;

use log::{info, warn};
use mio::Waker;

use crate::chat::auth::JwtRules;
use crate::chat::hasher::Cost;
use crate::chat::links::LinkKey;
use crate::chat::ratelimit::{Rate, UserRates};
use crate::chat::{Service, Settings};
use crate::config::{Config, Registration, SyncMode};
use crate::store::{Store, Writer};

/// Opens the store twice: the loop's connection for reads, inside the chat service, and the
/// writer's, on its own thread.
pub(super) fn open_store(cfg: &Config, waker: Arc<Waker>) -> io::Result<(Service, Writer)> {
    let in_dir =
        |e: crate::store::StoreError| io::Error::other(format!("{}: {e}", cfg.data_dir.display()));
    let reads = Store::open(&cfg.data_dir).map_err(in_dir)?;
    match reads.purge_sessions(crate::chat::now_ms()) {
        Ok(n) if n > 0 => info!("removed {n} expired sessions"),
        Ok(_) => {}
        Err(e) => warn!("expired sessions not removed: {e}"),
    }
    announce_admins(cfg, &reads);
    let writes = Store::open(&cfg.data_dir)
        .and_then(|s| s.set_synchronous(cfg.sync == SyncMode::Full).map(|()| s))
        .map_err(in_dir)?;
    let settings = settings(cfg, LinkKey::random()?);
    let writer = Writer::start(writes, settings.files_dir.clone(), waker)?;
    let chat = Service::new(reads, settings).map_err(in_dir)?;
    Ok((chat, writer))
}

pub(super) fn argon2_cost(cfg: &Config) -> Cost {
    Cost {
        memory_kib: cfg.argon2_memory_kib,
        iterations: cfg.argon2_iterations,
    }
}

/// What one user may do across its connections, per second.
fn user_rates(cfg: &Config) -> UserRates {
    let rate = |per_sec, burst| Rate { per_sec, burst };
    UserRates {
        send: rate(cfg.send_rate, cfg.send_burst),
        typing: rate(cfg.typing_rate, cfg.typing_burst),
        group_create: rate(cfg.group_create_rate / 60.0, cfg.group_create_burst),
        upload: rate(cfg.upload_rate / 60.0, cfg.upload_burst),
        unknown_user: rate(cfg.unknown_user_rate / 60.0, cfg.unknown_user_burst),
    }
}

/// The chat service's settings from the configuration.
pub(super) fn settings(cfg: &Config, file_link_key: LinkKey) -> Settings {
    Settings {
        registration_open: cfg.registration == Registration::Open,
        jwt_secret: cfg.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        jwt_rules: JwtRules {
            max_lifetime_ms: i64::try_from(cfg.jwt_max_lifetime.as_millis()).unwrap_or(i64::MAX),
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
        },
        session_ttl: cfg.session_ttl,
        command_rate: cfg.command_rate,
        command_burst: cfg.command_burst,
        rate_strikes: cfg.rate_strikes,
        login_rate: cfg.login_rate / 60.0,
        login_burst: cfg.login_burst,
        login_budgets: crate::chat::login_guard::Budgets {
            per_account: cfg.login_failures_per_account.into(),
            per_pair: cfg.login_failures_per_account_address.into(),
            window_secs: cfg.login_failure_window.as_secs_f64(),
        },
        max_connections_per_user: cfg.max_connections_per_user,
        argon2: argon2_cost(cfg),
        max_text_chars: cfg.max_text_chars,
        recovery_limit: cfg.recovery_limit,
        user_rates: user_rates(cfg),
        files_dir: crate::chat::upload::files_dir(&cfg.data_dir),
        max_file_size: cfg.max_file_size,
        file_link_ttl: cfg.file_link_ttl,
        file_link_key,
        user_file_quota: cfg.user_file_quota,
        min_free_disk: cfg.min_free_disk,
        large_group: cfg.large_group,
        message_retention: cfg.message_retention,
        file_retention: cfg.file_retention,
        max_groups_per_user: cfg.max_groups_per_user,
        max_owned_groups_per_user: cfg.max_owned_groups_per_user,
    }
}

/// Names the server admins at start, and says that `--admin` grants nothing any more: whoever
/// registered such a name first would have become an admin.
fn announce_admins(cfg: &Config, store: &Store) {
    if !cfg.admins.is_empty() {
        warn!(
            "--admin {} ignored: server admins are granted to existing accounts with `chatd admin grant NAME --data-dir {}`",
            cfg.admins.join(","),
            cfg.data_dir.display()
        );
    }
    match store.server_admins() {
        Ok(names) if names.is_empty() => info!("no server admins"),
        Ok(names) => info!("server admins: {}", names.join(", ")),
        Err(e) => warn!("server admins not read: {e}"),
    }
}
