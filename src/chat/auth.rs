//! Session tokens and HS256 JWTs.
//!
//! A session token is 256 random bits, given to the client once (base64url) and stored only as
//! its SHA-256, so a copy of the database does not hand out sessions. A JWT is checked against
//! RFC 7519 with HS256 (RFC 7518 3.2): the signature in constant time, `exp` required, `nbf`
//! honoured, both with [`CLOCK_SKEW_MS`] of allowance; then the server's own bounds
//! ([`JwtRules`]): a longest lifetime, and the issuer and audience when configured.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Allowance for clocks that disagree, applied to `exp`, `nbf` and `iat`: 30 seconds.
pub const CLOCK_SKEW_MS: i64 = 30_000;

/// Shortest HS256 secret accepted: RFC 7518 section 3.2, "A key of the same size as the hash
/// output (for instance, 256 bits for "HS256") or larger MUST be used with this algorithm."
pub const MIN_SECRET_BYTES: usize = 32;

/// What a JWT must satisfy besides its signature and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    /// Longest lifetime accepted, in ms: `exp - iat`, or `exp - now` without `iat`. It also
    /// refuses an `exp` written in milliseconds, which would otherwise never come.
    pub max_lifetime_ms: i64,
    /// When set, `iss` must be exactly this.
    pub issuer: Option<String>,
    /// When set, `aud` (a string or an array of strings, RFC 7519 4.1.3) must contain this.
    pub audience: Option<String>,
}

/// A JWT that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sub`: the user name.
    pub subject: String,
    /// The first moment (ms since the epoch) at which the token no longer verifies: `exp`
    /// plus the clock-skew allowance.
    pub expires_ms: i64,
}

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
    /// `iat` in the future.
    IssuedInFuture,
    /// `exp` further from `iat` (or from now) than the longest lifetime allowed.
    Lifetime,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not name the configured audience.
    Audience,
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
    iat: Option<f64>,
    iss: Option<String>,
    aud: Option<Audience>,
}

/// RFC 7519 4.1.3: "In the general case, the "aud" value is an array of case-sensitive strings
/// [...]. In the special case when the JWT has one audience, the "aud" value MAY be a single
/// case-sensitive string."
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, wanted: &str) -> bool {
        match self {
            Audience::One(one) => one == wanted,
            Audience::Many(many) => many.iter().any(|a| a == wanted),
        }
    }
}

/// Verifies an HS256 JWT with `secret` and `rules` at `now_ms`.
pub fn verify_jwt(
    token: &str,
    secret: &[u8],
    rules: &JwtRules,
    now_ms: i64,
) -> Result<Verified, JwtError> {
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
    let expires_ms = check_times(&claims, rules, now_ms)?;
    check_parties(&claims, rules)?;
    match claims.sub {
        Some(subject) if super::names::valid_name(&subject) => Ok(Verified {
            subject,
            expires_ms,
        }),
        _ => Err(JwtError::Subject),
    }
}

/// `exp`, `nbf`, `iat` and the lifetime; returns when the token stops verifying.
fn check_times(claims: &Claims, rules: &JwtRules, now_ms: i64) -> Result<i64, JwtError> {
    let (now, skew) = (now_ms as f64, CLOCK_SKEW_MS as f64);
    let exp = claims.exp.ok_or(JwtError::MissingExp)? * 1000.0;
    if now - skew >= exp {
        return Err(JwtError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| now + skew < nbf * 1000.0) {
        return Err(JwtError::NotYetValid);
    }
    // A future `iat` would shorten the lifetime measured from it: refused, so that the bound
    // below holds from now as well.
    let issued = match claims.iat {
        Some(iat) if iat * 1000.0 > now + skew => return Err(JwtError::IssuedInFuture),
        Some(iat) => iat * 1000.0,
        None => now,
    };
    if exp - issued > rules.max_lifetime_ms as f64 {
        return Err(JwtError::Lifetime);
    }
    // Bounded by now + skew + the lifetime above, so the conversion is exact enough.
    Ok(exp as i64 + CLOCK_SKEW_MS)
}

/// `iss` and `aud`, when the server names them.
fn check_parties(claims: &Claims, rules: &JwtRules) -> Result<(), JwtError> {
    if let Some(issuer) = &rules.issuer {
        if claims.iss.as_ref() != Some(issuer) {
            return Err(JwtError::Issuer);
        }
    }
    if let Some(audience) = &rules.audience {
        if !claims.aud.as_ref().is_some_and(|aud| aud.names(audience)) {
            return Err(JwtError::Audience);
        }
    }
    Ok(())
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

    const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";
    const NOW: i64 = 1_700_000_000_000;
    const DAY_MS: i64 = 86_400_000;

    fn rules() -> JwtRules {
        JwtRules {
            max_lifetime_ms: DAY_MS,
            issuer: None,
            audience: None,
        }
    }

    fn verify(token: &str) -> Result<String, JwtError> {
        verify_jwt(token, SECRET, &rules(), NOW).map(|v| v.subject)
    }

    #[test]
    fn rfc7515_hs256_example_signature_verifies() {
        // RFC 7515 appendix A.1: the example JWS with its JWK key (exp 1300819380 is long past,
        // so it verifies up to the expiry check).
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let key = B64URL
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        assert_eq!(
            verify_jwt(token, &key, &rules(), NOW),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify_jwt(token, b"other key", &rules(), NOW),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn valid_token_gives_its_subject_and_when_it_stops_verifying() {
        let t = sign_jwt(&json!({"sub": "alice", "exp": NOW / 1000 + 60}), SECRET);
        assert!(looks_like_jwt(&t));
        assert_eq!(
            verify_jwt(&t, SECRET, &rules(), NOW),
            Ok(Verified {
                subject: "alice".into(),
                expires_ms: NOW + 60_000 + CLOCK_SKEW_MS
            })
        );
        let at_expiry = NOW + 60_000 + CLOCK_SKEW_MS;
        assert!(verify_jwt(&t, SECRET, &rules(), at_expiry - 1).is_ok());
        assert_eq!(
            verify_jwt(&t, SECRET, &rules(), at_expiry),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn rejections() {
        let exp = NOW / 1000 + 60;
        let bad_sig = sign_jwt(&json!({"sub": "alice", "exp": exp}), b"wrong");
        assert_eq!(verify(&bad_sig), Err(JwtError::Signature));
        let no_exp = sign_jwt(&json!({"sub": "alice"}), SECRET);
        assert_eq!(verify(&no_exp), Err(JwtError::MissingExp));
        let expired = sign_jwt(&json!({"sub": "alice", "exp": NOW / 1000 - 31}), SECRET);
        assert_eq!(verify(&expired), Err(JwtError::Expired));
        let early = sign_jwt(
            &json!({"sub": "alice", "exp": exp, "nbf": NOW / 1000 + 31}),
            SECRET,
        );
        assert_eq!(verify(&early), Err(JwtError::NotYetValid));
        let bad_sub = sign_jwt(&json!({"sub": "Not Valid", "exp": exp}), SECRET);
        assert_eq!(verify(&bad_sub), Err(JwtError::Subject));
        assert_eq!(verify("a.b"), Err(JwtError::Malformed));
        assert_eq!(verify("!!.??.**"), Err(JwtError::Malformed));
    }

    #[test]
    fn skew_allowance_applies_to_exp_nbf_and_iat() {
        let just_expired = sign_jwt(&json!({"sub": "a", "exp": NOW / 1000 - 10}), SECRET);
        assert!(verify(&just_expired).is_ok());
        let just_early = sign_jwt(
            &json!({"sub": "a", "exp": NOW / 1000 + 99, "nbf": NOW / 1000 + 10}),
            SECRET,
        );
        assert!(verify(&just_early).is_ok());
        let issued_soon = sign_jwt(
            &json!({"sub": "a", "exp": NOW / 1000 + 99, "iat": NOW / 1000 + 10}),
            SECRET,
        );
        assert!(verify(&issued_soon).is_ok());
        let issued_later = sign_jwt(
            &json!({"sub": "a", "exp": NOW / 1000 + 99, "iat": NOW / 1000 + 31}),
            SECRET,
        );
        assert_eq!(verify(&issued_later), Err(JwtError::IssuedInFuture));
    }

    #[test]
    fn the_lifetime_is_bounded_and_an_exp_in_milliseconds_is_refused() {
        let day = DAY_MS / 1000;
        let now = NOW / 1000;
        let exp_in_ms = sign_jwt(&json!({"sub": "a", "exp": NOW + 60_000}), SECRET);
        assert_eq!(verify(&exp_in_ms), Err(JwtError::Lifetime));
        let both_in_ms = sign_jwt(
            &json!({"sub": "a", "exp": NOW + 60_000, "iat": NOW}),
            SECRET,
        );
        assert_eq!(verify(&both_in_ms), Err(JwtError::IssuedInFuture));
        let a_day = sign_jwt(&json!({"sub": "a", "exp": now + day}), SECRET);
        assert!(verify(&a_day).is_ok());
        let over_a_day = sign_jwt(&json!({"sub": "a", "exp": now + day + 1}), SECRET);
        assert_eq!(verify(&over_a_day), Err(JwtError::Lifetime));
        let old_but_long = sign_jwt(
            &json!({"sub": "a", "exp": now + 60, "iat": now - day}),
            SECRET,
        );
        assert_eq!(verify(&old_but_long), Err(JwtError::Lifetime));
        let issued_an_hour_ago = sign_jwt(
            &json!({"sub": "a", "exp": now + 60, "iat": now - 3600}),
            SECRET,
        );
        assert!(verify(&issued_an_hour_ago).is_ok());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let strict = JwtRules {
            issuer: Some("https://id.example".into()),
            audience: Some("chatd".into()),
            ..rules()
        };
        let check = |claims: serde_json::Value| {
            let mut claims = claims;
            claims["sub"] = json!("a");
            claims["exp"] = json!(NOW / 1000 + 60);
            verify_jwt(&sign_jwt(&claims, SECRET), SECRET, &strict, NOW).map(|_| ())
        };
        let iss = "https://id.example";
        assert_eq!(check(json!({"iss": iss, "aud": "chatd"})), Ok(()));
        assert_eq!(check(json!({"iss": iss, "aud": ["web", "chatd"]})), Ok(()));
        assert_eq!(
            check(json!({"iss": "https://evil.example", "aud": "chatd"})),
            Err(JwtError::Issuer)
        );
        assert_eq!(check(json!({"aud": "chatd"})), Err(JwtError::Issuer));
        assert_eq!(
            check(json!({"iss": iss, "aud": "web"})),
            Err(JwtError::Audience)
        );
        assert_eq!(
            check(json!({"iss": iss, "aud": ["web"]})),
            Err(JwtError::Audience)
        );
        assert_eq!(check(json!({"iss": iss})), Err(JwtError::Audience));
        assert_eq!(
            check(json!({"iss": iss, "aud": 7})),
            Err(JwtError::Malformed)
        );
        // Without configuration, iss and aud are not looked at.
        let loose = sign_jwt(
            &json!({"sub": "a", "exp": NOW / 1000 + 60, "iss": "x", "aud": "y"}),
            SECRET,
        );
        assert!(verify(&loose).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let header = B64URL.encode(br#"{"alg":"none"}"#);
        let payload = B64URL.encode(json!({"sub": "a", "exp": NOW / 1000 + 60}).to_string());
        let t = format!("{header}.{payload}.");
        assert_eq!(verify(&t), Err(JwtError::Algorithm));
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
