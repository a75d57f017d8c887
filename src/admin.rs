//! Operator commands on the data dir (`chatd admin grant|revoke|list`): they open the store,
//! do one thing and exit. SQLite's write-ahead log lets them run beside a running server.

use std::path::Path;

use crate::chat::names::valid_name;
use crate::config::AdminCommand;
use crate::store::Store;

/// Runs one `chatd admin` command; the text for the operator, or why it failed.
pub fn run(data_dir: &Path, command: &AdminCommand) -> Result<String, String> {
    // A mistyped path would otherwise get a new, empty database.
    if !data_dir.join("chatd.db").is_file() {
        return Err(format!(
            "no chatd database in {} (see --data-dir)",
            data_dir.display()
        ));
    }
    let store = Store::open(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let now = crate::chat::now_ms();
    let (name, admin) = match command {
        AdminCommand::List => {
            let names = store.server_admins().map_err(|e| e.to_string())?;
            return Ok(names.join("\n"));
        }
        AdminCommand::Grant { name } => (name, true),
        AdminCommand::Revoke { name } => (name, false),
    };
    if !valid_name(name) {
        return Err(format!(
            "{name:?} is not a user name (1-32 characters of a-z 0-9 _ . -)"
        ));
    }
    let changed = store
        .set_server_admin(name, admin, now)
        .map_err(|e| e.to_string())?;
    match (changed, admin) {
        (None, _) => Err(format!(
            "no account {name}: it is made by register, or by its first JWT sign-in"
        )),
        (Some(true), true) => Ok(format!(
            "{name} is a server admin (from its next login or auth)"
        )),
        (Some(false), true) => Ok(format!("{name} was a server admin already")),
        (Some(true), false) => Ok(format!("{name} is no longer a server admin")),
        (Some(false), false) => Ok(format!("{name} was not a server admin")),
    }
}
