//! The key format: ids, the once-shown key, parsing and composing.
//!
//! A key is `<prefix><body>`; the body is 58 base62 characters:
//!
//! | part     | chars | content |
//! |----------|------:|---------|
//! | id       | 11    | public key id: a random `u64` in base62, least significant digit first (canonical: value < 2^64) |
//! | version  | 1     | secret version, 1..=61, as one base62 digit |
//! | secret   | 32    | 32 uniform base62 characters (190.5 bits) |
//! | tag      | 8     | SipHash-2-4 under the version's tag key of all text before the tag, mod 62^8, big-endian |
//! | checksum | 6     | CRC-32 (IEEE, as zlib) of all text before the checksum, big-endian base62 (canonical: value < 2^32) |
//!
//! Base62 is `0-9A-Za-z`. Every key has exactly one accepted spelling.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

use hmac::Mac;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher24;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::base62::{self, ALPHABET};
use super::digest::KeyDigest;
use super::prefix::{MAX_PREFIX_LEN, PrefixRegistry};
use super::secret::{Keyring, Material};
use crate::environment::Environment;
use crate::error::{Error, MalformedReason, Result};

pub(crate) const VERSION_LEN: usize = 1;
pub(crate) const ID_LEN: usize = 11;
pub(crate) const SECRET_LEN: usize = 32;
pub(crate) const TAG_LEN: usize = 8;
pub(crate) const CHECKSUM_LEN: usize = 6;
/// Length of a key body (everything after the prefix), in characters.
pub(crate) const BODY_LEN: usize = VERSION_LEN + ID_LEN + SECRET_LEN + TAG_LEN + CHECKSUM_LEN;
/// Shortest possible key (2-byte prefix).
pub(crate) const MIN_KEY_LEN: usize = 2 + BODY_LEN;
/// Longest possible key (16-byte prefix).
pub(crate) const MAX_KEY_LEN: usize = MAX_PREFIX_LEN + BODY_LEN;
/// Characters of the id shown in a key's display form.
pub(crate) const DISPLAY_ID_CHARS: usize = 5;

const ID_START: usize = 0;
const VERSION_POS: usize = ID_START + ID_LEN;
const SECRET_START: usize = VERSION_POS + VERSION_LEN;
const TAG_START: usize = SECRET_START + SECRET_LEN;
const CHECKSUM_START: usize = TAG_START + TAG_LEN;
const PACKED_SECRET_LEN: usize = SECRET_LEN * 6 / 8;
const TAG_MODULUS: u64 = 62u64.pow(TAG_LEN as u32);

/// The public id of a key: a random 64-bit number, written as 11 base62
/// characters, least significant digit first (so the first characters, the
/// ones a listing shows, are the uniformly random ones). Ids are not secret;
/// they say which record to fetch.
///
/// ```
/// use apikey::KeyId;
/// let id = KeyId::from_u64(42);
/// assert_eq!(id.to_string(), "g0000000000");
/// assert_eq!("g0000000000".parse::<KeyId>()?, id);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u64);

impl KeyId {
    /// The display form of this id under `prefix`, for listings: the prefix, the first five id characters and
    /// `...`, e.g. `kwi_sk_aBcDe...`.
    ///
    /// ```
    /// use apikey::KeyId;
    /// assert_eq!(KeyId::from_u64(42).display_form("kwi_sk_"), "kwi_sk_g0000...");
    /// ```
    pub fn display_form(self, prefix: &str) -> String {
        key_display_form(prefix, self)
    }

    /// Wraps a raw id.
    pub const fn from_u64(id: u64) -> Self {
        Self(id)
    }

    /// The raw id.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    fn encode(self) -> [u8; ID_LEN] {
        let mut out = [0u8; ID_LEN];
        base62::encode_fixed(u128::from(self.0), &mut out);
        out.reverse();
        out
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encode();
        // The encoding is ASCII by construction.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for KeyId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() != ID_LEN {
            return Err(Error::InvalidInput(
                "a key id is 11 base62 characters".into(),
            ));
        }
        let mut digits = [0u8; ID_LEN];
        digits.copy_from_slice(s.as_bytes());
        digits.reverse();
        match base62::decode_fixed(&digits) {
            Some(v) if v <= u128::from(u64::MAX) => Ok(Self(v as u64)),
            _ => Err(Error::InvalidInput(
                "a key id is 11 base62 characters".into(),
            )),
        }
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The display form of a key for listings: prefix, the first five id
/// characters, and `...`, e.g. `kwi_sk_aBcDe...` ([`KeyId::display_form`]).
pub(crate) fn key_display_form(prefix: &str, id: KeyId) -> String {
    let id = id.encode();
    let mut s = String::with_capacity(prefix.len() + DISPLAY_ID_CHARS + 3);
    s.push_str(prefix);
    for &b in &id[..DISPLAY_ID_CHARS] {
        s.push(char::from(b));
    }
    s.push_str("...");
    s
}

/// A full API key, as handed to its owner exactly once.
///
/// `Debug` and `Display` show only the display form; the text is zeroized on
/// drop, is not `Serialize`, and is read through
/// [`expose_secret`](Self::expose_secret).
///
/// ```
/// # use apikey::{Keyring, ServerSecret, Verifier};
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let (key, _record) = verifier.issue(apikey::NewKey::new("kwi_sk_"), apikey::Timestamp::MIN)?;
/// assert!(key.expose_secret().starts_with("kwi_sk_"));
/// assert!(key.to_string().ends_with("..."));
/// assert!(!format!("{key:?}").contains(&key.expose_secret()[20..]));
/// # Ok::<(), apikey::Error>(())
/// ```
pub struct ApiKey {
    text: Zeroizing<String>,
    prefix_len: usize,
    id: KeyId,
}

impl ApiKey {
    /// Length of the body after the prefix: version, id, secret, tag and checksum.
    pub const BODY_LEN: usize = BODY_LEN;
    /// The shortest key text (a two-character prefix).
    pub const MIN_LEN: usize = MIN_KEY_LEN;
    /// The longest key text (a prefix of [`Prefix::MAX_LEN`](crate::Prefix::MAX_LEN)); the web edge reads no
    /// more.
    pub const MAX_LEN: usize = MAX_KEY_LEN;
    /// Id characters shown in the display form (`kwi_sk_aBcDe...`).
    pub const DISPLAY_ID_CHARS: usize = DISPLAY_ID_CHARS;

    /// The full key. Show it to its owner once; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.text
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The key's prefix, e.g. `sk_live_`.
    pub fn prefix(&self) -> &str {
        self.text.get(..self.prefix_len).unwrap_or_default()
    }

    /// The display form (`sk_live_aBcDe...`).
    pub fn display_form(&self) -> String {
        key_display_form(self.prefix(), self.id)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ApiKey").field(&self.display_form()).finish()
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_form())
    }
}

/// A presented key that passed every check that needs no store: length,
/// alphabet, prefix, checksum, version and the forged-key tag.
///
/// Holds a copy of the secret (packed, zeroized on drop); `Debug` hides it.
pub struct ParsedKey<'a> {
    prefix: &'a str,
    prefix_index: u8,
    environment: Environment,
    version: u8,
    id: KeyId,
    secret: Zeroizing<[u8; PACKED_SECRET_LEN]>,
}

impl<'a> ParsedKey<'a> {
    /// The key id, to fetch the record with.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The prefix as presented (it is a registered one).
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The prefix's index in the verifier's registry.
    pub fn prefix_index(&self) -> usize {
        usize::from(self.prefix_index)
    }

    /// The environment the prefix stands for.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The secret version the key was issued under.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Keyed digest of this key under its own version (or `version` when
    /// re-hashing), computed from a pre-keyed HMAC state: one SHA-256 block
    /// of input.
    #[inline]
    pub(crate) fn digest_with(&self, material: &Material) -> KeyDigest {
        digest_parts(material, self.prefix, self.version, self.id, &self.secret)
    }

    /// Re-creates the key text (for round-trip checks in tests and fuzzing).
    pub(crate) fn compose(&self, keyring: &Keyring) -> Option<Zeroizing<String>> {
        let material = keyring.material(self.version)?;
        let mut digits = Zeroizing::new([0u8; SECRET_LEN]);
        unpack_secret(&self.secret, &mut digits);
        Some(compose(
            self.prefix,
            self.version,
            self.id,
            &digits,
            material,
        ))
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("display", &key_display_form(self.prefix, self.id))
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[inline]
fn digest_parts(
    material: &Material,
    prefix: &str,
    version: u8,
    id: KeyId,
    secret: &[u8; PACKED_SECRET_LEN],
) -> KeyDigest {
    // len(prefix) || prefix || version || id (LE) || packed secret: at most
    // 1 + 16 + 1 + 8 + 24 = 50 bytes, one SHA-256 block after the pre-keyed
    // inner state. The parts go straight into the HMAC state's block
    // buffer, which wipes itself when `mac` is dropped (hmac 0.13 with
    // `zeroize`): no other copy of the secret is made here.
    let p = prefix.as_bytes();
    let p = &p[..p.len().min(MAX_PREFIX_LEN)];
    let mut mac = material.hmac.clone();
    mac.update(&[p.len() as u8]);
    mac.update(p);
    mac.update(&[version]);
    mac.update(&id.0.to_le_bytes());
    mac.update(secret);
    KeyDigest::from_bytes(mac.finalize().into_bytes().into())
}

fn pack_secret(digits: &[u8; SECRET_LEN], out: &mut [u8; PACKED_SECRET_LEN]) {
    // Four 6-bit digits -> three bytes.
    for (quad, chunk) in digits.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let v = (u32::from(quad[0]) << 18)
            | (u32::from(quad[1]) << 12)
            | (u32::from(quad[2]) << 6)
            | u32::from(quad[3]);
        chunk[0] = (v >> 16) as u8;
        chunk[1] = (v >> 8) as u8;
        chunk[2] = v as u8;
    }
}

fn unpack_secret(packed: &[u8; PACKED_SECRET_LEN], digits: &mut [u8; SECRET_LEN]) {
    for (chunk, quad) in packed.chunks_exact(3).zip(digits.chunks_exact_mut(4)) {
        let v = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        quad[0] = ((v >> 18) & 63) as u8;
        quad[1] = ((v >> 12) & 63) as u8;
        quad[2] = ((v >> 6) & 63) as u8;
        quad[3] = (v & 63) as u8;
    }
}

#[inline]
fn tag_of(material: &Material, text_before_tag: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_key(&material.tag_key);
    h.write(text_before_tag);
    h.finish() % TAG_MODULUS
}

#[inline]
fn checksum_of(text_before_checksum: &[u8]) -> u32 {
    crc32fast::hash(text_before_checksum)
}

/// Writes the checksum of `text[..len - 6]` into its last six bytes. The
/// caller guarantees `text.len() >= CHECKSUM_LEN`.
pub(crate) fn write_checksum(text: &mut [u8]) {
    let split = text.len().saturating_sub(CHECKSUM_LEN);
    let crc = checksum_of(&text[..split]);
    base62::encode_fixed(u128::from(crc), &mut text[split..]);
}

/// Builds the key text from its parts. `secret` holds 32 digit values.
fn compose(
    prefix: &str,
    version: u8,
    id: KeyId,
    secret: &[u8; SECRET_LEN],
    material: &Material,
) -> Zeroizing<String> {
    let mut buf = Zeroizing::new([0u8; MAX_KEY_LEN]);
    let p = prefix.len();
    buf[..p].copy_from_slice(prefix.as_bytes());
    let body = &mut buf[p..p + BODY_LEN];
    body[ID_START..VERSION_POS].copy_from_slice(&id.encode());
    body[VERSION_POS] = ALPHABET[usize::from(version)];
    for (slot, &d) in body[SECRET_START..TAG_START].iter_mut().zip(secret.iter()) {
        *slot = ALPHABET[usize::from(d)];
    }
    let tag = tag_of(material, &buf[..p + TAG_START]);
    base62::encode_fixed(u128::from(tag), &mut buf[p + TAG_START..p + CHECKSUM_START]);
    write_checksum(&mut buf[..p + BODY_LEN]);
    let mut text = Zeroizing::new(String::with_capacity(p + BODY_LEN));
    for &b in &buf[..p + BODY_LEN] {
        text.push(char::from(b));
    }
    text
}

/// Generates a fresh key under the keyring's current version.
pub(crate) fn generate<R: CryptoRng + ?Sized>(
    rng: &mut R,
    prefix: &str,
    keyring: &Keyring,
) -> Result<(ApiKey, KeyDigest)> {
    let version = keyring.current_version();
    let material = keyring.material(version).ok_or(Error::InvalidSecret(
        "the current secret version is missing",
    ))?;
    let id = KeyId(rng.next_u64());
    let mut digits = Zeroizing::new([0u8; SECRET_LEN]);
    let mut pool = Zeroizing::new([0u8; 48]);
    let mut filled = 0;
    while filled < SECRET_LEN {
        rng.fill_bytes(pool.as_mut());
        for &b in pool.iter() {
            // 248 = 4 * 62: accepting only bytes below it makes `b % 62`
            // uniform (no modulo bias).
            if b < 248 {
                digits[filled] = b % 62;
                filled += 1;
                if filled == SECRET_LEN {
                    break;
                }
            }
        }
    }
    pool.zeroize();
    let text = compose(prefix, version, id, &digits, material);
    let mut packed = Zeroizing::new([0u8; PACKED_SECRET_LEN]);
    pack_secret(&digits, &mut packed);
    let digest = digest_parts(material, prefix, version, id, &packed);
    Ok((
        ApiKey {
            text,
            prefix_len: prefix.len(),
            id,
        },
        digest,
    ))
}

/// Parses and checks a presented key against the registry and keyring.
///
/// Runs the store-free checks in order: length, alphabet and prefix;
/// checksum; version; canonical id; forged-key tag (compared in constant
/// time). Never panics, never allocates.
#[inline]
pub(crate) fn parse<'a>(
    text: &'a str,
    prefixes: &PrefixRegistry,
    keyring: &Keyring,
) -> Result<ParsedKey<'a>> {
    let bytes = text.as_bytes();
    let len = bytes.len();
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
        return Err(Error::MalformedApiKey(MalformedReason::Length));
    }
    let split = len - BODY_LEN;
    let body: &[u8; BODY_LEN] = bytes[split..]
        .try_into()
        .map_err(|_| Error::MalformedApiKey(MalformedReason::Length))?;
    if !base62::all_digits(body) {
        return Err(Error::MalformedApiKey(MalformedReason::Charset));
    }
    // The body is ASCII, so `split` is a char boundary; `get` keeps that
    // explicit and panic-free.
    let prefix = text
        .get(..split)
        .ok_or_else(|| Error::MalformedApiKey(MalformedReason::Charset))?;
    let (prefix_index, entry) = prefixes
        .find(prefix)
        .ok_or_else(|| Error::MalformedApiKey(MalformedReason::UnknownPrefix))?;

    // 62^6 < 2^64: the presented checksum fits; a value >= 2^32 never matches.
    let crc = base62::decode_u64(&body[CHECKSUM_START..]);
    if crc != u64::from(checksum_of(&bytes[..split + CHECKSUM_START])) {
        return Err(Error::MalformedApiKey(MalformedReason::Checksum));
    }
    let version = base62::DECODE[usize::from(body[VERSION_POS])];
    let material = keyring
        .material(version)
        .ok_or_else(|| Error::MalformedApiKey(MalformedReason::UnknownVersion))?;
    // The id is written least significant digit first. 62^10 < 2^64 < 62^11:
    // the ten high digits fit, the last step may overflow (non-canonical).
    let id = body[ID_START + 1..VERSION_POS]
        .iter()
        .rev()
        .fold(0u64, |acc, &b| {
            acc.wrapping_mul(62)
                .wrapping_add(u64::from(base62::DECODE[usize::from(b)] & 63))
        })
        .checked_mul(62)
        .and_then(|hi| hi.checked_add(u64::from(base62::DECODE[usize::from(body[ID_START])])))
        .ok_or_else(|| Error::MalformedApiKey(MalformedReason::NonCanonical))?;
    let presented_tag = base62::decode_u64(&body[TAG_START..CHECKSUM_START]);
    let expected_tag = tag_of(material, &bytes[..split + TAG_START]);
    if !bool::from(presented_tag.ct_eq(&expected_tag)) {
        return Err(Error::InvalidApiKey);
    }
    let mut secret = Zeroizing::new([0u8; PACKED_SECRET_LEN]);
    let secret_text: &[u8; SECRET_LEN] = body[SECRET_START..TAG_START]
        .try_into()
        .map_err(|_| Error::MalformedApiKey(MalformedReason::Length))?;
    pack_secret_text(secret_text, &mut secret);
    Ok(ParsedKey {
        prefix,
        prefix_index: prefix_index as u8,
        environment: entry.environment,
        version,
        id: KeyId(id),
        secret,
    })
}

/// Packs 32 base62 characters (already checked to be in the alphabet) as
/// 6-bit values: four characters -> three bytes, like [`pack_secret`].
#[inline]
fn pack_secret_text(text: &[u8; SECRET_LEN], out: &mut [u8; PACKED_SECRET_LEN]) {
    let d = |b: u8| u32::from(base62::DECODE[usize::from(b)] & 63);
    for i in 0..SECRET_LEN / 4 {
        let v = (d(text[4 * i]) << 18)
            | (d(text[4 * i + 1]) << 12)
            | (d(text[4 * i + 2]) << 6)
            | d(text[4 * i + 3]);
        out[3 * i] = (v >> 16) as u8;
        out[3 * i + 1] = (v >> 8) as u8;
        out[3 * i + 2] = v as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        let mut digits = [0u8; SECRET_LEN];
        for (i, d) in digits.iter_mut().enumerate() {
            *d = (i * 7 % 62) as u8;
        }
        let mut packed = [0u8; PACKED_SECRET_LEN];
        pack_secret(&digits, &mut packed);
        let mut back = [0u8; SECRET_LEN];
        unpack_secret(&packed, &mut back);
        assert_eq!(digits, back);
    }

    #[test]
    fn text_packing_matches_digit_packing() {
        let text: Vec<u8> = (0..SECRET_LEN)
            .map(|i| ALPHABET[(i * 11 + 5) % 62])
            .collect();
        let mut digits = [0u8; SECRET_LEN];
        for (d, &c) in digits.iter_mut().zip(&text) {
            *d = base62::DECODE[usize::from(c)];
        }
        let (mut a, mut b) = ([0u8; PACKED_SECRET_LEN], [0u8; PACKED_SECRET_LEN]);
        pack_secret(&digits, &mut a);
        pack_secret_text(&text.clone().try_into().expect("32 bytes"), &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn layout_constants() {
        assert_eq!(BODY_LEN, 58);
        assert_eq!(PACKED_SECRET_LEN, 24);
        // 62^11 > 2^64 so every id fits; 62^6 > 2^32 so every CRC fits.
        assert!(62u128.pow(ID_LEN as u32) > u128::from(u64::MAX));
        assert!(62u128.pow(CHECKSUM_LEN as u32) > u128::from(u32::MAX));
        // 32 digits carry at least 190 bits.
        assert!(SECRET_LEN as f64 * 62f64.log2() >= 190.0);
    }
}
