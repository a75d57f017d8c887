//! chatd: a single-threaded, event-loop WebSocket instant-messaging server.
//!
//! One thread runs one `mio::Poll` loop that owns every connection. Read the modules in this
//! order:
//!
//! 1. [`config`]: every limit and timeout, with its default and flag.
//! 2. [`ws`]: RFC 6455 framing, socket-free (frame header, masking, UTF-8, close, session).
//! 3. [`http`]: the request head, the upgrade handshake, plain responses; socket-free.
//! 4. [`net`]: the only code that interprets `io::ErrorKind`.
//! 5. [`buffer`]: input leftovers and the output queue of (shared) encoded frames.
//! 6. [`conn`]: one connection's phases and the one function that moves between them.
//! 7. [`timer`]: every deadline in one ordered set.
//! 8. [`metrics`]: counters rendered for Prometheus.
//! 9. [`store`]: the embedded SQLite store behind a narrow API.
//! 10. [`chat`]: protocol v1 (accounts, tokens, groups, permissions) as commands in, effects out.
//! 11. [`server`]: the loop that ties them together.
//!
//! `docs/lifecycle.md` follows one connection and one message through all of it.

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
