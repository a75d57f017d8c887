//! chatd: a single-threaded, event-loop WebSocket instant-messaging server.
pub mod http;
pub mod ws;
