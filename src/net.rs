//! The only code that looks at `io::ErrorKind`. Every socket call of the server goes through
//! here and comes back as one of a few outcomes that say what to do next.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};

/// What a read or write did.
#[derive(Debug)]
pub enum Io {
    /// Moved this many bytes (never 0).
    Progress(usize),
    /// The socket has nothing more for now; wait for the next readiness event.
    WouldBlock,
    /// The peer closed (EOF on read) or reset the connection: not an error worth logging.
    Closed,
    /// Anything else: the connection is unusable.
    Failed(io::Error),
}

fn classify(result: io::Result<usize>) -> Io {
    match result {
        Ok(0) => Io::Closed,
        Ok(n) => Io::Progress(n),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock => Io::WouldBlock,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Io::Closed,
            _ => Io::Failed(e),
        },
    }
}

/// Reads once into `buf`, retrying on EINTR.
pub fn read(socket: &mut TcpStream, buf: &mut [u8]) -> Io {
    loop {
        match socket.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return classify(other),
        }
    }
}

/// Several buffers adding up to at most this many bytes are copied into the cork buffer and
/// sent as one.
pub const CORK_LIMIT: usize = 16 * 1024;

/// Writes once from several buffers, retrying on EINTR.
///
/// A single buffer goes out with `send`, which skips the file layer that `writev` passes
/// through. Several small ones (a burst of broadcast frames, many short replies) are first
/// copied into `cork` and sent as one: the kernel then copies one run of bytes instead of
/// walking an iovec per frame, which costs more than the copy here. Larger output keeps
/// `writev`, so big payloads are never copied.
pub fn write_vectored(socket: &mut TcpStream, bufs: &[IoSlice<'_>], cork: &mut [u8]) -> Io {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let corked = bufs.len() > 1 && total <= CORK_LIMIT.min(cork.len());
    if corked {
        let mut at = 0;
        for b in bufs {
            cork[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
    }
    loop {
        let result = match bufs {
            _ if corked => socket.write(&cork[..total]),
            [one] => socket.write(one),
            _ => socket.write_vectored(bufs),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A zero-length write with data to write means the socket will take no more.
            Ok(0) if bufs.iter().any(|b| !b.is_empty()) => return Io::Closed,
            other => return classify(other),
        }
    }
}

/// What an `accept` did.
#[derive(Debug)]
pub enum Accept {
    /// A new connection.
    Conn(TcpStream, SocketAddr),
    /// The backlog is empty.
    WouldBlock,
    /// That one connection failed before we took it (reset, aborted): go on accepting.
    Skip,
    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): stop accepting for a
    /// moment rather than spin on a listener that stays readable.
    Exhausted(io::Error),
    /// Anything else, logged; accepting pauses as for `Exhausted`.
    Failed(io::Error),
}

/// Accepts one connection, retrying on EINTR.
pub fn accept(listener: &TcpListener) -> Accept {
    loop {
        match listener.accept() {
            Ok((stream, addr)) => return Accept::Conn(stream, addr),
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Accept::WouldBlock,
                io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
                    return Accept::Skip
                }
                _ => {
                    return match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            Accept::Exhausted(e)
                        }
                        Some(libc::EPROTO | libc::EPERM) => Accept::Skip,
                        _ => Accept::Failed(e),
                    }
                }
            },
        }
    }
}

/// Sets the listen backlog: connections the kernel completes before `accept` takes them. A
/// burst of connects larger than this overflows it, and those clients retry their SYN after a
/// second. Linux caps it at `net.core.somaxconn`.
pub fn set_backlog(listener: &TcpListener, backlog: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen() on a socket we own; calling it again only changes the backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the soft open-file limit to the hard limit and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connected pair over loopback: the server's side as a mio stream, the peer as std.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (ours, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        (TcpStream::from_std(ours), peer)
    }

    fn read_exactly(peer: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        peer.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn small_buffers_go_out_through_the_cork_in_order() {
        let (mut ours, mut peer) = pair();
        // Stale bytes in the cork must not leak into what is sent.
        let mut cork = vec![0xEE; 64];
        let parts: [&[u8]; 4] = [b"one ", b"", b"two ", b"three"];
        let iov: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
        match write_vectored(&mut ours, &iov, &mut cork) {
            Io::Progress(n) => assert_eq!(n, 13),
            other => panic!("write: {other:?}"),
        }
        assert_eq!(read_exactly(&mut peer, 13), b"one two three");
    }

    /// A socket that takes only part of a corked write: what it did not take is sent by the
    /// next write, in order. The peer reads slowly so that the send buffer fills up and cuts
    /// corked writes short.
    #[test]
    fn partial_corked_writes_lose_and_reorder_nothing() {
        use crate::buffer::{OutQueue, MAX_IOVECS};
        use std::rc::Rc;
        let (mut ours, mut peer) = pair();
        peer.set_nonblocking(true).unwrap();
        let mut cork = vec![0u8; 64 * 1024];
        let mut queue = OutQueue::default();
        let (mut expected, mut received) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 4096];
        let mut read_some =
            |peer: &mut std::net::TcpStream, received: &mut Vec<u8>| match peer.read(&mut buf) {
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            };
        let mut short_corked = 0;
        let mut round: usize = 0;
        while expected.len() < (4 << 20) || (short_corked < 3 && round < 200_000) {
            round += 1;
            if queue.queued() < 6000 {
                for k in 0..4 {
                    let piece: Vec<u8> = (0..40 + (round * 7 + k * 13) % 300)
                        .map(|i| (i * 31 + round + k) as u8)
                        .collect();
                    expected.extend_from_slice(&piece);
                    if k % 2 == 0 {
                        queue.push(piece);
                    } else {
                        queue.push_shared(Rc::from(piece));
                    }
                }
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let n = queue.fill(&mut iov);
            let total: usize = iov[..n].iter().map(|s| s.len()).sum();
            let full = match write_vectored(&mut ours, &iov[..n], &mut cork) {
                Io::Progress(w) => {
                    if n > 1 && total <= CORK_LIMIT && w < total {
                        short_corked += 1;
                    }
                    queue.advance(w);
                    w == total
                }
                Io::WouldBlock => false,
                other => panic!("write: {other:?}"),
            };
            if !full {
                read_some(&mut peer, &mut received);
            }
        }
        while !queue.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let n = queue.fill(&mut iov);
            if let Io::Progress(w) = write_vectored(&mut ours, &iov[..n], &mut cork) {
                queue.advance(w);
            }
            read_some(&mut peer, &mut received);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while received.len() < expected.len() && std::time::Instant::now() < deadline {
            read_some(&mut peer, &mut received);
        }
        assert!(short_corked > 0, "no corked write was cut short");
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the stream changed");
    }

    #[test]
    fn output_larger_than_the_cork_is_written_from_the_buffers() {
        let (mut ours, mut peer) = pair();
        let mut cork = vec![0u8; 16];
        let a = vec![1u8; 20];
        let b = vec![2u8; 30];
        let iov = [IoSlice::new(&a), IoSlice::new(&b)];
        let sent = match write_vectored(&mut ours, &iov, &mut cork) {
            Io::Progress(n) => n,
            other => panic!("write: {other:?}"),
        };
        assert_eq!(sent, 50, "a fresh socket takes 50 bytes at once");
        let got = read_exactly(&mut peer, 50);
        assert_eq!(&got[..20], &a[..]);
        assert_eq!(&got[20..], &b[..]);
        assert!(cork.iter().all(|&x| x == 0), "the cork was not used");
    }
}
