//! The loop's reads of messages: history pages and recovery, each bounded by its page.

use rusqlite::{params, OptionalExtension};

use super::{pair, FileMeta, Result, Store, StoredMessage, Target, UserId};

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

impl Store {
    /// The highest msg_id given so far (0 when none): the newest message stored, or the floor
    /// a group deletion left when the newest messages went with the group.
    pub fn last_message_id(&self) -> Result<i64> {
        Ok(self.db.query_row(
            "SELECT max(COALESCE((SELECT MAX(id) FROM messages), 0),
                        COALESCE((SELECT value FROM meta WHERE key = 'msg_id_floor'), 0))",
            [],
            |r| r.get(0),
        )?)
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

    /// The oldest `limit` messages after `since` and up to `through` in all of a user's conversations (direct
    /// messages, and groups the user is a member of now), in msg_id order, and whether more
    /// remain. Each conversation is read through its index for at most `limit + 1` rows, so the
    /// cost follows the page and the number of conversations, not the table.
    pub fn recover(
        &self,
        user: UserId,
        since: i64,
        through: i64,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let want = limit as i64 + 1;
        let mut ids: Vec<i64> = Vec::new();
        {
            let mut per_group = self.db.prepare_cached(
                "SELECT id FROM messages WHERE group_id = ?1 AND id > ?2 AND id <= ?4 ORDER BY id LIMIT ?3",
            )?;
            let mut groups = self
                .db
                .prepare_cached("SELECT group_id FROM members WHERE user_id = ?1")?;
            let group_ids: Vec<i64> = groups
                .query_map(params![user], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for g in group_ids {
                for id in per_group.query_map(params![g, since, want, through], |r| r.get(0))? {
                    ids.push(id?);
                }
            }
            // Direct conversations, one per peer the user ever exchanged a message with.
            let mut peers = self
                .db
                .prepare_cached("SELECT peer_id FROM direct_pairs WHERE user_id = ?1")?;
            let peer_ids: Vec<UserId> = peers
                .query_map(params![user], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut per_pair = self.db.prepare_cached(
                "SELECT id FROM messages WHERE pair = ?1 AND id > ?2 AND id <= ?4 ORDER BY id LIMIT ?3",
            )?;
            for peer in peer_ids {
                for id in per_pair
                    .query_map(params![pair(user, peer), since, want, through], |r| {
                        r.get(0)
                    })?
                {
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
