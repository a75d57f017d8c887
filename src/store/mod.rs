//! The embedded store: users, sessions, groups and memberships in one SQLite file.
//!
//! The rest of the server sees only this narrow API of records and errors, so a server-grade
//! backend can replace SQLite without touching the protocol code. Every query binds its
//! parameters; statements are cached by rusqlite.
//!
//! The store runs on the loop's thread. Its reads are index lookups; its writes are small
//! transactions in WAL mode.

mod schema;

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

/// Row id of a user.
pub type UserId = i64;
/// Row id of a group.
pub type GroupId = i64;

/// What went wrong in the store, typed by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A uniqueness rule was broken (name taken): the client gets `conflict`.
    Conflict,
    /// The database could not do it (disk full, locked, corrupt): the client gets `unavailable`.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => write!(f, "conflict"),
            StoreError::Unavailable(e) => write!(f, "storage unavailable: {e}"),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => StoreError::Conflict,
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// Shorthand for store results.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Row id.
    pub id: UserId,
    /// Unique name.
    pub name: String,
    /// Argon2id PHC string; `None` for accounts created by a JWT, which cannot log in with a
    /// password.
    pub password: Option<String>,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// May post and read.
    Member,
    /// May also invite and kick members.
    Admin,
    /// May do anything to the group; exactly one per group.
    Owner,
}

impl Role {
    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a wire or database name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// A group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Row id.
    pub id: GroupId,
    /// Unique name.
    pub name: String,
    /// Private groups are joined by invitation only and listed to members only.
    pub private: bool,
}

/// A group as `group.list` shows it to one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group.
    pub group: Group,
    /// Number of members.
    pub members: u64,
    /// The asking user's role, if a member.
    pub role: Option<Role>,
}

/// A message accepted for storage: everything but the names, which the store resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The server-wide msg_id, assigned by the caller in increasing order.
    pub id: i64,
    /// Who sent it.
    pub sender: UserId,
    /// Where it went.
    pub to: Target,
    /// The text.
    pub text: String,
    /// Server time, ms since the epoch.
    pub ts: i64,
    /// The sender's deduplication key.
    pub client_id: Option<String>,
    /// A file posted with the message.
    pub file: Option<FileMeta>,
}

/// A stored file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The file's id (its name on disk).
    pub id: String,
    /// The name the uploader gave (metadata only, never a path).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type the uploader gave.
    pub mime: Option<String>,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// A file and the conversation it was posted to, for access checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The metadata.
    pub meta: FileMeta,
    /// Who posted it.
    pub sender: UserId,
    /// Where it was posted.
    pub to: Target,
}

/// A conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A group.
    Group(GroupId),
    /// Direct messages with a user.
    Direct(UserId),
}

/// A stored message as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// msg_id.
    pub id: i64,
    /// Sender's name.
    pub from: String,
    /// `#group` or `@user`, as addressed by the sender.
    pub to: String,
    /// The text.
    pub text: String,
    /// Server time, ms since the epoch.
    pub ts: i64,
    /// The sender's deduplication key, if it gave one.
    pub client_id: Option<String>,
    /// The file posted with the message, if any.
    pub file: Option<FileMeta>,
}

/// The name of the direct conversation between two users, whoever speaks.
fn pair(a: UserId, b: UserId) -> String {
    format!("{}:{}", a.min(b), a.max(b))
}

const MESSAGE_COLUMNS: &str = "SELECT m.id, s.name, g.name, r.name, m.text, m.ts, m.client_id,
            f.id, f.name, f.size, f.mime, f.sha256
     FROM messages m JOIN users s ON s.id = m.sender
     LEFT JOIN groups g ON g.id = m.group_id LEFT JOIN users r ON r.id = m.recipient
     LEFT JOIN files f ON f.msg_id = m.id";

fn message_row(r: &rusqlite::Row) -> rusqlite::Result<StoredMessage> {
    let group: Option<String> = r.get(2)?;
    let recipient: Option<String> = r.get(3)?;
    let to = match (group, recipient) {
        (Some(g), _) => format!("#{g}"),
        (None, Some(u)) => format!("@{u}"),
        (None, None) => String::new(),
    };
    Ok(StoredMessage {
        id: r.get(0)?,
        from: r.get(1)?,
        to,
        text: r.get(4)?,
        ts: r.get(5)?,
        client_id: r.get(6)?,
        file: match r.get::<_, Option<String>>(7)? {
            Some(id) => Some(FileMeta {
                id,
                name: r.get(8)?,
                size: r.get::<_, i64>(9)? as u64,
                mime: r.get(10)?,
                sha256: r.get(11)?,
            }),
            None => None,
        },
    })
}

/// The open database.
pub struct Store {
    db: Connection,
}

impl Store {
    /// Opens (creating if needed) `chatd.db` in `dir`, switches it to WAL and migrates it.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        let mut db = Connection::open(dir.join("chatd.db"))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: readers never block the writer, and a commit is one append to the log.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut db)?;
        // Once serving, another process holding the write lock (a second chatd on the same
        // data dir, a backup tool) makes calls fail quickly with `unavailable` instead of
        // stalling the loop.
        db.busy_timeout(std::time::Duration::from_millis(100))?;
        Ok(Store { db })
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self.db.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- users ---------------------------------------------------------------------------

    /// Creates a user; `Conflict` if the name is taken.
    pub fn create_user(&self, name: &str, password: Option<&str>, now_ms: i64) -> Result<UserId> {
        self.db
            .prepare_cached("INSERT INTO users (name, password, created_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![name, password, now_ms])?;
        Ok(self.db.last_insert_rowid())
    }

    /// Looks a user up by name.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .db
            .prepare_cached("SELECT id, name, password FROM users WHERE name = ?1")?
            .query_row(params![name], |r| {
                Ok(User {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    password: r.get(2)?,
                })
            })
            .optional()?)
    }

    // ---- sessions ------------------------------------------------------------------------

    /// Sets what a commit waits for: `FULL` syncs the log on every commit (survives power
    /// loss), `NORMAL` leaves that to the OS (survives a crash of the process).
    pub fn set_synchronous(&self, full: bool) -> Result<()> {
        self.db
            .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
        Ok(())
    }

    /// Stores a session by the hash of its token.
    pub fn create_session(&self, token_hash: &[u8], user: UserId, expires_ms: i64) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, expires_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![token_hash, user, expires_ms])?;
        Ok(())
    }

    /// The user of a session that has not expired at `now_ms`.
    pub fn session_user(&self, token_hash: &[u8], now_ms: i64) -> Result<Option<User>> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT u.id, u.name, u.password FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = ?1 AND s.expires_ms > ?2",
            )?
            .query_row(params![token_hash, now_ms], |r| {
                Ok(User {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    password: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Revokes a session.
    pub fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        self.db
            .prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute(params![token_hash])?;
        Ok(())
    }

    /// Removes sessions that expired before `now_ms`; returns how many.
    pub fn purge_sessions(&self, now_ms: i64) -> Result<usize> {
        Ok(self
            .db
            .prepare_cached("DELETE FROM sessions WHERE expires_ms <= ?1")?
            .execute(params![now_ms])?)
    }

    // ---- groups --------------------------------------------------------------------------

    /// Creates a group with `owner` as its owner; `Conflict` if the name is taken.
    pub fn create_group(
        &mut self,
        name: &str,
        private: bool,
        owner: UserId,
        now_ms: i64,
    ) -> Result<GroupId> {
        let tx = self.db.transaction()?;
        tx.prepare_cached("INSERT INTO groups (name, private, created_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![name, private, now_ms])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached(
            "INSERT INTO members (group_id, user_id, role) VALUES (?1, ?2, 'owner')",
        )?
        .execute(params![id, owner])?;
        tx.commit()?;
        Ok(id)
    }

    /// Looks a group up by name.
    pub fn group(&self, name: &str) -> Result<Option<Group>> {
        Ok(self
            .db
            .prepare_cached("SELECT id, name, private FROM groups WHERE name = ?1")?
            .query_row(params![name], |r| {
                Ok(Group {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    private: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Deletes a group with its memberships, bans, invitations and history; returns the ids of
    /// the files that were posted to it, whose bytes the caller removes.
    pub fn delete_group(&self, group: GroupId) -> Result<Vec<String>> {
        let files: Vec<String> = self
            .db
            .prepare_cached(
                "SELECT f.id FROM files f JOIN messages m ON m.id = f.msg_id WHERE m.group_id = ?1",
            )?
            .query_map(params![group], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        self.db
            .prepare_cached("DELETE FROM groups WHERE id = ?1")?
            .execute(params![group])?;
        Ok(files)
    }

    /// A file's metadata and where it was posted.
    pub fn file(&self, id: &str) -> Result<Option<FileRecord>> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT f.id, f.name, f.size, f.mime, f.sha256, m.sender, m.group_id, m.recipient
                 FROM files f JOIN messages m ON m.id = f.msg_id WHERE f.id = ?1",
            )?
            .query_row(params![id], |r| {
                let group: Option<GroupId> = r.get(6)?;
                let recipient: Option<UserId> = r.get(7)?;
                Ok(FileRecord {
                    meta: FileMeta {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        mime: r.get(3)?,
                        sha256: r.get(4)?,
                    },
                    sender: r.get(5)?,
                    to: match (group, recipient) {
                        (Some(g), _) => Target::Group(g),
                        (None, r) => Target::Direct(r.unwrap_or_default()),
                    },
                })
            })
            .optional()?)
    }

    /// Whether a group still exists.
    pub fn group_exists(&self, group: GroupId) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
            .exists(params![group])?)
    }

    /// A user's role in a group, if a member.
    pub fn role(&self, group: GroupId, user: UserId) -> Result<Option<Role>> {
        let role: Option<String> = self
            .db
            .prepare_cached("SELECT role FROM members WHERE group_id = ?1 AND user_id = ?2")?
            .query_row(params![group, user], |r| r.get(0))
            .optional()?;
        Ok(role.as_deref().and_then(Role::parse))
    }

    /// Members of a group with their roles, by name.
    pub fn members(&self, group: GroupId) -> Result<Vec<(String, Role)>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT u.name, m.role FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.group_id = ?1 ORDER BY u.name",
        )?;
        let rows = stmt.query_map(params![group], |r| {
            let role: String = r.get(1)?;
            Ok((r.get(0)?, Role::parse(&role).unwrap_or(Role::Member)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds a member (clearing any invitation) or changes a member's role.
    pub fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()> {
        self.db
            .prepare_cached(
                "INSERT INTO members (group_id, user_id, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
            )?
            .execute(params![group, user, role.as_str()])?;
        self.db
            .prepare_cached("DELETE FROM invites WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group, user])?;
        Ok(())
    }

    /// Makes `to` the owner and the old owner `from` an admin, in one transaction.
    pub fn transfer_ownership(&mut self, group: GroupId, from: UserId, to: UserId) -> Result<()> {
        let tx = self.db.transaction()?;
        tx.prepare_cached(
            "UPDATE members SET role = 'admin' WHERE group_id = ?1 AND user_id = ?2",
        )?
        .execute(params![group, from])?;
        tx.prepare_cached(
            "UPDATE members SET role = 'owner' WHERE group_id = ?1 AND user_id = ?2",
        )?
        .execute(params![group, to])?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a member; with `ban`, also bars them from joining again.
    pub fn remove_member(&self, group: GroupId, user: UserId, ban: bool) -> Result<()> {
        self.db
            .prepare_cached("DELETE FROM members WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group, user])?;
        if ban {
            self.db
                .prepare_cached("INSERT OR IGNORE INTO bans (group_id, user_id) VALUES (?1, ?2)")?
                .execute(params![group, user])?;
        }
        Ok(())
    }

    /// Whether a user is banned from a group.
    pub fn is_banned(&self, group: GroupId, user: UserId) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM bans WHERE group_id = ?1 AND user_id = ?2")?
            .exists(params![group, user])?)
    }

    /// Invites a user, clearing a ban.
    pub fn invite(&self, group: GroupId, user: UserId) -> Result<()> {
        self.db
            .prepare_cached("DELETE FROM bans WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group, user])?;
        self.db
            .prepare_cached("INSERT OR IGNORE INTO invites (group_id, user_id) VALUES (?1, ?2)")?
            .execute(params![group, user])?;
        Ok(())
    }

    /// Whether a user holds an invitation to a group.
    pub fn is_invited(&self, group: GroupId, user: UserId) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM invites WHERE group_id = ?1 AND user_id = ?2")?
            .exists(params![group, user])?)
    }

    /// Names of the groups a user belongs to.
    pub fn groups_of(&self, user: UserId) -> Result<Vec<String>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT g.name FROM members m JOIN groups g ON g.id = m.group_id
             WHERE m.user_id = ?1 ORDER BY g.name",
        )?;
        let rows = stmt.query_map(params![user], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Ids of the groups a user belongs to.
    pub fn group_ids_of(&self, user: UserId) -> Result<Vec<GroupId>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT group_id FROM members WHERE user_id = ?1")?;
        let rows = stmt.query_map(params![user], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Public groups and the user's own groups, with member counts and the user's role.
    pub fn list_groups(&self, user: UserId) -> Result<Vec<GroupSummary>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT g.id, g.name, g.private,
                    (SELECT COUNT(*) FROM members c WHERE c.group_id = g.id),
                    (SELECT m.role FROM members m WHERE m.group_id = g.id AND m.user_id = ?1)
             FROM groups g
             WHERE g.private = 0
                OR EXISTS (SELECT 1 FROM members m WHERE m.group_id = g.id AND m.user_id = ?1)
             ORDER BY g.name",
        )?;
        let rows = stmt.query_map(params![user], |r| {
            let role: Option<String> = r.get(4)?;
            Ok(GroupSummary {
                group: Group {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    private: r.get(2)?,
                },
                members: r.get::<_, i64>(3)? as u64,
                role: role.as_deref().and_then(Role::parse),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

impl Store {
    // ---- messages ------------------------------------------------------------------------

    /// The highest msg_id stored (0 when none).
    pub fn last_message_id(&self) -> Result<i64> {
        Ok(self
            .db
            .query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| {
                r.get(0)
            })?)
    }

    /// Stores a batch of messages in one transaction: all or none.
    pub fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO messages (id, sender, group_id, recipient, pair, text, ts, client_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for m in batch {
                let (group, recipient, pair) = match m.to {
                    Target::Group(g) => (Some(g), None, None),
                    Target::Direct(u) => (None, Some(u), Some(pair(m.sender, u))),
                };
                stmt.execute(params![
                    m.id,
                    m.sender,
                    group,
                    recipient,
                    pair,
                    m.text,
                    m.ts,
                    m.client_id
                ])?;
            }
            let mut files = tx.prepare_cached(
                "INSERT INTO files (id, msg_id, name, size, mime, sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (m, f) in batch.iter().filter_map(|m| m.file.as_ref().map(|f| (m, f))) {
                files.execute(params![f.id, m.id, f.name, f.size as i64, f.mime, f.sha256])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The msg_id and ts of the sender's message with this client_id, if stored.
    pub fn find_client_id(&self, sender: UserId, client_id: &str) -> Result<Option<(i64, i64)>> {
        Ok(self
            .db
            .prepare_cached("SELECT id, ts FROM messages WHERE sender = ?1 AND client_id = ?2")?
            .query_row(params![sender, client_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The latest `limit` messages of a conversation with msg_id below `before`, ascending, and
    /// whether older ones exist. `me` is the reader (for direct conversations).
    pub fn history(
        &self,
        me: UserId,
        with: Target,
        before: i64,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let sql = match with {
            Target::Group(_) => format!(
                "{MESSAGE_COLUMNS} WHERE m.group_id = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3"
            ),
            Target::Direct(_) => format!(
                "{MESSAGE_COLUMNS} WHERE m.pair = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3"
            ),
        };
        let key: rusqlite::types::Value = match with {
            Target::Group(g) => g.into(),
            Target::Direct(u) => pair(me, u).into(),
        };
        let mut stmt = self.db.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![key, before, limit as i64 + 1], message_row)?;
        let mut page: Vec<StoredMessage> = rows.collect::<rusqlite::Result<_>>()?;
        let more = page.len() > limit;
        page.truncate(limit);
        page.reverse();
        Ok((page, more))
    }

    /// The oldest `limit` messages after `since` in all of a user's conversations (direct
    /// messages, and groups the user is a member of now), in msg_id order, and whether more
    /// remain. Each conversation is read through its index for at most `limit + 1` rows, so the
    /// cost follows the page and the number of conversations, not the table.
    pub fn recover(
        &self,
        user: UserId,
        since: i64,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let want = limit as i64 + 1;
        let mut ids: Vec<i64> = Vec::new();
        {
            let mut per_group = self.db.prepare_cached(
                "SELECT id FROM messages WHERE group_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let mut groups = self
                .db
                .prepare_cached("SELECT group_id FROM members WHERE user_id = ?1")?;
            let group_ids: Vec<i64> = groups
                .query_map(params![user], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for g in group_ids {
                for id in per_group.query_map(params![g, since, want], |r| r.get(0))? {
                    ids.push(id?);
                }
            }
            for sql in [
                "SELECT id FROM messages WHERE recipient = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                "SELECT id FROM messages WHERE sender = ?1 AND recipient IS NOT NULL AND id > ?2 ORDER BY id LIMIT ?3",
            ] {
                let mut stmt = self.db.prepare_cached(sql)?;
                for id in stmt.query_map(params![user, since, want], |r| r.get(0))? {
                    ids.push(id?);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let mut stmt = self
            .db
            .prepare_cached(&format!("{MESSAGE_COLUMNS} WHERE m.id = ?1"))?;
        let mut page = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = stmt.query_row(params![id], message_row).optional()? {
                page.push(m);
            }
        }
        Ok((page, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "chatd-store-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).unwrap(), dir)
    }

    #[test]
    fn users_sessions_groups_round_trip_and_survive_reopen() {
        let (mut s, dir) = temp_store();
        let alice = s.create_user("alice", Some("hash"), 1).unwrap();
        assert_eq!(s.create_user("alice", None, 2), Err(StoreError::Conflict));
        s.create_session(b"h1", alice, 1000).unwrap();
        assert_eq!(s.session_user(b"h1", 999).unwrap().unwrap().name, "alice");
        assert!(s.session_user(b"h1", 1000).unwrap().is_none(), "expired");
        let g = s.create_group("rust", false, alice, 1).unwrap();
        assert_eq!(
            s.create_group("rust", true, alice, 1),
            Err(StoreError::Conflict)
        );
        assert_eq!(s.role(g, alice).unwrap(), Some(Role::Owner));
        drop(s);
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::MIGRATIONS.len() as u32);
        assert_eq!(
            s.user("alice").unwrap().unwrap().password.as_deref(),
            Some("hash")
        );
        assert_eq!(s.groups_of(alice).unwrap(), vec!["rust".to_string()]);
        s.delete_session(b"h1").unwrap();
        assert!(s.session_user(b"h1", 0).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn membership_bans_invites_and_ownership() {
        let (mut s, dir) = temp_store();
        let a = s.create_user("a", None, 0).unwrap();
        let b = s.create_user("b", None, 0).unwrap();
        let g = s.create_group("g", true, a, 0).unwrap();
        s.set_role(g, b, Role::Member).unwrap();
        s.remove_member(g, b, true).unwrap();
        assert!(s.is_banned(g, b).unwrap());
        s.invite(g, b).unwrap();
        assert!(!s.is_banned(g, b).unwrap());
        assert!(s.is_invited(g, b).unwrap());
        s.set_role(g, b, Role::Member).unwrap();
        assert!(!s.is_invited(g, b).unwrap());
        s.transfer_ownership(g, a, b).unwrap();
        assert_eq!(s.role(g, a).unwrap(), Some(Role::Admin));
        assert_eq!(s.role(g, b).unwrap(), Some(Role::Owner));
        let list = s.list_groups(a).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].members, 2);
        assert!(s
            .list_groups(s.create_user("c", None, 0).unwrap())
            .unwrap()
            .is_empty());
        let msg = |id, to| NewMessage {
            id,
            sender: a,
            to,
            text: format!("m{id}"),
            ts: id,
            client_id: None,
            file: None,
        };
        s.insert_messages(&[
            msg(1, Target::Group(g)),
            msg(2, Target::Direct(b)),
            msg(3, Target::Group(g)),
        ])
        .unwrap();
        let (page, more) = s.history(b, Target::Group(g), i64::MAX, 1).unwrap();
        assert_eq!((page[0].id, page[0].to.as_str(), more), (3, "#g", true));
        let (page, _) = s.history(b, Target::Direct(a), i64::MAX, 10).unwrap();
        assert_eq!(
            (page.len(), page[0].to.as_str(), page[0].from.as_str()),
            (1, "@b", "a")
        );
        let (page, more) = s.recover(b, 0, 2).unwrap();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(more);
        assert_eq!(s.group_ids_of(a).unwrap(), vec![g]);
        s.delete_group(g).unwrap();
        assert!(s.group("g").unwrap().is_none());
        // the group's history went with it; the direct message stays
        assert_eq!(s.recover(a, 0, 10).unwrap().0.len(), 1);
        assert!(s.groups_of(a).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
