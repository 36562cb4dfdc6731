//! Property tests of the key format and verification.

#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::cell::Cell;

use apikey::Timestamp;
use apikey::*;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const B62: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const NOW: Timestamp = Timestamp::MIN;

fn verifier_with(extra: &[String]) -> Verifier {
    let mut v =
        Verifier::new(Keyring::new(3, ServerSecret::from_bytes(&[3; 32]).unwrap()).unwrap());
    for (i, p) in extra.iter().enumerate() {
        let env = if i % 2 == 0 {
            Environment::Live
        } else {
            Environment::Test
        };
        if v.prefixes().find(p).is_none() {
            v = v.with_prefix(p, env).unwrap();
        }
    }
    v
}

/// Valid prefixes per the documented rules.
fn prefix() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,14}"
        .prop_map(|s| format!("{s}_"))
        .prop_filter("len", |s| s.len() <= 16)
}

/// Strings shaped like keys: a known or random prefix and 58 mostly-base62 chars.
fn key_shaped() -> impl Strategy<Value = String> {
    let body = prop::collection::vec(
        prop_oneof![
            20 => prop::sample::select(B62.as_bytes().to_vec()).prop_map(char::from),
            1 => any::<char>(),
        ],
        50..66,
    );
    (
        prop_oneof![
            Just("sk_live_".to_owned()),
            Just("kwi_sk_".to_owned()),
            prefix()
        ],
        body,
    )
        .prop_map(|(p, b)| format!("{p}{}", b.into_iter().collect::<String>()))
}

fn counting_check(
    v: &Verifier,
    store: &MemoryStore,
    text: &str,
    calls: &Cell<usize>,
) -> Result<VerifiedKey> {
    v.verify_with(
        text,
        |id| {
            calls.set(calls.get() + 1);
            store.fetch_sync(id)
        },
        NOW,
        &Requirement::none(),
    )
}

proptest! {
    #[test]
    fn parse_never_panics_on_strings(s in any::<String>()) {
        let v = verifier_with(&[]);
        let _ = v.parse(&s);
        apikey_testkit::fuzzing::parse_key(&v, s.as_bytes());
    }

    #[test]
    fn parse_never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let v = verifier_with(&[]);
        apikey_testkit::fuzzing::parse_key(&v, &b);
    }

    #[test]
    fn key_shaped_garbage_never_verifies_nor_reaches_the_store(s in key_shaped()) {
        let v = verifier_with(&[]);
        let store = MemoryStore::new();
        let calls = Cell::new(0);
        prop_assert!(counting_check(&v, &store, &s, &calls).is_err());
        prop_assert_eq!(calls.get(), 0);
    }

    #[test]
    fn every_generated_key_for_every_prefix_verifies(p in prefix(), seed in any::<u64>()) {
        let v = verifier_with(std::slice::from_ref(&p));
        let store = MemoryStore::new();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for pre in ["sk_live_", "sk_test_", "kwi_sk_", p.as_str()] {
            let (key, record) = v.issue_with_rng(NewKey::new(pre), NOW, &mut rng).unwrap();
            store.insert_sync(record).unwrap();
            let ok = v.verify_with(key.expose_secret(), |id| store.fetch_sync(id), NOW, &Requirement::none());
            prop_assert!(ok.is_ok(), "{:?}", ok);
            prop_assert_eq!(ok.unwrap().id(), key.id());
            apikey_testkit::fuzzing::parse_key(&v, key.expose_secret().as_bytes());
        }
    }

    #[test]
    fn any_single_character_change_is_rejected_without_a_store_call(
        p in prefix(), seed in any::<u64>(), pos in any::<prop::sample::Index>(), c in any::<char>()
    ) {
        let v = verifier_with(std::slice::from_ref(&p));
        let store = MemoryStore::new();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (key, record) = v.issue_with_rng(NewKey::new(&p), NOW, &mut rng).unwrap();
        store.insert_sync(record).unwrap();
        let text = key.expose_secret();
        let i = pos.index(text.len());
        prop_assume!(text.as_bytes()[i] != c as u32 as u8 || !c.is_ascii());
        let mut changed: Vec<char> = text.chars().collect();
        changed[i] = c;
        let changed: String = changed.into_iter().collect();
        prop_assume!(changed != text);
        let calls = Cell::new(0);
        let e = counting_check(&v, &store, &changed, &calls).unwrap_err();
        prop_assert!(matches!(e, Error::MalformedApiKey(_)), "{:?}", e);
        prop_assert_eq!(calls.get(), 0);
        // A substitution by another base62 character inside the body is
        // caught by the checksum itself.
        let body_start = text.len() - ApiKey::BODY_LEN;
        if i >= body_start && B62.contains(c) {
            prop_assert!(matches!(e, Error::MalformedApiKey(MalformedReason::Checksum)), "{:?}", e);
        }
    }

    #[test]
    fn a_key_respelled_under_another_prefix_never_verifies(p in prefix(), q in prefix(), seed in any::<u64>()) {
        prop_assume!(p != q);
        let v = verifier_with(&[p.clone(), q.clone()]);
        let store = MemoryStore::new();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (key, record) = v.issue_with_rng(NewKey::new(&p), NOW, &mut rng).unwrap();
        store.insert_sync(record).unwrap();
        let body = &key.expose_secret()[p.len()..];
        for other in [q.as_str(), "sk_live_", "sk_test_", "kwi_sk_"] {
            if other == p { continue; }
            let calls = Cell::new(0);
            let e = counting_check(&v, &store, &format!("{other}{body}"), &calls);
            prop_assert!(e.is_err());
        }
    }

    #[test]
    fn scope_grammar_round_trips(s in "[a-z0-9_*:-]{0,40}") {
        if let Ok(scope) = Scope::parse(&s) {
            prop_assert_eq!(scope.as_str(), s.as_str());
            prop_assert!(scope.grants(&scope));
        }
    }
}
