//! Base62 helpers (private): the alphabet, a decode table and fixed-width
//! big-endian integer encoding.
//!
//! The alphabet is `0-9A-Za-z` in ASCII order, so the encoding of a number
//! sorts like the number itself.

/// The 62 characters of the alphabet, in digit order.
pub(crate) const ALPHABET: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Marks a byte that is not a base62 digit in [`DECODE`].
pub(crate) const INVALID: u8 = 0xFF;

/// Byte -> digit value, [`INVALID`] for every byte outside the alphabet.
pub(crate) const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 62 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Digit value of one byte, or `None` when the byte is not base62.
#[inline]
pub(crate) fn digit(byte: u8) -> Option<u8> {
    let d = DECODE[byte as usize];
    if d == INVALID { None } else { Some(d) }
}

/// Writes `value` as exactly `out.len()` base62 digits, most significant
/// first. The caller guarantees `value < 62^out.len()`.
#[inline]
pub(crate) fn encode_fixed(mut value: u128, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
}

/// Reads base62 digits as a big-endian number. Returns `None` on a byte
/// outside the alphabet. At most 21 digits fit a `u128`; callers pass fewer.
#[inline]
pub(crate) fn decode_fixed(text: &[u8]) -> Option<u128> {
    let mut value: u128 = 0;
    for &b in text {
        let d = digit(b)?;
        value = value * 62 + u128::from(d);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_alphabet() {
        for (i, &c) in ALPHABET.iter().enumerate() {
            assert_eq!(digit(c), Some(i as u8));
        }
        let valid = (0u8..=255).filter(|b| digit(*b).is_some()).count();
        assert_eq!(valid, 62);
        assert_eq!(digit(b'_'), None);
        assert_eq!(digit(0), None);
    }

    #[test]
    fn fixed_round_trip() {
        for v in [0u128, 1, 61, 62, 3843, u64::MAX as u128] {
            let mut buf = [0u8; 11];
            encode_fixed(v, &mut buf);
            assert_eq!(decode_fixed(&buf), Some(v));
        }
    }
}
