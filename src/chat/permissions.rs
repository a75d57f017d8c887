//! Who may do what in a group: protocol v1's rules in one table.
//!
//! | action            | who may                                                        |
//! |-------------------|----------------------------------------------------------------|
//! | see               | public: anyone; private: members and invited users (others are told it does not exist) |
//! | join              | public: anyone not banned; private: only with an invitation    |
//! | leave             | any member but the owner (who hands over or deletes first)     |
//! | invite            | owner, admin                                                   |
//! | kick              | owner: anyone but itself; admin: members only; nobody: the owner |
//! | role              | owner only; giving `owner` hands over, the old owner becomes admin |
//! | delete            | owner                                                          |
//! | members           | public group: any user; private: members                       |
//! | send, history     | members                                                        |
//!
//! A server admin (granted by the operator, `chatd admin grant`) may do in any group what its
//! owner may.
//!
//! The caller's standing is checked before anything about a target is read: `see` comes first
//! for every command that names a group, and kick and role changes check the caller's rights
//! ([`Action::KickSomeone`], [`Action::ChangeRoles`]) before the target is looked up. So an
//! outsider's answer never depends on who is a member.
//!
//! Each rule is a pure function of the actor's standing and the target's; [`check`] reads like
//! the table. The service looks up the facts (roles, bans, invitations) and asks.

use crate::store::Role;

/// The actor's standing in one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor {
    /// The actor's role, if a member.
    pub role: Option<Role>,
    /// A server admin (granted by the operator).
    pub server_admin: bool,
}

impl Actor {
    /// The role the rules treat the actor as having: a server admin counts as the owner.
    fn effective(self) -> Option<Role> {
        if self.server_admin {
            Some(Role::Owner)
        } else {
            self.role
        }
    }
}

/// An action on a group, with the facts about its target that the rules need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Learn that the group exists: the first check of every command that names it.
    See {
        /// The group is private.
        private: bool,
        /// The actor holds an invitation.
        invited: bool,
    },
    /// Join the group.
    Join {
        /// The group is private.
        private: bool,
        /// The actor is banned.
        banned: bool,
        /// The actor holds an invitation.
        invited: bool,
    },
    /// Leave the group.
    Leave,
    /// Invite someone.
    Invite,
    /// The caller's side of a kick, checked before the target is looked up.
    KickSomeone,
    /// Remove a member whose role is `target`; `is_self` when the actor names itself.
    Kick {
        /// The target's role.
        target: Role,
        /// The actor kicks itself.
        is_self: bool,
    },
    /// The caller's side of a role change, checked before the target is looked up.
    ChangeRoles,
    /// Give a member (role `target`) the role `new`.
    SetRole {
        /// The target's current role.
        target: Role,
        /// The role to give.
        new: Role,
        /// The actor names itself.
        is_self: bool,
    },
    /// Delete the group.
    Delete,
    /// List the members.
    Members {
        /// The group is private.
        private: bool,
    },
    /// Post to or read the group's conversation.
    Converse,
}

/// Why an action is refused. `Forbidden` answers `forbidden`; the others say which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The group is private and the actor an outsider: answered as if it did not exist.
    Hidden,
    /// Not allowed, with the rule in words.
    Forbidden(&'static str),
    /// Already the case (joining twice).
    Conflict(&'static str),
}

/// Checks an action against the table above.
pub fn check(actor: Actor, action: Action) -> Result<(), Denied> {
    use Denied::{Conflict, Forbidden};
    use Role::{Admin, Member, Owner};
    let role = actor.effective();
    match action {
        Action::See { private: false, .. } | Action::See { invited: true, .. } => Ok(()),
        Action::See { .. } => match role {
            Some(_) => Ok(()),
            None => Err(Denied::Hidden),
        },

        Action::Join { .. } if actor.role.is_some() => Err(Conflict("already a member")),
        Action::Join {
            banned: true,
            invited: false,
            ..
        } => Err(Forbidden("banned from this group")),
        Action::Join {
            private: true,
            invited: false,
            ..
        } => Err(Forbidden("a private group needs an invitation")),
        Action::Join { .. } => Ok(()),

        Action::Leave => match actor.role {
            None => Err(Forbidden("not a member")),
            Some(Owner) => Err(Forbidden(
                "the owner must hand over ownership or delete the group first",
            )),
            Some(_) => Ok(()),
        },

        Action::Invite => match role {
            Some(Owner | Admin) => Ok(()),
            _ => Err(Forbidden("only the owner or an admin may invite")),
        },

        Action::KickSomeone => match role {
            Some(Owner | Admin) => Ok(()),
            _ => Err(Forbidden("only the owner or an admin may kick")),
        },
        Action::Kick { target: Owner, .. } => {
            Err(Forbidden("nobody kicks the owner; hand over first"))
        }
        Action::Kick { is_self: true, .. } => Err(Forbidden("use group.leave to leave")),
        Action::Kick { target, .. } => match (role, target) {
            (Some(Owner), _) => Ok(()),
            (Some(Admin), Member) => Ok(()),
            (Some(Admin), _) => Err(Forbidden("an admin may kick members only")),
            _ => Err(Forbidden("only the owner or an admin may kick")),
        },

        Action::ChangeRoles | Action::SetRole { .. } if role != Some(Owner) => {
            Err(Forbidden("only the owner may change roles"))
        }
        Action::SetRole {
            target: Owner, new, ..
        } if new != Owner => Err(Forbidden(
            "the owner's role changes only by handing ownership to another member",
        )),
        Action::ChangeRoles | Action::SetRole { .. } => Ok(()),

        Action::Delete => match role {
            Some(Owner) => Ok(()),
            _ => Err(Forbidden(
                "only the owner or a server admin may delete a group",
            )),
        },

        Action::Members { private: false } => Ok(()),
        Action::Members { private: true } => match role {
            Some(_) => Ok(()),
            None => Err(Forbidden(
                "members of a private group are visible to its members only",
            )),
        },

        // Membership itself, not standing: a server admin posts only where it is a member.
        Action::Converse => match actor.role {
            Some(_) => Ok(()),
            None => Err(Forbidden("not a member of this group")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Admin, Member, Owner};

    fn as_role(role: Option<Role>) -> Actor {
        Actor {
            role,
            server_admin: false,
        }
    }
    const ADMIN_OF_SERVER: Actor = Actor {
        role: None,
        server_admin: true,
    };

    fn kick(target: Role) -> Action {
        Action::Kick {
            target,
            is_self: false,
        }
    }

    #[test]
    fn member_cannot_kick_admin_cannot_kick_admin_owner_kicks_all_but_itself() {
        assert!(check(as_role(Some(Member)), kick(Member)).is_err());
        assert!(check(as_role(Some(Admin)), kick(Member)).is_ok());
        assert!(check(as_role(Some(Admin)), kick(Admin)).is_err());
        assert!(check(as_role(Some(Admin)), kick(Owner)).is_err());
        assert!(check(as_role(Some(Owner)), kick(Admin)).is_ok());
        assert!(check(as_role(Some(Owner)), kick(Member)).is_ok());
        assert!(check(
            as_role(Some(Owner)),
            Action::Kick {
                target: Owner,
                is_self: true
            }
        )
        .is_err());
        assert!(check(ADMIN_OF_SERVER, kick(Admin)).is_ok());
        assert!(check(ADMIN_OF_SERVER, kick(Owner)).is_err());
        assert!(check(as_role(None), kick(Member)).is_err());
    }

    #[test]
    fn owner_cannot_leave_others_can() {
        assert!(check(as_role(Some(Owner)), Action::Leave).is_err());
        assert!(check(as_role(Some(Admin)), Action::Leave).is_ok());
        assert!(check(as_role(Some(Member)), Action::Leave).is_ok());
        assert!(check(as_role(None), Action::Leave).is_err());
    }

    #[test]
    fn joining() {
        let join = |private, banned, invited| Action::Join {
            private,
            banned,
            invited,
        };
        assert!(check(as_role(None), join(false, false, false)).is_ok());
        assert!(check(as_role(None), join(false, true, false)).is_err());
        assert!(check(as_role(None), join(true, false, false)).is_err());
        assert!(check(as_role(None), join(true, false, true)).is_ok());
        // an invitation clears a ban (the store removes the ban; the rule agrees)
        assert!(check(as_role(None), join(true, true, true)).is_ok());
        assert_eq!(
            check(as_role(Some(Member)), join(false, false, false)),
            Err(Denied::Conflict("already a member"))
        );
    }

    #[test]
    fn invite_and_delete() {
        assert!(check(as_role(Some(Owner)), Action::Invite).is_ok());
        assert!(check(as_role(Some(Admin)), Action::Invite).is_ok());
        assert!(check(as_role(Some(Member)), Action::Invite).is_err());
        assert!(check(as_role(Some(Owner)), Action::Delete).is_ok());
        assert!(check(as_role(Some(Admin)), Action::Delete).is_err());
        assert!(check(ADMIN_OF_SERVER, Action::Delete).is_ok());
    }

    #[test]
    fn roles() {
        let set = |target, new| Action::SetRole {
            target,
            new,
            is_self: false,
        };
        assert!(check(as_role(Some(Owner)), set(Member, Admin)).is_ok());
        assert!(check(as_role(Some(Owner)), set(Admin, Owner)).is_ok());
        assert!(check(as_role(Some(Admin)), set(Member, Admin)).is_err());
        assert!(check(
            as_role(Some(Owner)),
            Action::SetRole {
                target: Owner,
                new: Member,
                is_self: true
            }
        )
        .is_err());
        assert!(check(ADMIN_OF_SERVER, set(Admin, Owner)).is_ok());
    }

    #[test]
    fn outsiders_do_not_see_private_groups() {
        let see = |private, invited| Action::See { private, invited };
        assert!(check(as_role(None), see(false, false)).is_ok());
        assert_eq!(check(as_role(None), see(true, false)), Err(Denied::Hidden));
        assert!(check(as_role(None), see(true, true)).is_ok());
        assert!(check(as_role(Some(Member)), see(true, false)).is_ok());
        assert!(check(ADMIN_OF_SERVER, see(true, false)).is_ok());
    }

    #[test]
    fn the_callers_rights_come_before_the_target() {
        assert!(check(as_role(None), Action::KickSomeone).is_err());
        assert!(check(as_role(Some(Member)), Action::KickSomeone).is_err());
        assert!(check(as_role(Some(Admin)), Action::KickSomeone).is_ok());
        assert!(check(ADMIN_OF_SERVER, Action::KickSomeone).is_ok());
        assert!(check(as_role(Some(Admin)), Action::ChangeRoles).is_err());
        assert!(check(as_role(Some(Owner)), Action::ChangeRoles).is_ok());
        assert!(check(ADMIN_OF_SERVER, Action::ChangeRoles).is_ok());
    }

    #[test]
    fn visibility_and_conversation() {
        assert!(check(as_role(None), Action::Members { private: false }).is_ok());
        assert!(check(as_role(None), Action::Members { private: true }).is_err());
        assert!(check(as_role(Some(Member)), Action::Members { private: true }).is_ok());
        assert!(check(as_role(Some(Member)), Action::Converse).is_ok());
        assert!(check(as_role(None), Action::Converse).is_err());
        assert!(
            check(ADMIN_OF_SERVER, Action::Converse).is_err(),
            "server admins do not post into groups they are not in"
        );
    }
}
