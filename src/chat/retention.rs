//! Retention: with `--message-retention` or `--file-retention`, a prune of what has passed its
//! age joins the batch every so often, and is committed with the iteration's other writes on the
//! store writer, never on the loop.

use std::time::Duration;

use log::{info, warn};

use super::batch::Then;
use super::protocol::Failure;
use super::service::{Now, Service, GONE};
use crate::store::{Write, Written};

/// Messages one prune deletes at most (of each kind); a full prune is followed by another at
/// the next iteration, so a backlog goes in steps of this size.
pub const PRUNE_LIMIT: usize = 1000;

/// How often a prune runs at most (more often for retentions under two minutes).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Service {
    /// Adds a prune to the gathering batch when one is due and none is out.
    pub(super) fn prune_if_due(&mut self, now: Now) {
        let (messages, files) = (
            self.settings.message_retention,
            self.settings.file_retention,
        );
        let Some(shortest) = messages.into_iter().chain(files).min() else {
            return;
        };
        if self.pruning || self.next_prune.is_some_and(|at| now.mono < at) {
            return;
        }
        let every = (shortest / 2).clamp(Duration::from_millis(100), PRUNE_EVERY);
        self.next_prune = Some(now.mono + every);
        self.pruning = true;
        let before = |age: Duration| now.wall_ms.saturating_sub(age.as_millis() as i64);
        let write = Write::Prune {
            messages_before: messages.map(before),
            files_before: files.map(before),
            limit: PRUNE_LIMIT,
        };
        self.join_batch(GONE, None, Some(write), Then::Pruned);
    }

    /// A prune's outcome: stored-byte counts are read again, and a full prune goes on at once.
    pub(super) fn pruned(&mut self, written: Result<Written, Failure>) {
        self.pruning = false;
        match written {
            Ok(Written::Done(0)) => {}
            Ok(Written::Done(n)) => {
                info!("retention: deleted {n} messages");
                self.metrics.pruned += n as u64;
                self.stored_bytes.clear();
                if n as usize >= PRUNE_LIMIT {
                    self.next_prune = None;
                }
            }
            Ok(other) => warn!("retention: unexpected result {other:?}"),
            Err(f) => warn!("retention: {}", f.message),
        }
    }
}
