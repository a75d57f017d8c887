//! chatd: a single-threaded, event-loop WebSocket instant-messaging server.
//!
//! One thread runs one `mio::Poll` loop that owns every connection; two workers take what would
//! stall it (password hashing, commits to disk) and report back through a `mio::Waker`. Read the
//! modules in this order:
//!
//! 1. [`config`]: every limit and timeout, with its default and flag.
//! 2. [`ws`]: RFC 6455 framing, socket-free (frame header, masking, UTF-8, close, session).
//! 3. [`http`]: the request head, the upgrade handshake, plain responses; socket-free.
//! 4. [`net`]: the only code that interprets `io::ErrorKind`.
//! 5. [`buffer`]: input leftovers and the output queue of (shared) encoded frames.
//! 6. [`conn`]: one connection's phases and the one function that moves between them; reading,
//!    writing and deadlines beside it.
//! 7. [`timer`]: every deadline in one ordered set.
//! 8. [`metrics`]: counters rendered for Prometheus.
//! 9. [`store`]: the embedded SQLite store behind a narrow API: reads for the loop, writes as
//!    values committed in batches by the store writer thread.
//! 10. [`chat`]: protocol v1 as commands in, effects out: the service split by job, free of
//!     sockets, threads and clocks.
//! 11. [`server`]: the loop that ties them together, its end-of-iteration step list, the HTTP
//!     routes.
//!
//! `docs/lifecycle.md` follows one connection and one message through all of it. [`admin`]
//! holds the operator commands, which work on the data dir instead of serving.

pub mod admin;
pub mod buffer;
pub mod chat;
pub mod config;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod net;
pub mod server;
pub mod store;
pub mod timer;
pub mod ws;
