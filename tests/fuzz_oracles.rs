//! Every fuzz oracle, run in the normal test suite: the same harness bodies
//! as the `fuzz/` targets, driven by proptest with key-shaped inputs as well
//! as arbitrary strings and bytes. Also checks that the checked-in seed
//! corpus is the deterministic one (`APIKEY_BLESS_SEEDS=1` rewrites it).

use std::path::Path;
use std::sync::OnceLock;

use apikey_testkit::fuzzing::{self, Harness};
use proptest::prelude::*;

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(Harness::new)
}

/// Key-shaped text: a fixed key with up to three bytes replaced, a prefix
/// swapped, or cut, or a random prefix + 58 base62 characters.
fn key_shaped() -> impl Strategy<Value = Vec<u8>> {
    let n = harness().keys().len();
    let base62 = proptest::char::ranges(vec!['0'..='9', 'A'..='Z', 'a'..='z'].into());
    prop_oneof![
        (
            0..n,
            proptest::collection::vec((0usize..80, any::<u8>()), 0..4)
        )
            .prop_map(move |(i, edits)| {
                let mut b = harness().keys()[i].0.expose_secret().as_bytes().to_vec();
                for (pos, byte) in edits {
                    let at = pos % b.len();
                    b[at] = byte;
                }
                b
            }),
        (0..n, 0usize..80).prop_map(|(i, len)| {
            let mut b = harness().keys()[i].0.expose_secret().as_bytes().to_vec();
            b.truncate(len);
            b
        }),
        (
            prop_oneof![
                Just("sk_live_"),
                Just("sk_test_"),
                Just("kwi_sk_"),
                Just("x_"),
                Just("")
            ],
            proptest::collection::vec(base62, 56..60)
        )
            .prop_map(|(p, body)| {
                let mut s = p.to_owned();
                s.extend(body);
                s.into_bytes()
            }),
    ]
}

/// A valid-looking scope: 1-4 segments of a small alphabet, maybe `*` last.
fn scope_shaped() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec("[a-c0-1_-]{1,3}", 0..4),
        any::<bool>(),
    )
        .prop_map(|(segs, star)| {
            let mut s = segs.join(":");
            if star || s.is_empty() {
                if !s.is_empty() {
                    s.push(':');
                }
                s.push('*');
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_key_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..100)) {
        harness().parse_key(&data);
    }

    #[test]
    fn parse_key_arbitrary_strings(s in "\\PC{0,80}") {
        harness().parse_key(s.as_bytes());
    }

    #[test]
    fn parse_key_key_shaped(data in key_shaped()) {
        harness().parse_key(&data);
    }

    #[test]
    fn scope_grammar_arbitrary(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        fuzzing::scope_grammar(&data);
    }

    #[test]
    fn scope_grammar_scope_shaped(scopes in proptest::collection::vec(
        prop_oneof![4 => scope_shaped(), 1 => "[a-z:*A_]{0,8}"], 1..6)) {
        fuzzing::scope_grammar(scopes.join("\n").as_bytes());
    }

    #[test]
    fn verify_arbitrary_scripts(data in proptest::collection::vec(any::<u8>(), 0..160)) {
        harness().verify(&data);
    }

    #[test]
    fn verify_key_shaped(
        modes in proptest::collection::vec(0u8..6, 4),
        records in proptest::collection::vec(any::<u8>(), 0..60),
        req in any::<u8>(),
        text in key_shaped(),
    ) {
        let mut script = modes;
        script.push(0);
        script.push(req);
        script.push(4);
        script.extend_from_slice(&text);
        harness().verify(&script);
        // The same with a few arbitrary records in front.
        let mut script = vec![0u8; 4];
        script.push(3);
        script.extend_from_slice(&records);
        harness().verify(&script);
    }

    #[test]
    fn header_extraction_arbitrary(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        harness().header_extraction(&data);
    }

    #[test]
    fn header_extraction_header_shaped(
        config in any::<u8>(),
        lines in proptest::collection::vec(
            (
                prop_oneof![
                    Just("x-api-key"), Just("X-API-Key"), Just("authorization"),
                    Just("Authorization"), Just("x-key"), Just("accept"),
                ],
                prop_oneof![Just(""), Just("Bearer "), Just("bearer  "), Just("Basic "), Just(" ")],
                prop_oneof![
                    key_shaped().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
                    Just("eyJhbGciOiJIUzI1NiJ9.e30.sig".to_owned()),
                    "[ -~]{0,12}",
                ],
            ),
            0..4,
        ),
        query in proptest::option::of("[a-z_=&]{0,8}"),
    ) {
        let mut data = vec![if query.is_some() { config | 64 } else { config & !64 }];
        if let Some(q) = &query {
            data.extend_from_slice(q.as_bytes());
            data.push(b'\n');
        }
        let text: Vec<String> = lines.iter().map(|(n, s, v)| format!("{n}:{s}{v}")).collect();
        data.extend_from_slice(text.join("\n").as_bytes());
        harness().header_extraction(&data);
    }

    #[test]
    fn extreme_times_arbitrary(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzzing::extreme_times(&data);
    }

    #[test]
    fn extreme_times_scripted(
        steps in proptest::collection::vec(
            (0u8..10, 0u64..14, any::<u64>(), any::<u64>(), any::<u8>()),
            1..12,
        ),
    ) {
        // Each step: an operation, then a time selector and its bytes, and
        // a flag byte, laid out as the harness reads them.
        let mut data = Vec::new();
        for (op, sel, a, b, flag) in steps {
            data.push(op);
            if op % 10 != 0 {
                data.push(1 | flag);
            }
            data.extend_from_slice(&sel.to_le_bytes());
            data.extend_from_slice(&a.to_le_bytes());
            data.extend_from_slice(&b.to_le_bytes());
        }
        fuzzing::extreme_times(&data);
    }

    #[test]
    fn record_json_arbitrary(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        harness().record_json(&data);
    }

    #[test]
    fn record_json_mutated(
        i in 0usize..4,
        field in prop_oneof![
            Just("status"), Just("secret_version"), Just("expires_at"), Just("not_before"),
            Just("scopes"), Just("environment"), Just("digest"), Just("id"), Just("revocation"),
            Just("schema_version"), Just("prefix"), Just("owner"),
        ],
        value in prop_oneof![
            Just(serde_json::json!("revoked")),
            Just(serde_json::json!("disabled")),
            Just(serde_json::json!("test")),
            Just(serde_json::json!(1)),
            Just(serde_json::json!(3)),
            Just(serde_json::json!(null)),
            Just(serde_json::json!("2025-12-31T23:59:59.999999999+01:00")),
            Just(serde_json::json!("2026-01-01T00:00:00Z")),
            Just(serde_json::json!(["*"])),
            Just(serde_json::json!({"at": "2026-01-01T00:00:00-00:30", "reason": ""})),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ],
    ) {
        let h = harness();
        let rec = &h.keys()[i % h.keys().len()].1;
        let mut json = serde_json::to_value(rec).expect("serializes");
        json[field] = value;
        h.record_json(&serde_json::to_vec(&json).expect("serializes"));
    }
}

#[test]
fn every_fixed_key_verifies_when_stored_as_issued() {
    let h = harness();
    let n = h.keys().len();
    assert_eq!(n, 4, "one key per built-in prefix plus one under version 1");
    for i in 0..n {
        let mut script = vec![0u8; n];
        script.extend_from_slice(&[0, 0, 0, i as u8]);
        h.verify(&script);
    }
}

/// The oracles must be able to fail: a verifier that accepts anything
/// would be caught. Here, a store that holds a revoked record must yield
/// REVOKED_API_KEY, and the harness asserts exactly that.
#[test]
fn stored_state_drives_the_expected_outcome() {
    let h = harness();
    for mode in 0u8..6 {
        let mut script = vec![mode; h.keys().len()];
        script.extend_from_slice(&[0, 0, 0, 1]);
        h.verify(&script);
    }
}

#[test]
fn leaks_secret_detects_any_window() {
    let h = harness();
    for (key, _) in h.keys() {
        let text = key.expose_secret();
        let start = key.prefix().len() + 12;
        for off in 0..=24 {
            let window = &text[start + off..start + off + 8];
            assert!(fuzzing::leaks_secret(&format!("xx{window}yy"), key));
        }
        // 7 characters are not a leak by this measure.
        assert!(!fuzzing::leaks_secret(&text[start..start + 7], key));
    }
}

#[test]
fn checked_in_seed_corpus_is_the_deterministic_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let bless = std::env::var_os("APIKEY_BLESS_SEEDS").is_some();
    let corpus = fuzzing::seed_corpus();
    for (target, name, bytes) in &corpus {
        let path = root.join(target).join(name);
        if bless {
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, bytes).expect("write seed");
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with APIKEY_BLESS_SEEDS=1)", path.display()));
        assert_eq!(&on_disk, bytes, "{} is stale", path.display());
    }
    // Each seed passes its own oracle.
    let h = harness();
    for (target, _, bytes) in &corpus {
        match *target {
            "parse_key" => {
                h.parse_key(bytes);
                let text = std::str::from_utf8(bytes).expect("ascii");
                assert!(h.verifier().parse(text).is_ok(), "seed key must parse");
            }
            "verify" => h.verify(bytes),
            "record_json" => h.record_json(bytes),
            "scope_grammar" => fuzzing::scope_grammar(bytes),
            "header_extraction" => h.header_extraction(bytes),
            "extreme_times" => fuzzing::extreme_times(bytes),
            other => panic!("unknown target {other}"),
        }
    }
    let prefixes: std::collections::BTreeSet<_> = corpus
        .iter()
        .filter(|(t, _, _)| *t == "parse_key")
        .map(|(_, n, _)| {
            n.rsplit_once('v')
                .map(|(p, _)| p.to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        prefixes.len(),
        3,
        "one valid key per built-in prefix: {prefixes:?}"
    );
}

/// Issue 9, item 4: the review's panics and wrong answers at the edges of
/// time, each now a typed `INVALID_REQUEST` or the right answer.
#[test]
fn extreme_times_are_refused_where_they_enter_and_the_range_ends_work() {
    use apikey::*;
    use std::time::Duration;
    // Outside the range: refused by every door with INVALID_REQUEST, never
    // a panic (9999 with an extreme offset; where i64 nanoseconds end;
    // just before and just after the range).
    for text in [
        "9999-12-31T23:59:59-23:59",
        "2262-04-12T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2255-06-05T23:47:34.740992Z",
    ] {
        assert_eq!(
            Error::from(text.parse::<Timestamp>().unwrap_err())
                .code()
                .as_str(),
            "INVALID_REQUEST"
        );
        assert!(serde_json::from_str::<Timestamp>(&format!("\"{text}\"")).is_err());
    }
    let verifier = fuzzing::harness_verifier();
    let (_, rec) = verifier
        .issue(NewKey::new("sk_live_"), fuzzing::HARNESS_NOW)
        .unwrap();
    let json = serde_json::to_string(&rec).unwrap();
    let now = fuzzing::HARNESS_NOW.to_string();
    assert!(json.contains(&now));
    let bad = json.replace(&now, "9999-12-31T23:59:59-23:59");
    assert!(serde_json::from_str::<KeyRecord>(&bad).is_err());
    // Inside, up to its ends: the manager works.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let clock = ManualClock::new(fuzzing::HARNESS_NOW);
        let m = KeyManager::with_clock(verifier.clone(), MemoryStore::new(), clock.clone());
        let admin = Actor::new("a");
        let (key, s) = m.create(NewKey::new("sk_live_"), &admin).await.unwrap();
        let (last, l) = m
            .create(NewKey::new("sk_live_").expires_at(Timestamp::MAX), &admin)
            .await
            .unwrap();
        assert_eq!(l.expires_at, Some(Timestamp::MAX));
        // A key with no expiry verifies up to the end of the range; one
        // expiring at its end stops there.
        clock.set(Timestamp::MAX.saturating_sub(Duration::from_micros(1)));
        m.authenticate(last.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
        clock.set(Timestamp::MAX);
        m.authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
        let r = m
            .authenticate(last.expose_secret(), &Requirement::none(), None)
            .await;
        assert_eq!(r.unwrap_err().code().as_str(), "EXPIRED_API_KEY");
        assert_eq!(m.get(s.id).await.unwrap().expires_at, None);
        // A rotation's grace saturates at the end of the range.
        clock.set(Timestamp::MAX.saturating_sub(Duration::from_secs(10)));
        let (_, next) = m
            .rotate(
                s.id,
                Rotation::with_grace(Duration::from_secs(3_600)),
                &admin,
            )
            .await
            .unwrap();
        assert_eq!(
            m.record(s.id).await.unwrap().expires_at,
            Some(Timestamp::MAX)
        );
        assert!(next.expires_at.is_none());
    });
}

/// The extractor's docs say a key found in several places reports "the
/// preferred" scheme; it reports whichever header came first, so the
/// scheme depends on header order (the key text does not).
#[test]
fn scheme_of_a_key_sent_twice_does_not_depend_on_header_order() {
    use apikey::web::{Extracted, Extractor};
    let key = harness().keys()[0].0.expose_secret();
    let bearer = format!("Bearer {key}");
    let a = [("x-api-key", key), ("authorization", bearer.as_str())];
    let b = [("authorization", bearer.as_str()), ("x-api-key", key)];
    let ex = Extractor::new(apikey::PrefixRegistry::with_builtins());
    let scheme = |r| match r {
        Ok(Extracted::Key(k)) => k.scheme(),
        other => panic!("{other:?}"),
    };
    assert_eq!(scheme(ex.extract(a)), scheme(ex.extract(b)));
}
