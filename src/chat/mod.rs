//! The chat protocol (v1) on top of the transport, free of sockets.
//!
//! Read in this order: [`protocol`] (the wire schema), [`names`], [`permissions`] (the rules
//! table), [`auth`] (tokens and JWTs), [`ratelimit`], [`hasher`] (the password worker), [`upload`] (files on disk), then
//! [`service`], which turns commands into effects.

pub mod auth;
pub mod hasher;
pub mod names;
pub mod permissions;
pub mod protocol;
pub mod ratelimit;
pub mod service;
pub mod upload;

pub use service::{ConnId, Effect, Service, Settings};
