//! Credentials on live connections: a connection is authenticated only while the credential it
//! showed is valid.
//!
//! Every authenticated connection is watched until its credential expires (a session token's
//! stored expiry, a JWT's `exp` plus the clock-skew allowance). When that moment comes, or when
//! `logout` revokes the session token it holds on another connection, the connection is told
//! why with a `session_ended` event and becomes unauthenticated again, as after its own
//! `logout`: its auth timeout starts over, and it may `auth` again.
//!
//! A connection extends itself in band: `auth` with a fresh token of the same user, on the
//! authenticated connection, replaces the credential it holds (and so its expiry); the user's
//! presence does not flicker.
//!
//! The watch list is ordered by expiry; the loop asks for the earliest ([`Service::next_expiry`])
//! to know when to wake, and ends what is due at the end of each iteration
//! ([`Service::end_iteration`]). Time comes in as [`Now`], like everywhere in the service.

use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde_json::json;

use super::accounts::Resolved;
use super::protocol::{self, ErrorCode};
use super::service::{fail, text_frame, ConnId, Effect, Identity, Now, Outcome, Service};
use crate::store::UserId;

/// Why a connection's authentication ended, as its `session_ended` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `logout` on another connection revoked the session token it holds.
    Logout,
    /// The credential it holds expired.
    Expired,
}

impl Ended {
    /// The `reason` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Logout => "logout",
            Ended::Expired => "expired",
        }
    }
}

impl Service {
    /// `auth` on an authenticated connection: a fresh credential of the same user replaces the
    /// one it holds; another user's is refused, and the connection stays as it was.
    pub(super) fn reauth(
        &mut self,
        me: &Identity,
        token: &str,
        since: Option<i64>,
        now: Now,
    ) -> Outcome {
        match self.resolve_token(token, now) {
            Ok(Resolved::Known(identity)) if identity.id == me.id => {
                Outcome::Authenticate(identity, since)
            }
            Ok(_) => Outcome::Reply(fail(
                ErrorCode::Conflict,
                "authenticated as another user; logout first",
            )),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    /// Makes a connection authenticated as `identity`, or, when it already is (as the same
    /// user), swaps the credential it holds. A connection that closed while its login was
    /// committed stays gone: nobody comes online.
    pub(super) fn set_identity(&mut self, conn: ConnId, identity: Identity) {
        let identity = Rc::new(identity);
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        match c.identity.replace(Rc::clone(&identity)) {
            Some(old) => {
                self.expiries.remove(&(old.expires_ms, conn));
            }
            None => {
                self.set_online(conn, &identity);
                self.push(Effect::Authenticated(conn, true));
            }
        }
        self.expiries.insert((identity.expires_ms, conn));
    }

    /// Makes a connection unauthenticated again: an upload in progress is dropped (counted
    /// under `upload_reason`), the user may go offline, and the auth timeout starts over.
    pub(super) fn unauthenticate(&mut self, conn: ConnId, upload_reason: &'static str) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let me = client.identity.take();
        if let Some((up, _)) = client.upload.take() {
            up.abort();
            self.upload_failed(upload_reason);
        }
        if let Some(me) = me {
            self.expiries.remove(&(me.expires_ms, conn));
            self.set_offline(conn, &me);
        }
        self.push(Effect::Authenticated(conn, false));
    }

    /// A connection left: it is no longer watched.
    pub(super) fn forget_expiry(&mut self, conn: ConnId, me: &Identity) {
        self.expiries.remove(&(me.expires_ms, conn));
    }

    /// Tells a connection why its authentication ends, and ends it.
    fn end_session(&mut self, conn: ConnId, why: Ended) {
        debug!("connection {conn}: session ended ({})", why.as_str());
        let event = protocol::event("session_ended", json!({ "reason": why.as_str() }));
        self.push(Effect::Send(conn, text_frame(&event)));
        self.unauthenticate(conn, "session_ended");
    }

    /// `logout` revoked a session token: every other connection of `user` holding it ends.
    pub(super) fn end_sessions_of_token(
        &mut self,
        user: &str,
        token_hash: &[u8; 32],
        except: ConnId,
    ) {
        let holding: Vec<ConnId> = self
            .conns_of(user)
            .into_iter()
            .filter(|&c| c != except)
            .filter(|c| {
                self.clients
                    .get(c)
                    .and_then(|c| c.identity.as_ref())
                    .is_some_and(|me| me.token_hash.as_ref() == Some(token_hash))
            })
            .collect();
        for conn in holding {
            self.end_session(conn, Ended::Logout);
        }
    }

    /// Ends the authentication of every connection whose credential has expired at `now`.
    pub(super) fn end_expired(&mut self, now: Now) {
        while let Some(&(at, conn)) = self.expiries.first() {
            if at > now.wall_ms {
                break;
            }
            self.expiries.pop_first();
            self.end_session(conn, Ended::Expired);
        }
    }

    /// When the loop must wake for the next expiry, on its monotonic clock.
    pub fn next_expiry(&self, now: Now) -> Option<Instant> {
        let &(at, _) = self.expiries.first()?;
        let wait = u64::try_from(at - now.wall_ms).unwrap_or(0);
        Some(now.mono + Duration::from_millis(wait))
    }

    /// Whether the account is a server admin now; a store that cannot say means no.
    pub(super) fn server_admin(&self, user: UserId) -> bool {
        self.store.is_server_admin(user).unwrap_or_else(|e| {
            warn!("server admin rights of user {user} not read: {e}");
            false
        })
    }
}
