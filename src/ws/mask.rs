//! Payload masking (RFC 6455 section 5.3).
//!
//! "The masking does not affect the length of the Application data. To convert masked data into
//! unmasked data, or vice versa, the following algorithm is applied [...]:
//! j = i MOD 4; transformed-octet-i = original-octet-i XOR masking-key-octet-j"

/// XORs `data` with `key`, as if `data` started `offset` bytes into the frame's payload.
///
/// The offset lets the decoder unmask a payload in the pieces in which it arrives from the
/// socket. Masking and unmasking are the same operation.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    // Eight bytes at a time: the key repeats every four bytes, so a doubled key lines up with
    // every 8-byte chunk that starts at a multiple of four.
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("chunk of 8")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 5.7: a masked "Hello" with key 37 fa 21 3d.
        let mut data = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn offsets_match_one_pass() {
        let key = [1, 2, 3, 4];
        let original: Vec<u8> = (0..100u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key, 0);
        for split in 0..original.len() {
            let mut pieces = original.clone();
            let (a, b) = pieces.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(pieces, whole, "split at {split}");
        }
    }

    #[test]
    fn masking_twice_restores() {
        let mut data = b"round trip through the mask".to_vec();
        apply_mask(&mut data, [9, 8, 7, 6], 3);
        assert_ne!(&data, b"round trip through the mask");
        apply_mask(&mut data, [9, 8, 7, 6], 3);
        assert_eq!(&data, b"round trip through the mask");
    }
}
