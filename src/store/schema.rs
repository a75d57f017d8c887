//! The database schema, versioned with `PRAGMA user_version` and migrated at start.
//!
//! Each entry of [`MIGRATIONS`] moves the schema from version `i` to `i + 1`. A database newer
//! than this binary is refused rather than guessed at.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, groups and memberships.
    "CREATE TABLE users (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        password    TEXT,              -- Argon2id PHC string; NULL for users created by a JWT
        created_ms  INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        token_hash  BLOB PRIMARY KEY,  -- SHA-256 of the token; the token itself is never stored
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        expires_ms  INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_expiry ON sessions(expires_ms);
    CREATE TABLE groups (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        private     INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL
    );
    CREATE TABLE members (
        group_id    INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role        TEXT NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX members_by_user ON members(user_id);
    CREATE TABLE bans (
        group_id    INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE TABLE invites (
        group_id    INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (group_id, user_id)
    );",
    // 2: messages. `id` is the server-wide msg_id. A message is either in a group (`group_id`)
    // or direct (`recipient`, with `pair` = the two user ids, lower first, naming the
    // conversation). Partial indexes serve history (by conversation) and recovery (by group,
    // by recipient, by sender of direct messages), each scanned in msg_id order.
    "CREATE TABLE messages (
        id          INTEGER PRIMARY KEY,
        sender      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        group_id    INTEGER REFERENCES groups(id) ON DELETE CASCADE,
        recipient   INTEGER REFERENCES users(id) ON DELETE CASCADE,
        pair        TEXT,
        text        TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        client_id   TEXT
    );
    CREATE INDEX messages_by_group ON messages(group_id, id) WHERE group_id IS NOT NULL;
    CREATE INDEX messages_by_pair ON messages(pair, id) WHERE pair IS NOT NULL;
    CREATE INDEX messages_by_recipient ON messages(recipient, id) WHERE recipient IS NOT NULL;
    CREATE INDEX messages_direct_by_sender ON messages(sender, id) WHERE recipient IS NOT NULL;
    CREATE UNIQUE INDEX messages_dedupe ON messages(sender, client_id) WHERE client_id IS NOT NULL;",
    // 3: files posted to conversations. The bytes live under the data dir by `id`; this is their
    // metadata, stored with the message that carries the file.
    "CREATE TABLE files (
        id          TEXT PRIMARY KEY,
        msg_id      INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mime        TEXT,
        sha256      TEXT NOT NULL
    );
    CREATE INDEX files_by_message ON files(msg_id);",
    // 4: fewer indexes to keep up per direct message, and a floor for msg_ids that outlives the
    // messages (deleting a group must not let its msg_ids be given again after a restart). Recovery reads direct conversations by
    // `pair`, one per peer listed in `direct_pairs` (written once per pair, not per message),
    // instead of by recipient and by sender: two indexes less on every direct message.
    "CREATE TABLE direct_pairs (
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        peer_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, peer_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO direct_pairs
        SELECT sender, recipient FROM messages WHERE recipient IS NOT NULL
        UNION SELECT recipient, sender FROM messages WHERE recipient IS NOT NULL;
    DROP INDEX messages_by_recipient;
    DROP INDEX messages_direct_by_sender;
    CREATE TABLE meta (
        key         TEXT PRIMARY KEY,  -- 'msg_id_floor': no msg_id at or below it is given again
        value       INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 5: who stored each file, so a user's stored bytes are one index range (the quota).
    "ALTER TABLE files ADD COLUMN owner INTEGER;
    UPDATE files SET owner = (SELECT sender FROM messages WHERE messages.id = files.msg_id);
    CREATE INDEX files_by_owner ON files(owner, size);",
    // 6: server admins, granted by the operator (`chatd admin grant`) to existing accounts, never
    // by a name in the configuration (whoever registered it first would hold it).
    "CREATE TABLE server_admins (
        user_id     INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        granted_ms  INTEGER NOT NULL
    );",
    // 7: `group.list` reads a bounded page: public groups in name order from their own index,
    // and member counts kept on the group row by triggers (instead of counting every member of
    // every listed group).
    "ALTER TABLE groups ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
    UPDATE groups SET member_count = (SELECT COUNT(*) FROM members WHERE group_id = groups.id);
    CREATE TRIGGER members_count_in AFTER INSERT ON members BEGIN
        UPDATE groups SET member_count = member_count + 1 WHERE id = NEW.group_id;
    END;
    CREATE TRIGGER members_count_out AFTER DELETE ON members BEGIN
        UPDATE groups SET member_count = member_count - 1 WHERE id = OLD.group_id;
    END;
    CREATE INDEX groups_public_by_name ON groups(name) WHERE private = 0;",
];

/// Brings the database up to the latest version, one transaction per step.
///
/// Each step takes the write lock first and reads the version under it, so two processes
/// starting on the same file at once do not both apply a step.
pub fn migrate(db: &mut Connection) -> rusqlite::Result<u32> {
    let latest = MIGRATIONS.len() as u32;
    loop {
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > latest {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "database schema version {current} is newer than this chatd understands ({latest})"
            )));
        }
        if current == latest {
            return Ok(latest);
        }
        tx.execute_batch(MIGRATIONS[current as usize])?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}
