//! What the loop remembers of the store: users, groups and roles, so that a `send` or `typing`
//! reads nothing from the database.
//!
//! Every change to groups and roles goes through the service and reaches the directory once its
//! commit is back (see [`super::groups`]); users are never renamed or removed. So an entry, once
//! read, stays true. Misses read the store; what is absent is not remembered. Each map is
//! bounded: past [`MAX_ENTRIES`] it is emptied and refills from the store.

use std::collections::HashMap;

use super::names::valid_name;
use super::permissions::{self, Action, Actor};
use super::protocol::{ErrorCode, Failure};
use super::service::{fail, Identity, Service};
use crate::store::{Group, GroupId, Role, User, UserId};

/// Entries per map before it is emptied.
pub const MAX_ENTRIES: usize = 100_000;

/// The remembered users, groups and roles.
#[derive(Debug, Default)]
pub struct Directory {
    users: HashMap<String, UserId>,
    groups: HashMap<String, Group>,
    roles: HashMap<(GroupId, UserId), Role>,
}

/// The one answer for a group the caller may not know of, whether it exists or not.
fn no_group(name: &str) -> Failure {
    Failure::new(ErrorCode::NotFound, format!("no group {name}"))
}

fn bounded<K, V>(map: &mut HashMap<K, V>) -> &mut HashMap<K, V> {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map
}

impl Service {
    /// A user by name (without the password hash), or `not_found`.
    pub(super) fn find_user(&mut self, name: &str) -> Result<User, Failure> {
        if !valid_name(name) {
            return fail(
                ErrorCode::BadRequest,
                "user names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        let id = match self.directory.users.get(name) {
            Some(&id) => id,
            None => {
                let found = self.store.user(name)?;
                let user = found
                    .ok_or_else(|| Failure::new(ErrorCode::NotFound, format!("no user {name}")))?;
                bounded(&mut self.directory.users).insert(user.name.clone(), user.id);
                user.id
            }
        };
        Ok(User {
            id,
            name: name.to_string(),
            password: None,
        })
    }

    /// A group by name, or `not_found`.
    pub(super) fn find_group(&mut self, name: &str) -> Result<Group, Failure> {
        if !valid_name(name) {
            return fail(
                ErrorCode::BadRequest,
                "group names are 1-32 characters of a-z 0-9 _ . -",
            );
        }
        if let Some(group) = self.directory.groups.get(name) {
            return Ok(group.clone());
        }
        let found = self.store.group(name)?;
        let group = found.ok_or_else(|| no_group(name))?;
        bounded(&mut self.directory.groups).insert(group.name.clone(), group.clone());
        Ok(group)
    }

    /// A group as the caller may know it, with the caller's standing in it. A private group is
    /// visible to its members, the users it invited and server admins; to anyone else it
    /// answers exactly as a group that does not exist.
    pub(super) fn visible_group(
        &mut self,
        me: &Identity,
        name: &str,
    ) -> Result<(Group, Actor), Failure> {
        let group = self.find_group(name)?;
        let actor = self.actor(me, &group)?;
        let invited = group.private
            && actor.role.is_none()
            && !actor.server_admin
            && self.store.is_invited(group.id, me.id)?;
        let see = Action::See {
            private: group.private,
            invited,
        };
        match permissions::check(actor, see) {
            Ok(()) => Ok((group, actor)),
            Err(_) => Err(no_group(name)),
        }
    }

    /// A user's role in a group, if a member.
    pub(super) fn role(&mut self, group: GroupId, user: UserId) -> Result<Option<Role>, Failure> {
        if let Some(&role) = self.directory.roles.get(&(group, user)) {
            return Ok(Some(role));
        }
        let role = self.store.role(group, user)?;
        if let Some(role) = role {
            bounded(&mut self.directory.roles).insert((group, user), role);
        }
        Ok(role)
    }

    /// The caller's standing in a group.
    pub(super) fn actor(&mut self, me: &Identity, group: &Group) -> Result<Actor, Failure> {
        Ok(Actor {
            role: self.role(group.id, me.id)?,
            // Read again, so that the operator's revocation applies at once; only accounts that
            // were admins when they authenticated pay for the read.
            server_admin: me.admin && self.store.is_server_admin(me.id)?,
        })
    }

    /// A user the loop just created.
    pub(super) fn remember_user(&mut self, user: &User) {
        bounded(&mut self.directory.users).insert(user.name.clone(), user.id);
    }

    /// A committed change of one member's role (`None`: no longer a member).
    pub(super) fn remember_role(&mut self, group: GroupId, user: UserId, role: Option<Role>) {
        match role {
            Some(role) => {
                bounded(&mut self.directory.roles).insert((group, user), role);
            }
            None => {
                self.directory.roles.remove(&(group, user));
            }
        }
    }

    /// A committed group, with its owner.
    pub(super) fn remember_group(&mut self, group: &Group, owner: UserId) {
        bounded(&mut self.directory.groups).insert(group.name.clone(), group.clone());
        self.remember_role(group.id, owner, Some(Role::Owner));
    }

    /// A group deleted, or whose roles changed in ways simpler to read again.
    pub(super) fn forget_group(&mut self, group: &Group, deleted: bool) {
        // The name may already stand for a new group.
        if deleted && self.directory.groups.get(&group.name).map(|g| g.id) == Some(group.id) {
            self.directory.groups.remove(&group.name);
        }
        self.directory.roles.retain(|(g, _), _| *g != group.id);
    }
}
