//! Who the client is: the TCP peer, or, when the peer is a trusted reverse proxy, the address the
//! proxy says it forwards for (`X-Forwarded-For`, else `X-Real-IP`).
//!
//! Only a peer in the `--trusted-proxy` list may name another address: anyone else could put any
//! address in those headers and choose the bucket its limits count against, so their headers are
//! ignored. A proxy appends the address it received the request from to `X-Forwarded-For`, so
//! the list is read from the right: the first address that is not itself a trusted proxy is the
//! client; everything left of it was written by the client and proves nothing.
//!
//! Per-address limits count a client by [`limit_key`]: an IPv4 address as it is, an IPv6 address
//! by its /64 network, the block one subscriber is usually given (counting single IPv6 addresses
//! would give one host 2^64 separate buckets).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::Request;

/// An address block: an address and a prefix length (`10.0.0.0/8`, `::1/128`). A plain address
/// is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(ip, self.prefix) == mask_v4(net, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(ip, self.prefix) == mask_v6(net, self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ADDR` or `ADDR/PREFIX`, IPv4 or IPv6; host bits must be zero (`10.0.0.1/8` is refused,
    /// as it is most likely a typing error).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let bad = || format!("not an address or address block like 10.0.0.0/8 or ::1: {s:?}");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let network = network.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
        };
        if mask(network, prefix) != network {
            return Err(format!("{s:?} has bits set past its /{prefix} prefix"));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> u32 {
    let bits = u32::from(ip);
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p))),
    }
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> u128 {
    let bits = u128::from(ip);
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p))),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(mask_v4(v4, prefix))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(v6, prefix))),
    }
}

/// The key per-address limits count a client by: an IPv4 address itself, an IPv6 address's /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => mask(v6, 64),
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client's address for a request that came from `peer`, a trusted proxy: the right-most
/// `X-Forwarded-For` address that is not itself a trusted proxy, else `X-Real-IP`, else the
/// peer. Every `X-Forwarded-For` field counts, in order, as one list (RFC 9110 5.3).
///
/// An entry that is not an address ends the walk: the address to its right (which wrote it) is
/// taken, so garbage never moves a client into another bucket. When every entry is a trusted
/// proxy, the left-most is taken.
pub fn client_address(proxies: &[Cidr], peer: IpAddr, req: &Request) -> IpAddr {
    let peer = peer.to_canonical();
    let entries: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .collect();
    if !entries.is_empty() {
        let mut client = peer;
        for entry in entries.iter().rev() {
            match parse_entry(entry) {
                Some(ip) if is_trusted(proxies, ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        return client;
    }
    req.header("x-real-ip")
        .and_then(parse_entry)
        .unwrap_or(peer)
}

/// One forwarded address: `1.2.3.4`, `2001:db8::1`, or with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`), as some proxies write them.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|sa| sa.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/ws".into(),
            query: None,
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn blocks_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.200.1.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")) && !v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "nowhere",
            "10.0.0.0/",
            "::1/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(limit_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn the_right_most_untrusted_forwarded_address_is_the_client() {
        let proxies = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // The client wrote 6.6.6.6 itself; the proxies appended the rest.
        let r = request(&[("X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.1.1.1")]);
        assert_eq!(client_address(&proxies, peer, &r), ip("203.0.113.5"));
        // Split over two fields.
        let r = request(&[
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.5:4711"),
        ]);
        assert_eq!(client_address(&proxies, peer, &r), ip("203.0.113.5"));
        let r = request(&[("X-Forwarded-For", "[2001:db8::5]:80")]);
        assert_eq!(client_address(&proxies, peer, &r), ip("2001:db8::5"));
        // Only proxies: the left-most.
        let r = request(&[("X-Forwarded-For", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(client_address(&proxies, peer, &r), ip("10.0.0.9"));
    }

    #[test]
    fn garbage_and_missing_headers_fall_back() {
        let proxies = cidrs(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let r = request(&[("X-Forwarded-For", "203.0.113.5, junk, 10.0.0.2")]);
        assert_eq!(client_address(&proxies, peer, &r), ip("10.0.0.2"));
        let r = request(&[("X-Forwarded-For", "junk")]);
        assert_eq!(client_address(&proxies, peer, &r), peer);
        let r = request(&[("X-Real-IP", " 198.51.100.4 ")]);
        assert_eq!(client_address(&proxies, peer, &r), ip("198.51.100.4"));
        let r = request(&[("X-Real-IP", "nope")]);
        assert_eq!(client_address(&proxies, peer, &r), peer);
        assert_eq!(client_address(&proxies, peer, &request(&[])), peer);
    }
}
