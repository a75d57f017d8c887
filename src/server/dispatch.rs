//! Reading and dispatch: a connection's bytes become messages, routed to the echo, the
//! `/broadcast` fan-out or the chat service; and the chat service's effects, applied in order.

use std::rc::Rc;
use std::time::Instant;

use super::{touch, Server};
use crate::chat::hasher;
use crate::chat::{Effect, Now};
use crate::conn::{Conn, Cx, Pumped, Route, Step};
use crate::ws::{frame, Opcode};

impl Server {
    /// Reads, parses and dispatches everything one connection has for this iteration.
    pub(super) fn read_and_dispatch(&mut self, key: usize, now: Now) {
        if self.conns.get(key).is_some_and(Conn::drained) {
            self.conns[key].awaits_drain = false;
            self.chat.output_drained(key, now);
        }
        loop {
            let room = match self.conns.get(key).and_then(Conn::route) {
                Some(Route::Chat) => self.chat.room(key),
                _ => usize::MAX,
            };
            let Some((conn, mut cx, scratch, inbox)) = self.lend(key, now.mono) else {
                return;
            };
            conn.set_room(room);
            if room == 0 {
                break;
            }
            match conn.pump(&mut cx, scratch, inbox) {
                Pumped::Request(req) => self.route(key, req, now),
                Pumped::Done => break,
            }
        }
        self.dispatch(key, now);
    }

    /// A connection with what it works with, borrowed together.
    #[allow(clippy::type_complexity)]
    pub(super) fn lend(
        &mut self,
        key: usize,
        now: Instant,
    ) -> Option<(&mut Conn, Cx<'_>, &mut Vec<u8>, &mut Vec<(Opcode, Vec<u8>)>)> {
        let conn = self.conns.get_mut(key)?;
        let cx = Cx {
            cfg: &self.cfg,
            metrics: &mut self.metrics,
            now,
        };
        Some((conn, cx, &mut self.scratch, &mut self.inbox))
    }

    /// Applies the messages one connection sent, by its route. A connection whose peer closed
    /// (or broke the protocol) ends once the replies it is owed are out: at once for the echo
    /// routes, when the chat service says so for `/ws`.
    pub(super) fn dispatch(&mut self, key: usize, now: Now) {
        let Some(route) = self.conns.get(key).and_then(Conn::route) else {
            self.inbox.clear();
            return;
        };
        let mut inbox = std::mem::take(&mut self.inbox);
        match route {
            Route::Echo => {
                let (conn, mut cx, ..) = self.lend(key, now.mono).expect("routed above");
                for (opcode, data) in inbox.drain(..) {
                    conn.send(opcode, &data, &mut cx);
                }
            }
            Route::Chat => {
                for (opcode, data) in inbox.drain(..) {
                    self.chat.message(key, opcode, data, now);
                }
            }
            Route::Broadcast => self.broadcast(key, &mut inbox, now.mono),
        }
        self.inbox = inbox;
        let Some((conn, mut cx, ..)) = self.lend(key, now.mono) else {
            return;
        };
        if conn.is_ending() {
            match route {
                Route::Chat => self.chat.finish_after_replies(key),
                Route::Echo | Route::Broadcast => conn.finish_ending(&mut cx),
            }
        }
    }

    /// `/broadcast`: everything this connection sent in the iteration goes to every other
    /// member, encoded once into one buffer that each queue shares: one reference and one write
    /// per member, however many messages the burst holds.
    pub(super) fn broadcast(
        &mut self,
        key: usize,
        inbox: &mut Vec<(Opcode, Vec<u8>)>,
        now: Instant,
    ) {
        let frames = inbox.len() as u64;
        if frames == 0 {
            return;
        }
        let mut encoded = Vec::new();
        for (opcode, data) in inbox.drain(..) {
            frame::write_header(&mut encoded, true, opcode, data.len(), None);
            encoded.extend_from_slice(&data);
        }
        let burst: Rc<[u8]> = encoded.into();
        let Server {
            conns,
            cfg,
            metrics,
            touched,
            broadcast_members,
            ..
        } = self;
        let mut cx = Cx { cfg, metrics, now };
        for &member in broadcast_members.iter().filter(|&&m| m != key) {
            if let Some(conn) = conns.get_mut(member) {
                conn.send_shared(&burst, frames, &mut cx);
                touch(conns, touched, member);
            }
        }
    }

    /// Carries out what the chat service decided, in order: the one way its effects reach the
    /// connections and the workers. Applying one may produce more (a worker that cannot take a
    /// job answers at once), which are applied in turn.
    pub(super) fn apply_effects(&mut self, now: Now) {
        loop {
            self.chat.drain(&mut self.effects);
            if self.effects.is_empty() {
                return;
            }
            let mut effects = std::mem::take(&mut self.effects);
            for effect in effects.drain(..) {
                self.apply(effect, now);
            }
            self.effects = effects;
        }
    }

    pub(super) fn apply(&mut self, effect: Effect, now: Now) {
        let key = match effect {
            Effect::Hash(ticket, work) => {
                if !self.hasher.submit(ticket, work) {
                    let failed = hasher::Done {
                        ticket,
                        outcome: hasher::Outcome::Failed,
                    };
                    self.chat.password_done(failed, now);
                }
                return;
            }
            Effect::Commit(batch) => {
                if let Some(failed) = self.writer.submit(batch) {
                    self.chat.committed(failed, now);
                }
                return;
            }
            Effect::AwaitDrain(key) => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                conn.awaits_drain = true;
                if conn.drained() {
                    conn.awaits_drain = false;
                    self.chat.output_drained(key, now);
                } else {
                    touch(&mut self.conns, &mut self.touched, key);
                }
                return;
            }
            Effect::Send(key, _)
            | Effect::SendFrames(key, ..)
            | Effect::Close(key, ..)
            | Effect::Authenticated(key, _)
            | Effect::Resume(key)
            | Effect::Finish(key) => key,
        };
        let Server {
            conns,
            cfg,
            metrics,
            touched,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let mut cx = Cx {
            cfg,
            metrics,
            now: now.mono,
        };
        match effect {
            Effect::Send(_, frame) => {
                conn.send_shared(&frame, 1, &mut cx);
            }
            Effect::SendFrames(_, frames, count) => {
                conn.send_shared(&frames, count.into(), &mut cx);
            }
            Effect::Close(_, code, reason) => conn.advance(Step::Close(code, reason), &mut cx),
            Effect::Authenticated(_, yes) => {
                conn.set_auth_deadline((!yes).then(|| now.mono + cx.cfg.auth_timeout));
            }
            Effect::Finish(_) => conn.finish_ending(&mut cx),
            // Read it again in the next iteration (see `flush_and_reap`).
            Effect::Resume(_) => conn.set_room(usize::MAX),
            Effect::Hash(..) | Effect::Commit(_) | Effect::AwaitDrain(_) => {
                unreachable!("handled above")
            }
        }
        touch(conns, touched, key);
    }
}
