//! Rejections that need no store make no store call: garbage, wrong length,
//! wrong alphabet, unknown prefix, bad checksum and forged keys (correct
//! checksum, no valid tag). Valid keys, wrong secrets and unknown ids make
//! exactly one, so the counter can fail.

#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apikey::Timestamp;
use apikey::{
    Authenticator, Error, KeyId, KeyRecord, KeyStore, KeyView, Keyring, ManualClock, MemoryStore,
    NewKey, Requirement, ServerSecret, StoreError, Verifier,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Counts every read that reaches the wrapped store.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    calls: AtomicUsize,
}

impl KeyStore for Counting {
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch(id)
    }
    fn find_legacy(
        &self,
        index: &apikey::KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.find_legacy(index)
    }
}

fn now() -> Timestamp {
    Timestamp::from_unix_secs(1_795_564_800).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap())
}

fn with_checksum(text: Vec<u8>) -> String {
    apikey_testkit::fuzzing::with_valid_checksum(text).expect("a key-length ASCII text")
}

fn replace(text: &str, pos: usize) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    b[pos] = if b[pos] == b'a' { b'b' } else { b'a' };
    b
}

struct Setup {
    verifier: Verifier,
    store: Counting,
    valid: String,
    unknown: String,
}

fn setup() -> Setup {
    let verifier = verifier();
    let store = Counting::default();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let (key, record) = verifier
        .issue_with_rng(
            NewKey::new("sk_live_").scopes(["tasks:read"]),
            now(),
            &mut rng,
        )
        .unwrap();
    store.inner.insert_sync(record).unwrap();
    let (unknown, _) = verifier
        .issue_with_rng(NewKey::new("sk_live_"), now(), &mut rng)
        .unwrap();
    Setup {
        verifier,
        store,
        valid: key.expose_secret().to_owned(),
        unknown: unknown.expose_secret().to_owned(),
    }
}

/// Every presented string that must be rejected before any store call.
fn storeless_rejections(valid: &str) -> Vec<(&'static str, String)> {
    let p = "sk_live_".len();
    let mut out = vec![
        ("empty", String::new()),
        ("garbage", "hello, I am not an API key at all".to_owned()),
        ("wrong length (short)", valid[..valid.len() - 1].to_owned()),
        ("wrong length (long)", format!("{valid}a")),
        ("huge", "x".repeat(100_000)),
        ("unknown prefix", valid.replacen("sk_live_", "sk_lave_", 1)),
        ("wrong alphabet", {
            let mut b = valid.as_bytes().to_vec();
            b[p + 20] = b'-';
            String::from_utf8(b).unwrap()
        }),
        ("non-ASCII same length", {
            let mut s = valid[..valid.len() - 2].to_owned();
            s.push('é');
            s
        }),
    ];
    // Every single-character change is caught by the checksum.
    for pos in p..valid.len() {
        out.push((
            "bad checksum",
            String::from_utf8(replace(valid, pos)).unwrap(),
        ));
    }
    // Forged: a change anywhere before the tag, checksum recomputed, so only
    // the keyed tag can reject it.
    // Changes to the version or id may also fail as an unknown version or a
    // non-canonical id; changes to the secret can only fail on the tag.
    for pos in p..p + 12 {
        out.push(("forged version/id", with_checksum(replace(valid, pos))));
    }
    for pos in p + 12..valid.len() - 14 {
        out.push(("forged", with_checksum(replace(valid, pos))));
    }
    // A made-up tag with a correct checksum.
    let mut b = valid.as_bytes().to_vec();
    let tag = valid.len() - 14;
    b[tag..tag + 8].copy_from_slice(b"00000000");
    out.push(("forged", with_checksum(b)));
    out
}

#[test]
fn sync_pipeline_makes_no_store_call_for_storeless_rejections() {
    let s = setup();
    let req = Requirement::none();
    let calls = AtomicUsize::new(0);
    let lookup = |id| {
        calls.fetch_add(1, Ordering::SeqCst);
        s.store.inner.fetch_sync(id)
    };
    for (what, text) in storeless_rejections(&s.valid) {
        let r = s.verifier.verify_with(&text, lookup, now(), &req);
        assert!(r.is_err(), "{what} verified");
        if what == "forged" {
            assert!(matches!(r, Err(Error::InvalidApiKey)), "{what}: {r:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "{what} reached the store");
    }
    // The counter counts: valid, wrong secret and unknown id reach the store once each.
    assert!(
        s.verifier
            .verify_with(&s.valid, lookup, now(), &req)
            .is_ok()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(
        s.verifier.verify_with(&s.unknown, lookup, now(), &req),
        Err(Error::InvalidApiKey)
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn authenticator_makes_no_store_call_for_storeless_rejections() {
    let s = setup();
    let auth =
        Authenticator::read_only_with_clock(s.verifier.clone(), &s.store, ManualClock::new(now()));
    let req = Requirement::none();
    for (what, text) in storeless_rejections(&s.valid) {
        assert!(
            auth.authenticate(&text, &req, None).await.is_err(),
            "{what} verified"
        );
        assert_eq!(
            s.store.calls.load(Ordering::SeqCst),
            0,
            "{what} reached the store"
        );
    }
    assert!(auth.authenticate(&s.valid, &req, None).await.is_ok());
    assert_eq!(s.store.calls.load(Ordering::SeqCst), 1);
    assert!(auth.authenticate(&s.unknown, &req, None).await.is_err());
    assert_eq!(s.store.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn wrong_secret_reaches_the_store_once_and_is_rejected() {
    let s = setup();
    // Same id, another digest: what a wrong secret looks like to the verifier.
    let id = s.verifier.parse(&s.valid).unwrap().id();
    let mut record = s.store.inner.get_sync(id).unwrap();
    let mut d = *record.digest.as_bytes();
    d[31] ^= 0x80;
    record.digest = apikey::KeyDigest::from_bytes(d);
    s.store.inner.update_sync(record).unwrap();
    let auth =
        Authenticator::read_only_with_clock(s.verifier.clone(), &s.store, ManualClock::new(now()));
    let r = auth
        .authenticate(&s.valid, &Requirement::none(), None)
        .await;
    assert!(matches!(r, Err(Error::InvalidApiKey)), "{r:?}");
    assert_eq!(s.store.calls.load(Ordering::SeqCst), 1);
}

/// Random well-formed keys with a correct checksum and version but a made-up
/// id, secret and tag: a flood of forged keys. Returns the store calls.
fn forged_flood(n: usize, seed: u64) -> usize {
    use rand_chacha::rand_core::Rng;
    let s = setup();
    let req = Requirement::none();
    let calls = AtomicUsize::new(0);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut text = s.valid.as_bytes().to_vec();
    let p = "sk_live_".len();
    for _ in 0..n {
        // id (11), keep the version (1), secret (32), tag (8): random base62.
        for (i, slot) in text[p..p + 58 - 6].iter_mut().enumerate() {
            if i != 11 {
                *slot = BASE62[(rng.next_u32() % 62) as usize];
            }
        }
        let forged = with_checksum(text.clone());
        let r = s.verifier.verify_with(
            &forged,
            |id| {
                calls.fetch_add(1, Ordering::Relaxed);
                s.store.inner.fetch_sync(id)
            },
            now(),
            &req,
        );
        assert!(r.is_err());
    }
    calls.load(Ordering::Relaxed)
}

#[test]
fn a_flood_of_forged_keys_costs_the_store_nothing() {
    assert_eq!(forged_flood(100_000, 1), 0);
}

/// The figure quoted in SECURITY.md:
/// `cargo test --release --test store_calls -- --ignored`.
#[test]
#[ignore = "1,000,000 forged keys; run in release"]
fn a_flood_of_a_million_forged_keys_costs_the_store_nothing() {
    assert_eq!(forged_flood(1_000_000, 2), 0);
}
