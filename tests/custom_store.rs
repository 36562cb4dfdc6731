//! `examples/custom_store.rs`, a store written against public API only,
//! passes the whole conformance suite and serves a `KeyManager`.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../examples/custom_store.rs"]
mod custom_store;

use apikey::Timestamp;
use std::sync::Arc;

use apikey::{
    Actor, ImportKey, KeyManager, KeyQuery, KeyStoreQuery, KeyStoreWrite, Keyring, ManualClock,
    NewKey, Requirement, Rotation, ServerSecret, Verifier,
};
use apikey_testkit::conformance;
use custom_store::BTreeStore;
use std::time::Duration;

#[tokio::test]
async fn passes_the_whole_suite() {
    let store = Arc::new(BTreeStore::new());
    conformance::run_all(&*store).await;
    conformance::run_rules(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_whole_suite_through_arc_on_threads() {
    let store = Arc::new(BTreeStore::new());
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { conformance::run_all(&store).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn passes_the_read_part() {
    let store = BTreeStore::new();
    let records = conformance::read_sample();
    for r in &records {
        store.commit(&conformance::insert(r.clone())).await.unwrap();
    }
    conformance::check_reads(&store, &records, true).await;
}

#[tokio::test]
async fn failed_writes_change_nothing() {
    let store = BTreeStore::new();
    conformance::failed_writes_change_nothing(&store, |f| store.set_failing(f)).await;
}

#[tokio::test]
async fn failing_reads_are_errors() {
    let store = BTreeStore::new();
    let r = conformance::sample_record(Some("u1"));
    store.commit(&conformance::insert(r.clone())).await.unwrap();
    store.set_failing(true);
    assert!(apikey::KeyStore::fetch(&store, r.id).await.is_err());
    assert!(store.get(r.id).await.is_err());
    assert!(store.list(&KeyQuery::owner("u1")).await.is_err());
    store.set_failing(false);
    assert_eq!(store.get(r.id).await.unwrap(), Some(r));
}

fn kind<T: std::fmt::Debug>(r: Result<T, apikey::StoreError>) -> apikey::StoreErrorKind {
    r.unwrap_err().kind()
}

/// Records that break their invariants are refused as `Corrupt` by every
/// kind of commit (insert, put, one of several puts), and nothing is
/// written.
#[tokio::test]
async fn broken_records_are_corrupt() {
    use apikey::{Changes, KeyStatus, Put, StoreErrorKind};
    let store = BTreeStore::new();
    let good = conformance::sample_record(Some("u1"));
    store
        .commit(&conformance::insert(good.clone()))
        .await
        .unwrap();
    let mut bad = good.clone();
    bad.status = KeyStatus::Revoked; // without a revocation
    assert_eq!(
        kind(store.commit(&conformance::update(bad.clone(), 0)).await),
        StoreErrorKind::Corrupt
    );
    let mut fresh = bad.clone();
    fresh.id = conformance::sample_record(None).id;
    assert_eq!(
        kind(store.commit(&conformance::insert(fresh.clone())).await),
        StoreErrorKind::Corrupt
    );
    let mut pred = good.clone();
    pred.rotated_to = Some(fresh.id);
    let mut rotation = Changes::new();
    rotation.puts.push(Put::update(pred, 0));
    rotation.puts.push(Put::insert(fresh.clone()));
    assert_eq!(kind(store.commit(&rotation).await), StoreErrorKind::Corrupt);
    assert_eq!(store.get(good.id).await.unwrap(), Some(good));
    assert_eq!(store.get(fresh.id).await.unwrap(), None);
}

#[tokio::test]
async fn key_manager_round_trip() {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap());
    let clock = ManualClock::new("2026-06-01T09:00:00Z".parse::<Timestamp>().unwrap());
    let manager = KeyManager::with_clock(verifier, BTreeStore::new(), clock.clone())
        .with_max_keys_per_owner(2)
        .with_legacy_prefix("oldco_", "sk_live_")
        .unwrap();
    let admin = Actor::new("test");
    let read = Requirement::scope("read").unwrap();

    // Create and authenticate; the flush reaches the store once.
    let (key, s) = manager
        .create(NewKey::new("sk_live_").owner("u1").scopes(["read"]), &admin)
        .await
        .unwrap();
    for _ in 0..2 {
        manager
            .authenticate(key.expose_secret(), &read, None)
            .await
            .unwrap();
    }
    assert_eq!(manager.flush().await.unwrap(), 2);
    assert_eq!(manager.flush().await.unwrap(), 0);
    let rec = manager.store().get(s.id).await.unwrap().unwrap();
    assert_eq!(manager.usage_of(s.id).await.unwrap().today, 2);
    assert_eq!(manager.get(s.id).await.unwrap().requests_today, 2);
    assert_eq!(
        rec.last_used_at,
        Some("2026-06-01T09:00:00Z".parse::<Timestamp>().unwrap())
    );

    // The owner limit: a second key fits, a third does not.
    manager
        .create(NewKey::new("sk_live_").owner("u1"), &admin)
        .await
        .unwrap();
    let err = manager
        .create(NewKey::new("sk_live_").owner("u1"), &admin)
        .await
        .unwrap_err();
    assert_eq!(err.code().as_str(), "KEY_LIMIT_REACHED");

    // Rotate at the limit: both keys work during the grace, then the old
    // one expires.
    let (new_key, ns) = manager
        .rotate(
            s.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin,
        )
        .await
        .unwrap();
    manager
        .authenticate(key.expose_secret(), &read, None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(2 * 3_600));
    assert_eq!(
        manager
            .authenticate(key.expose_secret(), &read, None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "EXPIRED_API_KEY"
    );
    let v = manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await
        .unwrap();
    assert_eq!(v.id(), ns.id);
    let old = manager.record(s.id).await.unwrap();
    assert_eq!(old.rotated_to, Some(ns.id));

    // An imported legacy key is found through the legacy index and
    // upgraded on first use (a commit of one put on this store).
    manager.revoke(ns.id, "make room", &admin).await.unwrap();
    let imported = manager
        .import(
            ImportKey::plaintext("oldco_0123456789abcdef")
                .owner("u1")
                .scopes(["read"]),
            &admin,
        )
        .await
        .unwrap();
    manager
        .authenticate("oldco_0123456789abcdef", &read, None)
        .await
        .unwrap();
    let rec = manager.record(imported.id).await.unwrap();
    assert!(rec.legacy.as_ref().is_some_and(|l| l.upgraded));
    assert!(
        manager
            .authenticate("oldco_0123456789abcdeX", &read, None)
            .await
            .is_err()
    );

    // Revoke everything of the owner; delete clears the rotation link.
    let revoked = manager.revoke_owner("u1", "done", &admin).await.unwrap();
    assert_eq!(
        revoked.len(),
        3,
        "the expired first key, the second and the imported one"
    );
    assert_eq!(
        manager
            .authenticate(new_key.expose_secret(), &read, None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "REVOKED_API_KEY"
    );
    manager.delete(ns.id, &admin).await.unwrap();
    assert_eq!(manager.record(s.id).await.unwrap().rotated_to, None);

    // A failing store is STORE_UNAVAILABLE, never "invalid key".
    manager.store().set_failing(true);
    assert_eq!(
        manager
            .authenticate(key.expose_secret(), &read, None)
            .await
            .unwrap_err()
            .code()
            .as_str(),
        "STORE_UNAVAILABLE"
    );
    manager.store().set_failing(false);
    manager.shutdown().await.unwrap();
}

/// The example's own `main` runs to the end.
#[test]
fn example_main_runs() {
    custom_store::main().unwrap();
}
