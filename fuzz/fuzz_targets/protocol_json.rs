//! The chat protocol's requests: `chat::protocol::parse` on arbitrary text frames, and the
//! error and ok replies built from what it returns.
//!
//! Invariants: an `id` that comes back (on success or failure) is a string or an integer, as the
//! reply's `re` must be; every reply is a JSON object with its `type`.
#![no_main]

use chatd::chat::protocol::{self, ErrorCode};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let (id, reply) = match protocol::parse(data) {
        Ok(req) => {
            let reply = protocol::ok(&req.id, json!({"echo": format!("{:?}", req.command)}));
            (req.id, reply)
        }
        Err((id, failure)) => {
            assert_eq!(failure.code, ErrorCode::BadRequest);
            let reply = protocol::error(&id, &failure);
            (id, reply)
        }
    };
    if let Some(id) = &id {
        assert!(id.is_string() || id.is_i64() || id.is_u64(), "id {id}");
    }
    let v: Value = serde_json::from_str(&reply).expect("replies are JSON");
    assert!(v["type"].is_string());
    assert_eq!(v.get("re"), id.as_ref());
});
