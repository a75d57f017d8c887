//! Presence: who is online, and telling the users who share a group with them.
//!
//! A user is online while at least one of its connections is authenticated. Arrivals and
//! departures are collected during an iteration and announced together at its end
//! (`Service::flush_presence`), so a crowd coming or going costs one shared buffer per group
//! rather than an event per pair of users.

use std::collections::HashSet;
use std::rc::Rc;

use log::warn;
use serde_json::json;

use super::protocol;
use super::service::{text_frame, ConnId, Effect, Identity, Service};
use crate::store::GroupId;

impl Service {
    /// A connection authenticated as `me`; the user's first one makes it come online.
    pub(super) fn set_online(&mut self, conn: ConnId, me: &Identity) {
        let conns = self.online.entry(me.name.clone()).or_default();
        conns.push(conn);
        if conns.len() == 1 {
            self.presence_changes.push((me.id, me.name.clone(), true));
        }
    }

    /// A connection of `me` stopped being authenticated; the user's last one makes it go
    /// offline.
    pub(super) fn set_offline(&mut self, conn: ConnId, me: &Identity) {
        let Some(conns) = self.online.get_mut(&me.name) else {
            return;
        };
        conns.retain(|&c| c != conn);
        if conns.is_empty() {
            self.online.remove(&me.name);
            self.presence_changes.push((me.id, me.name.clone(), false));
        }
    }

    /// Announces the presence changes gathered since the last call to the online users who
    /// share a group with each changed user. Nobody hears about itself.
    ///
    /// A user in exactly one group (the common case, and every member of one large group
    /// reconnecting at once) is announced with the group's other changes: their events are
    /// encoded back to back into one buffer that every online member's queue shares, so a
    /// member costs one reference and one write per iteration however many users came and
    /// went. A member that is itself among them gets its own copy without its own events. A
    /// user in several groups is announced alone, to each interested connection once.
    pub(super) fn flush_presence(&mut self) {
        let changes = std::mem::take(&mut self.presence_changes);
        let mut by_group: Vec<(GroupId, Vec<usize>)> = Vec::new();
        for (i, (user, name, online)) in changes.iter().enumerate() {
            let groups = match self.store.group_ids_of(*user) {
                Ok(g) => g,
                Err(e) => {
                    warn!("presence of {name} not announced: {e}");
                    continue;
                }
            };
            match groups[..] {
                [] => {}
                [group] => match by_group.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, list)) => list.push(i),
                    None => by_group.push((group, vec![i])),
                },
                _ => self.announce_presence(&groups, name, *online),
            }
        }
        for (group, list) in by_group {
            let batch: Vec<(&str, bool)> = list
                .iter()
                .map(|&i| (changes[i].1.as_str(), changes[i].2))
                .collect();
            self.announce_to_group(group, &batch);
        }
    }

    /// The changes of users whose only group is `group`, to its online members, in one shared
    /// buffer (a changed member gets a copy without its own event).
    fn announce_to_group(&mut self, group: GroupId, changes: &[(&str, bool)]) {
        let Ok(members) = self.members_of(group) else {
            warn!("presence not announced to group {group}");
            return;
        };
        let frames: Vec<Rc<[u8]>> = changes
            .iter()
            .map(|(name, online)| presence_frame(name, *online))
            .collect();
        let all: Rc<[u8]> = frames.concat().into();
        let count = frames.len() as u32;
        let changed: HashSet<&str> = changes.iter().map(|(n, _)| *n).collect();
        let mut effects = Vec::new();
        for member in members.iter() {
            let Some(conns) = self.online.get(member) else {
                continue;
            };
            let (buffer, count) = if changed.contains(member.as_str()) {
                let others: Vec<&[u8]> = changes
                    .iter()
                    .zip(&frames)
                    .filter(|((name, _), _)| name != member)
                    .map(|(_, f)| &f[..])
                    .collect();
                if others.is_empty() {
                    continue;
                }
                (others.concat().into(), others.len() as u32)
            } else {
                (all.clone(), count)
            };
            for &conn in conns {
                effects.push(Effect::SendFrames(conn, Rc::clone(&buffer), count));
            }
        }
        for e in effects {
            self.push(e);
        }
    }

    /// `presence` to the online users who share one of `groups` with `name`, once each.
    ///
    /// The members come from the per-group cache that deliveries use, so a user of a large
    /// group coming or going costs a walk over that group's names in memory, not a query
    /// returning every one of them.
    fn announce_presence(&mut self, groups: &[GroupId], name: &str, online: bool) {
        let mut conns: Vec<ConnId> = Vec::new();
        for &group in groups {
            let Ok(members) = self.members_of(group) else {
                warn!("presence of {name} not announced to group {group}");
                continue;
            };
            for member in members.iter().filter(|m| m.as_str() != name) {
                if let Some(c) = self.online.get(member) {
                    conns.extend_from_slice(c);
                }
            }
        }
        // Someone sharing several groups with `name` hears of it once.
        conns.sort_unstable();
        conns.dedup();
        if !conns.is_empty() {
            let event = protocol::event("presence", json!({ "user": name, "online": online }));
            self.broadcast(conns, &event);
        }
    }
}

fn presence_frame(name: &str, online: bool) -> Rc<[u8]> {
    text_frame(&protocol::event(
        "presence",
        json!({ "user": name, "online": online }),
    ))
}
