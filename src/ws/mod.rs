//! WebSocket framing (RFC 6455), free of sockets.
//!
//! Read in this order: [`frame`] (the header), [`mask`], [`utf8`], [`close`], then [`session`],
//! which puts them together into a stream of events for one connection in either role.

pub mod close;
pub mod frame;
pub mod mask;
pub mod session;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use frame::Opcode;
pub use session::{Event, Limits, Role, Session};
