//! Incremental UTF-8 validation of text messages that arrive in pieces.
//!
//! RFC 6455 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
//! stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
//! Connection_." We check every piece as it arrives, so an invalid byte fails the connection at
//! once rather than when the whole message is in ("fail fast").

/// Carries an incomplete code point (at most three bytes) from one piece to the next.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: [u8; 4],
    pending_len: u8,
}

/// The input is not UTF-8, whatever bytes would follow.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Stream {
    /// Checks the next piece. `Err` as soon as the bytes seen so far cannot start valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            data = self.complete_pending(data)?;
            if self.pending_len > 0 {
                return Ok(()); // still incomplete: `data` was used up
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            // `error_len() == None`: the input ends inside a code point that may still be valid.
            Err(e) if e.error_len().is_none() => {
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: an incomplete code point left over is an error.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// Adds bytes from `data` to the pending code point until it is complete, invalid, or
    /// `data` runs out; returns the rest of `data`.
    fn complete_pending<'a>(&mut self, data: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let mut used = 0;
        while used < data.len() && (self.pending_len as usize) < 4 {
            self.pending[self.pending_len as usize] = data[used];
            self.pending_len += 1;
            used += 1;
            match std::str::from_utf8(&self.pending[..self.pending_len as usize]) {
                Ok(_) => {
                    self.pending_len = 0;
                    return Ok(&data[used..]);
                }
                Err(e) if e.error_len().is_none() => continue,
                Err(_) => return Err(InvalidUtf8),
            }
        }
        Ok(&data[used..])
    }
}

/// Validates a complete buffer (a close reason, a single-frame message).
pub fn is_valid(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: &[usize]) -> Result<(), InvalidUtf8> {
        let mut s = Utf8Stream::default();
        let mut prev = 0;
        for &cut in at.iter().chain(std::iter::once(&bytes.len())) {
            s.feed(&bytes[prev..cut])?;
            prev = cut;
        }
        s.finish()
    }

    #[test]
    fn valid_text_in_every_split() {
        let text = "κόσμε ∮ E⋅da = Q, 𝄞 music".as_bytes();
        for a in 0..=text.len() {
            for b in a..=text.len() {
                assert_eq!(feed_split(text, &[a, b]), Ok(()), "split {a},{b}");
            }
        }
    }

    #[test]
    fn invalid_byte_fails_before_the_end() {
        // Autobahn 6.4.1: a valid start, then 0xF4 0x90 (> U+10FFFF), then more text.
        let mut s = Utf8Stream::default();
        assert_eq!(s.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(s.feed(&[0xf4, 0x90, 0x80, 0x80]), Err(InvalidUtf8));
    }

    #[test]
    fn invalid_continuation_across_pieces_fails_at_the_bad_byte() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.feed(&[0xe2, 0x82]), Ok(()));
        assert_eq!(s.feed(&[0x41]), Err(InvalidUtf8));
    }

    #[test]
    fn surrogates_and_overlongs_are_rejected() {
        assert!(feed_split(&[0xed, 0xa0, 0x80], &[1]).is_err()); // U+D800
        assert!(feed_split(&[0xc0, 0xaf], &[1]).is_err()); // overlong '/'
        assert!(feed_split(&[0xff], &[]).is_err());
    }

    #[test]
    fn truncated_code_point_fails_at_finish() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.feed(&[0xf0, 0x9d, 0x84]), Ok(()));
        assert_eq!(s.finish(), Err(InvalidUtf8));
    }
}
