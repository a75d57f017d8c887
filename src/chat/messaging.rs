//! Messaging: `send`, `typing`, `history`, and the recovery replay (`since`, `sync`).
//!
//! A `send` is checked and given its `msg_id` on the loop, encoded once as the `message` event
//! its recipients will get, and joins the batch. Only once the batch is committed is it
//! acknowledged and delivered (`Service::acknowledged`). A retry with a `client_id` the sender
//! used before is recognised by the store's unique index at commit time and answered with the
//! first copy's `msg_id`, delivering nothing.

use log::warn;
use serde::Serialize;
use serde_json::{json, Value};

use super::batch::Then;
use super::client::Replay;
use super::files::Destination;
use super::groups::allow;
use super::permissions::Action;
use super::protocol::{self, ErrorCode, Failure};
use super::ratelimit::Act;
use super::service::{
    fail, over_rate, text_frame, ConnId, Effect, Identity, Now, Outcome, Reply, Service,
};
use crate::store::{FileMeta, NewMessage, PartFile, StoredMessage, Target, UserId, Write, Written};

/// Longest `client_id`, in bytes.
pub const MAX_CLIENT_ID: usize = 128;

/// Messages one replay step reads from the store at most.
const REPLAY_PAGE: usize = 64;

/// Encoded bytes after which a replay step stops and waits for the output to drain.
const REPLAY_STEP_BYTES: usize = 256 * 1024;

/// A conversation address resolved for one user.
pub struct Conversation {
    /// `#group` or `@user`, as addressed.
    pub address: String,
    /// The store's name for it.
    pub target: Target,
    /// The other user of a direct conversation.
    pub peer: Option<String>,
}

/// A message waiting for its commit.
#[derive(Debug)]
pub struct Accepted {
    /// Its msg_id and ts.
    pub msg_id: i64,
    /// Server time, ms since the epoch.
    pub ts: i64,
    /// The sender's name.
    pub from: String,
    /// Where it goes.
    pub target: Target,
    /// The other user of a direct conversation.
    pub peer: Option<String>,
    /// The `message` event for its recipients, encoded once when it was accepted.
    pub event: String,
    /// For a message posted by an upload: the file's id (answered with `file.done`).
    pub file_id: Option<String>,
}

impl Service {
    /// Resolves `@user` / `#group` and checks that `me` may talk there. A private group the
    /// caller is not in answers as a missing one; a missing user costs from the caller's budget
    /// of unknown names.
    pub(super) fn conversation(
        &mut self,
        me: &Identity,
        address: &str,
        now: Now,
    ) -> Result<Conversation, Failure> {
        if let Some(name) = address.strip_prefix('#') {
            let (group, actor) = self.visible_group(me, name)?;
            allow(actor, Action::Converse)?;
            Ok(Conversation {
                address: address.to_string(),
                target: Target::Group(group.id),
                peer: None,
            })
        } else if let Some(name) = address.strip_prefix('@') {
            let user = self.find_user_for(me, name, now)?;
            Ok(Conversation {
                address: address.to_string(),
                target: Target::Direct(user.id),
                peer: Some(user.name),
            })
        } else {
            fail(ErrorCode::BadRequest, "an address is @user or #group")
        }
    }

    /// Connections that see a conversation's traffic, except the one it came from: for a group,
    /// every connection of every member; for a direct conversation, the peer's connections
    /// and the sender's other ones.
    fn audience(
        &mut self,
        sender: &str,
        from_conn: ConnId,
        target: Target,
        peer: Option<&str>,
    ) -> Result<Vec<ConnId>, Failure> {
        let mut conns = match target {
            Target::Group(gid) => {
                let members = self.members_of(gid)?;
                self.conns_of_names(&members)
            }
            Target::Direct(_) => {
                let mut c = self.conns_of(sender);
                if let Some(peer) = peer.filter(|p| *p != sender) {
                    c.extend(self.conns_of(peer));
                }
                c
            }
        };
        conns.retain(|&c| c != from_conn);
        if self.replays > 0 {
            // A replaying connection reads this message from the store in a later step.
            let clients = &self.clients;
            conns.retain(|c| clients.get(c).is_none_or(|c| c.owed.replay.is_none()));
        }
        Ok(conns)
    }

    /// `send`: checked now, acknowledged and delivered after the commit.
    pub(super) fn send(
        &mut self,
        me: &Identity,
        to: &str,
        text: String,
        client_id: Option<String>,
        now: Now,
    ) -> Outcome {
        let conversation = match self.check_send(me, to, &text, client_id.as_deref(), now) {
            Ok(c) => c,
            Err(f) => return Outcome::Reply(Err(f)),
        };
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        let event = MessageEvent {
            kind: "message",
            msg_id,
            from: &me.name,
            to: &conversation.address,
            text: &text,
            ts: now.wall_ms,
            client_id: client_id.as_deref(),
            file: None,
        }
        .encode();
        let accepted = Accepted {
            msg_id,
            ts: now.wall_ms,
            from: me.name.clone(),
            target: conversation.target,
            peer: conversation.peer,
            event,
            file_id: None,
        };
        let message = NewMessage {
            id: msg_id,
            sender: me.id,
            to: conversation.target,
            text,
            ts: now.wall_ms,
            client_id,
            file: None,
        };
        Outcome::AfterCommit(
            Write::Message {
                message,
                part: None,
            },
            Then::Message(accepted),
        )
    }

    fn check_send(
        &mut self,
        me: &Identity,
        to: &str,
        text: &str,
        client_id: Option<&str>,
        now: Now,
    ) -> Result<Conversation, Failure> {
        let conversation = self.conversation(me, to, now)?;
        if text.is_empty() {
            return fail(ErrorCode::BadRequest, "text is empty");
        }
        // Counting characters only when the bytes could be over the limit.
        let max = self.settings.max_text_chars;
        if text.len() > max && text.chars().count() > max {
            return fail(
                ErrorCode::TooLarge,
                format!("text is over {max} characters"),
            );
        }
        if client_id.is_some_and(|c| c.is_empty() || c.len() > MAX_CLIENT_ID) {
            return fail(ErrorCode::BadRequest, "client_id is 1-128 bytes");
        }
        Ok(conversation)
    }

    /// A file whose bytes are all in joins the batch as a message; the writer syncs it first.
    pub(super) fn post_file(
        &mut self,
        conn: ConnId,
        to: Destination,
        meta: FileMeta,
        part: PartFile,
        now: Now,
    ) {
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        if let Some(stored) = self.stored_bytes.get_mut(&to.sender) {
            *stored += meta.size;
        }
        let event = MessageEvent {
            kind: "message",
            msg_id,
            from: &to.from,
            to: &to.to,
            text: "",
            ts: now.wall_ms,
            client_id: None,
            file: Some(FileJson::of(&meta)),
        }
        .encode();
        let accepted = Accepted {
            msg_id,
            ts: now.wall_ms,
            from: to.from,
            target: to.target,
            peer: to.peer,
            event,
            file_id: Some(meta.id.clone()),
        };
        let message = NewMessage {
            id: msg_id,
            sender: to.sender,
            to: to.target,
            text: String::new(),
            ts: now.wall_ms,
            client_id: None,
            file: Some(meta),
        };
        let write = Write::Message {
            message,
            part: Some(part),
        };
        self.join_batch(conn, to.id, Some(write), Then::Message(accepted));
    }

    /// A message's commit came back: acknowledge it (with the first copy's `msg_id` for a
    /// retry), then deliver it to everyone else in the conversation.
    pub(super) fn acknowledged(
        &mut self,
        conn: ConnId,
        id: Option<Value>,
        m: Accepted,
        written: Result<Written, Failure>,
    ) {
        let first = match written {
            Ok(Written::Done(_)) => None,
            Ok(Written::Duplicate { msg_id, ts }) => Some((msg_id, ts)),
            Ok(Written::Gone) => {
                return self.refuse_message(
                    conn,
                    id,
                    &m,
                    Failure::new(ErrorCode::NotFound, "the group was deleted"),
                )
            }
            Ok(Written::Changed) => {
                let f = Failure::new(ErrorCode::Forbidden, "no longer a member of this group");
                return self.refuse_message(conn, id, &m, f);
            }
            Ok(Written::Failed(e)) => {
                warn!("message {} not stored: {e}", m.msg_id);
                let f = Failure::new(ErrorCode::Unavailable, "the file could not be stored");
                return self.refuse_message(conn, id, &m, f);
            }
            Ok(Written::Conflict | Written::TooManyGroups { .. }) => {
                return self.refuse_message(
                    conn,
                    id,
                    &m,
                    Failure::new(ErrorCode::Internal, "message id taken"),
                )
            }
            Err(f) => return self.refuse_message(conn, id, &m, f),
        };
        let (msg_id, ts) = first.unwrap_or((m.msg_id, m.ts));
        self.delivered_through = self.delivered_through.max(m.msg_id);
        match &m.file_id {
            Some(file_id) => {
                let done = protocol::event(
                    "file.done",
                    json!({ "file_id": file_id, "msg_id": msg_id, "ts": ts }),
                );
                self.push(Effect::Send(conn, text_frame(&done)));
                self.file_metrics.uploads += 1;
            }
            None => self.push(Effect::Send(conn, text_frame(&ok_message(&id, msg_id, ts)))),
        }
        if first.is_some() {
            self.metrics.deduplicated += 1;
            return;
        }
        self.metrics.accepted += 1;
        match self.audience(&m.from, conn, m.target, m.peer.as_deref()) {
            Ok(conns) => {
                self.metrics.delivered += conns.len() as u64;
                self.broadcast(conns, &m.event);
            }
            Err(f) => warn!(
                "message {} stored but not delivered live: {}",
                m.msg_id, f.message
            ),
        }
    }

    /// A message that was not stored: its sender hears why (an upload's error names the file
    /// and carries no `re`: the `file.upload` had its `ok`).
    fn refuse_message(&mut self, conn: ConnId, id: Option<Value>, m: &Accepted, failure: Failure) {
        match &m.file_id {
            Some(file_id) => {
                self.upload_failed("storage");
                self.reply(conn, &None, Err(failure.for_file(file_id)));
            }
            None => self.reply(conn, &id, Err(failure)),
        }
    }

    pub(super) fn typing(&mut self, conn: ConnId, me: &Identity, to: &str, now: Now) -> Reply {
        let conversation = self.conversation(me, to, now)?;
        if !self.per_user.take(me.id, Act::Typing, now.mono) {
            return over_rate("typing notices");
        }
        let conns = self.audience(
            &me.name,
            conn,
            conversation.target,
            conversation.peer.as_deref(),
        )?;
        let event = protocol::event(
            "typing",
            json!({ "from": me.name, "to": conversation.address }),
        );
        self.broadcast(conns, &event);
        Ok(json!({}))
    }

    pub(super) fn history(
        &mut self,
        me: &Identity,
        with: &str,
        before: Option<i64>,
        limit: Option<i64>,
        now: Now,
    ) -> Reply {
        let conversation = self.conversation(me, with, now)?;
        let limit = match limit {
            None => 50,
            Some(n) if n < 1 => return fail(ErrorCode::BadRequest, "limit is at least 1"),
            Some(n) => n.min(100) as usize,
        };
        let before = before.unwrap_or(i64::MAX);
        let (page, more) = self.store.history(
            me.id,
            conversation.target,
            before.min(self.delivered_through + 1),
            limit,
        )?;
        let messages: Vec<Value> = page
            .iter()
            .map(|m| serde_json::to_value(MessageEvent::of(m, None)).unwrap_or_default())
            .collect();
        Ok(json!({ "messages": messages, "more": more }))
    }

    /// The recovery replay: the oldest missed messages as `message` events, then `recovered`
    /// (`complete: false` when the limit was reached and more remain). It goes out in steps as
    /// the connection's output drains, so no replay can fill the queue up to its cap, and
    /// nothing else is answered until it ends.
    pub(super) fn start_replay(&mut self, conn: ConnId, user: UserId, since: i64) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.owed.replay = Some(Replay {
            user,
            after: since,
            sent: 0,
        });
        self.replays += 1;
        self.replay_step(conn);
    }

    /// One step of a replay: messages up to [`REPLAY_STEP_BYTES`], then either a wait for the
    /// output to drain or `recovered`. Each step reads up to the last message delivered live
    /// at that moment; while the replay runs, live deliveries skip this connection (see
    /// [`Service::audience`]), so its messages arrive once and in `msg_id` order.
    pub(super) fn replay_step(&mut self, conn: ConnId) {
        let Some(Replay { user, after, sent }) =
            self.clients.get(&conn).and_then(|c| c.owed.replay)
        else {
            return;
        };
        let left = self.settings.recovery_limit.saturating_sub(sent);
        let page = left.min(REPLAY_PAGE);
        let (messages, mut more) =
            match self
                .store
                .recover(user, after, self.delivered_through, page)
            {
                Ok(r) => r,
                Err(e) => {
                    self.end_replay(conn);
                    return self.reply(conn, &None, Err(e.into()));
                }
            };
        let (mut last, mut count, mut bytes) = (after, 0, 0);
        for m in &messages {
            let text = MessageEvent::of(m, Some("message")).encode();
            bytes += text.len();
            self.push(Effect::Send(conn, text_frame(&text)));
            (last, count) = (m.id, count + 1);
            if bytes >= REPLAY_STEP_BYTES {
                break;
            }
        }
        more |= count < messages.len();
        let sent = sent + count;
        if more && sent < self.settings.recovery_limit {
            if let Some(client) = self.clients.get_mut(&conn) {
                client.owed.replay = Some(Replay {
                    user,
                    after: last,
                    sent,
                });
                client.owed.drain = true;
            }
            return self.push(Effect::AwaitDrain(conn));
        }
        self.end_replay(conn);
        let done = protocol::event(
            "recovered",
            json!({ "last_msg_id": last, "complete": !more }),
        );
        self.push(Effect::Send(conn, text_frame(&done)));
    }

    fn end_replay(&mut self, conn: ConnId) {
        if let Some(client) = self.clients.get_mut(&conn) {
            if client.owed.replay.take().is_some() {
                self.replays -= 1;
            }
        }
    }
}

/// `{"type":"ok","re":id,"msg_id":..,"ts":..}`, encoded without building a JSON tree.
fn ok_message(id: &Option<Value>, msg_id: i64, ts: i64) -> String {
    #[derive(Serialize)]
    struct Ok<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        re: Option<&'a Value>,
        msg_id: i64,
        ts: i64,
    }
    let ok = Ok {
        kind: "ok",
        re: id.as_ref(),
        msg_id,
        ts,
    };
    serde_json::to_string(&ok).unwrap_or_default()
}

/// A message as a `message` event (with `kind`) or a history entry (without).
#[derive(Serialize)]
struct MessageEvent<'a> {
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    kind: &'static str,
    msg_id: i64,
    from: &'a str,
    to: &'a str,
    text: &'a str,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileJson<'a>>,
}

impl<'a> MessageEvent<'a> {
    fn of(m: &'a StoredMessage, kind: Option<&'static str>) -> MessageEvent<'a> {
        MessageEvent {
            kind: kind.unwrap_or(""),
            msg_id: m.id,
            from: &m.from,
            to: &m.to,
            text: &m.text,
            ts: m.ts,
            client_id: m.client_id.as_deref(),
            file: m.file.as_ref().map(FileJson::of),
        }
    }

    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `file` member of a message.
#[derive(Serialize)]
struct FileJson<'a> {
    id: &'a str,
    name: &'a str,
    size: u64,
    mime: Option<&'a str>,
}

impl<'a> FileJson<'a> {
    fn of(f: &'a FileMeta) -> FileJson<'a> {
        FileJson {
            id: &f.id,
            name: &f.name,
            size: f.size,
            mime: f.mime.as_deref(),
        }
    }
}
