//! Failed logins per account, and the cap on one user's connections.
//!
//! The per-address bucket (in [`accounts`](super::accounts)) stops one address from guessing
//! fast, but many addresses guess in parallel, and a limit per account alone would let anyone
//! lock its owner out by failing on purpose. So failures are counted twice, each in a token
//! bucket that refills over `--login-failure-window`:
//!
//! - per account and client address (`--login-failures-per-account-address`): once empty, that
//!   address gets `rate_limited` for that account without its password being checked, so it
//!   can no longer tell a right guess from a wrong one;
//! - per account, from all addresses (`--login-failures-per-account`): once empty, the account
//!   is *under attack*. Only an address with no failure for it in the window (its pair bucket
//!   full) still gets its password checked: a right one logs in, a wrong one is answered
//!   `rate_limited` and spends that address's freshness. Addresses that failed get
//!   `rate_limited` unchecked.
//!
//! The owner, from any address where they have not mistyped lately, is therefore never locked
//! out, and an attacker's guesses are bounded by the account budget plus one per address per
//! window once it is spent. Unknown names are counted like accounts, so the answers do not tell
//! which names exist. A correct login clears its address's failures for the account; it does not
//! refill the account's budget, which only time does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::hasher::Outcome as Hashed;
use super::protocol::{ErrorCode, Failure};
use super::ratelimit::Bucket;
use super::service::{fail, ConnId, Now, Outcome, Service};
use crate::store::User;

/// Entries a failure map holds before buckets that have refilled are forgotten.
const MAX_ENTRIES: usize = 100_000;

/// The failure budgets of accounts, by name and by name and client address.
#[derive(Debug, Default)]
pub struct LoginGuard {
    accounts: HashMap<String, Bucket>,
    pairs: HashMap<(String, IpAddr), Bucket>,
}

/// The sizes of the budgets and how fast they refill.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Failures per account, all addresses together.
    pub per_account: f64,
    /// Failures per account from one address.
    pub per_pair: f64,
    /// Seconds in which each budget refills completely.
    pub window_secs: f64,
}

/// Whether a login may have its password checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check it; `under_attack` says the account's budget is spent.
    Check {
        /// The account's budget is spent: a wrong password is answered `rate_limited`.
        under_attack: bool,
    },
    /// Refuse with `rate_limited` without checking.
    Refuse,
}

impl Budgets {
    fn account_rate(&self) -> f64 {
        self.per_account / self.window_secs
    }

    fn pair_rate(&self) -> f64 {
        self.per_pair / self.window_secs
    }
}

impl LoginGuard {
    /// Decides whether a login to `name` from `addr` is checked.
    pub fn verdict(&self, b: &Budgets, name: &str, addr: IpAddr, now: Instant) -> Verdict {
        let pair = self.pairs.get(&(name.to_string(), addr));
        if pair.is_some_and(|p| !p.available(b.pair_rate(), b.per_pair, now)) {
            return Verdict::Refuse;
        }
        let under_attack = self.under_attack(b, name, now);
        let fresh = pair.is_none_or(|p| p.is_full(b.pair_rate(), b.per_pair, now));
        if under_attack && !fresh {
            return Verdict::Refuse;
        }
        Verdict::Check { under_attack }
    }

    /// Whether the account's budget, all addresses together, is spent.
    pub fn under_attack(&self, b: &Budgets, name: &str, now: Instant) -> bool {
        self.accounts
            .get(name)
            .is_some_and(|a| !a.available(b.account_rate(), b.per_account, now))
    }

    /// Counts a wrong password for `name` from `addr`.
    pub fn failed(&mut self, b: &Budgets, name: &str, addr: IpAddr, now: Instant) {
        if self.accounts.len() >= MAX_ENTRIES || self.pairs.len() >= MAX_ENTRIES {
            self.forget_refilled(b, now);
        }
        self.accounts
            .entry(name.to_string())
            .or_insert_with(|| Bucket::new(b.per_account, now))
            .take(b.account_rate(), b.per_account, now);
        self.pairs
            .entry((name.to_string(), addr))
            .or_insert_with(|| Bucket::new(b.per_pair, now))
            .take(b.pair_rate(), b.per_pair, now);
    }

    /// A right password for `name` from `addr`: that address is known good again.
    pub fn succeeded(&mut self, name: &str, addr: IpAddr) {
        self.pairs.remove(&(name.to_string(), addr));
    }

    fn forget_refilled(&mut self, b: &Budgets, now: Instant) {
        self.accounts
            .retain(|_, a| !a.is_full(b.account_rate(), b.per_account, now));
        self.pairs
            .retain(|_, p| !p.is_full(b.pair_rate(), b.per_pair, now));
    }
}

impl Service {
    /// Before the password check of a `login`: refuses logins the account's failure budgets
    /// do not allow (see the module documentation).
    pub(super) fn check_account_login(
        &mut self,
        conn: ConnId,
        name: &str,
        now: Now,
    ) -> Result<(), Failure> {
        let addr = self.client_addr(conn);
        let b = self.settings.login_budgets;
        match self.login_guard.verdict(&b, name, addr, now.mono) {
            Verdict::Check { .. } => Ok(()),
            Verdict::Refuse => {
                self.metrics.logins_refused_account += 1;
                fail(ErrorCode::RateLimited, too_many_failures())
            }
        }
    }

    /// After the password check of a `login` for `name` (`user`: the account, if it exists):
    /// the failure is counted, or the user's connection cap is checked before a session is
    /// made.
    pub(super) fn login_checked(
        &mut self,
        conn: ConnId,
        name: &str,
        user: Option<User>,
        since: Option<i64>,
        hashed: Hashed,
        now: Now,
    ) -> Outcome {
        let addr = self.client_addr(conn);
        let b = self.settings.login_budgets;
        let under_attack = self.login_guard.under_attack(&b, name, now.mono);
        match (user, hashed) {
            (Some(user), Hashed::Verified(true)) => {
                self.login_guard.succeeded(name, addr);
                if let Err(f) = self.check_user_cap(name) {
                    return Outcome::Reply(Err(f));
                }
                self.new_session(user, since, now)
            }
            (_, Hashed::Verified(_)) => {
                self.login_guard.failed(&b, name, addr, now.mono);
                if under_attack {
                    self.metrics.logins_refused_account += 1;
                    return Outcome::Reply(fail(ErrorCode::RateLimited, too_many_failures()));
                }
                Outcome::Reply(Err(super::accounts::refused()))
            }
            _ => Outcome::Reply(fail(ErrorCode::Internal, "password hashing failed")),
        }
    }

    /// Whether `name` may have one more authenticated connection (`--max-connections-per-user`).
    pub(super) fn check_user_cap(&mut self, name: &str) -> Result<(), Failure> {
        let cap = self.settings.max_connections_per_user;
        let open = self.online.get(name).map_or(0, Vec::len);
        if cap == 0 || open < cap {
            return Ok(());
        }
        self.metrics.auth_refused_per_user += 1;
        fail(
            ErrorCode::RateLimited,
            format!("too many connections for this user (at most {cap}); close one first"),
        )
    }

    /// The key the connection's client address counts by (see [`Client::ip`](super::client::Client)).
    fn client_addr(&self, conn: ConnId) -> IpAddr {
        self.clients
            .get(&conn)
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.ip)
    }
}

fn too_many_failures() -> &'static str {
    "too many failed logins for this account; wait, or log in from where you have not failed"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const B: Budgets = Budgets {
        per_account: 3.0,
        per_pair: 2.0,
        window_secs: 900.0,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    #[test]
    fn one_address_runs_out_for_one_account_only() {
        let t = Instant::now();
        let mut g = LoginGuard::default();
        let check = Verdict::Check {
            under_attack: false,
        };
        assert_eq!(g.verdict(&B, "ann", ip(1), t), check);
        g.failed(&B, "ann", ip(1), t);
        g.failed(&B, "ann", ip(1), t);
        assert_eq!(g.verdict(&B, "ann", ip(1), t), Verdict::Refuse);
        assert_eq!(g.verdict(&B, "bob", ip(1), t), check);
        assert_eq!(g.verdict(&B, "ann", ip(2), t), check);
        // The pair refills with time.
        let later = t + Duration::from_secs(451);
        assert_eq!(g.verdict(&B, "ann", ip(1), later), check);
    }

    #[test]
    fn an_account_under_attack_still_checks_fresh_addresses() {
        let t = Instant::now();
        let mut g = LoginGuard::default();
        for a in 1..=3 {
            g.failed(&B, "ann", ip(a), t);
        }
        // Addresses that failed are refused unchecked; a fresh one is checked.
        assert_eq!(g.verdict(&B, "ann", ip(1), t), Verdict::Refuse);
        assert_eq!(
            g.verdict(&B, "ann", ip(9), t),
            Verdict::Check { under_attack: true }
        );
        // Its failure spends its freshness.
        g.failed(&B, "ann", ip(9), t);
        assert_eq!(g.verdict(&B, "ann", ip(9), t), Verdict::Refuse);
        // A success clears the address.
        g.succeeded("ann", ip(1));
        assert_eq!(
            g.verdict(&B, "ann", ip(1), t),
            Verdict::Check { under_attack: true }
        );
    }
}
