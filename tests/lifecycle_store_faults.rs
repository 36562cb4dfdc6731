//! The manager over a store that fails the way databases do: a write whose
//! answer is lost after it committed (a deadline during `COMMIT`), a write
//! that times out before it is applied, and a row that cannot be decoded.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apikey::*;
use apikey_testkit::failing::FaultyStore;
use std::time::Duration;

type Store = Arc<FaultyStore<MemoryStore>>;

const T0: apikey::Timestamp =
    match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
        Some(t) => t,
        None => apikey::Timestamp::MIN,
    };

struct Fixture {
    manager: KeyManager<Store, ManualClock>,
    audit: Arc<MemoryAuditSink>,
}

fn admin() -> Actor {
    Actor::new("admin_1")
}

fn setup(limit: Option<u32>) -> (Fixture, Store) {
    let store: Store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[42; 32]).unwrap()).unwrap());
    let audit = Arc::new(MemoryAuditSink::new());
    let mut manager = KeyManager::with_clock(verifier, store.clone(), ManualClock::new(T0))
        .with_audit_sink(audit.clone());
    if let Some(max) = limit {
        manager = manager.with_max_keys_per_owner(max);
    }
    (Fixture { manager, audit }, store)
}

fn kinds(f: &Fixture) -> Vec<String> {
    f.audit
        .events()
        .iter()
        .map(|e| e.kind.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn a_create_whose_commit_answer_was_lost_returns_its_key() {
    for limit in [None, Some(1)] {
        let (f, store) = setup(limit);
        let m = &f.manager;
        store.lose_answers(1);
        let (key, summary) = m
            .create(NewKey::new("sk_live_").owner("u"), &admin())
            .await
            .unwrap();
        assert_eq!(store.lost.load(Ordering::SeqCst), 1, "{limit:?}");
        // The returned key is the stored one, and the only one.
        let v = m
            .authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap();
        assert_eq!(v.id(), summary.id);
        assert_eq!(m.list("u").await.unwrap().len(), 1, "{limit:?}");
        assert_eq!(kinds(&f), ["created"], "{limit:?}");
    }
}

#[tokio::test]
async fn a_create_that_timed_out_before_writing_writes_once() {
    let (f, store) = setup(Some(1));
    let m = &f.manager;
    store.drop_writes(1);
    let (key, _) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(m.list("u").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_create_whose_outcome_stays_unknown_is_503_and_its_key_is_listed() {
    let (f, store) = setup(None);
    let m = &f.manager;
    // The write and both re-sends lose their answers.
    store.lose_answers(3);
    let e = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "STORE_UNAVAILABLE");
    // As documented: the key may exist, nobody holds its text; it is listed.
    assert_eq!(m.list("u").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_rotation_whose_commit_answer_was_lost_returns_the_new_key() {
    let (f, store) = setup(Some(1));
    let m = &f.manager;
    let (old, s) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    store.lose_answers(1);
    let (new, succ) = m
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(store.lost.load(Ordering::SeqCst), 1);
    let v = m
        .authenticate(new.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(v.id(), succ.id);
    assert_eq!(succ.rotated_from, Some(s.id));
    assert_eq!(m.get(s.id).await.unwrap().rotated_to, Some(succ.id));
    // Still in its grace period.
    m.authenticate(old.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(m.list("u").await.unwrap().len(), 2);
    assert_eq!(kinds(&f), ["created", "rotated"]);
    // A second rotation of the old key is refused: it was rotated once.
    let e = m
        .rotate(s.id, Rotation::default(), &admin())
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_STATE");
}

#[tokio::test]
async fn a_rotation_that_timed_out_before_writing_rotates_once() {
    let (f, store) = setup(None);
    let m = &f.manager;
    let (_, s) = m
        .create(NewKey::new("sk_live_").owner("u"), &admin())
        .await
        .unwrap();
    store.drop_writes(1);
    let (new, succ) = m.rotate(s.id, Rotation::default(), &admin()).await.unwrap();
    m.authenticate(new.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(m.get(s.id).await.unwrap().rotated_to, Some(succ.id));
    assert_eq!(m.list("u").await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_import_whose_commit_answer_was_lost_succeeds() {
    let (mut f, store) = setup(Some(3));
    f.manager = f.manager.with_legacy_prefix("oldco_", "sk_live_").unwrap();
    let m = &f.manager;
    store.lose_answers(1);
    let s = m
        .import(
            ImportKey::plaintext("oldco_0123456789abcdef").owner("u"),
            &admin(),
        )
        .await
        .unwrap();
    assert_eq!(store.lost.load(Ordering::SeqCst), 1);
    let v = m
        .authenticate("oldco_0123456789abcdef", &Requirement::none(), None)
        .await
        .unwrap();
    assert_eq!(v.id(), s.id);
    assert_eq!(kinds(&f), ["imported"]);
}

#[tokio::test]
async fn management_reads_of_a_corrupt_record_are_invalid_record_like_verification() {
    let (f, store) = setup(None);
    let m = &f.manager;
    let soon = T0 + Duration::from_secs(2 * 86_400);
    let (_, good) = m
        .create(
            NewKey::new("sk_live_").owner("u").expires_at(soon),
            &admin(),
        )
        .await
        .unwrap();
    let (bad_key, bad) = m
        .create(
            NewKey::new("sk_live_").owner("u").expires_at(soon),
            &admin(),
        )
        .await
        .unwrap();
    store.corrupt(bad.id);
    let auth = m
        .authenticate(bad_key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    let results = [
        ("authenticate", Err(auth)),
        ("record", m.record(bad.id).await.map(|_| ())),
        ("get", m.get(bad.id).await.map(|_| ())),
        // One bad row fails the listing (documented): never a listing that
        // silently leaves the bad key out.
        ("list", m.list("u").await.map(|_| ())),
        (
            "expiring_soon",
            m.expiring_soon(Some("u"), Duration::from_secs(7 * 86_400))
                .await
                .map(|_| ()),
        ),
        (
            "update",
            m.update(bad.id, KeyUpdate::new().name("x"), &admin())
                .await
                .map(|_| ()),
        ),
        ("disable", m.disable(bad.id, &admin()).await.map(|_| ())),
        (
            "rotate",
            m.rotate(bad.id, Rotation::default(), &admin())
                .await
                .map(|_| ()),
        ),
    ];
    for (what, r) in results {
        let e = r.unwrap_err();
        assert_eq!(
            (e.code().as_str(), e.http_status()),
            ("INVALID_RECORD", 500),
            "{what}"
        );
    }
    // The good key still reads.
    assert_eq!(m.get(good.id).await.unwrap().id, good.id);
}
