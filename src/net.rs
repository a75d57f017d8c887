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

/// Writes once from several buffers (one `writev`), retrying on EINTR. A single buffer goes
/// out with `send` instead: the socket call skips the file layer that `writev` passes through,
/// which is measurable when a broadcast makes thousands of one-chunk writes.
pub fn write_vectored(socket: &mut TcpStream, bufs: &[IoSlice<'_>]) -> Io {
    loop {
        let result = match bufs {
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
