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
//! | [`extreme_times`] | script of manager operations with extreme times | never panics; `INVALID_REQUEST` exactly for a time outside `MIN_TIME..=MAX_TIME` (argument or clock); inside it create/update store the instants given, and authenticate/verify answer what the record calls for |
//! | [`Harness::record_json`] | JSON | a record that deserializes re-serializes to a fixpoint and verifies every harness key the same as the original |
//!
//! Every harness uses one fixed keyring ([`harness_verifier`]), so the seed
//! corpus in `fuzz/seeds/` (from [`seed_corpus`]) holds keys that parse.

use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use apikey::__private::{ID_LEN, SECRET_LEN, VERSION_LEN};
use apikey::KeyDigest;
use apikey::MemoryStore;
use apikey::Verifier;
use apikey::{ApiKey, KeyId};
use apikey::{Environment, PrefixRegistry};
use apikey::{Error, StoreErrorKind};
use apikey::{KeyRecord, KeyStatus, NewKey, Revocation};
use apikey::{Keyring, ServerSecret};
use apikey::{MAX_SCOPE_LEN, MAX_SCOPES_PER_KEY, MAX_SEGMENTS, Requirement, Scope, ScopeSet};

/// Server secret version 1 of every harness keyring. Public on purpose: it
/// only ever protects fuzzing fixtures.
pub const HARNESS_SECRET_V1: [u8; 32] = *b"apikey fuzz harness secret no. 1";
/// Server secret version 2 (current) of every harness keyring.
pub const HARNESS_SECRET_V2: [u8; 32] = *b"apikey fuzz harness secret no. 2";
/// The instant every harness verifies at (2026-01-01T00:00:00Z).
pub const HARNESS_NOW: OffsetDateTime = time::macros::datetime!(2026-01-01 0:00 UTC);

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
        let issued_at = HARNESS_NOW - time::Duration::days(30);
        let mut keys = Vec::new();
        let current = harness_verifier();
        let scopes: [&[&str]; 3] = [&["read", "tasks:*"], &["tasks:read"], &[]];
        for (entry, scopes) in PrefixRegistry::with_builtins().iter().zip(scopes) {
            let new = NewKey::new(entry.prefix.as_str())
                .owner("org_fuzz")
                .name("harness")
                .scopes(scopes.iter().copied())
                .expires_at(HARNESS_NOW + time::Duration::days(365));
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

    /// Full verification against a [`MemoryStore`] holding arbitrary records.
    ///
    /// The input is a small script, then the presented key. Bytes, in order
    /// (missing bytes read as 0):
    ///
    /// 1. one byte per fixed key: how it is stored (`% 6`: original,
    ///    disabled, revoked, expired, absent, wrong digest);
    /// 2. `n % 8` arbitrary records, each: id source, id bytes or key index,
    ///    digest source (+ 32 bytes), secret version, prefix/environment,
    ///    status, validity window (+ owner and IP allowlist bits), scope bits;
    /// 3. the requirement (`% 6`);
    /// 4. the presented text: `% 5`: 0 a fixed key exactly, 1 one byte of a
    ///    fixed key replaced, 2 a fixed key under another prefix, 3 a fixed
    ///    key cut or extended, 4 the rest of the input as text.
    ///
    /// Oracles: only a byte-identical fixed key verifies, and only when its
    /// genuine record is stored; a fixed key whose genuine record is stored
    /// gets exactly the outcome the record calls for (status, window,
    /// environment, scopes, IP allowlist); an insert never overwrites an id; no error
    /// message or `Debug` output carries secret material.
    ///
    /// # Panics
    /// When an oracle fails.
    ///
    /// ```
    /// let h = apikey_testkit::fuzzing::Harness::new();
    /// h.verify(&[]); // fixed key 0, stored as issued: verifies
    /// h.verify(b"\x02\x00\x00\x00\x00\x00\x00"); // revoked key 0: REVOKED_API_KEY
    /// ```
    pub fn verify(&self, data: &[u8]) {
        let mut c = Cursor(data);
        let store = MemoryStore::new();
        let n = self.keys.len();
        let mut modes = Vec::with_capacity(n);
        for (_, rec) in &self.keys {
            let mode = StoreMode::from_byte(c.byte());
            modes.push(mode);
            let mut rec = rec.clone();
            match mode {
                StoreMode::Original => {}
                StoreMode::Disabled => rec.status = KeyStatus::Disabled,
                StoreMode::Revoked => {
                    rec.status = KeyStatus::Revoked;
                    rec.revocation = Some(Revocation {
                        at: HARNESS_NOW - time::Duration::hours(1),
                        reason: "fuzz".into(),
                    });
                }
                StoreMode::Expired => rec.expires_at = Some(HARNESS_NOW - time::Duration::SECOND),
                StoreMode::Absent => continue,
                StoreMode::WrongDigest => {
                    let mut d = *rec.digest.as_bytes();
                    d[31] ^= 1;
                    rec.digest = KeyDigest::from_bytes(d);
                }
            }
            if let Err(e) = store.insert_sync(rec) {
                panic!("a harness record must insert: {e}");
            }
        }

        for _ in 0..c.byte() % 8 {
            let rec = self.arbitrary_record(&mut c);
            let before = store.get_sync(rec.id);
            let valid = rec.validate().is_ok();
            match store.insert_sync(rec.clone()) {
                Ok(()) => {
                    assert!(before.is_none(), "insert overwrote an existing id");
                    assert!(valid, "the store accepted a record that fails validate()");
                    assert_eq!(store.get_sync(rec.id).as_ref(), Some(&rec));
                }
                Err(e) => {
                    let expected = if valid {
                        assert!(before.is_some(), "a valid record with a new id was refused");
                        StoreErrorKind::IdCollision
                    } else {
                        StoreErrorKind::Corrupt
                    };
                    assert_eq!(e.kind(), expected, "insert failed for the wrong reason");
                    assert_eq!(
                        store.get_sync(rec.id),
                        before,
                        "a failed insert changed the store"
                    );
                }
            }
        }

        let requirement = requirement_from(c.byte());
        let text = self.presented_text(&mut c);
        let result =
            self.verifier
                .verify_with(&text, |id| store.fetch_sync(id), HARNESS_NOW, &requirement);
        match &result {
            Ok(v) => self.assert_no_leak(&format!("{v:?}")),
            Err(e) => self.assert_no_leak(&format!("{e} {e:?}")),
        }

        let exact = self
            .keys
            .iter()
            .find(|(k, _)| k.expose_secret().as_bytes() == text.as_bytes());
        let Some((key, issued)) = exact else {
            if let Ok(v) = result {
                panic!(
                    "a key that was never issued verified: {text:?} as {:?}",
                    v.id()
                );
            }
            return;
        };
        let stored = store.get_sync(key.id());
        if let Ok(v) = &result {
            assert_eq!(v.id(), key.id());
            assert!(
                stored.as_ref().is_some_and(|s| s.digest == issued.digest),
                "a key verified against a record that is not its own"
            );
        }
        let Some(stored) = stored
            .filter(|s| s.digest == issued.digest && s.secret_version == issued.secret_version)
        else {
            if stored_is_foreign(&store, key.id(), issued) {
                assert_eq!(outcome(result), Err("INVALID_API_KEY"));
            }
            return;
        };
        let expected = expected_outcome(&stored, key, &requirement, &self.verifier);
        assert_eq!(
            outcome(result),
            expected,
            "fixed key {:?} stored as {stored:?}",
            key.id()
        );
    }

    fn arbitrary_record(&self, c: &mut Cursor<'_>) -> KeyRecord {
        let n = self.keys.len();
        let pick = |b: u8| &self.keys[usize::from(b) % n].1;
        let id = match c.byte() % 3 {
            0 => KeyId::from_u64(c.u64()),
            1 => pick(c.byte()).id,
            _ => KeyId::from_u64(pick(c.byte()).id.as_u64() ^ 1),
        };
        let digest = match c.byte() % 3 {
            0 => {
                let mut d = [0u8; 32];
                d.iter_mut().for_each(|b| *b = c.byte());
                KeyDigest::from_bytes(d)
            }
            1 => pick(c.byte()).digest,
            _ => KeyDigest::from_bytes([0; 32]),
        };
        let secret_version = [1, 2, 3, 0, 62][usize::from(c.byte() % 5)];
        let pe = c.byte();
        let prefixes = PrefixRegistry::with_builtins();
        let entry = prefixes.iter().nth(usize::from(pe % 3)).cloned();
        let (prefix, mut environment) = match entry {
            Some(e) => (e.prefix, e.environment),
            None => (pick(0).prefix.clone(), Environment::Live),
        };
        if pe & 4 != 0 {
            environment = match environment {
                Environment::Live => Environment::Test,
                Environment::Test => Environment::Live,
            };
        }
        let st = c.byte();
        let (status, revocation) = match st % 4 {
            0 => (KeyStatus::Active, None),
            1 => (KeyStatus::Disabled, None),
            2 => (
                KeyStatus::Revoked,
                Some(Revocation {
                    at: HARNESS_NOW,
                    reason: "r".into(),
                }),
            ),
            // Inconsistent on purpose: validate() must reject it.
            _ => (KeyStatus::Revoked, None),
        };
        let w = c.byte();
        let at = |code: u8| match code % 4 {
            0 => None,
            1 => Some(HARNESS_NOW - time::Duration::SECOND),
            2 => Some(HARNESS_NOW),
            _ => Some(HARNESS_NOW + time::Duration::SECOND),
        };
        let bits = c.byte();
        let scopes = SCOPE_POOL
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .filter_map(|(_, s)| Scope::parse(s).ok())
            .collect();
        KeyRecord::builder(
            id,
            prefix,
            environment,
            secret_version,
            digest,
            HARNESS_NOW - time::Duration::days(1),
        )
        .owner((w & 0x80 != 0).then(|| "org_fuzz".to_owned()))
        .scopes(ScopeSet::from_scopes(scopes))
        .expires_at(at(w))
        .not_before(at(w >> 2))
        .status(status)
        .revocation(revocation)
        .revision(u64::from(bits >> 7))
        .ip_allowlist(if w & 0x40 != 0 {
            "10.0.0.0/8".parse().ok().into_iter().collect()
        } else {
            Vec::new()
        })
        .build_unvalidated()
    }

    fn presented_text(&self, c: &mut Cursor<'_>) -> String {
        let n = self.keys.len();
        let mode = c.byte() % 5;
        if mode == 4 {
            return String::from_utf8_lossy(c.0).into_owned();
        }
        let key = &self.keys[usize::from(c.byte()) % n].0;
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        match mode {
            1 => {
                let pos = usize::from(c.byte()) % bytes.len();
                bytes[pos] = c.byte();
            }
            2 => {
                let prefixes = PrefixRegistry::with_builtins();
                if let Some(other) = prefixes.iter().nth(usize::from(c.byte() % 3)) {
                    let body = bytes.split_off(key.prefix().len());
                    bytes = other.prefix.as_str().as_bytes().to_vec();
                    bytes.extend_from_slice(&body);
                }
            }
            3 => {
                let len = usize::from(c.byte());
                if len < bytes.len() {
                    bytes.truncate(len);
                } else {
                    bytes.extend(std::iter::repeat_n(b'A', len - bytes.len()));
                }
            }
            _ => {}
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Header extraction ([`Extractor`](apikey::web::Extractor)).
    ///
    /// Input: one configuration byte (bit 0: refuse the API-key header,
    /// bit 1: refuse Bearer, bit 2: accept `?api_key=`, bit 3: header name
    /// `x-key`, bits 4-5: length limit 256 / 66 / 8 / 0, bit 6: the first
    /// line is the query string), then `\n`-separated lines, each
    /// `name:value` (raw bytes).
    ///
    /// Oracles: never panics; an extracted key is non-empty visible ASCII
    /// within the length limit, came from an accepted scheme (Bearer only
    /// with a registered prefix) and occurs in the request; the exact outcome
    /// (key text and scheme, not-ours, or error code and message) is the
    /// same with the headers reversed and rotated; `Debug` of the outcome never shows the key; no error
    /// carries a fixed key's secret material.
    ///
    /// # Panics
    /// When an oracle fails.
    ///
    /// ```
    /// let h = apikey_testkit::fuzzing::Harness::new();
    /// h.header_extraction(b"\x00x-api-key: sk_live_abc\nAuthorization: Bearer sk_live_abc");
    /// ```
    pub fn header_extraction(&self, data: &[u8]) {
        use apikey::web::{Extracted, Extractor, Scheme};
        let (config, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
        let max_len = [256, 66, 8, 0][usize::from((config >> 4) & 3)];
        let mut extractor = Extractor::new(self.verifier.prefixes().clone())
            .with_sources(match config & 3 {
                0 => apikey::web::Sources::ALL,
                1 => apikey::web::Sources::BEARER,
                2 => apikey::web::Sources::API_KEY_HEADER,
                _ => apikey::web::Sources::NONE,
            })
            .with_max_len(max_len);
        if config & 4 != 0 {
            extractor = extractor.with_query_param("api_key");
        }
        if config & 8 != 0 {
            extractor = extractor.with_header_name("x-key");
        }
        let mut lines = rest.split(|&b| b == b'\n');
        let query = if config & 64 != 0 {
            lines
                .next()
                .map(|q| String::from_utf8_lossy(q).into_owned())
        } else {
            None
        };
        let headers: Vec<(&[u8], &[u8])> = lines
            .take(16)
            .map(|line| match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &[][..]),
            })
            .collect();
        let q = query.as_deref();
        let forward = extractor.extract_with_query(headers.iter().copied(), q);
        let backward = extractor.extract_with_query(headers.iter().rev().copied(), q);
        let debug = format!("{forward:?}");
        match &forward {
            Ok(Extracted::Key(key)) => {
                let text = key.expose_secret();
                assert!(!text.is_empty(), "an empty key was extracted");
                assert!(text.len() <= max_len, "the length limit was not applied");
                assert!(
                    text.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "extracted key is not visible ASCII: {text:?}"
                );
                assert!(
                    extractor.accepts(key.scheme()),
                    "{:?} is refused",
                    key.scheme()
                );
                if key.scheme() == Scheme::Bearer {
                    assert!(
                        self.verifier
                            .prefixes()
                            .iter()
                            .any(|e| text.starts_with(e.prefix.as_str())),
                        "a Bearer token without a registered prefix was taken"
                    );
                }
                let in_request = headers
                    .iter()
                    .any(|(_, v)| v.windows(text.len()).any(|w| w == text.as_bytes()))
                    || query.as_deref().is_some_and(|q| q.contains(text));
                assert!(in_request, "the key does not come from the request");
                if text.len() >= LEAK_WINDOW {
                    assert!(!debug.contains(text), "Debug shows the key: {debug}");
                }
            }
            Ok(Extracted::NotOurs) => {}
            Err(e) => self.assert_no_leak(&format!("{e} {e:?}")),
        }
        // Exact outcomes: the same key text and scheme, or the same error
        // (code and message), whatever the header order.
        let exact = |r: &apikey::Result<Extracted<'_>>| match r {
            Ok(Extracted::Key(k)) => Ok(Some((k.expose_secret().to_owned(), k.scheme()))),
            Ok(Extracted::NotOurs) => Ok(None),
            Err(e) => Err((e.code().as_str(), e.to_string())),
        };
        let rotated = {
            let mut h = headers.clone();
            if !h.is_empty() {
                h.rotate_left(1);
            }
            extractor.extract_with_query(h.iter().copied(), q)
        };
        assert_eq!(
            exact(&forward),
            exact(&backward),
            "header order changed the outcome"
        );
        assert_eq!(
            exact(&forward),
            exact(&rotated),
            "header order changed the outcome"
        );
    }

    /// Record deserialization (serde_json): whatever deserializes
    /// re-serializes, reads back equal, serializes to the same bytes
    /// (a fixpoint), validates the same, yields the same [`KeyView`](apikey::KeyView), and
    /// verifies every fixed key exactly as the original record does, both
    /// directly and through a [`MemoryStore`].
    ///
    /// # Panics
    /// When an oracle fails.
    ///
    /// ```
    /// let h = apikey_testkit::fuzzing::Harness::new();
    /// let json = serde_json::to_vec(&h.keys()[0].1).expect("serializes");
    /// h.record_json(&json);
    /// h.record_json(b"{\"schema_version\":2}");
    /// ```
    pub fn record_json(&self, data: &[u8]) {
        let Ok(rec) = serde_json::from_slice::<KeyRecord>(data) else {
            return;
        };
        let json = match serde_json::to_vec(&rec) {
            Ok(j) => j,
            Err(e) => panic!("a record that deserializes must serialize: {e}; {rec:?}"),
        };
        let back: KeyRecord = match serde_json::from_slice(&json) {
            Ok(r) => r,
            Err(e) => panic!("a re-serialized record must deserialize: {e}"),
        };
        assert_eq!(back, rec, "record round-trip changed the record");
        assert_eq!(
            serde_json::to_vec(&back).ok().as_deref(),
            Some(&*json),
            "serialization is not a fixpoint"
        );
        assert_eq!(back.validate().is_ok(), rec.validate().is_ok());
        let (va, vb) = (
            std::sync::Arc::new(apikey::KeyView::from_record(&rec)),
            std::sync::Arc::new(apikey::KeyView::from_record(&back)),
        );
        assert_eq!(va, vb);
        self.assert_no_leak(&format!("{rec:?}"));

        let store = MemoryStore::new();
        let stored = store.insert_sync(rec.clone()).is_ok();
        assert_eq!(stored, rec.validate().is_ok());
        for requirement in [Requirement::none(), requirement_from(3)] {
            for (key, _) in &self.keys {
                let run = |view: &std::sync::Arc<apikey::KeyView>| {
                    let v = (view.id() == key.id()).then(|| std::sync::Arc::clone(view));
                    outcome(self.verifier.verify_with(
                        key.expose_secret(),
                        |_| Ok(v),
                        HARNESS_NOW,
                        &requirement,
                    ))
                };
                let a = run(&va);
                assert_eq!(a, run(&vb), "round-tripped record verifies differently");
                if stored {
                    let via_store = outcome(self.verifier.verify_with(
                        key.expose_secret(),
                        |id| store.fetch_sync(id),
                        HARNESS_NOW,
                        &requirement,
                    ));
                    assert_eq!(a, via_store, "stored record verifies differently");
                }
            }
        }
    }
}

/// Whether the record stored under `id` is one the key cannot match: a
/// different digest (secret versions aside), or nothing stored.
fn stored_is_foreign(store: &MemoryStore, id: KeyId, issued: &KeyRecord) -> bool {
    store.get_sync(id).is_none_or(|s| s.digest != issued.digest)
}

/// What verifying `key` against its genuine `stored` record must return.
fn expected_outcome(
    stored: &KeyRecord,
    key: &ApiKey,
    requirement: &Requirement,
    verifier: &Verifier,
) -> Result<KeyId, &'static str> {
    let now = HARNESS_NOW;
    let key_env = verifier
        .prefixes()
        .find(key.prefix())
        .map(|(_, e)| e.environment);
    match stored.status {
        KeyStatus::Revoked => Err(Error::RevokedApiKey.code().as_str()),
        KeyStatus::Disabled => Err(Error::DisabledApiKey.code().as_str()),
        KeyStatus::Active if stored.not_before.is_some_and(|nb| now < nb) => Err("NOT_YET_VALID"),
        KeyStatus::Active if stored.expires_at.is_some_and(|e| now >= e) => Err("EXPIRED_API_KEY"),
        KeyStatus::Active if key_env != Some(stored.environment) => Err("WRONG_ENVIRONMENT"),
        // `verify_with` knows no client address: allowlisted keys fail
        // closed, before the scopes are looked at.
        KeyStatus::Active if !stored.ip_allowlist.is_empty() => Err("IP_NOT_ALLOWED"),
        KeyStatus::Active if !reference_requirement(requirement, &stored.scopes) => {
            Err("INSUFFICIENT_SCOPE")
        }
        KeyStatus::Active => Ok(key.id()),
    }
}

/// Segment-wise reference of the scope grammar (independent of
/// `Scope::parse`).
fn reference_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_SCOPE_LEN {
        return false;
    }
    let segs: Vec<&str> = s.split(':').collect();
    segs.len() <= MAX_SEGMENTS
        && segs.iter().enumerate().all(|(i, seg)| {
            (*seg == "*" && i + 1 == segs.len())
                || (!seg.is_empty()
                    && seg
                        .chars()
                        .all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '_' | '-')))
        })
}

/// Segment-wise reference of `grants` (independent of `Scope::grants`).
fn reference_grants(granted: &str, required: &str) -> bool {
    let g: Vec<&str> = granted.split(':').collect();
    let r: Vec<&str> = required.split(':').collect();
    match g.split_last() {
        Some((&"*", lit)) => r.len() > lit.len() && r[..lit.len()] == *lit,
        _ => g == r,
    }
}

fn reference_requirement(req: &Requirement, granted: &ScopeSet) -> bool {
    let any = |r: &Scope| {
        granted
            .iter()
            .any(|g| reference_grants(g.as_str(), r.as_str()))
    };
    match req {
        Requirement::None => true,
        Requirement::AllOf(v) => v.iter().all(any),
        Requirement::AnyOf(v) => v.iter().any(any),
    }
}

/// Scope grammar: the input is split on `\n` into up to 9 scopes. Whatever
/// parses displays as its input and parses back equal; validity agrees with
/// a segment-wise reference grammar; `grants` agrees with a reference, is
/// reflexive and transitive; [`ScopeSet`] and [`Requirement`] agree with
/// the reference; JSON round-trips. Never panics otherwise.
///
/// # Panics
/// When an oracle fails.
///
/// ```
/// apikey_testkit::fuzzing::scope_grammar(b"projects:*\nprojects:42:read\n*\nA:b");
/// ```
pub fn scope_grammar(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pieces: Vec<&str> = text.split('\n').take(9).collect();
    let mut valid = Vec::new();
    for p in &pieces {
        match Scope::parse(p) {
            Ok(s) => {
                assert!(
                    reference_valid(p),
                    "accepted a scope the grammar forbids: {p:?}"
                );
                assert_eq!(s.to_string(), *p, "Display must give back the input");
                assert_eq!(s.as_str(), *p);
                assert_eq!(p.parse::<Scope>().ok().as_ref(), Some(&s));
                assert!(s.grants(&s), "grants must be reflexive: {p:?}");
                assert_eq!(s.is_wildcard(), p.ends_with('*'));
                {
                    let json = serde_json::to_string(&s).unwrap_or_default();
                    assert_eq!(serde_json::from_str::<Scope>(&json).ok().as_ref(), Some(&s));
                }
                valid.push(s);
            }
            Err(e) => {
                assert!(!reference_valid(p), "rejected a valid scope: {p:?}: {e}");
                assert_eq!(e.code().as_str(), "INVALID_SCOPE");
                // Serde must refuse what parse refuses.
                {
                    let json = serde_json::to_string(p).unwrap_or_default();
                    assert!(serde_json::from_str::<Scope>(&json).is_err());
                }
            }
        }
    }
    for a in &valid {
        for b in &valid {
            assert_eq!(
                a.grants(b),
                reference_grants(a.as_str(), b.as_str()),
                "{a} grants {b}?"
            );
            if a.grants(b) {
                for c in &valid {
                    if b.grants(c) {
                        assert!(a.grants(c), "grants must be transitive: {a} {b} {c}");
                    }
                }
            }
        }
    }
    let set_result = ScopeSet::parse(&pieces);
    assert_eq!(
        set_result.is_ok(),
        valid.len() == pieces.len() && pieces.len() <= MAX_SCOPES_PER_KEY
    );
    let Some((first, rest)) = valid.split_first() else {
        return;
    };
    let granted = ScopeSet::from_scopes(rest.to_vec());
    assert_eq!(
        granted.grants(first),
        rest.iter()
            .any(|g| reference_grants(g.as_str(), first.as_str()))
    );
    for req in [
        Requirement::AllOf(vec![first.clone()]),
        Requirement::AllOf(valid.clone()),
        Requirement::AnyOf(valid.clone()),
        Requirement::AnyOf(Vec::new()),
    ] {
        let met = req.is_met_by(&granted, &[]);
        assert_eq!(
            met,
            reference_requirement(&req, &granted),
            "{req:?} by {granted:?}"
        );
        assert_eq!(req.check(&granted, &[]).is_ok(), met);
    }
    {
        let json = serde_json::to_string(&granted).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).ok(), Some(granted));
    }
}

/// The seed corpus: `(target, file name, bytes)` for every fuzz target, one
/// valid key per prefix (and per secret version) where the target takes
/// keys. Deterministic; `fuzz/seeds/` holds exactly this (a test checks).
pub fn seed_corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let h = Harness::new();
    let mut out = Vec::new();
    for (i, (key, rec)) in h.keys().iter().enumerate() {
        let name = format!("{}v{}", key.prefix(), rec.secret_version);
        out.push((
            "parse_key",
            name.clone(),
            key.expose_secret().as_bytes().to_vec(),
        ));
        let n = h.keys().len();
        // Exact key i, stored as issued, no requirement.
        let mut script = vec![0u8; n];
        script.extend_from_slice(&[0, 0, 0, i as u8]);
        out.push(("verify", format!("{name}_exact"), script));
        // Key i's store record revoked, then the key as raw text.
        let mut script = vec![0u8; n];
        script[i] = 2;
        script.extend_from_slice(&[0, 1, 4]);
        script.extend_from_slice(key.expose_secret().as_bytes());
        out.push(("verify", format!("{name}_revoked_raw"), script));
        // One arbitrary record copying key i's id and digest.
        let version_byte = if rec.secret_version == 2 { 1 } else { 0 };
        let prefix_byte = h
            .verifier()
            .prefixes()
            .find(key.prefix())
            .map_or(0, |(p, _)| p as u8);
        let mut script = vec![4u8; n];
        script.extend_from_slice(&[1, 1, i as u8, 1, i as u8, version_byte, prefix_byte]);
        script.extend_from_slice(&[0, 0, 0xff, 0, 0]);
        script.push(i as u8);
        out.push(("verify", format!("{name}_copied_record"), script));
        if let Ok(json) = serde_json::to_vec_pretty(rec) {
            out.push(("record_json", name, json));
        }
    }
    for (i, (key, rec)) in h.keys().iter().enumerate() {
        let k = key.expose_secret();
        let name = format!("{}v{}", key.prefix(), rec.secret_version);
        let cases: [(&str, u8, String); 3] = [
            ("api_key_header", 0, format!("x-api-key: {k}")),
            (
                "bearer",
                0,
                format!("Authorization: Bearer {k}\nX-API-Key: {k}"),
            ),
            (
                "query",
                4 | 64,
                format!("q=1&api_key={k}\nauthorization: Basic dXNlcjpwYXNz"),
            ),
        ];
        if i == 0 {
            out.push((
                "header_extraction",
                "jwt".to_owned(),
                b"\x00Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig".to_vec(),
            ));
        }
        for (what, config, text) in cases {
            let mut bytes = vec![config];
            bytes.extend_from_slice(text.as_bytes());
            out.push(("header_extraction", format!("{name}_{what}"), bytes));
        }
    }
    // Extreme times: the clock at each end of the range and past it, then
    // create, update, get, list, authenticate and verify.
    for (name, selector) in [
        ("max_time", 1u8),
        ("past_max_time", 3),
        ("extreme_offset", 5),
        ("year_2262", 8),
    ] {
        let mut script = vec![0, selector, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        script.extend_from_slice(&[1, 0, 0, 2, 0, 4, 5, 6, 8, 1, 0, 0, 0, 0, 0, 0, 0]);
        script.extend_from_slice(&[0; 8]);
        out.push(("extreme_times", name.to_owned(), script));
    }
    for (name, text) in [
        ("wildcards", "projects:*\nprojects:42:read\n*\nprojects"),
        ("grammar", "tasks:read\ntasks:*\nread\ncorpus:42:query"),
        ("edge", "a-b_c:d:*\n*:a\nA\n\na::b"),
    ] {
        out.push(("scope_grammar", name.to_owned(), text.as_bytes().to_vec()));
    }
    out
}

/// Rewrites the last six characters of `text` with the correct checksum of
/// the rest, so a harness can build inputs that pass the checksum and must be
/// stopped by the keyed tag (forged keys). `None` when `text` is shorter than
/// six bytes or the result is not UTF-8.
///
/// ```
/// # use apikey::*;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// let (key, _) = verifier.issue(NewKey::new("sk_live_"), time::OffsetDateTime::UNIX_EPOCH)?;
/// let mut forged = key.expose_secret().as_bytes().to_vec();
/// forged[20] = if forged[20] == b'a' { b'b' } else { b'a' }; // inside the secret
/// let forged = apikey_testkit::fuzzing::with_valid_checksum(forged).expect("long enough");
/// assert!(matches!(verifier.parse(&forged), Err(Error::InvalidApiKey))); // the tag stops it
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn with_valid_checksum(mut text: Vec<u8>) -> Option<String> {
    if text.len() < 6 {
        return None;
    }
    apikey::__private::write_checksum(&mut text);
    String::from_utf8(text).ok()
}

/// Polls a future that never waits (the manager over a [`MemoryStore`]).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// A time chosen by the input: the ends of the supported range and just
/// past them, extreme offsets (`9999-12-31T23:59:59-23:59`), the ends of
/// what `time` represents, 2262-04-12 (where `i64` nanoseconds end), and
/// arbitrary instants in and out of the range with arbitrary offsets.
fn extreme_time(bytes: &mut impl Iterator<Item = u8>) -> OffsetDateTime {
    use apikey::{MAX_TIME, MIN_TIME};
    use time::macros::datetime;
    use time::{Duration, PrimitiveDateTime, UtcOffset};
    let mut word = || {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = bytes.next().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let selector = word();
    let offset = UtcOffset::from_whole_seconds((word() % 172_799) as i32 - 86_399)
        .map(|o| UtcOffset::from_hms(o.whole_hours(), o.minutes_past_hour(), 0).unwrap_or(o))
        .unwrap_or(UtcOffset::UTC);
    let at = |t: OffsetDateTime| t.checked_to_offset(offset).unwrap_or(t);
    match selector % 14 {
        0 => MIN_TIME,
        1 => MAX_TIME,
        2 => MIN_TIME - Duration::NANOSECOND,
        3 => MAX_TIME + Duration::MICROSECOND,
        4 => MAX_TIME + Duration::NANOSECOND,
        5 => datetime!(9999-12-31 23:59:59 -23:59),
        6 => PrimitiveDateTime::MIN
            .assume_offset(UtcOffset::from_hms(23, 59, 0).unwrap_or(UtcOffset::UTC)),
        7 => PrimitiveDateTime::MAX
            .assume_offset(UtcOffset::from_hms(-23, -59, 0).unwrap_or(UtcOffset::UTC)),
        8 => datetime!(2262-04-12 0:00 UTC),
        9 => at(HARNESS_NOW),
        10 => at(MAX_TIME - Duration::seconds((word() % 100_000) as i64)),
        11 => at(MIN_TIME + Duration::seconds((word() % 100_000) as i64)),
        12 => {
            let secs = (word() as i64) % 253_402_300_799;
            at(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(HARNESS_NOW))
        }
        _ => {
            let micros = word() % (1 << 53);
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                .unwrap_or(HARNESS_NOW);
            at(t)
        }
    }
}

/// The [`KeyManager`](apikey::KeyManager) and [`Verifier`] at the edges of
/// time: a script of operations (set the clock, create, update the
/// expiry, rotate, get, list, authenticate, issue, verify, import), each
/// with times chosen by the input bytes (range ends and just
/// past them, `9999-12-31T23:59:59-23:59`, `time`'s own ends, 2262).
///
/// Oracles: never panics; an operation given a time outside the
/// [supported range](apikey::MIN_TIME), or run with the clock outside it,
/// answers exactly `INVALID_REQUEST`; inside the range each answer is the
/// one the stored record calls for (create and update accept exactly the
/// valid windows and store the instants given; authenticate and verify
/// agree with a reference evaluation of the record at `now`; a key without
/// expiry keeps verifying up to [`MAX_TIME`](apikey::MAX_TIME)).
///
/// # Panics
/// When an oracle fails.
///
/// ```
/// apikey_testkit::fuzzing::extreme_times(b"\x00\x05\x00\x00\x00\x00\x00\x00\x00\x01\x01");
/// apikey_testkit::fuzzing::extreme_times(&[1; 64]);
/// ```
pub fn extreme_times(data: &[u8]) {
    use apikey::Actor;
    use apikey::{Clock, ManualClock, in_time_range};
    use apikey::{ImportKey, KeyManager, KeyUpdate, Rotation};
    let verifier = harness_verifier();
    let clock = ManualClock::new(HARNESS_NOW);
    let manager = KeyManager::with_clock(verifier.clone(), MemoryStore::new(), clock.clone())
        .with_legacy_prefix("old_", "sk_live_")
        .unwrap_or_else(|e| panic!("harness legacy prefix: {e}"));
    let actor = Actor::new("fuzz");
    let mut keys: Vec<(ApiKey, KeyId)> = Vec::new();
    let mut bytes = data.iter().copied();
    let code = |e: &Error| e.code().as_str();
    // The reference: what the stored record calls for at `now`.
    let expected = |r: &KeyRecord, now: OffsetDateTime| -> &'static str {
        match r.status {
            KeyStatus::Revoked => "REVOKED_API_KEY",
            KeyStatus::Disabled => "DISABLED_API_KEY",
            KeyStatus::Active if r.not_before.is_some_and(|nb| now < nb) => "NOT_YET_VALID",
            KeyStatus::Active if r.expires_at.is_some_and(|e| now >= e) => "EXPIRED_API_KEY",
            KeyStatus::Active => "OK",
        }
    };
    let outcome = |r: &apikey::Result<apikey::VerifiedKey>| match r {
        Ok(_) => "OK",
        Err(e) => e.code().as_str(),
    };
    for _ in 0..24 {
        let Some(op) = bytes.next() else { break };
        let now = clock.now();
        let now_ok = in_time_range(now);
        let last = keys.last().map(|(_, id)| *id);
        match op % 10 {
            0 => clock.set(extreme_time(&mut bytes)),
            1 | 7 => {
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let nb = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let mut new = NewKey::new("sk_live_").owner("o");
                new.expires_at = exp;
                new.not_before = nb;
                let times_ok =
                    now_ok && exp.is_none_or(in_time_range) && nb.is_none_or(in_time_range);
                let window_ok = exp.is_none_or(|e| e > now && nb.is_none_or(|nb| e > nb));
                let (result, direct) = if op % 10 == 1 {
                    (
                        block_on(manager.create(new, &actor)).map(|(k, s)| (k, s.id)),
                        false,
                    )
                } else {
                    (verifier.issue(new, now).map(|(k, r)| (k, r.id)), true)
                };
                match result {
                    Ok((key, id)) => {
                        assert!(
                            times_ok && window_ok,
                            "accepted a bad time: now {now}, exp {exp:?}, nb {nb:?}"
                        );
                        if !direct {
                            let stored =
                                block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                            assert_eq!(stored.expires_at, exp, "the expiry was not stored exactly");
                            assert_eq!(stored.not_before, nb, "not-before was not stored exactly");
                            keys.push((key, id));
                        }
                    }
                    Err(e) => {
                        assert!(
                            !(times_ok && window_ok),
                            "refused a valid key: {e} (now {now}, exp {exp:?}, nb {nb:?})"
                        );
                        assert_eq!(code(&e), "INVALID_REQUEST", "{e}");
                    }
                }
            }
            2 => {
                let Some(id) = last else { continue };
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let before = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                let result = block_on(manager.update(id, KeyUpdate::new().expires_at(exp), &actor));
                let after = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                if !now_ok || exp.is_some_and(|e| !in_time_range(e)) {
                    assert_eq!(
                        result.map(|_| ()).map_err(|e| e.code().as_str()),
                        Err("INVALID_REQUEST")
                    );
                    assert_eq!(after, before, "a refused update wrote");
                    continue;
                }
                let changes = exp != before.expires_at;
                let want = if !changes {
                    Ok(())
                } else if before.rotated_to.is_some() {
                    Err("INVALID_STATE")
                } else if exp
                    .is_some_and(|e| e <= now || before.not_before.is_some_and(|nb| e <= nb))
                {
                    Err("INVALID_REQUEST")
                } else {
                    Ok(())
                };
                assert_eq!(result.map(|_| ()).map_err(|e| e.code().as_str()), want);
                if want.is_ok() {
                    assert_eq!(
                        after.expires_at, exp,
                        "the new expiry was not stored exactly"
                    );
                }
            }
            3 => {
                let Some(id) = last else { continue };
                let mut rotation = Rotation::with_grace(time::Duration::seconds(
                    i64::from(bytes.next().unwrap_or(0)) * 2_371,
                ));
                if bytes.next().unwrap_or(0) & 1 == 1 {
                    rotation = rotation.expires_at(extreme_time(&mut bytes));
                }
                let result = block_on(manager.rotate(id, rotation, &actor));
                if !now_ok || rotation.expires_at.is_some_and(|e| !in_time_range(e)) {
                    assert_eq!(
                        result.map(|_| ()).map_err(|e| e.code().as_str()),
                        Err("INVALID_REQUEST")
                    );
                    continue;
                }
                match result {
                    Ok((key, s)) => {
                        let pred = block_on(manager.record(id)).unwrap_or_else(|e| panic!("{e}"));
                        assert!(
                            pred.expires_at
                                .is_some_and(|e| in_time_range(e) && e <= now + rotation.grace)
                        );
                        let v = block_on(manager.authenticate(
                            key.expose_secret(),
                            &Requirement::none(),
                            None,
                        ));
                        let rec = block_on(manager.record(s.id)).unwrap_or_else(|e| panic!("{e}"));
                        assert_eq!(outcome(&v), expected(&rec, now));
                        keys.push((key, s.id));
                    }
                    Err(e) => assert!(
                        matches!(e.code().as_str(), "INVALID_STATE" | "INVALID_REQUEST"),
                        "rotate: {e}"
                    ),
                }
            }
            4 => {
                let Some(id) = last else { continue };
                match block_on(manager.get(id)) {
                    Ok(s) => {
                        assert!(now_ok, "get accepted a clock outside the range");
                        assert!(s.expires_at.is_none_or(in_time_range));
                    }
                    Err(e) => {
                        assert!(!now_ok, "get failed: {e}");
                        assert_eq!(code(&e), "INVALID_REQUEST");
                    }
                }
            }
            5 => match block_on(manager.list("o")) {
                Ok(l) => {
                    assert!(now_ok);
                    assert_eq!(l.len(), keys.len());
                }
                Err(e) => {
                    assert!(!now_ok, "list failed: {e}");
                    assert_eq!(code(&e), "INVALID_REQUEST");
                }
            },
            6 | 8 => {
                let Some((key, id)) = keys.last() else {
                    continue;
                };
                let rec = block_on(manager.record(*id)).unwrap_or_else(|e| panic!("{e}"));
                let (got, at) = if op % 10 == 6 {
                    (
                        block_on(manager.authenticate(
                            key.expose_secret(),
                            &Requirement::none(),
                            None,
                        )),
                        now,
                    )
                } else {
                    let at = extreme_time(&mut bytes);
                    let parsed = verifier
                        .parse(key.expose_secret())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let view = std::sync::Arc::new(apikey::KeyView::from_record(&rec));
                    (
                        verifier.verify(&parsed, Some(view), at, &Requirement::none()),
                        at,
                    )
                };
                let want = if in_time_range(at) {
                    expected(&rec, at)
                } else {
                    "INVALID_REQUEST"
                };
                assert_eq!(outcome(&got), want, "at {at} for {rec:?}");
            }
            _ => {
                let exp = (bytes.next().unwrap_or(0) & 1 == 1).then(|| extreme_time(&mut bytes));
                let n = bytes.next().unwrap_or(0);
                let mut import =
                    ImportKey::plaintext(format!("old_{n:03}_{}", keys.len())).owner("i");
                if let Some(e) = exp {
                    import = import.expires_at(e);
                }
                let result = block_on(manager.import(import, &actor));
                let times_ok = now_ok && exp.is_none_or(in_time_range);
                match result {
                    Ok(s) => {
                        assert!(times_ok && exp.is_none_or(|e| e > now));
                        assert_eq!(s.expires_at, exp);
                    }
                    Err(e) if !times_ok || exp.is_some_and(|e| e <= now) => {
                        assert_eq!(code(&e), "INVALID_REQUEST", "{e}");
                    }
                    Err(e) => assert_eq!(code(&e), "INVALID_STATE", "import: {e}"),
                }
            }
        }
    }
}
