//! The embedded store: users, sessions, groups, memberships, messages and files in one SQLite
//! file.
//!
//! The rest of the server sees only this narrow interface of records and errors, in two halves:
//! reads, which the loop makes itself (`read`, `messages`: index lookups whose cost is
//! bounded by the page asked for), and writes, which it never makes itself: every change is a
//! [`Write`] value gathered into a [`Batch`] and committed by the [`Writer`] thread on its own
//! connection (`write`, `writer`). A server-grade backend for several nodes would implement
//! the same two halves. Every query binds its parameters; statements are cached by rusqlite.

mod admins;
#[cfg(test)]
mod group_tests;
mod group_write;
mod messages;
mod prune;
mod read;
mod schema;
pub mod write;
pub mod writer;

use std::path::Path;

use rusqlite::{params, Connection, ErrorCode};

pub use write::{Batch, GroupLimits, PartFile, Write, Written};
pub use writer::{Committed, Writer};

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

/// One connection to the database. The loop holds one for its reads; the writer thread holds
/// another for the batches.
pub struct Store {
    db: Connection,
    /// Direct conversations known to be listed in `direct_pairs` (on the writer's connection).
    pairs: std::collections::HashSet<(UserId, UserId)>,
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
        // The pages that inserts keep touching (the right edges of the indexes) stay in memory.
        db.pragma_update(None, "cache_size", -8192)?;
        schema::migrate(&mut db)?;
        // Once serving, another process holding the write lock (a second chatd on the same
        // data dir, a backup tool) makes calls fail quickly with `unavailable` instead of
        // stalling the loop.
        db.busy_timeout(std::time::Duration::from_millis(100))?;
        Ok(Store {
            db,
            pairs: Default::default(),
        })
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<u32> {
        Ok(self.db.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Sets what a commit waits for: `FULL` syncs the log on every commit (survives power
    /// loss), `NORMAL` leaves that to the OS (survives a crash of the process).
    pub fn set_synchronous(&self, full: bool) -> Result<()> {
        self.db
            .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
        Ok(())
    }

    /// Makes this connection the one that checkpoints, when told to ([`Store::checkpoint`]),
    /// rather than SQLite's automatic checkpoint at the end of the commit that crosses its
    /// threshold, which would hold that commit's result back.
    pub fn checkpoint_by_hand(&self) -> Result<()> {
        self.db.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies what the write-ahead log holds into the database file (a passive checkpoint:
    /// it never waits for readers).
    pub fn checkpoint(&self) -> Result<()> {
        self.db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Removes sessions that expired before `now_ms`; returns how many.
    pub fn purge_sessions(&self, now_ms: i64) -> Result<usize> {
        Ok(self
            .db
            .prepare_cached("DELETE FROM sessions WHERE expires_ms <= ?1")?
            .execute(params![now_ms])?)
    }

    /// A private database in memory, for tests of the layers above: reads and [`Store::apply`]
    /// on the one connection.
    pub fn open_in_memory() -> Result<Store> {
        let mut db = Connection::open_in_memory()?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut db)?;
        Ok(Store {
            db,
            pairs: Default::default(),
        })
    }

    /// Applies a batch of writes in one transaction (see [`write::apply`]).
    pub fn apply(&mut self, batch: Batch) -> Result<(Vec<Written>, write::Orphans)> {
        let applied = write::apply(&mut self.db, &mut self.pairs, batch);
        if applied.is_err() {
            // Pairs this batch listed were rolled back with it.
            self.pairs.clear();
        }
        applied
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

    /// Commits `writes` as one batch.
    fn commit(s: &mut Store, writes: Vec<Write>) -> Vec<Written> {
        s.apply(Batch { writes }).unwrap().0
    }

    fn user(s: &mut Store, name: &str) -> UserId {
        match &commit(
            s,
            vec![Write::CreateUser {
                name: name.into(),
                password: Some("hash".into()),
                created_ms: 1,
            }],
        )[..]
        {
            [Written::Done(id)] => *id,
            other => panic!("{other:?}"),
        }
    }

    fn group(id: GroupId, name: &str, private: bool, owner: UserId) -> Write {
        Write::CreateGroup {
            id,
            name: name.into(),
            private,
            owner,
            created_ms: 1,
            limits: GroupLimits::NONE,
        }
    }

    fn join(group: GroupId, user: UserId) -> Write {
        Write::Join {
            group,
            user,
            limits: GroupLimits::NONE,
        }
    }

    fn msg(id: i64, sender: UserId, to: Target, client_id: Option<&str>) -> Write {
        Write::Message {
            message: NewMessage {
                id,
                sender,
                to,
                text: format!("m{id}"),
                ts: id,
                client_id: client_id.map(str::to_string),
                file: None,
            },
            part: None,
        }
    }

    #[test]
    fn users_sessions_groups_round_trip_and_survive_reopen() {
        let (mut s, dir) = temp_store();
        let alice = user(&mut s, "alice");
        let written = commit(
            &mut s,
            vec![
                Write::CreateUser {
                    name: "alice".into(),
                    password: None,
                    created_ms: 2,
                },
                Write::CreateSession {
                    token_hash: [1; 32],
                    user: alice,
                    expires_ms: 1000,
                },
                group(1, "rust", false, alice),
                group(2, "rust", true, alice),
            ],
        );
        // A taken name fails alone; the rest of the batch is stored.
        assert_eq!(
            written,
            vec![
                Written::Conflict,
                Written::Done(0),
                Written::Done(0),
                Written::Conflict
            ]
        );
        assert_eq!(
            s.session_user(&[1; 32], 999).unwrap().unwrap().name,
            "alice"
        );
        assert!(s.session_user(&[1; 32], 1000).unwrap().is_none(), "expired");
        assert_eq!(s.role(1, alice).unwrap(), Some(Role::Owner));
        drop(s);
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), schema::MIGRATIONS.len() as u32);
        assert_eq!(
            s.user("alice").unwrap().unwrap().password.as_deref(),
            Some("hash")
        );
        assert_eq!(s.groups_of(alice).unwrap(), vec!["rust".to_string()]);
        assert_eq!(s.last_group_id().unwrap(), 1);
        commit(
            &mut s,
            vec![Write::DeleteSession {
                token_hash: [1; 32],
            }],
        );
        assert!(s.session_user(&[1; 32], 0).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn membership_bans_invites_and_ownership() {
        let mut s = Store::open_in_memory().unwrap();
        let a = user(&mut s, "a");
        let b = user(&mut s, "b");
        let g = 7;
        let written = commit(
            &mut s,
            vec![
                group(g, "g", true, a),
                join(g, b),
                Write::RemoveMember {
                    group: g,
                    user: b,
                    role: Role::Admin,
                    ban: true,
                },
                Write::RemoveMember {
                    group: g,
                    user: b,
                    role: Role::Member,
                    ban: true,
                },
            ],
        );
        // Removing an admin who is a member changes nothing: the request was checked against
        // another role.
        assert_eq!(
            written,
            vec![
                Written::Done(0),
                Written::Done(0),
                Written::Changed,
                Written::Done(0)
            ]
        );
        assert!(s.is_banned(g, b).unwrap());
        commit(&mut s, vec![Write::Invite { group: g, user: b }]);
        assert!(!s.is_banned(g, b).unwrap());
        assert!(s.is_invited(g, b).unwrap());
        commit(
            &mut s,
            vec![
                join(g, b),
                Write::TransferOwnership {
                    group: g,
                    from: a,
                    to: b,
                    limits: GroupLimits::NONE,
                },
            ],
        );
        assert!(!s.is_invited(g, b).unwrap());
        assert_eq!(s.role(g, a).unwrap(), Some(Role::Admin));
        assert_eq!(s.role(g, b).unwrap(), Some(Role::Owner));
        // A second hand-over by the old owner finds it is no longer the owner.
        let again = commit(
            &mut s,
            vec![Write::TransferOwnership {
                group: g,
                from: a,
                to: a,
                limits: GroupLimits::NONE,
            }],
        );
        assert_eq!(again, vec![Written::Changed]);
        assert_eq!(s.role(g, b).unwrap(), Some(Role::Owner));
        let (list, more) = s.list_groups(a, "", 10).unwrap();
        assert_eq!((list.len(), more), (1, false));
        assert_eq!(list[0].members, 2);
        let c = user(&mut s, "c");
        assert!(s.list_groups(c, "", 10).unwrap().0.is_empty());
        commit(
            &mut s,
            vec![
                msg(1, a, Target::Group(g), None),
                msg(2, a, Target::Direct(b), None),
                msg(3, a, Target::Group(g), None),
            ],
        );
        let (page, more) = s.history(b, Target::Group(g), i64::MAX, 1).unwrap();
        assert_eq!((page[0].id, page[0].to.as_str(), more), (3, "#g", true));
        let (page, _) = s.history(b, Target::Direct(a), i64::MAX, 10).unwrap();
        assert_eq!(
            (page.len(), page[0].to.as_str(), page[0].from.as_str()),
            (1, "@b", "a")
        );
        let (page, more) = s.recover(b, 0, i64::MAX, 2).unwrap();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(more);
        assert_eq!(s.group_ids_of(a).unwrap(), vec![g]);
        assert_eq!(s.last_message_id().unwrap(), 3);
        commit(&mut s, vec![Write::DeleteGroup { group: g }]);
        assert!(s.group("g").unwrap().is_none());
        // msg_id 3 went with the group; it is not given again.
        assert_eq!(s.last_message_id().unwrap(), 3);
        // the group's history went with it; the direct message stays
        assert_eq!(s.recover(a, 0, i64::MAX, 10).unwrap().0.len(), 1);
        assert!(s.groups_of(a).unwrap().is_empty());
    }

    #[test]
    fn a_repeated_client_id_answers_with_the_first_copy_in_and_across_batches() {
        let mut s = Store::open_in_memory().unwrap();
        let a = user(&mut s, "a");
        let b = user(&mut s, "b");
        let written = commit(
            &mut s,
            vec![
                msg(1, a, Target::Direct(b), Some("x")),
                msg(2, a, Target::Direct(b), Some("x")),
                msg(3, b, Target::Direct(a), Some("x")),
            ],
        );
        assert_eq!(
            written,
            vec![
                Written::Done(0),
                Written::Duplicate { msg_id: 1, ts: 1 },
                Written::Done(0)
            ]
        );
        let written = commit(&mut s, vec![msg(4, a, Target::Group(99), Some("x"))]);
        assert_eq!(written, vec![Written::Duplicate { msg_id: 1, ts: 1 }]);
        assert_eq!(s.last_message_id().unwrap(), 3);
    }

    #[test]
    fn writes_to_a_group_deleted_earlier_in_the_batch_fail_alone() {
        let mut s = Store::open_in_memory().unwrap();
        let a = user(&mut s, "a");
        let b = user(&mut s, "b");
        let written = commit(
            &mut s,
            vec![
                group(1, "g", false, a),
                msg(1, a, Target::Group(1), None),
                Write::DeleteGroup { group: 1 },
                msg(2, a, Target::Group(1), None),
                join(1, b),
                msg(3, a, Target::Direct(b), None),
            ],
        );
        assert_eq!(
            written,
            vec![
                Written::Done(0),
                Written::Done(0),
                Written::Done(0),
                Written::Gone,
                Written::Gone,
                Written::Done(0)
            ]
        );
        let (page, _) = s.recover(b, 0, i64::MAX, 10).unwrap();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn schema_4_lists_the_direct_conversations_of_an_older_database() {
        let mut db = Connection::open_in_memory().unwrap();
        for step in &schema::MIGRATIONS[..3] {
            db.execute_batch(step).unwrap();
        }
        db.execute_batch(
            "INSERT INTO users (id, name, created_ms) VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0);
             INSERT INTO messages (id, sender, recipient, pair, text, ts)
                VALUES (1, 1, 2, '1:2', 'hi b', 1), (2, 3, 1, '1:3', 'hi a', 2);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        assert_eq!(
            schema::migrate(&mut db).unwrap(),
            schema::MIGRATIONS.len() as u32
        );
        let s = Store {
            db,
            pairs: Default::default(),
        };
        let ids = |user| -> Vec<i64> {
            s.recover(user, 0, i64::MAX, 10)
                .unwrap()
                .0
                .iter()
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(ids(1), [1, 2]);
        assert_eq!(ids(2), [1]);
        assert_eq!(ids(3), [2]);
    }

    #[test]
    fn a_prune_reads_from_the_oldest_end_and_keeps_msg_ids_taken() {
        let mut s = Store::open_in_memory().unwrap();
        let (a, b) = (user(&mut s, "a"), user(&mut s, "b"));
        // ts = id for messages 1 to 6; a prune takes at most `limit` from the oldest end.
        let writes = (1..=6)
            .map(|i| msg(i, a, Target::Direct(b), None))
            .collect();
        commit(&mut s, writes);
        let prune = |before, limit| Write::Prune {
            messages_before: Some(before),
            files_before: None,
            limit,
        };
        assert_eq!(commit(&mut s, vec![prune(4, 2)]), [Written::Done(2)]);
        assert_eq!(commit(&mut s, vec![prune(4, 10)]), [Written::Done(1)]);
        let (left, _) = s.recover(b, 0, i64::MAX, 10).unwrap();
        assert_eq!(left.iter().map(|m| m.id).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(commit(&mut s, vec![prune(100, 10)]), [Written::Done(3)]);
        assert_eq!(
            s.last_message_id().unwrap(),
            6,
            "deleted msg_ids stay taken"
        );
    }

    #[test]
    fn schema_5_gives_older_files_their_owner() {
        let mut db = Connection::open_in_memory().unwrap();
        for step in &schema::MIGRATIONS[..4] {
            db.execute_batch(step).unwrap();
        }
        db.execute_batch(
            "INSERT INTO users (id, name, created_ms) VALUES (1, 'a', 0), (2, 'b', 0);
             INSERT INTO messages (id, sender, recipient, pair, text, ts)
                VALUES (1, 1, 2, '1:2', '', 1), (2, 2, 1, '1:2', '', 2);
             INSERT INTO files (id, msg_id, name, size, mime, sha256)
                VALUES ('x', 1, 'x', 100, NULL, ''), ('y', 1, 'y', 20, NULL, ''),
                       ('z', 2, 'z', 5, NULL, '');
             PRAGMA user_version = 4;",
        )
        .unwrap();
        schema::migrate(&mut db).unwrap();
        let s = Store {
            db,
            pairs: Default::default(),
        };
        assert_eq!(s.stored_bytes(1).unwrap(), 120);
        assert_eq!(s.stored_bytes(2).unwrap(), 5);
        assert_eq!(s.stored_bytes(3).unwrap(), 0);
    }
}
