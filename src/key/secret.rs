//! Server secrets and the keyring derived from them.
//!
//! A [`ServerSecret`] is at least 32 random bytes that only the service
//! knows. Load it at start-up from an environment variable or a secret
//! manager (see [`ServerSecret::from_base64`]); never hard-code it. From each
//! secret the [`Keyring`] derives, with HKDF-SHA256, two independent keys:
//!
//! * the **tag key** (SipHash-2-4, 128 bits) that marks every issued key, so
//!   well-formed keys that were never issued are rejected without a store call;
//! * the **digest key** (the pepper of HMAC-SHA256) under which the stored
//!   digest of each key is computed.
//!
//! Each secret has a version, 1 to 61, written into every key it issues as
//! the first body character. The keyring holds the current version, used for
//! new keys, and any older ones still needed to verify existing keys, so a
//! secret can be rotated without invalidating keys: add the new version, make
//! it current, and re-hash or reissue old keys at leisure.

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Shortest accepted server secret, in bytes.
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// Highest secret version (the version is one base62 digit; 0 is reserved).
pub(crate) const MAX_VERSION: u8 = 61;

/// Bytes of secret key material. Zeroized on drop, printed as `[REDACTED]`,
/// not serializable, read only through [`expose_secret`](Self::expose_secret).
///
/// ```
/// use apikey::ServerSecret;
/// let secret = ServerSecret::from_bytes(&[7u8; 32])?;
/// assert_eq!(format!("{secret:?}"), "ServerSecret([REDACTED])");
/// assert!(ServerSecret::from_bytes(&[7u8; 31]).is_err());
/// # Ok::<(), apikey::Error>(())
/// ```
pub struct ServerSecret(Zeroizing<Vec<u8>>);

impl ServerSecret {
    /// The shortest server secret accepted, in bytes.
    pub const MIN_LEN: usize = MIN_SECRET_LEN;

    /// Copies `bytes` (at least 32) into a new secret.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when shorter than [`ServerSecret::MIN_LEN`](crate::ServerSecret::MIN_LEN).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(Error::InvalidSecret(
                "a server secret must be at least 32 bytes",
            ));
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Decodes a standard base64 string (padding optional), the usual way to
    /// keep a secret in an environment variable:
    ///
    /// ```no_run
    /// // openssl rand -base64 32  ->  APIKEY_SECRET_V1
    /// let text = std::env::var("APIKEY_SECRET_V1").expect("secret configured");
    /// let secret = apikey::ServerSecret::from_base64(&text)?;
    /// # Ok::<(), apikey::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when the text is not base64 or decodes to
    /// fewer than 32 bytes. The message never contains the text.
    pub fn from_base64(text: &str) -> Result<Self> {
        use base64ct::{Base64, Base64Unpadded, Encoding};
        let text = text.trim();
        let decoded = Base64::decode_vec(text)
            .or_else(|_| Base64Unpadded::decode_vec(text))
            .map_err(|_| Error::InvalidSecret("the server secret is not valid base64"))?;
        let decoded = Zeroizing::new(decoded);
        Self::from_bytes(&decoded)
    }

    /// Fresh random secret from the operating system's CSPRNG.
    ///
    /// ```
    /// let secret = apikey::ServerSecret::generate();
    /// assert_eq!(secret.expose_secret().len(), 32);
    /// ```
    ///
    /// # Panics
    /// When the operating system has no randomness to give (as the
    /// previous `rand_core::OsRng` did).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; MIN_SECRET_LEN]);
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(bytes)
    }

    /// The secret bytes. Named so every read is easy to find.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret([REDACTED])")
    }
}

/// The keys derived from one server secret version.
///
/// Everything in it is wiped when the last keyring holding the version
/// drops it: the tag key is `Zeroizing`, and the pre-keyed HMAC state
/// (`hmac` 0.13 and `sha2` 0.11 with their `zeroize` features) zeroizes
/// its inner and outer SHA-256 states and its block buffer on drop, as
/// does every clone of it made per digest.
pub(crate) struct Material {
    /// SipHash-2-4 key for the forged-key tag.
    pub(crate) tag_key: Zeroizing<[u8; 16]>,
    /// HMAC-SHA256 (the `hmac` crate) already keyed with the digest pepper;
    /// cloned per digest.
    pub(crate) hmac: Hmac<Sha256>,
}

// The wiping above is the dependencies' promise; hold them to it at compile
// time (this fails to build if a `zeroize` feature goes missing). `Hmac`
// carries no marker of its own: it is its two SHA-256 cores (inner and
// outer, keyed) and a block buffer, each of which wipes itself on drop.
const _: () = {
    const fn wipes_on_drop<T: ZeroizeOnDrop + ?Sized>() {}
    wipes_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
    wipes_on_drop::<hmac::digest::block_api::Buffer<hmac::block_api::HmacCore<Sha256>>>();
    wipes_on_drop::<Sha256>();
};

impl Material {
    fn derive(secret: &ServerSecret) -> Result<Self> {
        let hk = Hkdf::<Sha256>::new(Some(b"apikey/v1"), secret.expose_secret());
        let mut tag_key = Zeroizing::new([0u8; 16]);
        let mut digest_key = Zeroizing::new([0u8; 32]);
        hk.expand(b"apikey/v1 tag key", tag_key.as_mut())
            .map_err(|_| Error::InvalidSecret("key derivation failed"))?;
        hk.expand(b"apikey/v1 digest key", digest_key.as_mut())
            .map_err(|_| Error::InvalidSecret("key derivation failed"))?;
        let hmac = <Hmac<Sha256> as KeyInit>::new_from_slice(digest_key.as_ref())
            .map_err(|_| Error::InvalidSecret("key derivation failed"))?;
        digest_key.zeroize();
        Ok(Self { tag_key, hmac })
    }
}

/// The keys for imported legacy keys derived from one server secret
/// version (HKDF-SHA256 like [`Material`], with their own labels). Both
/// pre-keyed states wipe themselves on drop, like [`Material`]'s.
pub(crate) struct LegacyMaterial {
    /// Keys the legacy index (HMAC-SHA256 of the key's SHA-256 digest).
    index: hmac::Hmac<sha2::Sha256>,
    /// Keys the upgraded digest of a legacy key (HMAC-SHA256 of its text).
    digest: hmac::Hmac<sha2::Sha256>,
}

impl LegacyMaterial {
    fn derive(secret: &ServerSecret) -> Result<Self> {
        let hk = Hkdf::<sha2::Sha256>::new(Some(b"apikey/v1"), secret.expose_secret());
        let key = |label: &[u8]| -> Result<hmac::Hmac<sha2::Sha256>> {
            let mut k = Zeroizing::new([0u8; 32]);
            hk.expand(label, k.as_mut())
                .map_err(|_| Error::InvalidSecret("key derivation failed"))?;
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k.as_ref())
                .map_err(|_| Error::InvalidSecret("key derivation failed"))
        };
        Ok(Self {
            index: key(b"apikey/v1 legacy index key")?,
            digest: key(b"apikey/v1 legacy digest key")?,
        })
    }

    fn mac(&self, keyed: &hmac::Hmac<sha2::Sha256>, parts: &[&[u8]]) -> crate::KeyDigest {
        let mut mac = keyed.clone();
        for p in parts {
            hmac::Mac::update(&mut mac, p);
        }
        crate::KeyDigest::from_bytes(Mac::finalize(mac).into_bytes().into())
    }
}

/// Server secrets by version, with one current version for new keys.
///
/// Cheap to clone (the derived keys are shared).
///
/// ```
/// use apikey::{Keyring, ServerSecret};
/// let mut ring = Keyring::new(1, ServerSecret::from_bytes(&[1u8; 32])?)?;
/// ring.add(2, ServerSecret::from_bytes(&[2u8; 32])?)?;
/// ring.set_current(2)?;
/// assert_eq!(ring.current_version(), 2);
/// assert!(ring.contains(1));
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    current: u8,
    slots: Vec<Option<Arc<Material>>>,
    /// Keys for imported legacy keys, per version (see [`LegacyMaterial`]).
    legacy: Vec<Option<Arc<LegacyMaterial>>>,
}

impl Keyring {
    /// The highest secret version (versions are 1 to this).
    pub const MAX_VERSION: u8 = MAX_VERSION;

    /// A keyring holding `secret` as `version` (1..=61), which is current.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] for a version outside 1..=61.
    pub fn new(version: u8, secret: ServerSecret) -> Result<Self> {
        let mut ring = Self {
            current: version,
            slots: (0..=MAX_VERSION).map(|_| None).collect(),
            legacy: (0..=MAX_VERSION).map(|_| None).collect(),
        };
        ring.add(version, secret)?;
        Ok(ring)
    }

    /// Adds an older or newer secret version without making it current.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] for a version outside 1..=61 or one already held.
    pub fn add(&mut self, version: u8, secret: ServerSecret) -> Result<&mut Self> {
        if version == 0 || version > MAX_VERSION {
            return Err(Error::InvalidSecret("secret versions run from 1 to 61"));
        }
        let slot = &mut self.slots[usize::from(version)];
        if slot.is_some() {
            return Err(Error::InvalidSecret(
                "this secret version is already present",
            ));
        }
        let legacy = Arc::new(LegacyMaterial::derive(&secret)?);
        *slot = Some(Arc::new(Material::derive(&secret)?));
        self.legacy[usize::from(version)] = Some(legacy);
        Ok(self)
    }

    /// Removes a version; keys issued under it stop verifying.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when removing the current version.
    pub fn remove(&mut self, version: u8) -> Result<&mut Self> {
        if version == self.current {
            return Err(Error::InvalidSecret("cannot remove the current version"));
        }
        if let Some(slot) = self.slots.get_mut(usize::from(version)) {
            *slot = None;
        }
        if let Some(slot) = self.legacy.get_mut(usize::from(version)) {
            *slot = None;
        }
        Ok(self)
    }

    /// Makes `version` the one new keys are issued under.
    ///
    /// # Errors
    /// [`Error::InvalidSecret`] when the version is not held.
    pub fn set_current(&mut self, version: u8) -> Result<&mut Self> {
        if !self.contains(version) {
            return Err(Error::InvalidSecret("unknown secret version"));
        }
        self.current = version;
        Ok(self)
    }

    /// The version new keys are issued under.
    pub fn current_version(&self) -> u8 {
        self.current
    }

    /// Whether `version` is held.
    pub fn contains(&self, version: u8) -> bool {
        self.material(version).is_some()
    }

    #[inline]
    pub(crate) fn material(&self, version: u8) -> Option<&Material> {
        self.slots.get(usize::from(version))?.as_deref()
    }

    /// The versions held, current first, then the others newest first.
    pub(crate) fn versions_current_first(&self) -> impl Iterator<Item = u8> + '_ {
        std::iter::once(self.current)
            .chain((1..=MAX_VERSION).rev().filter(move |v| *v != self.current))
            .filter(|v| self.contains(*v))
    }

    /// Legacy-key index under `version`: HMAC-SHA256, under the version's
    /// legacy index key, of the SHA-256 digest of the whole legacy key.
    pub(crate) fn legacy_index(&self, version: u8, sha256: &[u8; 32]) -> Option<crate::KeyDigest> {
        let m = self.legacy.get(usize::from(version))?.as_deref()?;
        Some(m.mac(&m.index, &[sha256]))
    }

    /// Keyed digest of a whole legacy key text under `version`'s legacy
    /// digest key (the upgraded form of an imported key).
    pub(crate) fn legacy_digest(&self, version: u8, text: &str) -> Option<crate::KeyDigest> {
        let m = self.legacy.get(usize::from(version))?.as_deref()?;
        Some(m.mac(&m.digest, &[text.as_bytes()]))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u8> = (0..=MAX_VERSION).filter(|v| self.contains(*v)).collect();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("versions", &versions)
            .finish_non_exhaustive()
    }
}
