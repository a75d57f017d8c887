//! HTTP/1.1, as much as a WebSocket server needs, free of sockets: the request head
//! ([`request`]), the upgrade handshake ([`handshake`]) and plain responses ([`response`]).

pub mod assets;
pub mod download;
pub mod forwarded;
pub mod handshake;
pub mod request;
pub mod response;

pub use request::{HeadError, HeadLimits, Parsed, Request};
pub use response::Response;
