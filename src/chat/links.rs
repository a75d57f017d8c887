//! Signed download links: `file.link` hands out a URL for one file that works for a short time
//! and carries no credential of the user, so a URL that ends up in a proxy's log or a browser's
//! history opens that one file, for minutes, and nothing else.
//!
//! A link is `/files/{id}?u={user}&exp={ms}&sig={mac}`, where `mac` is HMAC-SHA256 (RFC 2104)
//! under a key drawn at random when the server starts, over the file id, the user and the expiry.
//! The key never leaves the process: a restart invalidates every link, which clients notice as
//! a `401` and answer by asking again. At download time the signature and the expiry are
//! checked first (the MAC in constant time), then whether the user may still read the file, by
//! the same rule as a download with a token: a member who left the group, or a file deleted
//! since, gets no bytes even from a link that has not expired.

use std::fmt;
use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::files::DownloadRefusal;
use super::protocol::{ErrorCode, Failure};
use super::service::{fail, Identity, Now, Reply, Service};
use super::upload;
use crate::store::{FileMeta, UserId};

/// What the MAC covers besides the link's fields, so that it can never be mistaken for another
/// use of the key.
const CONTEXT: &[u8] = b"chatd file link v1";

/// The key that signs download links: 256 random bits, for the life of the process.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// Why a link opens nothing. Both answer `401`; the variant is for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// Malformed, or the signature does not match (another file, user or expiry; another key).
    Invalid,
    /// Signed, but past its expiry.
    Expired,
}

impl LinkKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> std::io::Result<LinkKey> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(std::io::Error::other)?;
        Ok(LinkKey(key))
    }

    /// A given key (for tests).
    pub fn from_bytes(key: [u8; 32]) -> LinkKey {
        LinkKey(key)
    }

    fn mac(&self, file_id: &str, user: UserId, exp_ms: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // The fields are a file id (base64url), and two integers: '\n' cannot occur in any.
        for part in [CONTEXT, file_id.as_bytes(), user.to_string().as_bytes()] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.update(exp_ms.to_string().as_bytes());
        mac
    }

    /// The path and query of a link to `file_id` for `user`, valid until `exp_ms`.
    pub fn sign(&self, file_id: &str, user: UserId, exp_ms: i64) -> String {
        let sig = B64URL.encode(self.mac(file_id, user, exp_ms).finalize().into_bytes());
        format!("/files/{file_id}?u={user}&exp={exp_ms}&sig={sig}")
    }

    /// Checks a link's fields as they came in the query: the signature first, then the expiry.
    /// Returns the user it was issued to.
    pub fn verify(
        &self,
        file_id: &str,
        user: &str,
        exp: &str,
        sig: &str,
        now_ms: i64,
    ) -> Result<UserId, LinkRefusal> {
        let (Some(user), Some(exp_ms)) = (decimal(user), decimal(exp)) else {
            return Err(LinkRefusal::Invalid);
        };
        let sig = B64URL.decode(sig).map_err(|_| LinkRefusal::Invalid)?;
        // `verify_slice` compares in constant time: the time taken says nothing of the MAC.
        self.mac(file_id, user, exp_ms)
            .verify_slice(&sig)
            .map_err(|_| LinkRefusal::Invalid)?;
        if now_ms >= exp_ms {
            return Err(LinkRefusal::Expired);
        }
        Ok(user)
    }
}

/// A non-negative integer written as plain digits (no sign, no spaces), as `sign` writes it.
fn decimal(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

impl Service {
    /// `file.link`: a signed link to a file the caller may read, valid for `--file-link-ttl`
    /// and never past the caller's own credential.
    pub(super) fn file_link(&mut self, me: &Identity, file_id: &str, now: Now) -> Reply {
        if !upload::valid_file_id(file_id) {
            return fail(
                ErrorCode::BadRequest,
                "file_id is the 22-character id of a file",
            );
        }
        self.readable(me.id, file_id)
            .map_err(|refusal| match refusal {
                DownloadRefusal::Forbidden => Failure::new(
                    ErrorCode::Forbidden,
                    "you do not take part in the conversation of this file",
                ),
                DownloadRefusal::Unavailable => super::service::unavailable(),
                _ => Failure::new(ErrorCode::NotFound, "no such file"),
            })?;
        let ttl_ms = i64::try_from(self.settings.file_link_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires = now.wall_ms.saturating_add(ttl_ms).min(me.expires_ms);
        let url = self.settings.file_link_key.sign(file_id, me.id, expires);
        self.file_metrics.links_issued += 1;
        Ok(json!({ "file_id": file_id, "url": url, "expires": expires }))
    }

    /// Checks a download by signed link: the link, then whether its user may still read the
    /// file. Returns the metadata and the path of the bytes.
    pub fn authorize_link(
        &mut self,
        file_id: &str,
        (user, exp, sig): (&str, &str, &str),
        now: Now,
    ) -> Result<(FileMeta, PathBuf), DownloadRefusal> {
        let key = &self.settings.file_link_key;
        let user = key
            .verify(file_id, user, exp, sig, now.wall_ms)
            .map_err(|refusal| {
                self.file_metrics.download_refused(match refusal {
                    LinkRefusal::Invalid => "link_invalid",
                    LinkRefusal::Expired => "link_expired",
                });
                DownloadRefusal::BadLink
            })?;
        self.readable(user, file_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "qY3k0vN2c8dJ1mZ5xW7aTg";
    const OTHER: &str = "AAAAAAAAAAAAAAAAAAAAAA";
    const NOW: i64 = 1_767_225_600_000;

    /// The query of a signed link, split into its three fields.
    fn fields(link: &str) -> (String, String, String) {
        let query = link.split_once('?').unwrap().1;
        let get = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .unwrap()
                .to_string()
        };
        (get("u"), get("exp"), get("sig"))
    }

    #[test]
    fn a_link_opens_its_file_for_its_user_until_it_expires() {
        let key = LinkKey::from_bytes([7; 32]);
        let link = key.sign(ID, 42, NOW + 1000);
        assert!(link.starts_with(&format!("/files/{ID}?u=42&exp={}&sig=", NOW + 1000)));
        let (u, exp, sig) = fields(&link);
        assert_eq!(key.verify(ID, &u, &exp, &sig, NOW), Ok(42));
        assert_eq!(key.verify(ID, &u, &exp, &sig, NOW + 999), Ok(42));
        assert_eq!(
            key.verify(ID, &u, &exp, &sig, NOW + 1000),
            Err(LinkRefusal::Expired)
        );
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let key = LinkKey::from_bytes([7; 32]);
        let (u, exp, sig) = fields(&key.sign(ID, 42, NOW + 1000));
        let invalid = Err(LinkRefusal::Invalid);
        assert_eq!(key.verify(OTHER, &u, &exp, &sig, NOW), invalid);
        assert_eq!(key.verify(ID, "43", &exp, &sig, NOW), invalid);
        let later = (NOW + 100_000).to_string();
        assert_eq!(key.verify(ID, &u, &later, &sig, NOW), invalid);
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(key.verify(ID, &u, &exp, &flipped, NOW), invalid);
        assert_eq!(key.verify(ID, &u, &exp, &sig[..20], NOW), invalid);
        let other_key = LinkKey::from_bytes([8; 32]);
        assert_eq!(other_key.verify(ID, &u, &exp, &sig, NOW), invalid);
        // Numbers only as `sign` writes them.
        for bad in ["", "+42", " 42", "42 ", "-1", "4_2", "99999999999999999999"] {
            assert_eq!(key.verify(ID, bad, &exp, &sig, NOW), invalid, "{bad:?}");
        }
        assert_eq!(key.verify(ID, &u, &exp, "%%%", NOW), invalid);
    }

    #[test]
    fn the_key_is_not_printed() {
        assert_eq!(format!("{:?}", LinkKey::from_bytes([7; 32])), "LinkKey(..)");
    }
}
