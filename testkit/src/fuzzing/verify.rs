//! The verify harness: stored records against presented keys.

use super::scopes::reference_requirement;
use super::*;

impl Harness {
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
                        at: HARNESS_NOW - std::time::Duration::from_secs(3_600),
                        reason: "fuzz".into(),
                    });
                }
                StoreMode::Expired => {
                    rec.expires_at = Some(HARNESS_NOW - std::time::Duration::from_secs(1))
                }
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
        let result = self.verifier.parse(&text).and_then(|parsed| {
            let view = store.fetch_sync(parsed.id())?;
            self.verifier
                .verify(&parsed, view, &HARNESS_NOW, &requirement, None)
        });
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
            1 => Some(HARNESS_NOW - std::time::Duration::from_secs(1)),
            2 => Some(HARNESS_NOW),
            _ => Some(HARNESS_NOW + std::time::Duration::from_secs(1)),
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
            HARNESS_NOW - std::time::Duration::from_secs(86_400),
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
