//! The price of naming users who do not exist.
//!
//! `history @name`, `send`, `typing` and `file.upload` to `@name`, and the user of
//! `group.invite`, `group.kick` and `group.role` each tell the caller whether `name` is an
//! account. Left at the command rate, that is a fast way to list every user of the server. So
//! each user has a budget of unknown names, a token bucket of its own ([`Act::UnknownUser`]:
//! `--unknown-user-burst`, refilled at `--unknown-user-rate` per minute) shared by all its
//! connections: an answer of "no such user" takes a token, a name that exists costs nothing.
//! While the bucket is empty, *every* lookup of a user by name answers `rate_limited`, known
//! names too; otherwise the difference between `rate_limited` and `ok` would tell the same thing
//! at the same speed.

use super::protocol::{ErrorCode, Failure};
use super::ratelimit::Act;
use super::service::{fail, Identity, Now, Service};
use crate::store::User;

impl Service {
    /// A user named by the caller (`me`), or `not_found` at the price of a token of the
    /// caller's budget; `rate_limited` while that budget is spent.
    pub(super) fn find_user_for(
        &mut self,
        me: &Identity,
        name: &str,
        now: Now,
    ) -> Result<User, Failure> {
        if !self.per_user.available(me.id, Act::UnknownUser, now.mono) {
            self.metrics.unknown_user_refusals += 1;
            return fail(
                ErrorCode::RateLimited,
                "too many names of users who do not exist; wait a minute",
            );
        }
        let found = self.find_user(name);
        if matches!(&found, Err(f) if f.code == ErrorCode::NotFound) {
            self.per_user.take(me.id, Act::UnknownUser, now.mono);
        }
        found
    }
}
