//! GitHub's signature: ECDSA P-256 with SHA-256 over the raw request body,
//! base64 of the DER signature in `Github-Public-Key-Signature`, made with
//! the key named by `Github-Public-Key-Identifier`. The arithmetic is
//! RustCrypto's `p256`; this module only decodes and looks keys up.

use std::fmt;

use base64ct::{Base64, Encoding};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;

use crate::error::{KeySourceError, LeakError};

/// The header holding the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "Github-Public-Key-Signature";
/// The header naming the signing key.
pub const KEY_ID_HEADER: &str = "Github-Public-Key-Identifier";
/// Longest key identifier looked up (GitHub's are 64 hex digits); longer
/// ones are unknown without a refetch.
pub const MAX_KEY_ID_LEN: usize = 128;
/// Longest signature header read (a DER P-256 signature is at most 72
/// bytes, 96 in base64).
const MAX_SIGNATURE_LEN: usize = 256;

/// A set of P-256 public keys by identifier, as GitHub publishes them.
/// Cheap to clone.
///
/// ```
/// let json = br#"{"public_keys":[{"key_identifier":"90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
///   "key":"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
///   "is_current":true}]}"#;
/// let keys = apikey_leak::PublicKeySet::from_github_json(json)?;
/// assert_eq!(keys.len(), 1);
/// # Ok::<(), apikey_leak::KeySourceError>(())
/// ```
#[derive(Clone, Default)]
pub struct PublicKeySet {
    keys: Vec<(String, VerifyingKey)>,
}

impl fmt::Debug for PublicKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeySet")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Published {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
}

impl PublicKeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key from its PEM (`-----BEGIN PUBLIC KEY-----`, SPKI). A key
    /// with the same identifier is replaced.
    ///
    /// # Errors
    /// [`KeySourceError`] when the PEM is not a P-256 public key.
    pub fn with_pem(mut self, id: impl Into<String>, pem: &str) -> Result<Self, KeySourceError> {
        let id = id.into();
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
            KeySourceError::new(format!("key {id:?} is not a P-256 public key in PEM: {e}"))
        })?;
        self.keys.retain(|(k, _)| *k != id);
        self.keys.push((id, key));
        Ok(self)
    }

    /// Reads GitHub's published format:
    /// `{"public_keys":[{"key_identifier":..,"key":PEM,"is_current":..}]}`.
    /// Every listed key is accepted, current or not (GitHub signs with the
    /// current one; older ones stay valid for alerts already in flight).
    ///
    /// # Errors
    /// [`KeySourceError`] for any other JSON, or a key that is not P-256.
    pub fn from_github_json(json: &[u8]) -> Result<Self, KeySourceError> {
        let published: Published = serde_json::from_slice(json).map_err(|e| {
            KeySourceError::new(format!(
                "not GitHub's public key list (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        published
            .public_keys
            .into_iter()
            .try_fold(Self::new(), |set, k| set.with_pem(k.key_identifier, &k.key))
    }

    /// The identifiers, in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this identifier.
    pub fn contains(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    pub(crate) fn key(&self, id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    /// Checks `signature` (the header's base64 DER) over `body` (the raw
    /// bytes, exactly as received) with the key named `key_id`.
    ///
    /// # Errors
    /// [`LeakError::MalformedSignature`], [`LeakError::UnknownKeyId`],
    /// [`LeakError::BadSignature`].
    pub fn verify(&self, key_id: &str, signature: &str, body: &[u8]) -> Result<(), LeakError> {
        let signature = decode_signature(signature)?;
        let key = self.key(key_id).ok_or(LeakError::UnknownKeyId)?;
        verify_with(key, &signature, body)
    }
}

/// Decodes the header: base64 (standard alphabet, padded) of a DER ECDSA
/// signature.
pub(crate) fn decode_signature(header: &str) -> Result<Signature, LeakError> {
    let header = header.trim();
    if header.is_empty() || header.len() > MAX_SIGNATURE_LEN {
        return Err(LeakError::MalformedSignature);
    }
    let der = Base64::decode_vec(header).map_err(|_| LeakError::MalformedSignature)?;
    Signature::from_der(&der).map_err(|_| LeakError::MalformedSignature)
}

pub(crate) fn verify_with(
    key: &VerifyingKey,
    signature: &Signature,
    body: &[u8],
) -> Result<(), LeakError> {
    key.verify(body, signature)
        .map_err(|_| LeakError::BadSignature)
}

/// Whether an identifier is worth a refetch: GitHub's are hex digests.
pub(crate) fn plausible_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_KEY_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric())
}
