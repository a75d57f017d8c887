//! What a user may list: `group.list` (a page at a time) and `group.members`.
//!
//! `group.list` answers at most [`GROUP_PAGE`] groups, in name order, from a bounded index
//! read; `more` and `next` say where the next page starts. A request without `limit` or
//! `after` (the form of protocol v1) gets the first page, so it still answers, and the work
//! and size of every reply stay bounded however many groups exist.

use serde_json::{json, Value};

use super::groups::allow;
use super::permissions::Action;
use super::protocol::{ErrorCode, GROUP_PAGE};
use super::service::{fail, Identity, Reply, Service};

impl Service {
    pub(super) fn group_members(&mut self, me: &Identity, name: &str) -> Reply {
        let (group, actor) = self.visible_group(me, name)?;
        let action = Action::Members {
            private: group.private,
        };
        allow(actor, action)?;
        let members: Vec<Value> = self
            .store
            .members(group.id)?
            .into_iter()
            .map(|(user, role)| {
                let online = self.online.contains_key(&user);
                json!({ "user": user, "role": role.as_str(), "online": online })
            })
            .collect();
        Ok(json!({ "members": members }))
    }

    /// A page of the public groups and the caller's groups, by name, after `after`.
    pub(super) fn group_list(
        &mut self,
        me: &Identity,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Reply {
        let limit = match limit {
            None => GROUP_PAGE,
            Some(n) if n < 1 => return fail(ErrorCode::BadRequest, "limit is at least 1"),
            Some(n) => (n as u64).min(GROUP_PAGE as u64) as usize,
        };
        let (page, more) = self.store.list_groups(me.id, after.unwrap_or(""), limit)?;
        let next = more.then(|| page.last().map(|g| g.group.name.clone()));
        let groups: Vec<Value> = page
            .into_iter()
            .map(|g| {
                let mut v = json!({
                    "group": g.group.name,
                    "private": g.group.private,
                    "members": g.members,
                });
                if let Some(role) = g.role {
                    v["role"] = json!(role.as_str());
                }
                v
            })
            .collect();
        let mut reply = json!({ "groups": groups, "more": more });
        if let Some(Some(next)) = next {
            reply["next"] = json!(next);
        }
        Ok(reply)
    }
}
