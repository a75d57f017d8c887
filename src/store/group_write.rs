//! The writes that change groups and memberships, each run inside its own savepoint by
//! [`super::write`], and the per-user limits on groups they enforce.

use rusqlite::{params, Transaction};

use super::write::{Orphans, Written};
use super::{GroupId, Role, UserId};

/// How many groups one user may be in, and own: checked by the write that would cross them,
/// inside the transaction, so that requests racing on several connections cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Most groups the user may be a member of (owned ones included).
    pub member_of: u32,
    /// Most groups the user may own.
    pub owner_of: u32,
}

impl GroupLimits {
    /// No limits.
    pub const NONE: GroupLimits = GroupLimits {
        member_of: u32::MAX,
        owner_of: u32::MAX,
    };
}

pub(super) fn create_group(
    tx: &Transaction,
    id: GroupId,
    name: &str,
    private: bool,
    owner: UserId,
    created_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO groups (id, name, private, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, name, private, created_ms])?;
    tx.prepare_cached("INSERT INTO members (group_id, user_id, role) VALUES (?1, ?2, 'owner')")?
        .execute(params![id, owner])?;
    Ok(())
}

pub(super) fn join(tx: &Transaction, group: GroupId, user: UserId) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO members (group_id, user_id, role) VALUES (?1, ?2, 'member')")?
        .execute(params![group, user])?;
    tx.prepare_cached("DELETE FROM invites WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group, user])?;
    Ok(())
}

/// After a write that added a membership or an ownership: `Some(TooManyGroups)` when the user
/// is now over one of its limits (the savepoint then undoes the write). The count reads the
/// user's memberships by index; the limit itself bounds them.
pub(super) fn within(
    tx: &Transaction,
    user: UserId,
    limits: GroupLimits,
) -> rusqlite::Result<Option<Written>> {
    let (member_of, owner_of): (i64, i64) = tx
        .prepare_cached(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE role = 'owner') FROM members WHERE user_id = ?1",
        )?
        .query_row(params![user], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(if member_of > i64::from(limits.member_of) {
        Some(Written::TooManyGroups { owned: false })
    } else if owner_of > i64::from(limits.owner_of) {
        Some(Written::TooManyGroups { owned: true })
    } else {
        None
    })
}

/// `Done` when exactly one row changed, else `Changed`.
fn one_row(changed: usize) -> Written {
    if changed == 1 {
        Written::Done(0)
    } else {
        Written::Changed
    }
}

pub(super) fn set_role(
    tx: &Transaction,
    group: GroupId,
    user: UserId,
    from: Role,
    to: Role,
) -> rusqlite::Result<Written> {
    let changed = tx
        .prepare_cached(
            "UPDATE members SET role = ?4 WHERE group_id = ?1 AND user_id = ?2 AND role = ?3",
        )?
        .execute(params![group, user, from.as_str(), to.as_str()])?;
    Ok(one_row(changed))
}

pub(super) fn transfer_ownership(
    tx: &Transaction,
    group: GroupId,
    from: UserId,
    to: UserId,
) -> rusqlite::Result<Written> {
    let mut stmt = tx.prepare_cached(
        "UPDATE members SET role = ?4 WHERE group_id = ?1 AND user_id = ?2 AND role = ?3",
    )?;
    let owner = Role::Owner.as_str();
    if stmt.execute(params![group, from, owner, Role::Admin.as_str()])? != 1 {
        return Ok(Written::Changed);
    }
    let changed = tx
        .prepare_cached(
            "UPDATE members SET role = ?3 WHERE group_id = ?1 AND user_id = ?2 AND role <> ?3",
        )?
        .execute(params![group, to, owner])?;
    Ok(one_row(changed))
}

pub(super) fn remove_member(
    tx: &Transaction,
    group: GroupId,
    user: UserId,
    role: Role,
    ban: bool,
) -> rusqlite::Result<Written> {
    let changed = tx
        .prepare_cached("DELETE FROM members WHERE group_id = ?1 AND user_id = ?2 AND role = ?3")?
        .execute(params![group, user, role.as_str()])?;
    if changed != 1 {
        return Ok(Written::Changed);
    }
    if ban {
        tx.prepare_cached("INSERT OR IGNORE INTO bans (group_id, user_id) VALUES (?1, ?2)")?
            .execute(params![group, user])?;
    }
    Ok(Written::Done(0))
}

pub(super) fn invite(tx: &Transaction, group: GroupId, user: UserId) -> rusqlite::Result<Written> {
    tx.prepare_cached("DELETE FROM bans WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group, user])?;
    tx.prepare_cached("INSERT OR IGNORE INTO invites (group_id, user_id) VALUES (?1, ?2)")?
        .execute(params![group, user])?;
    Ok(Written::Done(0))
}

/// Deletes a group; its history and memberships go with it (`ON DELETE CASCADE`), its files'
/// bytes once the batch is committed.
pub(super) fn delete_group(
    tx: &Transaction,
    group: GroupId,
    orphans: &mut Orphans,
) -> rusqlite::Result<Written> {
    let files: Vec<String> = tx
        .prepare_cached(
            "SELECT f.id FROM files f JOIN messages m ON m.id = f.msg_id WHERE m.group_id = ?1",
        )?
        .query_map(params![group], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // The newest messages may go with the group: their msg_ids stay taken.
    tx.prepare_cached(
        "INSERT INTO meta (key, value) SELECT 'msg_id_floor', COALESCE(MAX(id), 0) FROM messages
         WHERE true ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute([])?;
    let deleted = tx
        .prepare_cached("DELETE FROM groups WHERE id = ?1")?
        .execute(params![group])?;
    if deleted == 0 {
        return Ok(Written::Gone);
    }
    orphans.extend(files);
    Ok(Written::Done(0))
}
