//! The store writer: one thread that commits the loop's batches, so that the loop never waits
//! on the disk.
//!
//! The loop hands it one [`Batch`] at a time and goes on serving; while the writer commits
//! batch N, the loop gathers batch N+1. The writer syncs uploaded files, runs the transaction
//! (with `--sync full`, its disk sync), and removes the files the batch orphaned. Each result
//! goes back through a channel and a [`mio::Waker`], so it reaches the loop as an ordinary
//! event, the way the password worker's results do.
//!
//! The writer also runs the WAL checkpoints (copying the log into the database file, with its
//! disk syncs): after it has reported a commit, at most every [`CHECKPOINT_INTERVAL`], and when
//! it has been idle for that long with commits not yet copied. So a checkpoint never holds a
//! result back; it can only delay the next commit, while the loop gathers a bigger batch.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, warn};
use mio::Waker;

use super::write::{self, Batch, Written};
use super::{Result, Store, StoreError};

/// How often the writer checkpoints while commits keep coming, and how long it waits idle
/// before it checkpoints what is left. A checkpoint holds the next commit back for as long as
/// it takes (mostly the disk syncs of the log and the database), so this sets the longest
/// stall: at about 100,000 messages a second a 100 ms interval made 28 ms checkpoints, 20 ms
/// makes 10 ms ones, for about a tenth less throughput (docs/benchmarks.md).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

/// A batch's outcome.
#[derive(Debug)]
pub struct Committed {
    /// One result per write, in order; or the error that failed the whole batch.
    pub results: Result<Vec<Written>>,
    /// How long the commit took on the writer (file syncs included).
    pub took: Duration,
}

/// The loop's handle on the writer thread.
pub struct Writer {
    jobs: Option<Sender<Batch>>,
    done: Receiver<Committed>,
    thread: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl Writer {
    /// Starts the thread with its own connection to the database. Orphaned files are removed
    /// from `files_dir`.
    pub fn start(store: Store, files_dir: PathBuf, waker: Arc<Waker>) -> std::io::Result<Writer> {
        let (job_tx, job_rx) = channel::<Batch>();
        let (done_tx, done_rx) = channel::<Committed>();
        let thread = thread::Builder::new()
            .name("chatd-store".into())
            .spawn(move || run(store, &files_dir, &job_rx, &done_tx, &waker))?;
        Ok(Writer {
            jobs: Some(job_tx),
            done: done_rx,
            thread: Some(thread),
            in_flight: false,
        })
    }

    /// Whether a batch may be handed over now (one is committed at a time).
    pub fn is_idle(&self) -> bool {
        !self.in_flight
    }

    /// Hands a batch over. If the thread has died, the batch comes back at once as failed.
    pub fn submit(&mut self, batch: Batch) -> Option<Committed> {
        debug_assert!(!self.in_flight, "one batch at a time");
        let sent = self.jobs.as_ref().map(|tx| tx.send(batch));
        match sent {
            Some(Ok(())) => {
                self.in_flight = true;
                None
            }
            Some(Err(_)) | None => Some(Committed {
                results: Err(StoreError::Unavailable("the store writer stopped".into())),
                took: Duration::ZERO,
            }),
        }
    }

    /// The batch's outcome, once the writer is done with it.
    pub fn collect(&mut self) -> Option<Committed> {
        if !self.in_flight {
            return None;
        }
        match self.done.try_recv() {
            Ok(c) => {
                self.in_flight = false;
                Some(c)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                error!("store writer stopped");
                self.in_flight = false;
                self.jobs = None;
                Some(Committed {
                    results: Err(StoreError::Unavailable("the store writer stopped".into())),
                    took: Duration::ZERO,
                })
            }
        }
    }
}

impl Writer {
    /// Waits for the batch out, if any (at exit only: the loop never blocks on the writer
    /// while it serves).
    pub fn wait(&mut self) -> Option<Committed> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        Some(self.done.recv().unwrap_or_else(|_| Committed {
            results: Err(StoreError::Unavailable("the store writer stopped".into())),
            took: Duration::ZERO,
        }))
    }
}

impl Drop for Writer {
    /// Lets the batch in flight finish before the process goes on to exit.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut store: Store,
    files_dir: &std::path::Path,
    jobs: &Receiver<Batch>,
    done: &Sender<Committed>,
    waker: &Waker,
) {
    // If this thread dies (a panic in SQLite's hands), the loop must still hear of it: its
    // `collect` then finds the channel closed and fails the batch instead of waiting forever.
    let _wake_on_exit = WakeOnDrop(waker);
    if let Err(e) = store.checkpoint_by_hand() {
        warn!("automatic checkpoints stay on: {e}");
    }
    let mut last_checkpoint = Instant::now();
    let mut uncopied = false;
    loop {
        // Idle with nothing to copy, it sleeps until the next batch.
        let next = match uncopied {
            true => jobs.recv_timeout(CHECKPOINT_INTERVAL),
            false => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let batch = match next {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                if uncopied {
                    checkpoint(&store);
                    (last_checkpoint, uncopied) = (Instant::now(), false);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let started = Instant::now();
        let files = write::files_of(&batch);
        let (results, orphans) = match store.apply(batch) {
            Ok((results, orphans)) => (Ok(results), orphans),
            // Nothing was stored: the synced files have no message.
            Err(e) => (Err(e), files),
        };
        for id in orphans {
            let _ = std::fs::remove_file(files_dir.join(&id));
        }
        let took = started.elapsed();
        if done.send(Committed { results, took }).is_err() {
            return;
        }
        if let Err(e) = waker.wake() {
            warn!("store writer could not wake the loop: {e}");
        }
        uncopied = true;
        if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            checkpoint(&store);
            (last_checkpoint, uncopied) = (Instant::now(), false);
        }
    }
    if uncopied {
        checkpoint(&store);
    }
}

struct WakeOnDrop<'a>(&'a Waker);

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.wake();
    }
}

fn checkpoint(store: &Store) {
    if let Err(e) = store.checkpoint() {
        warn!("checkpoint failed: {e}");
    }
}
