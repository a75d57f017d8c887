//! Connection buffers: what arrived and has not been used yet, and what is queued to go out.
//!
//! Both give their memory back when they empty, so an idle connection holds no buffer memory.
//! Outgoing data is a queue of chunks, and a chunk can be shared: a message broadcast to many
//! connections is encoded once and each queue holds a reference to the same bytes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

use crate::ws::{frame, Opcode};

/// Bytes received but not yet used (a partial HTTP head, a partial frame header), compacted to
/// the front as they are used.
#[derive(Debug, Default)]
pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
}

impl InBuf {
    /// The unused bytes.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    /// Number of unused bytes.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            // Compact instead of growing: move the unused tail to the front.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks `n` bytes at the front as used; frees the memory when all are.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start >= self.buf.len() {
            *self = InBuf::default();
        }
    }
}

/// One piece of queued output.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes for this connection alone.
    Owned(Vec<u8>),
    /// Bytes shared with other connections' queues (an encoded broadcast).
    Shared(Rc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// Small owned chunks are appended to the previous owned chunk up to this size, so that many
/// small replies go out in one iovec.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Most iovecs handed to one `writev`.
pub const MAX_IOVECS: usize = 64;

/// Output waiting for the socket.
///
/// The front chunk is held inline and the rest in a deque that exists only while more than one
/// chunk waits, so the common case (one reply, one broadcast frame) allocates nothing for the
/// queue itself, and an emptied queue holds no memory.
#[derive(Debug, Default)]
pub struct OutQueue {
    head: Option<Chunk>,
    rest: VecDeque<Chunk>,
    /// Bytes of the head chunk already written.
    head_written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
}

impl OutQueue {
    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// The last chunk if more owned bytes may be appended to it: owned, not partly written,
    /// and with room under the coalescing limit for `more` bytes.
    fn tail_for(&mut self, more: usize) -> Option<&mut Vec<u8>> {
        let appendable = !self.rest.is_empty() || self.head_written == 0;
        let last = match self.rest.back_mut() {
            Some(last) => Some(last),
            None => self.head.as_mut(),
        };
        match last {
            Some(Chunk::Owned(v)) if appendable && v.len() + more <= COALESCE_LIMIT => Some(v),
            _ => None,
        }
    }

    fn push_chunk(&mut self, chunk: Chunk) {
        if self.head.is_none() {
            self.head = Some(chunk);
            self.head_written = 0;
        } else {
            if self.rest.capacity() == 0 {
                // Bursts come in several frames: one allocation for the first few.
                self.rest.reserve(8);
            }
            self.rest.push_back(chunk);
        }
    }

    /// Queues bytes for this connection alone.
    pub fn push(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        if bytes.len() < COALESCE_LIMIT {
            if let Some(tail) = self.tail_for(bytes.len()) {
                tail.extend_from_slice(&bytes);
                return;
            }
        }
        self.push_chunk(Chunk::Owned(bytes));
    }

    /// Encodes an unmasked frame straight into the queue (into the last chunk when it fits),
    /// without an intermediate buffer.
    pub fn push_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        let len = frame::header_len(payload.len(), false) + payload.len();
        self.queued += len;
        if let Some(tail) = self.tail_for(len) {
            frame::write_header(tail, true, opcode, payload.len(), None);
            tail.extend_from_slice(payload);
            return;
        }
        let mut bytes = Vec::with_capacity(len.clamp(256, COALESCE_LIMIT).max(len));
        frame::write_header(&mut bytes, true, opcode, payload.len(), None);
        bytes.extend_from_slice(payload);
        self.push_chunk(Chunk::Owned(bytes));
    }

    /// Queues bytes shared with other connections.
    pub fn push_shared(&mut self, bytes: Rc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.push_chunk(Chunk::Shared(bytes));
    }

    /// Points `iov` at the queued bytes, front first, for one vectored write; returns how many
    /// entries it filled.
    pub fn fill<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if let Some(head) = &self.head {
            if n < iov.len() {
                iov[n] = IoSlice::new(&head.bytes()[self.head_written..]);
                n += 1;
            }
        }
        for chunk in &self.rest {
            if n == iov.len() {
                break;
            }
            iov[n] = IoSlice::new(chunk.bytes());
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front; frees the queue's memory when it empties.
    pub fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(head) = &self.head else {
                break;
            };
            let left = head.bytes().len() - self.head_written;
            if n >= left {
                n -= left;
                self.head = self.rest.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }

    /// Drops everything not yet started, keeping a partly written front chunk so that the
    /// stream stays well-framed; used before a close frame is queued on an overflowing peer.
    pub fn discard_unstarted(&mut self) {
        self.rest = VecDeque::new();
        if self.head_written == 0 {
            self.head = None;
        }
        self.queued = self
            .head
            .as_ref()
            .map_or(0, |c| c.bytes().len() - self.head_written);
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flatten(q: &OutQueue) -> Vec<u8> {
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        let n = q.fill(&mut iov);
        iov[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn inbuf_frees_memory_when_used_up() {
        let mut b = InBuf::default();
        b.extend(b"hello");
        b.consume(2);
        assert_eq!(b.data_mut(), b"llo");
        b.consume(3);
        assert!(b.is_empty());
        assert_eq!(b.buf.capacity(), 0);
    }

    #[test]
    fn inbuf_compacts_instead_of_growing() {
        let mut b = InBuf::default();
        b.extend(&[1; 100]);
        let cap = b.buf.capacity();
        b.consume(90);
        b.extend(&[2; 50]);
        assert_eq!(b.len(), 60);
        assert!(b.buf.capacity() <= cap.max(60));
        assert_eq!(&b.data_mut()[..10], &[1; 10]);
    }

    #[test]
    fn small_pushes_coalesce_and_partial_writes_resume() {
        let mut q = OutQueue::default();
        q.push(b"abc".to_vec());
        q.push(b"def".to_vec());
        assert!(q.rest.is_empty(), "coalesced into the head");
        q.push_shared(Rc::from(&b"ghi"[..]));
        assert_eq!(q.queued(), 9);
        q.advance(4);
        assert_eq!(flatten(&q), b"efghi");
        q.push(b"jk".to_vec());
        assert_eq!(flatten(&q), b"efghijk");
        q.advance(7);
        assert!(q.is_empty());
        assert!(q.head.is_none());
        assert_eq!(q.rest.capacity(), 0);
    }

    #[test]
    fn frames_are_encoded_into_the_queue() {
        let mut q = OutQueue::default();
        q.push_frame(Opcode::Text, b"Hello");
        q.push_frame(Opcode::Binary, &[1, 2]);
        assert_eq!(
            flatten(&q),
            vec![0x81, 5, b'H', b'e', b'l', b'l', b'o', 0x82, 2, 1, 2]
        );
        assert_eq!(q.queued(), 11);
        assert!(q.rest.is_empty());
        // a partly written head is not appended to
        q.advance(3);
        q.push_frame(Opcode::Pong, b"");
        assert_eq!(
            flatten(&q),
            vec![b'e', b'l', b'l', b'o', 0x82, 2, 1, 2, 0x8a, 0]
        );
        let big = vec![7u8; 70_000];
        q.push_frame(Opcode::Binary, &big);
        assert_eq!(q.queued(), 8 + 2 + (10 + 70_000));
    }

    #[test]
    fn shared_chunks_are_not_copied() {
        let frame: Rc<[u8]> = Rc::from(&b"broadcast"[..]);
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        a.push_shared(frame.clone());
        b.push_shared(frame.clone());
        assert_eq!(Rc::strong_count(&frame), 3);
        a.advance(9);
        assert_eq!(Rc::strong_count(&frame), 2);
    }

    #[test]
    fn discard_keeps_a_partly_written_front() {
        let mut q = OutQueue::default();
        q.push(vec![1; 20_000]);
        q.push(vec![2; 20_000]);
        q.advance(5);
        q.discard_unstarted();
        assert_eq!(q.queued(), 19_995);
        q.push(b"close".to_vec());
        assert_eq!(q.queued(), 20_000);
        let mut q2 = OutQueue::default();
        q2.push(vec![1; 10]);
        q2.discard_unstarted();
        assert!(q2.is_empty());
    }
}
