//! Who is at the other end of a connection: the TCP peer, and the client a trusted proxy said it
//! forwards for.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::http::forwarded::limit_key;

/// The addresses of a connection's other end.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The TCP peer.
    pub tcp: SocketAddr,
    /// The client's address as forwarded by a trusted proxy (the TCP peer), once the request
    /// head has been read.
    pub forwarded: Option<IpAddr>,
    /// The key this connection counts against in the per-address connection cap, while it does
    /// (a trusted proxy's own socket counts against nothing until its request names a client).
    pub counted: Option<IpAddr>,
}

impl Peer {
    /// A peer just accepted.
    pub fn new(tcp: SocketAddr) -> Peer {
        Peer {
            tcp,
            forwarded: None,
            counted: None,
        }
    }

    /// The client's address: the forwarded one, else the TCP peer's.
    pub fn client(&self) -> IpAddr {
        self.forwarded
            .unwrap_or_else(|| self.tcp.ip().to_canonical())
    }

    /// The key per-address limits count the client by.
    pub fn limit_key(&self) -> IpAddr {
        limit_key(self.client())
    }
}

/// For logs: `ADDR:PORT`, or `CLIENT via PROXY:PORT`.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.forwarded {
            Some(client) => write!(f, "{client} via {}", self.tcp),
            None => write!(f, "{}", self.tcp),
        }
    }
}
