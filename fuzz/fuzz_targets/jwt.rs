//! HS256 JWTs: `chat::auth::looks_like_jwt` and `verify_jwt` with a fixed secret and time.
//!
//! Input starting with `{` is a header and claims (split at the first newline) that the target
//! signs correctly, so the fuzzer gets past the signature to the claims; any other input is the
//! token text itself.
//!
//! Invariants: a token that verifies looks like a JWT (the server routes on `looks_like_jwt`
//! before verifying) and names a valid user.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chatd::chat::auth::{looks_like_jwt, verify_jwt, JwtRules};
use chatd::chat::names::valid_name;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

/// The secret the seeds are signed with.
const SECRET: &[u8] = b"fuzz-secret";
/// 2023-11-14T22:13:20Z; the valid seed expires in 2100.
const NOW_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let token = if data.first() == Some(&b'{') {
        let cut = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
        let (header, claims) = data.split_at(cut);
        sign(header, claims.get(1..).unwrap_or_default())
    } else {
        match std::str::from_utf8(data) {
            Ok(t) => t.to_string(),
            Err(_) => return,
        }
    };
    let jwt_like = looks_like_jwt(&token);
    // Lifetimes up to a century, so that the seed expiring in 2100 still verifies; the
    // issuer and audience as in the seed `signed_claims_iss_aud` (the secret is not checked for
    // length here: the seeds are signed with this one).
    let rules = JwtRules {
        max_lifetime_ms: 100 * 365 * 86_400_000,
        issuer: Some("fuzz".into()),
        audience: Some("chatd".into()),
    };
    if let Ok(jwt) = verify_jwt(&token, SECRET, &rules, NOW_MS) {
        assert!(jwt_like, "{token:?} verified but does not look like a JWT");
        assert!(valid_name(&jwt.subject), "subject {:?}", jwt.subject);
        assert!(jwt.expires_ms > NOW_MS, "verified but expired: {token:?}");
    }
});

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
    mac.update(signed.as_bytes());
    format!("{signed}.{}", B64URL.encode(mac.finalize().into_bytes()))
}
