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

    /// Deletes a group with its memberships, bans and invitations.
    pub fn delete_group(&self, group: GroupId) -> Result<()> {
        self.db
            .prepare_cached("DELETE FROM groups WHERE id = ?1")?
            .execute(params![group])?;
        Ok(())
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
        s.delete_group(g).unwrap();
        assert!(s.group("g").unwrap().is_none());
        assert!(s.groups_of(a).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
