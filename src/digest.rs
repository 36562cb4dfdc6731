//! The stored form of a key: a keyed digest.
//!
//! [`KeyDigest`] is HMAC-SHA256, under the digest key of one secret version,
//! of the key's exact prefix bytes, its version, its id and its secret (see
//! the README's key format table for the exact bytes). It is the only thing
//! derived from a key's secret that is ever stored. Without the server
//! secret a stolen digest cannot be checked against guesses.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::{Choice, ConstantTimeEq};

/// A 32-byte keyed digest of an API key.
///
/// Equality is constant-time: `==` folds the four 64-bit words with
/// [`subtle`] and branches once, on the final answer. What it protects: the
/// time taken does not depend on where two digests first differ. It does not
/// hide *that* a comparison happened or its result.
///
/// Serialized as standard base64 (44 characters).
///
/// ```
/// use apikey::KeyDigest;
/// let a = KeyDigest::from_bytes([1u8; 32]);
/// assert_eq!(a, KeyDigest::from_bytes([1u8; 32]));
/// assert_ne!(a, KeyDigest::from_bytes([2u8; 32]));
/// assert_eq!(format!("{a:?}"), "KeyDigest(..)");
/// ```
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Wraps raw digest bytes (as read back from a store).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes (for writing to a store).
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Standard base64 of the bytes.
    ///
    /// ```
    /// let d = apikey::KeyDigest::from_bytes([0u8; 32]);
    /// assert_eq!(apikey::KeyDigest::from_base64(&d.to_base64())?, d);
    /// # Ok::<(), apikey::Error>(())
    /// ```
    pub fn to_base64(&self) -> String {
        use base64ct::{Base64, Encoding};
        Base64::encode_string(&self.0)
    }

    /// Parses standard base64 of exactly 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord) on bad base64 or length.
    pub fn from_base64(text: &str) -> crate::Result<Self> {
        use base64ct::{Base64, Encoding};
        let mut out = [0u8; 32];
        match Base64::decode(text, &mut out) {
            Ok(decoded) if decoded.len() == 32 => Ok(Self(out)),
            _ => Err(crate::Error::InvalidRecord(
                "digest must be base64 of 32 bytes".into(),
            )),
        }
    }

    #[inline]
    fn words(&self) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_le_bytes(b);
        }
        w
    }
}

impl ConstantTimeEq for KeyDigest {
    #[inline]
    fn ct_eq(&self, other: &Self) -> Choice {
        let (a, b) = (self.words(), other.words());
        a[0].ct_eq(&b[0]) & a[1].ct_eq(&b[1]) & a[2].ct_eq(&b[2]) & a[3].ct_eq(&b[3])
    }
}

impl PartialEq for KeyDigest {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for KeyDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyDigest::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// HMAC-SHA256 with the key already absorbed: the SHA-256 states after the
/// inner (`key ^ ipad`) and outer (`key ^ opad`) blocks. A MAC of a message
/// of at most [`ONE_BLOCK_MAX`] bytes is then exactly two compressions and no
/// buffering: byte-for-byte the same output as `hmac::Hmac<Sha256>`.
///
/// The states stand for the key: they are zeroized on drop and never printed.
pub(crate) struct PrekeyedHmac {
    inner: [u32; 8],
    outer: [u32; 8],
}

/// Longest message [`PrekeyedHmac::mac_in_place`] takes: 64 bytes of block
/// minus the `0x80` marker and the 8-byte length.
pub(crate) const ONE_BLOCK_MAX: usize = 55;

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

#[inline]
fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    use sha2::digest::generic_array::GenericArray;
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

impl PrekeyedHmac {
    /// Absorbs `key` (hashed first when longer than a block, as RFC 2104 says).
    pub(crate) fn new(key: &[u8]) -> Self {
        use sha2::Digest;
        use zeroize::Zeroizing;
        let mut k = Zeroizing::new([0u8; 64]);
        if key.len() > 64 {
            let mut h = sha2::Sha256::digest(key);
            k[..32].copy_from_slice(&h);
            zeroize::Zeroize::zeroize(h.as_mut_slice());
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut pad = Zeroizing::new([0u8; 64]);
        let mut inner = SHA256_IV;
        for (p, b) in pad.iter_mut().zip(k.iter()) {
            *p = b ^ 0x36;
        }
        compress(&mut inner, &pad);
        let mut outer = SHA256_IV;
        for (p, b) in pad.iter_mut().zip(k.iter()) {
            *p = b ^ 0x5c;
        }
        compress(&mut outer, &pad);
        Self { inner, outer }
    }

    /// The MAC of `block[..len]` (`len <= ONE_BLOCK_MAX`, else `None`). The
    /// block is used as scratch space; its message bytes are zeroized before
    /// returning (the rest holds only SHA-256 padding).
    #[inline]
    pub(crate) fn mac_in_place(&self, block: &mut [u8; 64], len: usize) -> Option<[u8; 32]> {
        if len > ONE_BLOCK_MAX {
            zeroize::Zeroize::zeroize(block);
            return None;
        }
        // Inner hash: ipad block (already absorbed) + message.
        block[len] = 0x80;
        block[len + 1..56].fill(0);
        block[56..].copy_from_slice(&((64 + len as u64) * 8).to_be_bytes());
        let mut state = self.inner;
        compress(&mut state, block);
        // Only the message bytes came from the caller; the rest is padding.
        zeroize::Zeroize::zeroize(&mut block[..len]);
        // Outer hash: opad block (already absorbed) + the 32-byte inner hash.
        let mut outer_block = [0u8; 64];
        for (chunk, word) in outer_block.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        outer_block[32] = 0x80;
        outer_block[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        let mut state = self.outer;
        compress(&mut state, &outer_block);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Some(out)
    }
}

impl Drop for PrekeyedHmac {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.inner);
        zeroize::Zeroize::zeroize(&mut self.outer);
    }
}

impl fmt::Debug for PrekeyedHmac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrekeyedHmac([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    #[test]
    fn prekeyed_hmac_matches_the_hmac_crate() {
        for key_len in [0usize, 1, 32, 64, 65, 100] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 31 + 7) as u8).collect();
            let fast = PrekeyedHmac::new(&key);
            for len in 0..=ONE_BLOCK_MAX {
                let msg: Vec<u8> = (0..len).map(|i| (i * 13 + key_len) as u8).collect();
                let mut block = [0xAAu8; 64];
                block[..len].copy_from_slice(&msg);
                let got = fast.mac_in_place(&mut block, len).expect("fits one block");
                assert_eq!(block[..len], vec![0u8; len][..], "message bytes zeroized");
                let mut reference =
                    <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("any key length");
                reference.update(&msg);
                let want: [u8; 32] = reference.finalize().into_bytes().into();
                assert_eq!(got, want, "key {key_len} bytes, message {len} bytes");
            }
        }
        let mut block = [0u8; 64];
        assert!(
            PrekeyedHmac::new(b"k")
                .mac_in_place(&mut block, 56)
                .is_none()
        );
    }
}
