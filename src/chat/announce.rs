//! Membership announcements (`group.joined`, `group.left`), coalesced the way presence is, and
//! bounded for large groups.
//!
//! The users a change concerns (the one who joined, left or was kicked, and the kicker) hear of
//! it at once, on every connection, ahead of any reply the change causes. The other members hear
//! of all the changes of one commit together: per group, the events are encoded back to back
//! into one buffer that every online member's queue shares, so a burst of joins costs each member
//! one reference and one write, not one per join. A group with more members than
//! `--large-group` announces changes only to the users they concern: announcing every join to
//! every member costs O(members) per join, O(N²) for a group filling up, and one member's client
//! can always ask `group.members`.

use std::rc::Rc;

use serde_json::json;

use super::protocol;
use super::service::{text_frame, Effect, Service};
use crate::store::GroupId;

/// One change to announce to a group's other members.
#[derive(Debug)]
pub struct News {
    group: GroupId,
    /// The users who heard of it already.
    told: Vec<String>,
    frame: Rc<[u8]>,
}

impl Service {
    /// Announces that `user` joined or left `group` (`event`), `by` someone for a kick. `members`
    /// is the group's membership after the change.
    pub(super) fn announce_membership(
        &mut self,
        group: (GroupId, &str),
        user: &str,
        event: &str,
        by: Option<&str>,
        members: usize,
    ) {
        let mut fields = json!({ "group": group.1, "user": user });
        if let Some(by) = by {
            fields["by"] = json!(by);
        }
        let frame = text_frame(&protocol::event(event, fields));
        let mut told = vec![user.to_string()];
        told.extend(by.filter(|b| *b != user).map(str::to_string));
        for name in &told {
            for conn in self.conns_of(name) {
                self.push(Effect::Send(conn, frame.clone()));
            }
        }
        if members <= self.settings.large_group {
            self.membership_news.push(News {
                group: group.0,
                told,
                frame,
            });
        }
    }

    /// The changes of one commit, to each group's online members: one shared buffer per group,
    /// and for a member already told of some of them, a copy without those.
    pub(super) fn flush_membership(&mut self) {
        let news = std::mem::take(&mut self.membership_news);
        let mut groups: Vec<GroupId> = news.iter().map(|n| n.group).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            let items: Vec<&News> = news.iter().filter(|n| n.group == group).collect();
            let Ok(members) = self.members_of(group) else {
                continue;
            };
            let all: Rc<[u8]> = items
                .iter()
                .flat_map(|n| n.frame.iter().copied())
                .collect::<Vec<u8>>()
                .into();
            for member in members.iter() {
                let Some(conns) = self.online.get(member).cloned() else {
                    continue;
                };
                let mine: Vec<&&News> = items.iter().filter(|n| !n.told.contains(member)).collect();
                let (buffer, count) = if mine.len() == items.len() {
                    (all.clone(), items.len())
                } else if mine.is_empty() {
                    continue;
                } else {
                    let bytes: Vec<u8> =
                        mine.iter().flat_map(|n| n.frame.iter().copied()).collect();
                    (bytes.into(), mine.len())
                };
                for conn in conns {
                    self.push(Effect::SendFrames(conn, buffer.clone(), count as u32));
                }
            }
        }
    }
}
