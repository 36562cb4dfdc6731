//! `CachedStore`: the conformance suite through the cache, invalidation on
//! local writes and by feed, single flight, cancelled leaders, errors never
//! cached, maximum and negative ages, outages, eviction.
//!
//! Time is `tokio`'s paused clock (NetStore's latency) and a `ManualClock`
//! (entry ages): no assertion depends on the wall clock.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apikey::{
    Actor, CachedStore, Invalidation, KeyId, KeyManager, KeyQuery, KeyRecord, KeyStatus, KeyStore,
    KeyStoreWrite, Keyring, ManualClock, MemoryStore, NewKey, Prefix, Requirement, Revocation,
    ServerSecret, StoreErrorKind, Verifier,
};
use apikey_testkit::WriteExt;
use apikey_testkit::conformance;
use apikey_testkit::netstore::NetStore;

const T0: apikey::Timestamp =
    match apikey::Timestamp::checked_from_unix_micros(1_767_225_600_000_000) {
        Some(t) => t,
        None => apikey::Timestamp::MIN,
    };

fn calls(net: &NetStore) -> u64 {
    net.calls.load(Ordering::Relaxed)
}

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32]).unwrap()).unwrap())
}

fn record(owner: &str) -> KeyRecord {
    conformance::sample_record(Some(owner))
}

fn revoked(mut r: KeyRecord) -> KeyRecord {
    r.status = KeyStatus::Revoked;
    r.revocation = Some(Revocation {
        at: T0,
        reason: "leaked".into(),
    });
    r
}

/// A cache over a NetStore with ages on a manual clock.
fn net_cache(latency_ms: u64) -> (Arc<NetStore>, ManualClock, Arc<CachedStore<Arc<NetStore>>>) {
    let net = NetStore::new(Duration::from_millis(latency_ms));
    let clock = ManualClock::new(T0);
    let cache = CachedStore::new(Arc::clone(&net)).with_clock(clock.clone());
    (net, clock, Arc::new(cache))
}

#[tokio::test]
async fn conformance_over_memory_store() {
    conformance::run_all(&CachedStore::new(MemoryStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn conformance_over_net_store() {
    let (_net, _clock, cache) = net_cache(1);
    conformance::run_all(&*cache).await;
}

#[tokio::test(start_paused = true)]
async fn conformance_read_part_and_failed_writes() {
    let (net, _clock, cache) = net_cache(0);
    let records = conformance::read_sample();
    for r in &records {
        cache.insert(r.clone()).await.unwrap();
    }
    conformance::check_reads(&*cache, &records, true).await;
    conformance::failed_writes_change_nothing(&*cache, |f| net.set_failing(f)).await;
}

#[tokio::test(start_paused = true)]
async fn hits_do_not_reach_the_store() {
    let (net, _clock, cache) = net_cache(1);
    let r = record("o");
    cache.insert(r.clone()).await.unwrap();
    let before = calls(&net);
    for _ in 0..100 {
        assert!(cache.fetch(r.id).await.unwrap().is_some());
    }
    assert_eq!(calls(&net) - before, 1, "one miss, then hits");
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn local_writes_are_seen_by_the_next_verification() {
    let verifier = verifier();
    let manager = KeyManager::new(verifier, CachedStore::new(MemoryStore::new()));
    let admin = Actor::new("admin");
    let admin_ = admin.clone();
    let req = Requirement::none();
    let (k1, s1) = manager
        .create(NewKey::new("sk_live_").owner("org"), &admin_)
        .await
        .unwrap();
    let (k2, _) = manager
        .create(NewKey::new("sk_live_").owner("org"), &admin_)
        .await
        .unwrap();
    let (k3, s3) = manager
        .create(NewKey::new("sk_live_").owner("solo"), &admin_)
        .await
        .unwrap();
    for k in [&k1, &k2, &k3] {
        manager
            .authenticate(k.expose_secret(), &req, None)
            .await
            .unwrap();
    }
    assert_eq!(manager.store().len(), 3, "all three cached");

    manager.disable(s1.id, &admin).await.unwrap();
    let e = manager
        .authenticate(k1.expose_secret(), &req, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "DISABLED_API_KEY");
    manager.revoke(s1.id, "leaked", &admin).await.unwrap();
    let e = manager
        .authenticate(k1.expose_secret(), &req, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "REVOKED_API_KEY");

    manager
        .revoke_owner("org", "offboarded", &admin)
        .await
        .unwrap();
    let e = manager
        .authenticate(k2.expose_secret(), &req, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "REVOKED_API_KEY");

    manager.delete(s3.id, &admin).await.unwrap();
    let e = manager
        .authenticate(k3.expose_secret(), &req, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "INVALID_API_KEY");
}

#[tokio::test]
async fn rotation_ends_the_cached_grace_of_the_older_key() {
    let clock = ManualClock::new(T0);
    let manager = KeyManager::with_clock(
        verifier(),
        CachedStore::new(MemoryStore::new()),
        clock.clone(),
    );
    let admin = Actor::new("admin");
    let req = Requirement::none();
    let (k1, s1) = manager
        .create(NewKey::new("sk_live_").owner("o"), &admin)
        .await
        .unwrap();
    let grace = apikey::Rotation::with_grace(std::time::Duration::from_secs(3_600));
    let (k2, s2) = manager.rotate(s1.id, grace, &admin).await.unwrap();
    clock.advance(std::time::Duration::from_secs(60));
    manager
        .authenticate(k1.expose_secret(), &req, None)
        .await
        .unwrap();
    manager
        .authenticate(k2.expose_secret(), &req, None)
        .await
        .unwrap();
    // Rotating again ends k1's grace at once, also in the cache.
    manager.rotate(s2.id, grace, &admin).await.unwrap();
    clock.advance(std::time::Duration::from_secs(1));
    let e = manager
        .authenticate(k1.expose_secret(), &req, None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "EXPIRED_API_KEY");
}

#[tokio::test(start_paused = true)]
async fn single_flight_one_query_for_many_misses() {
    let (net, _clock, cache) = net_cache(20);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    let before = calls(&net);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.fetch(r.id).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().unwrap().id(), r.id);
    }
    assert_eq!(
        calls(&net) - before,
        1,
        "64 concurrent misses, one store query"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_strand_its_followers() {
    let (net, _clock, cache) = net_cache(50);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    let before = calls(&net);

    let mut leader = Box::pin(cache.fetch(r.id));
    tokio::select! {
        _ = &mut leader => panic!("the store takes 50 ms"),
        () = tokio::time::sleep(Duration::from_millis(1)) => {}
    }
    let followers: Vec<_> = (0..8)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.fetch(r.id).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await; // they join the flight
    drop(leader);
    for f in followers {
        let v = tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("a follower hung after its leader was cancelled");
        assert_eq!(v.unwrap().unwrap().unwrap().id(), r.id);
    }
    assert_eq!(calls(&net) - before, 1, "one follower took over; one query");
}

#[tokio::test(start_paused = true)]
async fn store_errors_are_never_cached() {
    let (net, _clock, cache) = net_cache(5);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    net.set_failing(true);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.fetch(r.id).await })
        })
        .collect();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(
            e.kind(),
            StoreErrorKind::Unavailable,
            "leader and followers see it"
        );
    }
    assert!(cache.is_empty(), "an error is not an entry");
    net.set_failing(false);
    assert!(
        cache.fetch(r.id).await.unwrap().is_some(),
        "the next fetch asks again"
    );
}

#[tokio::test(start_paused = true)]
async fn max_age_bounds_writes_that_bypass_the_cache() {
    let (net, clock, cache) = net_cache(1);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    assert_eq!(
        cache.fetch(r.id).await.unwrap().unwrap().status(),
        KeyStatus::Active
    );
    net.update(revoked(r.clone())).await.unwrap(); // another instance, no feed
    clock.advance(std::time::Duration::from_millis(999));
    assert_eq!(
        cache.fetch(r.id).await.unwrap().unwrap().status(),
        KeyStatus::Active,
        "younger than the maximum age: still the cached view"
    );
    clock.advance(std::time::Duration::from_millis(1));
    assert_eq!(
        cache.fetch(r.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked,
        "at the maximum age the entry is refetched"
    );
}

#[tokio::test(start_paused = true)]
async fn outage_serves_young_hits_and_nothing_older() {
    let (net, clock, cache) = net_cache(1);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    cache.fetch(r.id).await.unwrap();
    net.set_failing(true);
    clock.advance(std::time::Duration::from_millis(500));
    assert!(
        cache.fetch(r.id).await.unwrap().is_some(),
        "a young hit is served"
    );
    clock.advance(std::time::Duration::from_millis(500));
    assert_eq!(
        cache.fetch(r.id).await.unwrap_err().kind(),
        StoreErrorKind::Unavailable,
        "an expired entry is not served during an outage"
    );
    net.set_failing(false);
    assert!(cache.fetch(r.id).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn unknown_ids_are_remembered_for_the_negative_age_only() {
    let (net, clock, cache) = net_cache(1);
    let id = KeyId::from_u64(42);
    let before = calls(&net);
    assert!(cache.fetch(id).await.unwrap().is_none());
    assert!(cache.fetch(id).await.unwrap().is_none());
    assert_eq!(calls(&net) - before, 1, "the second miss is a cached none");
    clock.advance(std::time::Duration::from_millis(100));
    assert!(cache.fetch(id).await.unwrap().is_none());
    assert_eq!(
        calls(&net) - before,
        2,
        "after the negative age, asked again"
    );

    // An insert through the cache drops the cached none at once.
    let mut r = record("o");
    r.id = id;
    cache.insert(r).await.unwrap();
    assert!(cache.fetch(id).await.unwrap().is_some());

    // Negative caching off.
    let off = CachedStore::new(Arc::clone(&net)).with_negative_max_age(Duration::ZERO);
    let before = calls(&net);
    let other = KeyId::from_u64(43);
    assert!(off.fetch(other).await.unwrap().is_none());
    assert!(off.fetch(other).await.unwrap().is_none());
    assert_eq!(calls(&net) - before, 2);
    assert!(off.is_empty());
}

#[tokio::test(start_paused = true)]
async fn usage_flushes_do_not_invalidate() {
    use apikey::{UsageBatch, UsageDelta, UsageStore};
    let (net, _clock, cache) = net_cache(1);
    let r = record("o");
    cache.insert(r.clone()).await.unwrap();
    cache.fetch(r.id).await.unwrap();
    let before = calls(&net);
    cache
        .record_usage(&UsageBatch::new(vec![UsageDelta::new(
            r.id,
            T0.utc_date(),
            3,
            T0,
        )]))
        .await
        .unwrap();
    cache.fetch(r.id).await.unwrap();
    assert_eq!(
        calls(&net) - before,
        1,
        "the flush only; the fetch is a hit"
    );
}

#[tokio::test(start_paused = true)]
async fn bulk_revocations_leave_nothing_stale() {
    let (net, _clock, cache) = net_cache(1);
    let owner = conformance::unique_owner();
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = record(&owner);
        ids.push(r.id);
        cache.insert(r).await.unwrap();
    }
    for id in &ids {
        cache.fetch(*id).await.unwrap();
    }
    let rev = Revocation {
        at: T0,
        reason: "x".into(),
    };
    let revoked = cache
        .revoke_where(&KeyQuery::owner(&owner), &rev)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 50);
    for id in &ids {
        assert_eq!(
            cache.fetch(*id).await.unwrap().unwrap().status(),
            KeyStatus::Revoked
        );
    }

    // By prefix and window, written past the cache, announced by a feed.
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = record("p");
        ids.push(r.id);
        cache.insert(r).await.unwrap();
    }
    for id in &ids {
        cache.fetch(*id).await.unwrap();
    }
    let prefix = Prefix::new("sk_test_").unwrap();
    let now = conformance::suite_now();
    let window = (now - std::time::Duration::from_secs(30 * 86_400))..now;
    net.revoke_where(&KeyQuery::created(prefix.clone(), window.clone()), &rev)
        .await
        .unwrap();
    cache.invalidate(&Invalidation::Prefix {
        prefix,
        created: window,
    });
    for id in &ids {
        assert_eq!(
            cache.fetch(*id).await.unwrap().unwrap().status(),
            KeyStatus::Revoked
        );
    }
}

#[tokio::test(start_paused = true)]
async fn feed_invalidations_by_key_owner_and_all() {
    let (net, _clock, cache) = net_cache(1);
    let a = record("a");
    let b = record("b");
    let c = record("c");
    for r in [&a, &b, &c] {
        net.insert(r.clone()).await.unwrap();
        cache.fetch(r.id).await.unwrap();
    }
    for r in [&a, &b, &c] {
        net.update(revoked(r.clone())).await.unwrap();
    }
    cache.invalidate(&Invalidation::Key(a.id));
    cache.invalidate(&Invalidation::Owner("b".into()));
    assert_eq!(
        cache.fetch(a.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked
    );
    assert_eq!(
        cache.fetch(b.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked
    );
    assert_eq!(
        cache.fetch(c.id).await.unwrap().unwrap().status(),
        KeyStatus::Active
    );
    cache.invalidate_all();
    assert_eq!(
        cache.fetch(c.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_fetch_is_not_undone() {
    let (net, _clock, cache) = net_cache(50);
    let r = record("o");
    net.insert(r.clone()).await.unwrap();
    let reader = {
        let cache = Arc::clone(&cache);
        tokio::spawn(async move { cache.fetch(r.id).await })
    };
    tokio::time::sleep(Duration::from_millis(1)).await; // the read is in flight
    net.set_latency(Duration::ZERO);
    net.update(revoked(r.clone())).await.unwrap();
    cache.invalidate(&Invalidation::Key(r.id));
    // The in-flight read may answer with the old state (it started before) ...
    let _ = reader.await.unwrap().unwrap();
    // ... but does not cache it.
    assert_eq!(
        cache.fetch(r.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked
    );
}

#[tokio::test(start_paused = true)]
async fn capacity_is_bounded() {
    let net = NetStore::new(Duration::ZERO);
    let cache = CachedStore::new(Arc::clone(&net)).with_capacity(8);
    assert_eq!(cache.capacity(), 8);
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = record("o");
        ids.push(r.id);
        net.insert(r).await.unwrap();
    }
    for id in &ids {
        assert!(cache.fetch(*id).await.unwrap().is_some());
        assert!(cache.len() <= 8);
    }
    assert!(!cache.is_empty());
}

/// A store whose answer is the state at the start of its read, delivered
/// `latency` later (a slow network or a lagging replica).
struct SnapshotStore {
    rows: MemoryStore,
    latency: Duration,
    reads: std::sync::atomic::AtomicU64,
}

impl KeyStore for SnapshotStore {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<apikey::KeyView>>, apikey::StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let answer = self.rows.fetch_sync(id);
        tokio::time::sleep(self.latency).await;
        answer
    }
}

/// Issue 17, item 10: a fetch that finds a read still in flight joins it
/// only while that read is younger than the maximum age. Ages on a manual
/// clock, the store's latency on tokio's paused clock, both moved together.
#[tokio::test(start_paused = true)]
async fn a_fetch_never_joins_a_read_older_than_the_maximum_age() {
    let store = Arc::new(SnapshotStore {
        rows: MemoryStore::new(),
        latency: Duration::from_secs(5),
        reads: Default::default(),
    });
    let r = record("o");
    store.rows.insert_sync(r.clone()).unwrap();
    let clock = ManualClock::new(T0);
    // Maximum age 1 s (the default), no feed.
    let cache = Arc::new(CachedStore::new(Arc::clone(&store)).with_clock(clock.clone()));
    // Lets the spawned fetches run, then moves both clocks by `ms`.
    let step = |ms: u64| {
        let clock = clock.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            clock.advance(std::time::Duration::from_millis(ms));
        }
    };
    let fetch = |cache: &Arc<CachedStore<Arc<SnapshotStore>>>| {
        let cache = Arc::clone(cache);
        tokio::spawn(async move { cache.fetch(r.id).await.unwrap().unwrap().status() })
    };

    let first = fetch(&cache); // t = 0: reads "active", answers at t = 5 s
    step(500).await;
    store.rows.update_sync(revoked(r.clone())).unwrap(); // elsewhere, no feed
    step(400).await;
    let joined = fetch(&cache); // t = 0.9 s: the read is 0.9 s old
    step(600).await;
    let late = fetch(&cache); // t = 1.5 s: the read is 1.5 s old
    step(1).await;
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        2,
        "the fetch at 0.9 s joined the young read; the one at 1.5 s started its own"
    );

    assert_eq!(first.await.unwrap(), KeyStatus::Active);
    assert_eq!(
        joined.await.unwrap(),
        KeyStatus::Active,
        "a read started 0.9 s before the fetch: within the bound"
    );
    assert_eq!(
        late.await.unwrap(),
        KeyStatus::Revoked,
        "a fetch started 1.5 s after the read (1 s after the revocation) took its answer"
    );
    // The old read's answer was not cached over the new one.
    assert_eq!(
        cache.fetch(r.id).await.unwrap().unwrap().status(),
        KeyStatus::Revoked
    );
    assert_eq!(store.reads.load(Ordering::SeqCst), 2, "a hit");
}
