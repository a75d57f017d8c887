//! The per-address connection cap, and who the client is behind a trusted proxy.
//!
//! Every connection counts against its client address from the moment it is accepted, whatever
//! its phase, so idle sockets and handshakes that never finish fill only their own address's
//! share. A trusted proxy's socket is the exception: it carries many clients, so it counts
//! against nothing until its request head names the client, and then against that client.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use log::debug;
use mio::net::TcpStream;

use super::Server;
use crate::chat::Now;
use crate::conn::Peer;
use crate::http::forwarded::{client_address, is_trusted, limit_key};
use crate::http::{Request, Response};

/// The answer past the per-address cap.
fn refusal() -> Response {
    Response::text(429, "too many connections from your address")
}

/// Open connections by client address key.
#[derive(Debug, Default)]
pub(super) struct AddressCounts(HashMap<IpAddr, u32>);

impl AddressCounts {
    /// Counts one more connection for `key` unless it already has `cap` (0: no cap).
    fn try_add(&mut self, key: IpAddr, cap: usize) -> bool {
        let n = self.0.entry(key).or_default();
        if cap > 0 && *n as usize >= cap {
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&mut self, key: IpAddr) {
        if let Some(n) = self.0.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&key);
            }
        }
    }
}

impl Server {
    /// A socket just accepted: its peer, counted against its address, or `None` when the
    /// address is at its cap (then it has been answered `429`, best effort, and is dropped).
    pub(super) fn admit_socket(&mut self, socket: &mut TcpStream, tcp: SocketAddr) -> Option<Peer> {
        let mut peer = Peer::new(tcp);
        if is_trusted(&self.cfg.trusted_proxies, tcp.ip()) {
            return Some(peer);
        }
        let key = peer.limit_key();
        if !self
            .per_address
            .try_add(key, self.cfg.max_connections_per_address)
        {
            self.metrics.refused_per_address += 1;
            // A fresh socket's buffer takes a short response whole.
            let _ = socket.write(&refusal().encode(false));
            debug!("{tcp}: refused, address at its connection cap");
            return None;
        }
        peer.counted = Some(key);
        Some(peer)
    }

    /// A request head arrived. From a trusted proxy, it names the client, which is counted now;
    /// `false` when that client is at its cap (the connection has been answered `429`).
    pub(super) fn admit_request(&mut self, key: usize, req: &Request, now: Now) -> bool {
        let proxies = &self.cfg.trusted_proxies;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.peer.counted.is_some() || !is_trusted(proxies, conn.peer.tcp.ip()) {
            return true;
        }
        let client = client_address(proxies, conn.peer.tcp.ip(), req);
        conn.peer.forwarded = Some(client);
        let counted = limit_key(client);
        if self
            .per_address
            .try_add(counted, self.cfg.max_connections_per_address)
        {
            conn.peer.counted = Some(counted);
            return true;
        }
        self.metrics.refused_per_address += 1;
        let (conn, mut cx, ..) = self.lend(key, now.mono).expect("looked up above");
        debug!("{}: refused, address at its connection cap", conn.peer);
        conn.respond(&refusal(), req.method == "HEAD", &mut cx);
        false
    }

    /// A connection is gone: its address has room for another.
    pub(super) fn release_address(&mut self, peer: &Peer) {
        if let Some(key) = peer.counted {
            self.per_address.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_cap_and_forgets_empty_addresses() {
        let mut counts = AddressCounts::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(counts.try_add(a, 2) && counts.try_add(a, 2));
        assert!(!counts.try_add(a, 2));
        assert!(counts.try_add(b, 2));
        counts.remove(a);
        assert!(counts.try_add(a, 2));
        counts.remove(a);
        counts.remove(a);
        counts.remove(b);
        assert!(counts.0.is_empty());
        for _ in 0..5 {
            assert!(counts.try_add(a, 0), "0 is no cap");
        }
    }
}
