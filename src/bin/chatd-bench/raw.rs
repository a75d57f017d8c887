//! A raw TCP server for baselines: `echo` writes back what it reads; `broadcast` writes what
//! any connection sends to every other connection. No HTTP, no framing, no parsing: the cost
//! of moving the same bytes through the kernel, for comparison with the WebSocket server.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::rc::Rc;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);

struct Peer {
    stream: TcpStream,
    queue: Vec<Rc<[u8]>>,
    head: usize,
}

/// Runs until killed.
pub fn serve(addr: SocketAddr, broadcast: bool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    chatd::net::set_backlog(&listener, 4096)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!(
        "raw {} server listening on {}",
        if broadcast { "broadcast" } else { "echo" },
        listener.local_addr()?
    );
    let mut peers: Slab<Peer> = Slab::new();
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 64 * 1024];
    let mut cork = vec![0u8; chatd::net::CORK_LIMIT];
    loop {
        poll.poll(&mut events, None)?;
        let mut dirty = Vec::new();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let entry = peers.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(Peer {
                        stream,
                        queue: Vec::new(),
                        head: 0,
                    });
                }
                continue;
            }
            let id = ev.token().0;
            let hangup = ev.is_read_closed() || ev.is_error();
            let mut gone = false;
            while let Some(peer) = peers.get_mut(id) {
                match peer.stream.read(&mut buf) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => {
                        let chunk: Rc<[u8]> = Rc::from(&buf[..n]);
                        if broadcast {
                            for (other, p) in peers.iter_mut().filter(|(k, _)| *k != id) {
                                p.queue.push(chunk.clone());
                                dirty.push(other);
                            }
                        } else {
                            peer.queue.push(chunk);
                            dirty.push(id);
                        }
                        // A short read emptied the socket, as in the server.
                        if n < buf.len() && !hangup {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        gone = true;
                        break;
                    }
                }
            }
            if ev.is_writable() {
                dirty.push(id);
            }
            if gone && peers.contains(id) {
                let mut p = peers.remove(id);
                let _ = poll.registry().deregister(&mut p.stream);
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty {
            let Some(p) = peers.get_mut(id) else { continue };
            while !p.queue.is_empty() {
                let slices: Vec<io::IoSlice> = p
                    .queue
                    .iter()
                    .take(64)
                    .enumerate()
                    .map(|(i, c)| io::IoSlice::new(if i == 0 { &c[p.head..] } else { c }))
                    .collect();
                // The same cork as the server's: small pieces go out as one buffer.
                match chatd::net::write_vectored(&mut p.stream, &slices, &mut cork) {
                    chatd::net::Io::Progress(mut n) => {
                        while n > 0 {
                            let left = p.queue[0].len() - p.head;
                            if n >= left {
                                n -= left;
                                p.queue.remove(0);
                                p.head = 0;
                            } else {
                                p.head += n;
                                n = 0;
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
    }
}
