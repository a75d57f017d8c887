//! A pool of WebSocket client connections on one mio loop, using the server's own codec in the
//! client role.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::time::Duration;

use chatd::ws::{frame, mask, Event, Limits, Opcode, Role, Session};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// What happened on the pool's connections.
#[derive(Debug)]
pub enum Net {
    /// The handshake completed.
    Opened(usize),
    /// A whole message arrived.
    Message(usize, Vec<u8>),
    /// The connection ended (refused, reset, closed, protocol error).
    Closed(usize, String),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Open,
    Closed,
}

struct Client {
    stream: TcpStream,
    phase: Phase,
    session: Session,
    input: Vec<u8>,
    output: Vec<u8>,
    request: Vec<u8>,
}

/// The pool.
pub struct Pool {
    poll: Poll,
    events: Events,
    conns: Slab<Client>,
    scratch: Vec<u8>,
    mask_state: u32,
    /// Bytes written and read, for the report.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    dirty: Vec<usize>,
    /// Raw TCP baseline: no upgrade, and the server sends back masked frames.
    raw: bool,
}

const LIMITS: Limits = Limits {
    max_frame_size: 64 << 20,
    max_message_size: 64 << 20,
};

impl Pool {
    /// An empty pool.
    pub fn new(raw: bool) -> io::Result<Pool> {
        Ok(Pool {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::new(),
            scratch: vec![0; 256 * 1024],
            mask_state: 0x9e37_79b9,
            bytes_out: 0,
            bytes_in: 0,
            dirty: Vec::new(),
            raw,
        })
    }

    /// Starts a connection to `path` on `addr`, from `source` when given (to use more loopback
    /// source addresses than one address has ephemeral ports).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        path: &str,
        source: Option<Ipv4Addr>,
    ) -> io::Result<usize> {
        let mut stream = match (source, addr) {
            (Some(ip), SocketAddr::V4(dest)) => connect_from(ip, dest)?,
            _ => TcpStream::connect(addr)?,
        };
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        entry.insert(Client {
            stream,
            phase: Phase::Connecting,
            // A raw server sends our masked frames back: decode them as a server would.
            session: Session::new(if self.raw { Role::Server } else { Role::Client }, LIMITS),
            input: Vec::new(),
            output: Vec::new(),
            request: request.into_bytes(),
        });
        Ok(id)
    }

    /// Queues a message (masked, as a client must).
    pub fn send(&mut self, id: usize, opcode: Opcode, payload: &[u8]) {
        self.mask_state ^= self.mask_state << 13;
        self.mask_state ^= self.mask_state >> 17;
        self.mask_state ^= self.mask_state << 5;
        let key = self.mask_state.to_ne_bytes();
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        frame::write_header(&mut c.output, true, opcode, payload.len(), Some(key));
        let start = c.output.len();
        c.output.extend_from_slice(payload);
        mask::apply_mask(&mut c.output[start..], key, 0);
        self.dirty.push(id);
    }

    /// Closes a connection abruptly.
    pub fn drop_conn(&mut self, id: usize) {
        if self.conns.contains(id) {
            let mut c = self.conns.remove(id);
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Writes what was queued since the last poll.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.write(id);
        }
    }

    /// Waits for readiness (up to `timeout`), does the I/O, and reports what happened.
    pub fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<Net>) -> io::Result<()> {
        self.flush();
        match self.poll.poll(&mut self.events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        let ready: Vec<(usize, bool, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                let hangup = e.is_read_closed() || e.is_error();
                (e.token().0, e.is_readable(), e.is_writable(), hangup)
            })
            .collect();
        for (id, readable, writable, hangup) in ready {
            if !self.conns.contains(id) {
                continue;
            }
            if writable {
                self.on_writable(id, out);
            }
            if readable || hangup {
                self.on_readable(id, hangup, out);
            }
        }
        Ok(())
    }

    fn on_writable(&mut self, id: usize, out: &mut Vec<Net>) {
        let c = &mut self.conns[id];
        if c.phase == Phase::Connecting {
            match c.stream.peer_addr() {
                Ok(_) if self.raw => {
                    c.phase = Phase::Open;
                    out.push(Net::Opened(id));
                }
                Ok(_) => {
                    c.phase = Phase::Upgrading;
                    let req = std::mem::take(&mut c.request);
                    c.output.extend_from_slice(&req);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let err = c
                        .stream
                        .take_error()
                        .ok()
                        .flatten()
                        .map_or(e.to_string(), |e| e.to_string());
                    self.close(id, err, out);
                    return;
                }
            }
        }
        self.write(id);
    }

    fn write(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        while !c.output.is_empty() && c.phase != Phase::Connecting {
            match c.stream.write(&c.output) {
                Ok(n) => {
                    self.bytes_out += n as u64;
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // the read side reports the end
            }
        }
        if c.output.capacity() > 1 << 20 && c.output.is_empty() {
            c.output = Vec::new();
        }
    }

    /// Reads until the socket is empty: a short read says so (as in the server), except after
    /// a hangup, where the EOF must still be read.
    fn on_readable(&mut self, id: usize, hangup: bool, out: &mut Vec<Net>) {
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.close(id, "server closed".into(), out);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(id, e.to_string(), out);
                    return;
                }
            };
            self.bytes_in += n as u64;
            c.input.extend_from_slice(&self.scratch[..n]);
            if let Err(why) = self.process(id, out) {
                self.close(id, why, out);
                return;
            }
            if n < self.scratch.len() && !hangup {
                return;
            }
        }
    }

    fn process(&mut self, id: usize, out: &mut Vec<Net>) -> Result<(), String> {
        let c = &mut self.conns[id];
        if c.phase == Phase::Upgrading {
            let Some(end) = c.input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            if !c.input.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&c.input[..c.input.len().min(40)]).into_owned();
                return Err(format!("upgrade refused: {line}"));
            }
            c.input.drain(..end + 4);
            c.phase = Phase::Open;
            out.push(Net::Opened(id));
        }
        let mut at = 0;
        let mut pongs = Vec::new();
        loop {
            let r = c
                .session
                .receive(&mut c.input[at..])
                .map_err(|code| format!("protocol error {}", code.0))?;
            at += r.consumed;
            match r.event {
                Some(Event::Message(_, data)) => out.push(Net::Message(id, data)),
                Some(Event::Ping(p)) => pongs.push(p),
                Some(Event::Pong(_)) => {}
                Some(Event::Close(_)) => {
                    c.input.clear();
                    return Err("server sent close".into());
                }
                None if r.consumed == 0 => break,
                None => {}
            }
        }
        c.input.drain(..at);
        for p in pongs {
            self.send(id, Opcode::Pong, &p);
        }
        Ok(())
    }

    fn close(&mut self, id: usize, why: String, out: &mut Vec<Net>) {
        if let Some(c) = self.conns.get_mut(id) {
            if c.phase != Phase::Closed {
                c.phase = Phase::Closed;
                let _ = self.poll.registry().deregister(&mut c.stream);
                out.push(Net::Closed(id, why));
            }
        }
    }
}

/// A non-blocking connect from a chosen source address.
fn connect_from(source: Ipv4Addr, dest: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; it is handed to std right after.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let src = sockaddr(SocketAddrV4::new(source, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &src as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let dst = sockaddr(dest);
        if libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(TcpStream::from_std(stream))
    }
}
