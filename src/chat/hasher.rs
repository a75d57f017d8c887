//! The password worker: Argon2id hashing and verification off the loop's thread.
//!
//! Hashing is slow on purpose (tens of milliseconds); done on the loop it would stall every
//! client. One worker thread takes jobs from a channel, and hands each result back through a
//! second channel and a [`mio::Waker`], so the loop picks it up as an ordinary event. The
//! thread starts with the first job: a server that never sees a password never starts it.

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use log::error;
use mio::Waker;

/// Argon2id cost settings.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
}

/// Work for the thread.
#[derive(Debug)]
pub enum Work {
    /// Hash a new password.
    Hash(String),
    /// Check a password against a stored hash. `None` (an unknown user) is checked against a
    /// dummy hash, so unknown users cost as much time as wrong passwords.
    Verify(String, Option<String>),
}

/// What came of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The PHC string of a new hash.
    Hashed(String),
    /// Whether the password matched.
    Verified(bool),
    /// Hashing failed (out of memory, bad parameters).
    Failed,
}

/// A result, with the ticket its job was submitted under.
#[derive(Debug)]
pub struct Done {
    /// The ticket given to [`Hasher::submit`].
    pub ticket: u64,
    /// The result.
    pub outcome: Outcome,
}

/// The loop's handle on the worker.
pub struct Hasher {
    cost: Cost,
    waker: Arc<Waker>,
    jobs: Option<Sender<(u64, Work)>>,
    results: Option<Receiver<Done>>,
    in_flight: usize,
}

impl Hasher {
    /// A handle; the thread starts with the first job.
    pub fn new(cost: Cost, waker: Arc<Waker>) -> Hasher {
        Hasher {
            cost,
            waker,
            jobs: None,
            results: None,
            in_flight: 0,
        }
    }

    /// Jobs submitted and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a job. `false` if the worker could not be started or has died.
    pub fn submit(&mut self, ticket: u64, work: Work) -> bool {
        if self.jobs.is_none() && !self.start() {
            return false;
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|tx| tx.send((ticket, work)).is_ok());
        if sent {
            self.in_flight += 1;
        }
        sent
    }

    /// Takes every finished result.
    pub fn collect(&mut self, out: &mut Vec<Done>) {
        let Some(rx) = &self.results else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(done) => {
                    self.in_flight -= 1;
                    out.push(done);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    error!("password worker stopped");
                    self.jobs = None;
                    self.results = None;
                    return;
                }
            }
        }
    }

    fn start(&mut self) -> bool {
        let (job_tx, job_rx) = channel::<(u64, Work)>();
        let (done_tx, done_rx) = channel::<Done>();
        let waker = self.waker.clone();
        let argon = match argon2(self.cost) {
            Some(a) => a,
            None => return false,
        };
        let spawned = thread::Builder::new()
            .name("chatd-passwords".into())
            .spawn(move || {
                let dummy = hash(&argon, "not a password of anyone").unwrap_or_default();
                for (ticket, work) in job_rx {
                    let outcome = match work {
                        Work::Hash(password) => match hash(&argon, &password) {
                            Some(h) => Outcome::Hashed(h),
                            None => Outcome::Failed,
                        },
                        Work::Verify(password, stored) => {
                            let stored = stored.as_deref().unwrap_or(&dummy);
                            let matched = verify(&argon, &password, stored);
                            Outcome::Verified(matched && stored != dummy)
                        }
                    };
                    // Argon2 allocates its memory cost per hash; hand it back to the system so the
                    // server's resident size reflects its connections, not its last login.
                    trim_heap();
                    if done_tx.send(Done { ticket, outcome }).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            });
        if spawned.is_err() {
            return false;
        }
        self.jobs = Some(job_tx);
        self.results = Some(done_rx);
        true
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory at the top of the heap and in free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

fn argon2(cost: Cost) -> Option<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, 1, None).ok()?;
    Some(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash(argon: &Argon2, password: &str) -> Option<String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).ok()?;
    let salt = SaltString::encode_b64(&salt).ok()?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

fn verify(argon: &Argon2, password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| argon.verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Cost = Cost {
        memory_kib: 64,
        iterations: 1,
    };

    #[test]
    fn hash_then_verify() {
        let a = argon2(CHEAP).unwrap();
        let h = hash(&a, "correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&a, "correct horse", &h));
        assert!(!verify(&a, "wrong horse", &h));
        assert!(!verify(&a, "anything", "not a phc string"));
        // a random salt: the same password hashes differently
        assert_ne!(h, hash(&a, "correct horse").unwrap());
    }

    #[test]
    fn worker_reports_through_the_waker() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut hasher = Hasher::new(CHEAP, waker);
        assert!(hasher.submit(7, Work::Hash("password1".into())));
        assert!(hasher.submit(8, Work::Verify("x".repeat(8), None)));
        let mut done = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while done.len() < 2 && std::time::Instant::now() < deadline {
            hasher.collect(&mut done);
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].ticket, 7);
        assert!(matches!(done[0].outcome, Outcome::Hashed(_)));
        assert_eq!(done[1].outcome, Outcome::Verified(false));
        assert_eq!(hasher.in_flight(), 0);
    }
}
