//! The chat protocol (v1) on top of the transport, free of sockets, threads and clocks.
//!
//! Read in this order:
//!
//! 1. [`protocol`]: the wire schema; [`names`]: what names and passwords may be.
//! 2. [`permissions`]: the rules table; [`auth`]: session tokens and JWTs; [`ratelimit`].
//! 3. [`service`]: the [`Service`] type ([`client`]: its state per connection), its inputs (messages, the time, the workers' results)
//!    and its one output, [`Effect`]s; the command table and the [`Outcome`] of every handler.
//! 4. [`held`]: replies in request order, and closing after the replies owed.
//! 5. The handlers by job: [`accounts`] (with [`login_guard`]), [`sessions`] (credentials on
//!    live connections), [`presence`], [`groups`], [`listing`], [`messaging`], [`files`] (with
//!    [`links`], signed download links).
//! 6. [`batch`]: the iteration's writes, committed off the loop, and what follows each;
//!    [`retention`]: the prunes that join it.
//! 7. [`directory`]: users, groups and roles remembered from the store; [`probes`]: the
//!    price of naming users who do not exist.
//! 8. [`metrics`]; the workers the loop runs for the service: [`hasher`] (passwords) and
//!    [`upload`] (files on disk).

pub mod accounts;
pub mod announce;
pub mod auth;
pub mod batch;
pub mod client;
pub mod directory;
pub mod files;
pub mod groups;
pub mod hasher;
pub mod held;
pub mod links;
pub mod listing;
pub mod login_guard;
pub mod messaging;
pub mod metrics;
pub mod names;
pub mod permissions;
pub mod presence;
pub mod probes;
pub mod protocol;
pub mod ratelimit;
pub mod retention;
pub mod service;
pub mod sessions;
pub mod upload;

#[cfg(test)]
mod tests;

pub use files::DownloadRefusal;
pub use service::{now_ms, ConnId, Effect, Now, Outcome, Service, Settings};
