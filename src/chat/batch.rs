//! The batch: the writes of an iteration, committed together off the loop, and what follows
//! each one once it is durable.
//!
//! Every request that changes the store joins the batch as an [`Entry`]: the [`Write`] for the
//! store writer and a [`Then`], what to do once the commit has answered: acknowledge and
//! deliver a message, start a session, announce a member... A reply that must wait behind a
//! connection's earlier entries joins too, as [`Then::Answer`], with nothing to write.
//!
//! At the end of an iteration the gathered writes go to the writer if it is free
//! ([`Effect::Commit`]); while it commits them the loop gathers the next batch. When the commit
//! comes back ([`Service::committed`]), the entries complete in order, then the requests their
//! connections held run.

use std::mem;
use std::time::Duration;

use log::warn;
use serde_json::Value;

use super::metrics::COMMIT_BUCKETS_US;
use super::protocol::{ErrorCode, Failure};
use super::service::{unavailable, ConnId, Effect, Now, Reply, Service, GONE};
use crate::store::{self, Committed, Group, Role, StoreError, User, UserId, Write, Written};

/// What follows an entry's commit.
#[derive(Debug)]
pub enum Then {
    /// A reply that waited its turn; nothing was written for it.
    Answer(Reply),
    /// A message: acknowledge (`ok`, or `file.done` for an upload), then deliver.
    Message(super::messaging::Accepted),
    /// `register`: the account exists.
    Registered {
        /// Its name.
        name: String,
    },
    /// `login`: the session is stored; authenticate the connection and hand out the token.
    LoggedIn {
        /// The user.
        user: User,
        /// The token, for the reply.
        token: String,
        /// Its hash, for `logout`.
        token_hash: [u8; 32],
        /// Its expiry, for the reply.
        expires: i64,
        /// Recovery asked for.
        since: Option<i64>,
    },
    /// `auth` with a JWT of a user unknown here: the account exists; authenticate.
    JwtUser {
        /// The name from the token.
        name: String,
        /// Recovery asked for.
        since: Option<i64>,
        /// When the JWT expires.
        expires_ms: i64,
    },
    /// `logout`: the session is revoked.
    LoggedOut {
        /// The user and the session token's hash: the other connections holding it end.
        revoked: Option<(String, [u8; 32])>,
    },
    /// `group.create`.
    GroupCreated {
        /// The group.
        group: Group,
        /// Its owner's id and name.
        owner: (UserId, String),
    },
    /// `group.join`, `group.leave` and `group.kick`: a member came or went.
    Membership(super::groups::Change),
    /// `group.invite`: tell the invited user.
    Invited {
        /// The group.
        group: Group,
        /// Who was invited.
        user: String,
        /// By whom.
        by: String,
    },
    /// `group.role`: announce the new roles.
    RolesChanged {
        /// The group.
        group: Group,
        /// Who has which role now.
        changes: Vec<(String, Role)>,
    },
    /// Retention deleted old messages (see [`super::retention`]).
    Pruned,
    /// `group.delete`: tell the members it is gone.
    GroupDeleted {
        /// The group.
        group: Group,
        /// Its members as it was deleted.
        members: Vec<String>,
        /// By whom.
        by: String,
    },
}

/// One request in a batch.
#[derive(Debug)]
pub struct Entry {
    /// Whose.
    pub conn: ConnId,
    /// Which client of that slot: a slot reused by a later connection is not its.
    pub serial: u64,
    /// The request's id, for the reply.
    pub id: Option<Value>,
    /// Whether it wrote something (and so has a result in the commit).
    pub writes: bool,
    /// What follows.
    pub then: Then,
}

/// The batch gathering in this iteration, and the one being committed.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    writes: Vec<Write>,
    in_flight: Option<Vec<Entry>>,
}

impl Service {
    /// Adds a request to the gathering batch; its connection is owed the reply until the
    /// commit comes back.
    pub(super) fn join_batch(
        &mut self,
        conn: ConnId,
        id: Option<Value>,
        write: Option<Write>,
        then: Then,
    ) {
        let barrier = !matches!(then, Then::Answer(_) | Then::Message(_));
        let mut serial = 0;
        if let Some(client) = self.clients.get_mut(&conn) {
            client.owed.entries += 1;
            client.owed.barriers += u32::from(barrier);
            serial = client.serial;
        }
        let writes = write.is_some();
        self.batch.writes.extend(write);
        self.batch.entries.push(Entry {
            conn,
            serial,
            id,
            writes,
            then,
        });
    }

    /// Hands the gathered writes to the store writer, unless a commit is out already. A batch
    /// with nothing to write (replies that waited their turn) completes at once.
    pub(super) fn submit_batch(&mut self, now: Now) {
        let batch = &mut self.batch;
        if batch.in_flight.is_some() || batch.entries.is_empty() {
            return;
        }
        batch.in_flight = Some(mem::take(&mut batch.entries));
        if batch.writes.is_empty() {
            let done = Committed {
                results: Ok(Vec::new()),
                took: Duration::ZERO,
            };
            return self.committed(done, now);
        }
        let writes = mem::take(&mut batch.writes);
        self.push(Effect::Commit(store::Batch { writes }));
    }

    /// Whether writes are gathering or being committed.
    pub fn has_writes(&self) -> bool {
        self.batch.in_flight.is_some() || !self.batch.entries.is_empty()
    }

    /// The writer is done with the batch: its entries complete in order (a failed commit
    /// answers each with `unavailable`), then the requests their connections held run. What
    /// gathered meanwhile goes out at the end of the iteration, with what this iteration reads.
    pub fn committed(&mut self, done: Committed, now: Now) {
        let Some(entries) = self.batch.in_flight.take() else {
            warn!("a commit came back with no batch out");
            return;
        };
        let rows = entries.iter().filter(|e| e.writes).count();
        if rows > 0 {
            self.record_commit(rows, done.took, done.results.is_ok());
        }
        let mut results = match done.results {
            Ok(results) => Ok(results.into_iter()),
            Err(e) => Err(e),
        };
        let mut conns: Vec<ConnId> = Vec::new();
        for entry in entries {
            let result = match (&mut results, entry.writes) {
                (_, false) => Ok(Written::Done(0)),
                (Ok(r), true) => r
                    .next()
                    .ok_or_else(|| StoreError::Unavailable("a write without a result".into())),
                (Err(e), true) => Err(e.clone()),
            };
            let mut entry = entry;
            if self.settle_owed(&entry) {
                conns.push(entry.conn);
            } else {
                // The connection is gone: what follows for others still happens, its replies
                // go nowhere.
                entry.conn = GONE;
            }
            self.complete(entry, result);
        }
        if !self.membership_news.is_empty() {
            self.flush_membership();
        }
        conns.sort_unstable();
        conns.dedup();
        for conn in conns {
            self.run_held(conn, now);
        }
    }

    /// Takes an entry off what its connection is owed; `false` if the connection is gone.
    fn settle_owed(&mut self, entry: &Entry) -> bool {
        let Some(client) = self
            .clients
            .get_mut(&entry.conn)
            .filter(|c| c.serial == entry.serial)
        else {
            return false;
        };
        client.owed.entries -= 1;
        if !matches!(entry.then, Then::Answer(_) | Then::Message(_)) {
            client.owed.barriers -= 1;
        }
        true
    }

    /// What follows one committed entry.
    fn complete(&mut self, entry: Entry, result: Result<Written, StoreError>) {
        let Entry { conn, id, then, .. } = entry;
        let written = result.map_err(Failure::from);
        let reply = match then {
            Then::Answer(reply) => reply,
            Then::Message(accepted) => return self.acknowledged(conn, id, accepted, written),
            Then::Registered { name } => self.registered(name, written),
            Then::LoggedIn {
                user,
                token,
                token_hash,
                expires,
                since,
            } => {
                return self.logged_in(conn, id, user, (token, token_hash, expires), since, written)
            }
            Then::JwtUser {
                name,
                since,
                expires_ms,
            } => return self.jwt_user_created(conn, id, (name, expires_ms), since, written),
            Then::LoggedOut { revoked } => self.logged_out(conn, revoked, written),
            Then::GroupCreated { group, owner } => self.group_created(group, owner, written),
            Then::Membership(change) => self.membership_changed(change, written),
            Then::Invited { group, user, by } => self.invited(group, user, by, written),
            Then::RolesChanged { group, changes } => self.roles_changed(group, changes, written),
            Then::Pruned => return self.pruned(written),
            Then::GroupDeleted { group, members, by } => {
                self.group_deleted(group, members, by, written)
            }
        };
        self.reply(conn, &id, reply);
    }

    fn record_commit(&mut self, rows: usize, took: Duration, ok: bool) {
        let m = &mut self.metrics;
        m.commits += 1;
        if !ok {
            m.commit_failures += 1;
        }
        m.batched += rows as u64;
        m.batch_max = m.batch_max.max(rows as u64);
        let us = took.as_micros() as u64;
        m.commit_latency_sum_us += us;
        let bucket = COMMIT_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(COMMIT_BUCKETS_US.len());
        m.commit_latency[bucket] += 1;
    }
}

/// The reply to a write that has no fields of its own: `ok {}`, or why it failed. A write that
/// met a deleted group says so; a taken name, `conflict`.
pub(super) fn plain_result(written: Result<Written, Failure>, conflict: &str) -> Reply {
    match written? {
        Written::Done(_) | Written::Duplicate { .. } => Ok(serde_json::json!({})),
        Written::Conflict => Err(Failure::new(ErrorCode::Conflict, conflict)),
        Written::Gone => Err(Failure::new(ErrorCode::NotFound, "the group was deleted")),
        Written::Changed => Err(Failure::new(
            ErrorCode::Conflict,
            "the group changed meanwhile; nothing was done, try again",
        )),
        Written::TooManyGroups { .. } => Err(Failure::new(
            ErrorCode::Forbidden,
            "over the limit of groups per user",
        )),
        Written::Failed(e) => {
            warn!("store: {e}");
            Err(unavailable())
        }
    }
}
