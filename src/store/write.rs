//! Every change to the store, as values: a [`Batch`] of [`Write`]s applied in one transaction.
//!
//! The loop never writes to the database itself. It gathers the writes of an iteration into a
//! batch and hands it to the store writer thread ([`super::writer`]), which applies it here and
//! reports one [`Written`] per write. A write that breaks a rule of its own (a name taken, a
//! group deleted meanwhile, a `client_id` already used) fails alone: a failed SQLite statement
//! is undone by itself and the transaction goes on. Anything else (disk full, I/O error) fails
//! the whole batch, and nothing of it is stored.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::PathBuf;

use rusqlite::{ffi, params, Connection, OptionalExtension, Transaction};

pub use super::group_write::GroupLimits;
use super::group_write::{
    create_group, delete_group, invite, join, remove_member, set_role, transfer_ownership, within,
};
use super::{pair, GroupId, NewMessage, Result, Role, StoreError, UserId};

/// A file whose bytes are all written but not yet durable: the writer syncs it and moves it
/// into place before the message that carries it is committed.
#[derive(Debug)]
pub struct PartFile {
    /// The open partial file.
    pub file: File,
    /// Where it is now (`ID.part`).
    pub part: PathBuf,
    /// Where it goes once synced (`ID`).
    pub done: PathBuf,
}

impl PartFile {
    /// Syncs the bytes, renames the file into place and syncs the directory, so the rename is
    /// durable too. On failure the partial file is removed.
    pub fn persist(self) -> std::io::Result<()> {
        let result = self
            .file
            .sync_all()
            .and_then(|()| fs::rename(&self.part, &self.done));
        if let Err(e) = result {
            let _ = fs::remove_file(&self.part);
            return Err(e);
        }
        if let Some(dir) = self.done.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

/// One change to the store.
#[derive(Debug)]
pub enum Write {
    /// Store a message (with its file, synced first when `part` is given). Fails alone with
    /// [`Written::Duplicate`] when the sender used its `client_id` before, and with
    /// [`Written::Gone`] when its group no longer exists.
    Message {
        /// The row.
        message: NewMessage,
        /// The uploaded bytes to make durable first.
        part: Option<PartFile>,
    },
    /// Create an account: [`Written::Done`] with its id, or [`Written::Conflict`].
    CreateUser {
        /// Unique name.
        name: String,
        /// Argon2id PHC string; `None` for accounts created by a JWT.
        password: Option<String>,
        /// Server time, ms since the epoch.
        created_ms: i64,
    },
    /// Store a session by the hash of its token.
    CreateSession {
        /// SHA-256 of the token.
        token_hash: [u8; 32],
        /// Whose.
        user: UserId,
        /// Expiry, ms since the epoch.
        expires_ms: i64,
    },
    /// Revoke a session.
    DeleteSession {
        /// SHA-256 of the token.
        token_hash: [u8; 32],
    },
    /// Create a group under an id the caller chose, with `owner` as its owner; or
    /// [`Written::Conflict`] if the name is taken, [`Written::TooManyGroups`] if the owner
    /// would be over a limit.
    CreateGroup {
        /// The new group's id (never reused while the server runs).
        id: GroupId,
        /// Unique name.
        name: String,
        /// Invitation only.
        private: bool,
        /// Its owner.
        owner: UserId,
        /// Server time, ms since the epoch.
        created_ms: i64,
        /// The owner's limits.
        limits: GroupLimits,
    },
    /// Add a member, clearing any invitation: [`Written::Conflict`] if already one,
    /// [`Written::Gone`] if the group was deleted meanwhile, [`Written::TooManyGroups`] if the
    /// user is in as many groups as `limits` allows.
    Join {
        /// The group.
        group: GroupId,
        /// The new member.
        user: UserId,
        /// The new member's limits.
        limits: GroupLimits,
    },
    /// Change a member's role from `from` to `to`; [`Written::Changed`] if the role is no
    /// longer `from` (changed, or the member gone, since the request was checked).
    SetRole {
        /// The group.
        group: GroupId,
        /// The member.
        user: UserId,
        /// The role the request was checked against.
        from: Role,
        /// The new role.
        to: Role,
    },
    /// Make member `to` the owner and the owner `from` an admin; [`Written::Changed`] if `from`
    /// is no longer the owner or `to` no longer a member, [`Written::TooManyGroups`] if `to`
    /// owns as many groups as `limits` allows.
    TransferOwnership {
        /// The group.
        group: GroupId,
        /// The owner.
        from: UserId,
        /// The new owner.
        to: UserId,
        /// The new owner's limits.
        limits: GroupLimits,
    },
    /// Remove a member whose role is still `role`; with `ban`, also bar them from joining
    /// again. [`Written::Changed`] if the member left or changed role meanwhile.
    RemoveMember {
        /// The group.
        group: GroupId,
        /// The member.
        user: UserId,
        /// The role the request was checked against.
        role: Role,
        /// Also ban.
        ban: bool,
    },
    /// Invite a user, clearing a ban.
    Invite {
        /// The group.
        group: GroupId,
        /// Who.
        user: UserId,
    },
    /// Delete a group with its memberships, bans, invitations, history and files;
    /// [`Written::Gone`] if it is gone already.
    DeleteGroup {
        /// The group.
        group: GroupId,
    },
    /// Retention: delete the messages sent before `messages_before` and the file posts sent
    /// before `files_before` (ms since the epoch), at most `limit` of each, with their files;
    /// [`Written::Done`] with how many messages went.
    Prune {
        /// Messages older than this go.
        messages_before: Option<i64>,
        /// Messages carrying a file older than this go.
        files_before: Option<i64>,
        /// Most of each deleted at once.
        limit: usize,
    },
}

/// What came of one [`Write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Done; for `CreateUser` the new user's id, otherwise 0.
    Done(i64),
    /// The sender's message with the same `client_id`, stored earlier: its msg_id and ts.
    Duplicate {
        /// The first copy's msg_id.
        msg_id: i64,
        /// The first copy's ts.
        ts: i64,
    },
    /// A uniqueness rule was broken (a name taken).
    Conflict,
    /// What it refers to no longer exists (a group deleted meanwhile).
    Gone,
    /// What the request was checked against changed before the write (a member left or changed
    /// role, the sender of a group message is no longer a member): nothing was written.
    Changed,
    /// The user would be in (`owned: false`) or own (`owned: true`) more groups than its
    /// limits allow: nothing was written.
    TooManyGroups {
        /// The limit on groups owned, rather than on groups joined.
        owned: bool,
    },
    /// This write alone could not be stored (its file could not be synced).
    Failed(String),
}

/// Writes committed together, in order.
#[derive(Debug, Default)]
pub struct Batch {
    /// The writes, in the order they were accepted.
    pub writes: Vec<Write>,
}

impl Batch {
    /// Messages in the batch.
    pub fn messages(&self) -> usize {
        self.writes
            .iter()
            .filter(|w| matches!(w, Write::Message { .. }))
            .count()
    }
}

/// Ids of files whose bytes go once the batch is committed: those of deleted groups, and those
/// whose message could not be stored.
pub type Orphans = Vec<String>;

/// The ids of the files the batch's messages carry (removed if the batch fails).
pub fn files_of(batch: &Batch) -> Orphans {
    batch
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Message { message, .. } => message.file.as_ref().map(|f| f.id.clone()),
            _ => None,
        })
        .collect()
}

/// Applies a batch in one transaction. Files are synced before it begins; the ids of files left
/// without a message (a deleted group's) are returned for the caller to remove after the
/// commit.
pub fn apply(
    db: &mut Connection,
    pairs: &mut HashSet<(UserId, UserId)>,
    batch: Batch,
) -> Result<(Vec<Written>, Orphans)> {
    let mut results = Vec::with_capacity(batch.writes.len());
    let mut writes = Vec::with_capacity(batch.writes.len());
    // Uploaded bytes are durable before the row that points at them.
    for write in batch.writes {
        match write {
            Write::Message {
                message,
                part: Some(part),
            } => match part.persist() {
                Ok(()) => writes.push(Some(Write::Message {
                    message,
                    part: None,
                })),
                Err(e) => {
                    results.push(Some(Written::Failed(e.to_string())));
                    writes.push(None);
                    continue;
                }
            },
            other => writes.push(Some(other)),
        }
        results.push(None);
    }
    let mut orphans = Vec::new();
    let tx = db.transaction()?;
    for (write, result) in writes.into_iter().zip(results.iter_mut()) {
        if let Some(write) = write {
            *result = Some(one(&tx, write, pairs, &mut orphans)?);
        }
    }
    tx.commit()?;
    Ok((results.into_iter().flatten().collect(), orphans))
}

/// Applies one write inside the batch's transaction. A statement that breaks a constraint is
/// undone by SQLite alone (the transaction stays), and answers for this write only.
fn one(
    tx: &Transaction,
    write: Write,
    pairs: &mut HashSet<(UserId, UserId)>,
    orphans: &mut Orphans,
) -> Result<Written> {
    let outcome = match write {
        Write::Message { message, .. } => {
            let written = insert_message(tx, &message, pairs)?;
            // A file whose message was not stored has nothing to own it.
            if let (Written::Gone | Written::Changed, Some(f)) = (&written, &message.file) {
                orphans.push(f.id.clone());
            }
            return Ok(written);
        }
        Write::CreateUser {
            name,
            password,
            created_ms,
        } => tx
            .prepare_cached("INSERT INTO users (name, password, created_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![name, password, created_ms])
            .map(|_| Written::Done(tx.last_insert_rowid())),
        Write::CreateSession {
            token_hash,
            user,
            expires_ms,
        } => tx
            .prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, expires_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&token_hash[..], user, expires_ms])
            .map(|_| Written::Done(0)),
        Write::DeleteSession { token_hash } => tx
            .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute(params![&token_hash[..]])
            .map(|_| Written::Done(0)),
        Write::CreateGroup {
            id,
            name,
            private,
            owner,
            created_ms,
            limits,
        } => in_savepoint(tx, |tx| {
            create_group(tx, id, &name, private, owner, created_ms)?;
            Ok(within(tx, owner, limits)?.unwrap_or(Written::Done(0)))
        }),
        Write::Join {
            group,
            user,
            limits,
        } => in_savepoint(tx, |tx| {
            join(tx, group, user)?;
            Ok(within(tx, user, limits)?.unwrap_or(Written::Done(0)))
        }),
        Write::SetRole {
            group,
            user,
            from,
            to,
        } => in_savepoint(tx, |tx| set_role(tx, group, user, from, to)),
        Write::TransferOwnership {
            group,
            from,
            to,
            limits,
        } => in_savepoint(tx, |tx| match transfer_ownership(tx, group, from, to)? {
            Written::Done(_) => Ok(within(tx, to, limits)?.unwrap_or(Written::Done(0))),
            other => Ok(other),
        }),
        Write::RemoveMember {
            group,
            user,
            role,
            ban,
        } => in_savepoint(tx, |tx| remove_member(tx, group, user, role, ban)),
        Write::Invite { group, user } => in_savepoint(tx, |tx| invite(tx, group, user)),
        Write::DeleteGroup { group } => delete_group(tx, group, orphans),
        Write::Prune {
            messages_before,
            files_before,
            limit,
        } => super::prune::prune(tx, messages_before, files_before, limit, orphans),
    };
    settle(outcome)
}

/// Runs several statements as one step that is undone as a whole when one of them fails, or
/// when it finds that what it was to change changed meanwhile.
fn in_savepoint(
    tx: &Transaction,
    body: impl FnOnce(&Transaction) -> rusqlite::Result<Written>,
) -> rusqlite::Result<Written> {
    tx.execute_batch("SAVEPOINT one")?;
    match body(tx) {
        Ok(written @ Written::Done(_)) => {
            tx.execute_batch("RELEASE one")?;
            Ok(written)
        }
        other => {
            tx.execute_batch("ROLLBACK TO one; RELEASE one")?;
            other
        }
    }
}

/// A constraint broken by this write answers for it alone; anything else fails the batch.
fn settle(outcome: rusqlite::Result<Written>) -> Result<Written> {
    match outcome {
        Ok(w) => Ok(w),
        Err(e) => match constraint(&e) {
            Some(Constraint::ForeignKey) => Ok(Written::Gone),
            Some(Constraint::Unique) => Ok(Written::Conflict),
            None => Err(StoreError::from(e)),
        },
    }
}

enum Constraint {
    Unique,
    ForeignKey,
}

fn constraint(e: &rusqlite::Error) -> Option<Constraint> {
    match e.sqlite_error()?.extended_code {
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
            Some(Constraint::Unique)
        }
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Constraint::ForeignKey),
        _ => None,
    }
}

/// Inserts a message and its file. The unique index on `(sender, client_id)` is the dedupe:
/// a retry breaks it, and then the first copy is looked up, only in that case.
fn insert_message(
    tx: &Transaction,
    m: &NewMessage,
    pairs: &mut HashSet<(UserId, UserId)>,
) -> Result<Written> {
    let (group, recipient, pair) = match m.to {
        super::Target::Group(g) => (Some(g), None, None),
        super::Target::Direct(u) => (None, Some(u), Some(pair(m.sender, u))),
    };
    let inserted = tx
        .prepare_cached(
            "INSERT INTO messages (id, sender, group_id, recipient, pair, text, ts, client_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            m.id,
            m.sender,
            group,
            recipient,
            pair,
            m.text,
            m.ts,
            m.client_id
        ]);
    match inserted.map_err(|e| (constraint(&e), e)) {
        Ok(_) => {}
        Err((Some(Constraint::Unique), e)) => {
            let first = match &m.client_id {
                Some(cid) => tx
                    .prepare_cached(
                        "SELECT id, ts FROM messages WHERE sender = ?1 AND client_id = ?2",
                    )?
                    .query_row(params![m.sender, cid], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?,
                None => None,
            };
            return match first {
                Some((msg_id, ts)) => Ok(Written::Duplicate { msg_id, ts }),
                None => Err(StoreError::from(e)),
            };
        }
        Err((Some(Constraint::ForeignKey), _)) => return Ok(Written::Gone),
        Err((None, e)) => return Err(e.into()),
    }
    if let Some(g) = group {
        // The sender was a member when the send was checked; a kick or a leave committed since
        // takes the message back (a deletion does too, through the foreign key above).
        let member = tx
            .prepare_cached("SELECT 1 FROM members WHERE group_id = ?1 AND user_id = ?2")?
            .exists(params![g, m.sender])?;
        if !member {
            tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?
                .execute(params![m.id])?;
            return Ok(Written::Changed);
        }
    }
    if let super::Target::Direct(peer) = m.to {
        list_pair(tx, pairs, m.sender, peer)?;
    }
    if let Some(f) = &m.file {
        tx.prepare_cached(
            "INSERT INTO files (id, msg_id, name, size, mime, sha256, owner)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            f.id,
            m.id,
            f.name,
            f.size as i64,
            f.mime,
            f.sha256,
            m.sender
        ])?;
    }
    Ok(Written::Done(0))
}

/// Direct conversations the writer remembers having listed, before it starts over (a pair
/// listed twice costs one `INSERT OR IGNORE` that changes nothing).
const MAX_PAIRS_REMEMBERED: usize = 1 << 20;

/// Lists a direct conversation for both users (recovery finds it there), once: the writer
/// remembers the pairs it has listed.
fn list_pair(
    tx: &Transaction,
    pairs: &mut HashSet<(UserId, UserId)>,
    a: UserId,
    b: UserId,
) -> Result<()> {
    if pairs.len() >= MAX_PAIRS_REMEMBERED {
        pairs.clear();
    }
    if !pairs.insert((a.min(b), a.max(b))) {
        return Ok(());
    }
    let mut stmt =
        tx.prepare_cached("INSERT OR IGNORE INTO direct_pairs (user_id, peer_id) VALUES (?1, ?2)")?;
    stmt.execute(params![a, b])?;
    stmt.execute(params![b, a])?;
    Ok(())
}
