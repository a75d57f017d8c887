//! Accounts: `register`, `login`, `auth`, `logout`, `whoami`, and the password worker's results.
//!
//! A password is never checked on the loop: `register` and `login` ask the worker
//! ([`Outcome::AfterPassword`]) and finish in [`Service::password_done`]. What they then store
//! (the account, the session) joins the batch, and the connection is authenticated only once
//! the commit is back. What happens to an authenticated connection afterwards (expiry,
//! revocation, a fresh token) is in [`super::sessions`].

use log::{debug, info};
use serde_json::{json, Value};

use super::auth;
use super::batch::{plain_result, Then};
use super::hasher::{Done, Outcome as Hashed, Work};
use super::names::{valid_name, valid_password, MAX_PASSWORD};
use super::protocol::{ErrorCode, Failure};
use super::ratelimit::Bucket;
use super::service::{fail, ConnId, Effect, Identity, Now, Outcome, Reply, Service, Waiting};
use crate::store::{User, Write, Written};

/// The refusal for a wrong password, an unknown user or a bad token alike.
pub(super) fn refused() -> Failure {
    Failure::new(ErrorCode::Unauthenticated, "unknown user or wrong password")
}

impl Service {
    pub(super) fn register(
        &mut self,
        conn: ConnId,
        user: String,
        password: String,
        now: Now,
    ) -> Outcome {
        let checked = self.check_registration(conn, &user, &password, now);
        match checked {
            Ok(()) => {
                Outcome::AfterPassword(Work::Hash(password), Waiting::Register { name: user })
            }
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    fn check_registration(
        &mut self,
        conn: ConnId,
        user: &str,
        password: &str,
        now: Now,
    ) -> Result<(), Failure> {
        if !self.settings.registration_open {
            return fail(
                ErrorCode::Forbidden,
                "registration is closed on this server",
            );
        }
        if !valid_name(user) {
            return fail(
                ErrorCode::BadRequest,
                "user names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        if !valid_password(password) {
            return fail(ErrorCode::BadRequest, "passwords are 8-1024 bytes");
        }
        self.check_login_rate(conn, now)?;
        if self.store.user(user)?.is_some() {
            return fail(ErrorCode::Conflict, "user name taken");
        }
        Ok(())
    }

    pub(super) fn login(
        &mut self,
        conn: ConnId,
        user: String,
        password: String,
        since: Option<i64>,
        now: Now,
    ) -> Outcome {
        if !valid_name(&user) || password.len() > MAX_PASSWORD {
            return Outcome::Reply(Err(refused()));
        }
        if let Err(f) = self
            .check_login_rate(conn, now)
            .and_then(|()| self.check_account_login(conn, &user, now))
        {
            return Outcome::Reply(Err(f));
        }
        let found = match self.store.user(&user) {
            Ok(found) => found,
            Err(e) => return Outcome::Reply(Err(e.into())),
        };
        let stored = found.as_ref().and_then(|u| u.password.clone());
        Outcome::AfterPassword(
            Work::Verify(password, stored),
            Waiting::Login {
                name: user,
                user: found,
                since,
            },
        )
    }

    /// `register`/`login` attempts per remote address.
    fn check_login_rate(&mut self, conn: ConnId, now: Now) -> Result<(), Failure> {
        let Some(ip) = self.clients.get(&conn).map(|c| c.ip) else {
            return fail(ErrorCode::Internal, "no such connection");
        };
        let (rate, burst) = (self.settings.login_rate, self.settings.login_burst);
        if self.login_buckets.len() > 100_000 {
            // Forget addresses whose buckets have refilled, so the map stays bounded.
            self.login_buckets
                .retain(|_, b| !b.is_full(rate, burst, now.mono));
        }
        let allowed = self
            .login_buckets
            .entry(ip)
            .or_insert_with(|| Bucket::new(burst, now.mono))
            .take(rate, burst, now.mono);
        if !allowed {
            self.metrics.logins_refused_address += 1;
            return fail(
                ErrorCode::RateLimited,
                "too many attempts from this address, wait",
            );
        }
        Ok(())
    }

    /// Sends a password job to the worker; the connection's later requests wait for it.
    pub(super) fn submit_password(
        &mut self,
        conn: ConnId,
        id: Option<Value>,
        work: Work,
        waiting: Waiting,
    ) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let Some(c) = self.clients.get_mut(&conn) {
            c.owed.password = Some(ticket);
        }
        self.password_jobs.insert(ticket, (conn, id, waiting));
        self.push(Effect::Hash(ticket, work));
    }

    /// The password worker has a result: the request that waited for it goes on.
    pub fn password_done(&mut self, done: Done, now: Now) {
        let Some((conn, id, waiting)) = self.password_jobs.remove(&done.ticket) else {
            return;
        };
        // The connection may have closed (and its slot been reused) meanwhile.
        match self.clients.get_mut(&conn) {
            Some(c) if c.owed.password == Some(done.ticket) => c.owed.password = None,
            _ => return,
        }
        let outcome = match (waiting, done.outcome) {
            (Waiting::Register { name }, Hashed::Hashed(hash)) => Outcome::AfterCommit(
                Write::CreateUser {
                    name: name.clone(),
                    password: Some(hash),
                    created_ms: now.wall_ms,
                },
                Then::Registered { name },
            ),
            (Waiting::Login { name, user, since }, hashed @ Hashed::Verified(_)) => {
                self.login_checked(conn, &name, user, since, hashed, now)
            }
            _ => Outcome::Reply(fail(ErrorCode::Internal, "password hashing failed")),
        };
        self.settle(conn, id, outcome);
        // Requests that waited behind this one, in order, until one waits again.
        self.run_held(conn, now);
    }

    /// A session for a user whose password checked out: stored, then handed out.
    pub(super) fn new_session(&mut self, user: User, since: Option<i64>, now: Now) -> Outcome {
        let Ok((token, token_hash)) = auth::new_session_token() else {
            return Outcome::Reply(fail(ErrorCode::Internal, "no randomness for a token"));
        };
        let expires = now.wall_ms + self.settings.session_ttl.as_millis() as i64;
        Outcome::AfterCommit(
            Write::CreateSession {
                token_hash,
                user: user.id,
                expires_ms: expires,
            },
            Then::LoggedIn {
                user,
                token,
                token_hash,
                expires,
                since,
            },
        )
    }

    pub(super) fn registered(&mut self, name: String, written: Result<Written, Failure>) -> Reply {
        plain_result(written, "user name taken")?;
        info!("registered user {name}");
        Ok(json!({ "user": name }))
    }

    pub(super) fn logged_in(
        &mut self,
        conn: ConnId,
        id: Option<Value>,
        user: User,
        (token, token_hash, expires): (String, [u8; 32], i64),
        since: Option<i64>,
        written: Result<Written, Failure>,
    ) {
        if let Err(f) = plain_result(written, "session exists") {
            return self.reply(conn, &id, Err(f));
        }
        let (uid, name) = (user.id, user.name);
        let admin = self.server_admin(uid);
        self.set_identity(
            conn,
            Identity {
                id: uid,
                name: name.clone(),
                token_hash: Some(token_hash),
                expires_ms: expires,
                admin,
            },
        );
        let reply = Ok(json!({ "user": name, "token": token, "expires": expires }));
        self.reply(conn, &id, reply);
        if let Some(since) = since {
            self.start_replay(conn, uid, since);
        }
    }

    /// `auth`: a session token is looked up; a JWT is verified, and its user created on first
    /// use (after the commit).
    pub(super) fn auth(&mut self, token: &str, since: Option<i64>, now: Now) -> Outcome {
        let identity = match self.resolve_token(token, now) {
            Ok(Resolved::Known(identity)) => match self.check_user_cap(&identity.name) {
                Ok(()) => identity,
                Err(f) => return Outcome::Reply(Err(f)),
            },
            Ok(Resolved::NewJwtUser(name, expires_ms)) => {
                return Outcome::AfterCommit(
                    Write::CreateUser {
                        name: name.clone(),
                        password: None,
                        created_ms: now.wall_ms,
                    },
                    Then::JwtUser {
                        name,
                        since,
                        expires_ms,
                    },
                )
            }
            Err(f) => return Outcome::Reply(Err(f)),
        };
        Outcome::Authenticate(identity, since)
    }

    pub(super) fn jwt_user_created(
        &mut self,
        conn: ConnId,
        id: Option<Value>,
        (name, expires_ms): (String, i64),
        since: Option<i64>,
        written: Result<Written, Failure>,
    ) {
        // Someone else's first use of the same token may have created it in between.
        let user = match written {
            Ok(Written::Done(uid)) => Ok(Some(User {
                id: uid,
                name,
                password: None,
            })),
            Ok(Written::Conflict) => self.store.user(&name).map_err(Failure::from),
            Ok(_) => Ok(None),
            Err(f) => Err(f),
        };
        match user {
            Ok(Some(user)) => {
                info!("created user {} from a JWT", user.name);
                self.remember_user(&user);
                let uid = user.id;
                let admin = self.server_admin(uid);
                self.set_identity(
                    conn,
                    Identity {
                        id: uid,
                        name: user.name.clone(),
                        token_hash: None,
                        expires_ms,
                        admin,
                    },
                );
                self.reply(conn, &id, Ok(json!({ "user": user.name })));
                if let Some(since) = since {
                    self.start_replay(conn, uid, since);
                }
            }
            Ok(None) => self.reply(conn, &id, Err(refused())),
            Err(f) => self.reply(conn, &id, Err(f)),
        }
    }

    /// The user a session token or JWT stands for.
    pub(super) fn resolve_token(&mut self, token: &str, now: Now) -> Result<Resolved, Failure> {
        let refused = || Failure::new(ErrorCode::Unauthenticated, "invalid or expired token");
        match (&self.settings.jwt_secret, auth::looks_like_jwt(token)) {
            (Some(secret), true) => {
                let rules = &self.settings.jwt_rules;
                let jwt = auth::verify_jwt(token, secret, rules, now.wall_ms).map_err(|e| {
                    debug!("JWT refused: {e:?}");
                    refused()
                })?;
                Ok(match self.store.user(&jwt.subject)? {
                    Some(user) => Resolved::Known(Identity {
                        id: user.id,
                        admin: self.store.is_server_admin(user.id)?,
                        name: user.name,
                        token_hash: None,
                        expires_ms: jwt.expires_ms,
                    }),
                    // A JWT user unknown here is created on first use, without a password.
                    None => Resolved::NewJwtUser(jwt.subject, jwt.expires_ms),
                })
            }
            _ => {
                let hash = auth::token_hash(token);
                let (user, expires_ms) = self
                    .store
                    .session(&hash, now.wall_ms)?
                    .ok_or_else(refused)?;
                Ok(Resolved::Known(Identity {
                    id: user.id,
                    admin: self.store.is_server_admin(user.id)?,
                    name: user.name,
                    token_hash: Some(hash),
                    expires_ms,
                }))
            }
        }
    }

    /// `logout`: the session is revoked first; then the connection is unauthenticated, and so
    /// is every other connection that holds the same session token.
    pub(super) fn logout(&mut self, conn: ConnId, me: &Identity) -> Outcome {
        match me.token_hash {
            Some(token_hash) => Outcome::AfterCommit(
                Write::DeleteSession { token_hash },
                Then::LoggedOut {
                    revoked: Some((me.name.clone(), token_hash)),
                },
            ),
            // A JWT has nothing stored to revoke: it ends with its `exp`.
            None => Outcome::Reply(self.logged_out(conn, None, Ok(Written::Done(0)))),
        }
    }

    pub(super) fn logged_out(
        &mut self,
        conn: ConnId,
        revoked: Option<(String, [u8; 32])>,
        written: Result<Written, Failure>,
    ) -> Reply {
        plain_result(written, "")?;
        if let Some((user, token_hash)) = revoked {
            self.end_sessions_of_token(&user, &token_hash, conn);
        }
        // An upload started as this user ends with the session.
        self.unauthenticate(conn, "cancelled");
        Ok(json!({}))
    }

    pub(super) fn whoami(&mut self, me: &Identity) -> Reply {
        Ok(json!({ "user": me.name, "groups": self.store.groups_of(me.id)? }))
    }
}

/// What a token stands for.
pub(super) enum Resolved {
    /// A user known here.
    Known(Identity),
    /// The name in a valid JWT of a user unknown here, and when the JWT expires.
    NewJwtUser(String, i64),
}
