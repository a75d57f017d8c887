//! Retention: the oldest messages, and the oldest file posts, deleted once they pass their age.
//!
//! Each prune reads at most `limit` rows from the oldest end (msg_ids grow with time), so its
//! cost is bounded whatever the size of the table, and a server that has nothing to delete reads
//! one row. A message's files go with it: their rows by `ON DELETE CASCADE`, their bytes after
//! the commit (the writer removes the orphans it is given).

use rusqlite::{params, Transaction};

use super::write::{Orphans, Written};

/// Deletes the messages sent before `messages_before` and the file posts sent before
/// `files_before` (ms since the epoch), at most `limit` of each; answers how many went.
pub fn prune(
    tx: &Transaction,
    messages_before: Option<i64>,
    files_before: Option<i64>,
    limit: usize,
    orphans: &mut Orphans,
) -> rusqlite::Result<Written> {
    let mut doomed = Vec::new();
    if let Some(cutoff) = messages_before {
        doomed.extend(oldest(
            tx,
            "SELECT id, ts FROM messages ORDER BY id LIMIT ?1",
            cutoff,
            limit,
        )?);
    }
    if let Some(cutoff) = files_before {
        let posts = "SELECT m.id, m.ts FROM files f JOIN messages m ON m.id = f.msg_id
                     ORDER BY f.msg_id LIMIT ?1";
        doomed.extend(oldest(tx, posts, cutoff, limit)?);
    }
    doomed.sort_unstable();
    doomed.dedup();
    let Some(&newest) = doomed.last() else {
        return Ok(Written::Done(0));
    };
    // The msg_ids of deleted messages are never given again, even if they were the newest.
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('msg_id_floor', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )?
    .execute(params![newest])?;
    let mut files = tx.prepare_cached("SELECT id FROM files WHERE msg_id = ?1")?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    for id in &doomed {
        let ids = files.query_map(params![id], |r| r.get::<_, String>(0))?;
        for file in ids {
            orphans.push(file?);
        }
        delete.execute(params![id])?;
    }
    Ok(Written::Done(doomed.len() as i64))
}

/// The msg_ids at the start of `query`'s rows (id, ts) that are older than `cutoff`.
fn oldest(tx: &Transaction, query: &str, cutoff: i64, limit: usize) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = tx.prepare_cached(query)?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut ids = Vec::new();
    for row in rows {
        let (id, ts) = row?;
        if ts >= cutoff {
            break;
        }
        ids.push(id);
    }
    Ok(ids)
}
