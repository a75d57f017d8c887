//! Connection buffers: what arrived and has not been used yet, and what is queued to go out.
//!
//! Both give their memory back when they empty, so an idle connection holds no buffer memory.
//! Outgoing data is a queue of chunks, and a chunk can be shared: a message broadcast to many
//! connections is encoded once and each queue holds a reference to the same bytes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

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
const MAX_IOVECS: usize = 64;

/// Output waiting for the socket.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
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

    /// Queues bytes for this connection alone.
    pub fn push(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        if bytes.len() < COALESCE_LIMIT {
            // Don't append to a front chunk that is partly written: its offset must stay valid.
            let can_append = self.chunks.len() > 1 || self.head_written == 0;
            if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
                if can_append && last.len() + bytes.len() <= COALESCE_LIMIT {
                    last.extend_from_slice(&bytes);
                    return;
                }
            }
        }
        self.chunks.push_back(Chunk::Owned(bytes));
    }

    /// Queues bytes shared with other connections.
    pub fn push_shared(&mut self, bytes: Rc<[u8]>) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        self.chunks.push_back(Chunk::Shared(bytes));
    }

    /// Fills `out` with slices of the queued bytes, front first, for one vectored write.
    pub fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let bytes = chunk.bytes();
            let skip = if i == 0 { self.head_written } else { 0 };
            out.push(IoSlice::new(&bytes[skip..]));
        }
    }

    /// Drops `n` written bytes from the front; frees the queue's memory when it empties.
    pub fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front_left = self.chunks[0].bytes().len() - self.head_written;
            if n >= front_left {
                n -= front_left;
                self.chunks.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        if self.chunks.is_empty() {
            *self = OutQueue::default();
        }
    }

    /// Drops everything not yet started, keeping a partly written front chunk so that the
    /// stream stays well-framed; used before a close frame is queued on an overflowing peer.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.head_written > 0 && !self.chunks.is_empty());
        self.chunks.truncate(keep);
        self.queued = self
            .chunks
            .front()
            .map_or(0, |c| c.bytes().len() - self.head_written);
        if self.chunks.is_empty() {
            *self = OutQueue::default();
        }
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
        let mut slices = Vec::new();
        q.slices(&mut slices);
        slices.iter().flat_map(|s| s.iter().copied()).collect()
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
        assert_eq!(q.chunks.len(), 1);
        q.push_shared(Rc::from(&b"ghi"[..]));
        assert_eq!(q.queued(), 9);
        q.advance(4);
        assert_eq!(flatten(&q), b"efghi");
        q.push(b"jk".to_vec());
        assert_eq!(flatten(&q), b"efghijk");
        q.advance(7);
        assert!(q.is_empty());
        assert_eq!(q.chunks.capacity(), 0);
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
