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

/// Whether every byte is in the alphabet. Branch-free range checks that the
/// compiler vectorizes (no table lookups), so rejecting a wrong character
/// costs a few instructions per 16 bytes.
#[inline]
pub(crate) fn all_digits(text: &[u8]) -> bool {
    text.iter().fold(true, |ok, &b| {
        ok & ((b.wrapping_sub(b'0') < 10)
            | (b.wrapping_sub(b'A') < 26)
            | (b.wrapping_sub(b'a') < 26))
    })
}

/// Powers of 62 that fit a `u64` with room to add: `POW62[i] = 62^i`.
const POW62: [u64; 11] = {
    let mut p = [1u64; 11];
    let mut i = 1;
    while i < 11 {
        p[i] = p[i - 1] * 62;
        i += 1;
    }
    p
};

/// Reads base62 digits as a big-endian `u64`. The caller has checked the
/// alphabet and passes at most 10 digits (62^10 < 2^64), so nothing wraps.
///
/// A sum of independent products rather than Horner's rule, so the digits
/// do not form one multiply-add dependency chain.
#[inline]
pub(crate) fn decode_u64(text: &[u8]) -> u64 {
    let n = text.len().min(POW62.len() - 1);
    text.iter().take(n).enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add(u64::from(DECODE[usize::from(b)] & 63).wrapping_mul(POW62[n - 1 - i]))
    })
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
    fn all_digits_matches_table() {
        for b in 0u8..=255 {
            assert_eq!(all_digits(&[b]), digit(b).is_some(), "byte {b}");
        }
        assert!(all_digits(ALPHABET));
        assert!(!all_digits(b"abc_def"));
    }

    #[test]
    fn decode_u64_matches_decode_fixed() {
        for v in [0u64, 1, 61, 62, 3843, 62u64.pow(10) - 1] {
            let mut buf = [0u8; 10];
            encode_fixed(u128::from(v), &mut buf);
            assert_eq!(decode_u64(&buf), v);
        }
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
