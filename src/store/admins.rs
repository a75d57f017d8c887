//! Server admins: a mark on an account that only the operator sets, from the command line on
//! the data dir (`chatd admin`), never the server itself. The loop only reads it.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::{Result, Store, UserId};

/// How long an operator command waits for the server's writer to release the database.
const OPERATOR_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Whether the user is a server admin now.
    pub fn is_server_admin(&self, user: UserId) -> Result<bool> {
        Ok(self
            .db
            .prepare_cached("SELECT 1 FROM server_admins WHERE user_id = ?1")?
            .query_row(params![user], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The names of the server admins, in name order.
    pub fn server_admins(&self) -> Result<Vec<String>> {
        let mut stmt = self.db.prepare_cached(
            "SELECT u.name FROM server_admins a JOIN users u ON u.id = a.user_id ORDER BY u.name",
        )?;
        let names = stmt.query_map([], |r| r.get(0))?;
        Ok(names.collect::<rusqlite::Result<_>>()?)
    }

    /// Makes the account `name` a server admin (`admin`) or not; `Ok(None)` when there is no
    /// such account, else whether anything changed. For operator commands: it writes on this
    /// connection, outside the writer's batches.
    pub fn set_server_admin(&self, name: &str, admin: bool, now_ms: i64) -> Result<Option<bool>> {
        self.db.busy_timeout(OPERATOR_BUSY_TIMEOUT)?;
        let Some(user) = self.user(name)? else {
            return Ok(None);
        };
        let changed = if admin {
            self.db
                .prepare_cached(
                    "INSERT OR IGNORE INTO server_admins (user_id, granted_ms) VALUES (?1, ?2)",
                )?
                .execute(params![user.id, now_ms])?
        } else {
            self.db
                .prepare_cached("DELETE FROM server_admins WHERE user_id = ?1")?
                .execute(params![user.id])?
        };
        Ok(Some(changed > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Batch, Write, Written};
    use super::*;

    #[test]
    fn only_existing_accounts_are_granted_and_revocation_is_immediate() {
        let mut s = Store::open_in_memory().unwrap();
        let written = s
            .apply(Batch {
                writes: vec![Write::CreateUser {
                    name: "root".into(),
                    password: None,
                    created_ms: 1,
                }],
            })
            .unwrap()
            .0;
        let [Written::Done(root)] = written[..] else {
            panic!("{written:?}")
        };
        assert!(!s.is_server_admin(root).unwrap());
        assert_eq!(s.set_server_admin("nobody", true, 5).unwrap(), None);
        assert_eq!(s.set_server_admin("root", true, 5).unwrap(), Some(true));
        assert_eq!(s.set_server_admin("root", true, 6).unwrap(), Some(false));
        assert!(s.is_server_admin(root).unwrap());
        assert_eq!(s.server_admins().unwrap(), vec!["root".to_string()]);
        assert_eq!(s.set_server_admin("root", false, 7).unwrap(), Some(true));
        assert!(!s.is_server_admin(root).unwrap());
        assert!(s.server_admins().unwrap().is_empty());
    }
}
