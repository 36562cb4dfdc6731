//! The stored form of a key: a keyed digest.
//!
//! [`KeyDigest`] is HMAC-SHA256, under the digest key of one secret version,
//! of the key's exact prefix bytes, its version, its id and its secret (see
//! docs/key-format.md for the exact bytes). It is the only thing
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
