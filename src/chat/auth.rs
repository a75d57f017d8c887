//! Session tokens and HS256 JWTs.
//!
//! A session token is 256 random bits, given to the client once (base64url) and stored only as
//! its SHA-256, so a copy of the database does not hand out sessions. A JWT is checked against
//! RFC 7519 with HS256 (RFC 7518 3.2): the signature in constant time, `exp` required, `nbf`
//! honoured, both with [`CLOCK_SKEW_MS`] of allowance.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Allowance for clocks that disagree, applied to `exp` and `nbf`: 30 seconds.
pub const CLOCK_SKEW_MS: i64 = 30_000;

/// A new session token and the hash to store.
pub fn new_session_token() -> std::io::Result<(String, [u8; 32])> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(std::io::Error::other)?;
    let token = B64URL.encode(raw);
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The stored form of a session token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a token looks like a JWT (three dot-separated parts) rather than a session token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// Why a JWT was refused. All of them answer `unauthenticated`; the variant is for logs and
/// tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    Malformed,
    /// `alg` is not HS256 (`none` included).
    Algorithm,
    /// The signature does not match.
    Signature,
    /// No `exp` claim.
    MissingExp,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// No `sub`, or not a valid user name.
    Subject,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// Verifies an HS256 JWT with `secret` at `now_ms`; returns the subject (a user name).
pub fn verify_jwt(token: &str, secret: &[u8], now_ms: i64) -> Result<String, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: JwtHeader = decode_json(h)?;
    if header.alg != "HS256" {
        return Err(JwtError::Algorithm);
    }
    let signature = B64URL.decode(s).map_err(|_| JwtError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&token.as_bytes()[..h.len() + 1 + p.len()]);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = decode_json(p)?;
    let exp = claims.exp.ok_or(JwtError::MissingExp)?;
    if (now_ms - CLOCK_SKEW_MS) as f64 >= exp * 1000.0 {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if ((now_ms + CLOCK_SKEW_MS) as f64) < nbf * 1000.0 {
            return Err(JwtError::NotYetValid);
        }
    }
    match claims.sub {
        Some(sub) if super::names::valid_name(&sub) => Ok(sub),
        _ => Err(JwtError::Subject),
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, JwtError> {
    let bytes = B64URL.decode(part).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Signs claims as an HS256 JWT (used by tests and the load tool to mint tokens).
pub fn sign_jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64URL.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{header}.{payload}").as_bytes());
    let sig = B64URL.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";
    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn rfc7515_hs256_example_signature_verifies() {
        // RFC 7515 appendix A.1: the example JWS with its JWK key (exp 1300819380 is long past,
        // so it verifies up to the expiry check).
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let key = B64URL
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        assert_eq!(verify_jwt(token, &key, NOW), Err(JwtError::Expired));
        assert_eq!(
            verify_jwt(token, b"other key", NOW),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn valid_token_gives_its_subject() {
        let t = sign_jwt(&json!({"sub": "alice", "exp": NOW / 1000 + 60}), SECRET);
        assert!(looks_like_jwt(&t));
        assert_eq!(verify_jwt(&t, SECRET, NOW), Ok("alice".to_string()));
    }

    #[test]
    fn rejections() {
        let exp = NOW / 1000 + 60;
        let bad_sig = sign_jwt(&json!({"sub": "alice", "exp": exp}), b"wrong");
        assert_eq!(verify_jwt(&bad_sig, SECRET, NOW), Err(JwtError::Signature));
        let no_exp = sign_jwt(&json!({"sub": "alice"}), SECRET);
        assert_eq!(verify_jwt(&no_exp, SECRET, NOW), Err(JwtError::MissingExp));
        let expired = sign_jwt(&json!({"sub": "alice", "exp": NOW / 1000 - 31}), SECRET);
        assert_eq!(verify_jwt(&expired, SECRET, NOW), Err(JwtError::Expired));
        let early = sign_jwt(
            &json!({"sub": "alice", "exp": exp, "nbf": NOW / 1000 + 31}),
            SECRET,
        );
        assert_eq!(verify_jwt(&early, SECRET, NOW), Err(JwtError::NotYetValid));
        let bad_sub = sign_jwt(&json!({"sub": "Not Valid", "exp": exp}), SECRET);
        assert_eq!(verify_jwt(&bad_sub, SECRET, NOW), Err(JwtError::Subject));
        assert_eq!(verify_jwt("a.b", SECRET, NOW), Err(JwtError::Malformed));
        assert_eq!(
            verify_jwt("!!.??.**", SECRET, NOW),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn skew_allowance_applies_to_exp_and_nbf() {
        let just_expired = sign_jwt(&json!({"sub": "a", "exp": NOW / 1000 - 10}), SECRET);
        assert!(verify_jwt(&just_expired, SECRET, NOW).is_ok());
        let just_early = sign_jwt(
            &json!({"sub": "a", "exp": NOW / 1000 + 99, "nbf": NOW / 1000 + 10}),
            SECRET,
        );
        assert!(verify_jwt(&just_early, SECRET, NOW).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let header = B64URL.encode(br#"{"alg":"none"}"#);
        let payload = B64URL.encode(json!({"sub": "a", "exp": NOW / 1000 + 60}).to_string());
        let t = format!("{header}.{payload}.");
        assert_eq!(verify_jwt(&t, SECRET, NOW), Err(JwtError::Algorithm));
    }

    #[test]
    fn session_tokens_are_random_and_hashed() {
        let (a, ha) = new_session_token().unwrap();
        let (b, _) = new_session_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), ha);
        assert!(!looks_like_jwt(&a));
    }
}
