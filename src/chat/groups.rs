//! Groups: create, join, leave, invite, kick, roles, delete, members, list.
//!
//! Each command that changes a group reads what it needs and checks the rules table
//! ([`permissions`]) on the loop, then joins the batch with its [`Write`]. What others are told
//! (`group.joined`, `group.left`...) and the cached member list change only once the write is
//! committed, so nobody hears of a change that a crash could undo.

use std::rc::Rc;

use serde_json::json;

use super::batch::{plain_result, Then};
use super::names::valid_name;
use super::permissions::{self, Action, Denied};
use super::protocol::{self, ErrorCode, Failure};
use super::service::{fail, Identity, Now, Outcome, Reply, Service};
use crate::store::{Group, GroupId, GroupLimits, Role, User, UserId, Write, Written};

/// A member who came or went, announced once committed.
#[derive(Debug)]
pub struct Change {
    /// The group.
    pub group: Group,
    /// The member.
    pub user: String,
    /// The member's id.
    pub user_id: UserId,
    /// How.
    pub kind: ChangeKind,
}

/// How a member came or went.
#[derive(Debug)]
pub enum ChangeKind {
    /// `group.join`.
    Joined,
    /// `group.leave`.
    Left,
    /// `group.kick`, by this user.
    Kicked(String),
}

const GROUP_NAMES: &str = "group names are 1-32 characters of a-z 0-9 _ . -";

impl Service {
    /// The target's role, or `not_found` when not a member.
    fn member_role(&mut self, group: &Group, user: &User) -> Result<Role, Failure> {
        self.role(group.id, user.id)?.ok_or_else(|| {
            Failure::new(
                ErrorCode::NotFound,
                format!("{} is not a member of {}", user.name, group.name),
            )
        })
    }

    pub(super) fn group_create(
        &mut self,
        me: &Identity,
        name: String,
        private: bool,
        now: Now,
    ) -> Outcome {
        if !valid_name(&name) {
            return Outcome::Reply(fail(ErrorCode::BadRequest, GROUP_NAMES));
        }
        // Ids are given here, in order, and never reused while the server runs: a send accepted
        // for a group deleted meanwhile can never land in a new one.
        let id = self.next_group_id;
        self.next_group_id += 1;
        let write = Write::CreateGroup {
            id,
            name: name.clone(),
            private,
            owner: me.id,
            created_ms: now.wall_ms,
            limits: self.group_limits(),
        };
        let group = Group { id, name, private };
        Outcome::AfterCommit(
            write,
            Then::GroupCreated {
                group,
                owner: (me.id, me.name.clone()),
            },
        )
    }

    pub(super) fn group_created(
        &mut self,
        group: Group,
        (owner_id, owner): (UserId, String),
        written: Result<Written, Failure>,
    ) -> Reply {
        self.limited(written, &format!("group {} exists", group.name), "you")?;
        self.remember_group(&group, owner_id);
        self.members_cache.insert(group.id, Rc::new(vec![owner]));
        Ok(json!({ "group": group.name }))
    }

    pub(super) fn group_join(&mut self, me: &Identity, name: &str) -> Outcome {
        let checked = (|| {
            let (group, actor) = self.visible_group(me, name)?;
            let action = Action::Join {
                private: group.private,
                banned: self.store.is_banned(group.id, me.id)?,
                invited: self.store.is_invited(group.id, me.id)?,
            };
            allow(actor, action)?;
            Ok(group)
        })();
        match checked {
            Ok(group) => membership(
                Write::Join {
                    group: group.id,
                    user: me.id,
                    limits: self.group_limits(),
                },
                Change {
                    group,
                    user: me.name.clone(),
                    user_id: me.id,
                    kind: ChangeKind::Joined,
                },
            ),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    pub(super) fn group_leave(&mut self, me: &Identity, name: &str) -> Outcome {
        let checked = (|| {
            let (group, actor) = self.visible_group(me, name)?;
            allow(actor, Action::Leave)?;
            Ok((group, actor.role.unwrap_or(Role::Member)))
        })();
        match checked {
            Ok((group, role)) => membership(
                Write::RemoveMember {
                    group: group.id,
                    user: me.id,
                    role,
                    ban: false,
                },
                Change {
                    group,
                    user: me.name.clone(),
                    user_id: me.id,
                    kind: ChangeKind::Left,
                },
            ),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    pub(super) fn group_kick(
        &mut self,
        me: &Identity,
        name: &str,
        user: &str,
        ban: bool,
        now: Now,
    ) -> Outcome {
        let checked = (|| {
            let (group, actor) = self.visible_group(me, name)?;
            allow(actor, Action::KickSomeone)?;
            let target = self.find_user_for(me, user, now)?;
            let role = self.member_role(&group, &target)?;
            allow(
                actor,
                Action::Kick {
                    target: role,
                    is_self: target.id == me.id,
                },
            )?;
            Ok((group, target, role))
        })();
        match checked {
            Ok((group, target, role)) => membership(
                Write::RemoveMember {
                    group: group.id,
                    user: target.id,
                    role,
                    ban,
                },
                Change {
                    group,
                    user: target.name,
                    user_id: target.id,
                    kind: ChangeKind::Kicked(me.name.clone()),
                },
            ),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    /// A join, leave or kick is committed: the cached member list follows, and the group (with
    /// every connection of the member concerned) hears of it.
    pub(super) fn membership_changed(
        &mut self,
        change: Change,
        written: Result<Written, Failure>,
    ) -> Reply {
        self.limited(written, "", "you")?;
        let Change {
            group,
            user,
            user_id,
            kind,
        } = change;
        let joined = matches!(kind, ChangeKind::Joined);
        self.cache_membership(group.id, &user, joined);
        self.remember_role(group.id, user_id, joined.then_some(Role::Member));
        let (event, by) = match kind {
            ChangeKind::Joined => ("group.joined", None),
            ChangeKind::Left => ("group.left", None),
            ChangeKind::Kicked(by) => {
                let kicked =
                    protocol::event("group.kicked", json!({ "group": group.name, "by": by }));
                self.broadcast(self.conns_of(&user), &kicked);
                ("group.left", Some(by))
            }
        };
        let members = self.members_of(group.id)?.len();
        self.announce_membership(
            (group.id, &group.name),
            &user,
            event,
            by.as_deref(),
            members,
        );
        Ok(json!({}))
    }

    pub(super) fn group_invite(
        &mut self,
        me: &Identity,
        name: &str,
        user: &str,
        now: Now,
    ) -> Outcome {
        let checked = (|| {
            let (group, actor) = self.visible_group(me, name)?;
            allow(actor, Action::Invite)?;
            let target = self.find_user_for(me, user, now)?;
            if self.store.role(group.id, target.id)?.is_some() {
                return fail(ErrorCode::Conflict, format!("{user} is already a member"));
            }
            Ok((group, target))
        })();
        match checked {
            Ok((group, target)) => Outcome::AfterCommit(
                Write::Invite {
                    group: group.id,
                    user: target.id,
                },
                Then::Invited {
                    group,
                    user: target.name,
                    by: me.name.clone(),
                },
            ),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    pub(super) fn invited(
        &mut self,
        group: Group,
        user: String,
        by: String,
        written: Result<Written, Failure>,
    ) -> Reply {
        plain_result(written, "")?;
        let event = protocol::event("group.invited", json!({ "group": group.name, "by": by }));
        self.broadcast(self.conns_of(&user), &event);
        Ok(json!({}))
    }

    pub(super) fn group_role(
        &mut self,
        me: &Identity,
        (name, user, role): (&str, &str, &str),
        now: Now,
    ) -> Outcome {
        self.check_role(me, (name, user, role), now)
            .unwrap_or_else(|f| Outcome::Reply(Err(f)))
    }

    /// The write for a role change, and the roles to announce: handing ownership over makes
    /// the old owner an admin.
    fn check_role(
        &mut self,
        me: &Identity,
        (name, user, role): (&str, &str, &str),
        now: Now,
    ) -> Result<Outcome, Failure> {
        let Some(new) = Role::parse(role) else {
            return fail(ErrorCode::BadRequest, "role is member, admin or owner");
        };
        let (group, actor) = self.visible_group(me, name)?;
        allow(actor, Action::ChangeRoles)?;
        let target = self.find_user_for(me, user, now)?;
        let current = self.member_role(&group, &target)?;
        allow(
            actor,
            Action::SetRole {
                target: current,
                new,
                is_self: target.id == me.id,
            },
        )?;
        let mut changes = vec![(target.name.clone(), new)];
        if new != Role::Owner || current == Role::Owner {
            let write = Write::SetRole {
                group: group.id,
                user: target.id,
                from: current,
                to: new,
            };
            return Ok(Outcome::AfterCommit(
                write,
                Then::RolesChanged { group, changes },
            ));
        }
        let owner = self
            .store
            .members(group.id)?
            .into_iter()
            .find(|(_, r)| *r == Role::Owner)
            .map(|(n, _)| n);
        let Some(owner) = owner else {
            return fail(ErrorCode::Internal, "group has no owner");
        };
        let owner = self.find_user(&owner)?;
        changes.push((owner.name, Role::Admin));
        let write = Write::TransferOwnership {
            group: group.id,
            from: owner.id,
            to: target.id,
            limits: self.group_limits(),
        };
        Ok(Outcome::AfterCommit(
            write,
            Then::RolesChanged { group, changes },
        ))
    }

    pub(super) fn roles_changed(
        &mut self,
        group: Group,
        changes: Vec<(String, Role)>,
        written: Result<Written, Failure>,
    ) -> Reply {
        // Only a hand-over can cross a limit: of the new owner, named first.
        let new_owner = changes.first().map_or("", |(name, _)| name.as_str());
        self.limited(written, "", new_owner)?;
        self.forget_group(&group, false);
        let members = self.members_of(group.id)?;
        let conns = self.conns_of_names(&members);
        for (user, role) in changes {
            let event = protocol::event(
                "group.role",
                json!({ "group": group.name, "user": user, "role": role.as_str() }),
            );
            self.broadcast(conns.clone(), &event);
        }
        Ok(json!({}))
    }

    pub(super) fn group_delete(&mut self, me: &Identity, name: &str) -> Outcome {
        let checked = (|| {
            let (group, actor) = self.visible_group(me, name)?;
            allow(actor, Action::Delete)?;
            let members = self.members_of(group.id)?.to_vec();
            Ok((group, members))
        })();
        match checked {
            Ok((group, members)) => Outcome::AfterCommit(
                Write::DeleteGroup { group: group.id },
                Then::GroupDeleted {
                    group,
                    members,
                    by: me.name.clone(),
                },
            ),
            Err(f) => Outcome::Reply(Err(f)),
        }
    }

    pub(super) fn group_deleted(
        &mut self,
        group: Group,
        members: Vec<String>,
        by: String,
        written: Result<Written, Failure>,
    ) -> Reply {
        plain_result(written, "")?;
        self.forget_group(&group, true);
        // Its files went with it: stored bytes are read again when next needed.
        self.stored_bytes.clear();
        // Everyone who was a member when it went hears of it (the cache has the latest list).
        let members = match self.members_cache.remove(&group.id) {
            Some(cached) => cached.to_vec(),
            None => members,
        };
        let event = protocol::event("group.deleted", json!({ "group": group.name, "by": by }));
        self.broadcast(self.conns_of_names(&members), &event);
        Ok(json!({}))
    }

    /// Keeps a cached member list in step with a committed join (`member`) or departure, so
    /// that a large group's list is not read back from the store after every change.
    fn cache_membership(&mut self, group: GroupId, name: &str, member: bool) {
        let Some(list) = self.members_cache.get_mut(&group) else {
            return;
        };
        let list = Rc::make_mut(list);
        if !member {
            list.retain(|n| n != name);
        } else if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }

    /// A group's members by name, from the cache or, the first time, from the store.
    pub(super) fn members_of(&mut self, group: GroupId) -> Result<Rc<Vec<String>>, Failure> {
        if let Some(m) = self.members_cache.get(&group) {
            return Ok(m.clone());
        }
        let names: Vec<String> = self
            .store
            .members(group)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let names = Rc::new(names);
        self.members_cache.insert(group, names.clone());
        Ok(names)
    }
}

impl Service {
    /// The per-user group limits in force, for the writes that could cross them.
    fn group_limits(&self) -> GroupLimits {
        GroupLimits {
            member_of: self.settings.max_groups_per_user,
            owner_of: self.settings.max_owned_groups_per_user,
        }
    }

    /// The reply to a write that may take `who` over a group limit (`forbidden`, counted), or
    /// as [`plain_result`] says.
    fn limited(&mut self, written: Result<Written, Failure>, conflict: &str, who: &str) -> Reply {
        let Ok(Written::TooManyGroups { owned }) = written else {
            return plain_result(written, conflict);
        };
        self.metrics.group_limit_refusals += 1;
        let why = if owned {
            let max = self.settings.max_owned_groups_per_user;
            format!("{who} would own more than {max} groups, the limit per user")
        } else {
            let max = self.settings.max_groups_per_user;
            format!("{who} would be in more than {max} groups, the limit per user")
        };
        fail(ErrorCode::Forbidden, why)
    }
}

fn membership(write: Write, change: Change) -> Outcome {
    Outcome::AfterCommit(write, Then::Membership(change))
}

/// The rules table's verdict as a refusal.
pub(super) fn allow(actor: permissions::Actor, action: Action) -> Result<(), Failure> {
    permissions::check(actor, action).map_err(|d| match d {
        Denied::Hidden => Failure::new(ErrorCode::NotFound, "no such group"),
        Denied::Forbidden(why) => Failure::new(ErrorCode::Forbidden, why),
        Denied::Conflict(why) => Failure::new(ErrorCode::Conflict, why),
    })
}
