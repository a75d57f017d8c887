//! Validation of user names, group names and passwords (protocol v1, "Names, addresses, ids").

/// Longest user or group name.
pub const MAX_NAME: usize = 32;
/// Shortest password, in bytes.
pub const MIN_PASSWORD: usize = 8;
/// Longest password, in bytes (a bound on the work one login costs).
pub const MAX_PASSWORD: usize = 1024;

/// A user or group name: 1-32 characters of `a-z 0-9 _ . -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// A password: 8-1024 bytes.
pub fn valid_password(password: &str) -> bool {
    (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "alice", "bob_2", "x.y-z", "0", &"a".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            "a b",
            "é",
            "a/b",
            "a@b",
            "#g",
            &"a".repeat(33),
            "a\0",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn passwords() {
        assert!(!valid_password("short"));
        assert!(!valid_password("1234567"));
        assert!(valid_password("12345678"));
        assert!(valid_password(&"p".repeat(1024)));
        assert!(!valid_password(&"p".repeat(1025)));
        // Bytes, not characters: 4 two-byte characters are 8 bytes.
        assert!(valid_password("éééé"));
    }
}
