//! The loop's reads of accounts, sessions and groups: each an index lookup.

use rusqlite::{params, OptionalExtension};

use super::{
    FileMeta, FileRecord, Group, GroupId, GroupSummary, Result, Role, Store, Target, User, UserId,
};

impl Store {
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

    /// The user of a session that has not expired at `now_ms`.
    pub fn session_user(&self, token_hash: &[u8], now_ms: i64) -> Result<Option<User>> {
        Ok(self.session(token_hash, now_ms)?.map(|(user, _)| user))
    }

    /// The user of a session that has not expired at `now_ms`, and when it expires.
    pub fn session(&self, token_hash: &[u8], now_ms: i64) -> Result<Option<(User, i64)>> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT u.id, u.name, u.password, s.expires_ms
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.token_hash = ?1 AND s.expires_ms > ?2",
            )?
            .query_row(params![token_hash, now_ms], |r| {
                let user = User {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    password: r.get(2)?,
                };
                Ok((user, r.get(3)?))
            })
            .optional()?)
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

    /// Whether a user is banned from a group.
    pub fn is_banned(&self, group: GroupId, user: UserId) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM bans WHERE group_id = ?1 AND user_id = ?2")?
            .exists(params![group, user])?)
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

    /// A page of the groups `user` may see (public ones and its own), by name: at most
    /// `limit` whose names sort after `after`, and whether more follow. Two bounded index
    /// reads, merged: public groups by name (`groups_public_by_name`), and the user's own
    /// private groups (`members_by_user`, which the per-user group limit bounds); member counts
    /// are kept on the group row.
    pub fn list_groups(
        &self,
        user: UserId,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<GroupSummary>, bool)> {
        let mut stmt = self.db.prepare_cached(
            "SELECT p.id, p.name, p.private, p.member_count,
                    (SELECT m.role FROM members m WHERE m.group_id = p.id AND m.user_id = ?1)
             FROM (
                SELECT * FROM (SELECT id, name, private, member_count FROM groups
                               WHERE private = 0 AND name > ?2 ORDER BY name LIMIT ?3)
                UNION ALL
                SELECT * FROM (SELECT g.id, g.name, g.private, g.member_count
                               FROM members m JOIN groups g ON g.id = m.group_id
                               WHERE m.user_id = ?1 AND g.private = 1 AND g.name > ?2
                               ORDER BY g.name LIMIT ?3)
             ) AS p
             ORDER BY p.name LIMIT ?3",
        )?;
        let fetch = limit.saturating_add(1) as i64;
        let rows = stmt.query_map(params![user, after, fetch], |r| {
            let role: Option<String> = r.get(4)?;
            Ok(GroupSummary {
                group: Group {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    private: r.get(2)?,
                },
                members: r.get::<_, i64>(3)?.max(0) as u64,
                role: role.as_deref().and_then(Role::parse),
            })
        })?;
        let mut page: Vec<GroupSummary> = rows.collect::<rusqlite::Result<_>>()?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    /// Bytes of the files a user has stored (an index range: `files_by_owner`).
    pub fn stored_bytes(&self, user: UserId) -> Result<u64> {
        let bytes: i64 = self
            .db
            .prepare_cached("SELECT COALESCE(SUM(size), 0) FROM files WHERE owner = ?1")?
            .query_row([user], |r| r.get(0))?;
        Ok(bytes.max(0) as u64)
    }

    /// The highest group id given so far (0 when none).
    pub fn last_group_id(&self) -> Result<GroupId> {
        Ok(self
            .db
            .query_row("SELECT COALESCE(MAX(id), 0) FROM groups", [], |r| r.get(0))?)
    }
}
