//! The WebSocket frame decoder in the client role: `ws::frame::parse_header` and
//! `ws::Session::receive` (Role::Client) on arbitrary bytes. See `ws_common.rs` for what is
//! checked.
#![no_main]

use chatd::ws::Role;
use libfuzzer_sys::fuzz_target;

#[path = "ws_common.rs"]
mod ws_common;

fuzz_target!(|data: &[u8]| ws_common::check(Role::Client, data));
