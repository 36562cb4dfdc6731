//! Fuzz-harness bodies, shared by the `fuzz/` targets and the property tests.
//!
//! Each harness takes arbitrary bytes,
//! drives the public API, and panics only when an oracle is violated (a
//! bug), never because the input is bad. They are public so that your own
//! fuzzing harnesses can reuse them:
//!
//! | harness | input | oracle |
//! |---|---|---|
//! | [`parse_key`], [`Harness::parse_key`] | any text | never panics; whatever parses re-composes to the identical text |
//! | [`scope_grammar`] | `\n`-separated scopes | parse then `Display` round-trips; validity and `grants` agree with a segment-wise reference; `grants` is reflexive and transitive |
//! | [`Harness::verify`] | store script + presented text | only byte-identical issued keys verify; an issued key gets exactly the outcome its stored record calls for; the store never overwrites an id; errors never carry secret material |
//! | [`Harness::header_extraction`] | config byte, query, `name:value` lines | never panics; an extracted key is visible ASCII within the length limit, comes from an accepted scheme (a Bearer token only with a registered prefix) and from the request; the exact outcome (key and scheme, or error code and message) does not depend on header order; `Debug` never shows the key |
//! | [`extreme_times`] | script of manager operations with extreme times | never panics; a time outside `Timestamp::MIN..=Timestamp::MAX` is refused where it enters (conversion, RFC 3339, JSON, microseconds) with exactly `INVALID_REQUEST`, one inside reads back unchanged; at any point of the range, its ends included, create/update store the instants given and authenticate/verify answer what the record calls for |
//! | [`Harness::record_json`] | JSON | a record that deserializes re-serializes to a fixpoint and verifies every harness key the same as the original |
//!
//! Every harness uses one fixed keyring ([`harness_verifier`]), so the seed
//! corpus in `fuzz/seeds/` (from [`seed_corpus`]) holds keys that parse.

use apikey::Timestamp;
use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

use apikey::__private::{ID_LEN, SECRET_LEN, VERSION_LEN};
use apikey::KeyDigest;
use apikey::MemoryStore;
use apikey::Verifier;
use apikey::{ApiKey, KeyId};
use apikey::{Environment, PrefixRegistry};
use apikey::{Error, StoreErrorKind};
use apikey::{KeyRecord, KeyStatus, NewKey, Revocation};
use apikey::{Keyring, ServerSecret};
use apikey::{Requirement, Scope, ScopeSet};

/// Server secret version 1 of every harness keyring. Public on purpose: it
/// only ever protects fuzzing fixtures.
pub const HARNESS_SECRET_V1: [u8; 32] = *b"apikey fuzz harness secret no. 1";
/// Server secret version 2 (current) of every harness keyring.
pub const HARNESS_SECRET_V2: [u8; 32] = *b"apikey fuzz harness secret no. 2";
/// The instant every harness verifies at (2026-01-01T00:00:00Z).
pub const HARNESS_NOW: Timestamp = match Timestamp::checked_from_unix_micros(1_767_225_600_000_000)
{
    Some(t) => t,
    None => Timestamp::MIN,
};

/// Length of the window used by [`leaks_secret`].
pub const LEAK_WINDOW: usize = 8;

/// Key parsing: never panics; whatever parses re-composes to the identical
/// text (parse then format round-trips, one canonical spelling).
///
/// # Panics
/// When the round-trip oracle fails.
///
/// ```
/// # use apikey::*;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// apikey_testkit::fuzzing::parse_key(&verifier, b"sk_live_garbage\0\xff");
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn parse_key(verifier: &Verifier, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = verifier.parse(&text) {
        let back = apikey::__private::compose(verifier, &parsed);
        assert_eq!(
            back.as_deref().map(String::as_str),
            Some(&*text),
            "a parsed key must re-compose to the same text"
        );
        let p = parsed.prefix().len();
        assert_eq!(
            &text[..p],
            parsed.prefix(),
            "prefix is the text before the body"
        );
        let display = parsed.id().display_form(parsed.prefix());
        assert!(
            text.starts_with(display.trim_end_matches("...")),
            "the display form {display:?} must be how the key starts"
        );
        assert!(verifier.prefixes().find(parsed.prefix()).is_some());
    }
}

/// The verifier every harness uses: the built-in prefixes and a keyring
/// holding [`HARNESS_SECRET_V1`] (version 1) and [`HARNESS_SECRET_V2`]
/// (version 2, current).
///
/// ```
/// let v = apikey_testkit::fuzzing::harness_verifier();
/// assert_eq!(v.keyring().current_version(), 2);
/// ```
pub fn harness_verifier() -> Verifier {
    Verifier::new(harness_keyring(2))
}

fn harness_keyring(current: u8) -> Keyring {
    // Both secrets are 32 bytes and the versions are in range, so this
    // cannot fail; fall back to a one-version ring to stay panic-free.
    let build = || -> apikey::Result<Keyring> {
        let mut ring = Keyring::new(1, ServerSecret::from_bytes(&HARNESS_SECRET_V1)?)?;
        ring.add(2, ServerSecret::from_bytes(&HARNESS_SECRET_V2)?)?;
        ring.set_current(current)?;
        Ok(ring)
    };
    match build() {
        Ok(ring) => ring,
        Err(e) => panic!("harness keyring: {e}"),
    }
}

/// A deterministic CSPRNG for fixtures: SHA-256 in counter mode over a
/// seed. Only the harnesses use it, so the seed corpus is reproducible.
struct FixtureRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl FixtureRng {
    fn new(label: &[u8]) -> Self {
        Self {
            seed: Sha256::digest(label).into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl TryRng for FixtureRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for d in dest {
            if self.used == 32 {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *d = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for FixtureRng {}

/// Whether `output` contains any [`LEAK_WINDOW`]-character substring of the
/// secret segment of `key` (the 32 characters after the version and id).
///
/// ```
/// use apikey_testkit::fuzzing::{leaks_secret, Harness};
/// let h = Harness::new();
/// let key = &h.keys()[0].0;
/// assert!(leaks_secret(key.expose_secret(), key));
/// assert!(!leaks_secret(&format!("{key:?} {key}"), key));
/// ```
pub fn leaks_secret(output: &str, key: &ApiKey) -> bool {
    secret_segment(key)
        .as_bytes()
        .windows(LEAK_WINDOW)
        .any(|w| output.as_bytes().windows(LEAK_WINDOW).any(|o| o == w))
}

/// The secret segment (32 base62 characters) of `key`.
fn secret_segment(key: &ApiKey) -> &str {
    let start = key.prefix().len() + VERSION_LEN + ID_LEN;
    key.expose_secret()
        .get(start..start + SECRET_LEN)
        .unwrap_or_default()
}

/// Fixed keys and the verifier they verify under, built once per fuzzing
/// process.
///
/// Holds one key per built-in prefix issued under the current secret
/// version (2), plus one `sk_live_` key issued under version 1, all issued
/// deterministically.
pub struct Harness {
    verifier: Verifier,
    keys: Vec<(ApiKey, KeyRecord)>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// How the harness stores issued key `i` before verifying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreMode {
    Original,
    Disabled,
    Revoked,
    Expired,
    Absent,
    WrongDigest,
}

impl StoreMode {
    fn from_byte(b: u8) -> Self {
        match b % 6 {
            0 => Self::Original,
            1 => Self::Disabled,
            2 => Self::Revoked,
            3 => Self::Expired,
            4 => Self::Absent,
            _ => Self::WrongDigest,
        }
    }
}

/// Reads bytes from the front of the input; zeros once exhausted.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, _| (acc << 8) | u64::from(self.byte()))
    }
}

const SCOPE_POOL: [&str; 7] = [
    "read",
    "write",
    "tasks:*",
    "tasks:read",
    "*",
    "admin:*",
    "corpus:42:query",
];

fn requirement_from(b: u8) -> Requirement {
    let r = match b % 6 {
        0 => Ok(Requirement::none()),
        1 => Requirement::scope("read"),
        2 => Requirement::scope("tasks:read"),
        3 => Requirement::all_of(["read", "tasks:write"]),
        4 => Requirement::any_of(["admin:users", "tasks:read"]),
        _ => Requirement::any_of(Vec::<&str>::new()),
    };
    r.unwrap_or(Requirement::AnyOf(Vec::new()))
}

/// A verification outcome reduced to what the oracles compare.
fn outcome(r: apikey::Result<apikey::VerifiedKey>) -> Result<KeyId, &'static str> {
    r.map(|v| v.id()).map_err(|e| e.code().as_str())
}

impl Harness {
    /// Builds the verifier and issues the fixed keys.
    pub fn new() -> Self {
        let mut rng = FixtureRng::new(b"apikey fuzz harness keys");
        let issued_at = HARNESS_NOW - std::time::Duration::from_secs(30 * 86_400);
        let mut keys = Vec::new();
        let current = harness_verifier();
        let scopes: [&[&str]; 3] = [&["read", "tasks:*"], &["tasks:read"], &[]];
        for (entry, scopes) in PrefixRegistry::with_builtins().iter().zip(scopes) {
            let new = NewKey::new(entry.prefix.as_str())
                .owner("org_fuzz")
                .name("harness")
                .scopes(scopes.iter().copied())
                .expires_at(HARNESS_NOW + std::time::Duration::from_secs(365 * 86_400));
            if let Ok(pair) = current.issue_with_rng(new, issued_at, &mut rng) {
                keys.push(pair);
            }
        }
        let old = Verifier::new(harness_keyring(1));
        let new = NewKey::new("sk_live_").scopes(["read"]).metadata("v", "1");
        if let Ok(pair) = old.issue_with_rng(new, issued_at, &mut rng) {
            keys.push(pair);
        }
        Self {
            verifier: current,
            keys,
        }
    }

    /// The verifier (see [`harness_verifier`]).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The fixed keys with their records.
    pub fn keys(&self) -> &[(ApiKey, KeyRecord)] {
        &self.keys
    }

    /// [`parse_key`] under the harness verifier.
    ///
    /// # Panics
    /// When an oracle fails.
    pub fn parse_key(&self, data: &[u8]) {
        parse_key(&self.verifier, data);
    }

    fn assert_no_leak(&self, output: &str) {
        for (key, _) in &self.keys {
            assert!(
                !leaks_secret(output, key),
                "output carries secret material: {output:?}"
            );
        }
    }
}

mod headers;
mod records;
mod scopes;
mod seeds;
mod times;
mod verify;

pub use scopes::scope_grammar;
pub use seeds::{seed_corpus, with_valid_checksum};
pub use times::extreme_times;
