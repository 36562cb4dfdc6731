//! The public conformance suite against both stores: the default
//! `MemoryStore` and the network-like `NetStore` (latency, yields,
//! failures on demand).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey::MemoryStore;
use apikey_testkit::conformance;
use support::netstore::NetStore;

#[tokio::test]
async fn memory_store_passes_the_suite() {
    conformance::run_all(&MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_store_through_arc_passes_the_suite() {
    conformance::run_all(&Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_store_passes_the_suite() {
    let store = NetStore::new(Duration::from_micros(200));
    conformance::run_all(&*store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_store_concurrent_limit_under_real_tasks() {
    // The same check with the inserts on separate tokio tasks.
    let store = NetStore::new(Duration::from_micros(100));
    let owner = conformance::unique_owner();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (store, owner) = (store.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            use apikey::KeyStoreLifecycle;
            store
                .insert_limited(
                    conformance::sample_record(Some(&owner)),
                    3,
                    conformance::suite_now(),
                )
                .await
                .unwrap()
        }));
    }
    let mut inserted = 0;
    for t in tasks {
        if t.await.unwrap() == apikey::LimitedInsert::Inserted {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 3);
}

#[tokio::test]
async fn net_store_failed_writes_change_nothing() {
    let store = NetStore::new(Duration::ZERO);
    conformance::failed_writes_change_nothing(&*store, |f| store.set_failing(f)).await;
}

/// The suite must be able to fail: a store that ignores the owner limit is
/// caught.
#[tokio::test]
#[should_panic(expected = "insert_limited")]
async fn suite_catches_a_store_that_ignores_the_limit() {
    use apikey::*;
    use std::ops::Range;
    use time::OffsetDateTime;

    struct NoLimit(MemoryStore);
    impl KeyStore for NoLimit {
        async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
            self.0.fetch(id).await
        }
        async fn find_legacy(&self, i: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
            self.0.find_legacy(i).await
        }
    }
    impl KeyStoreWrite for NoLimit {
        async fn insert(&self, r: KeyRecord) -> Result<(), StoreError> {
            self.0.insert(r).await
        }
        async fn update(&self, r: KeyRecord) -> Result<(), StoreError> {
            self.0.update(r).await
        }
        async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
            self.0.delete(id).await
        }
    }
    impl KeyStoreQuery for NoLimit {
        async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.list_by_owner(owner).await
        }
        async fn list_expiring(
            &self,
            o: Option<&str>,
            w: Range<OffsetDateTime>,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            self.0.list_expiring(o, w).await
        }
    }
    impl KeyStoreLifecycle for NoLimit {
        async fn insert_limited(
            &self,
            r: KeyRecord,
            _max: u32,
            _now: OffsetDateTime,
        ) -> Result<LimitedInsert, StoreError> {
            self.0.insert(r).await.map(|()| LimitedInsert::Inserted)
        }
        async fn update_if(&self, r: KeyRecord, e: u64) -> Result<KeyRecord, StoreError> {
            self.0.update_if(r, e).await
        }
        async fn update_limited(
            &self,
            r: KeyRecord,
            e: u64,
            _max: u32,
            _now: OffsetDateTime,
        ) -> Result<LimitedUpdate, StoreError> {
            self.0.update_if(r, e).await.map(LimitedUpdate::Updated)
        }
        async fn rotate(
            &self,
            p: KeyRecord,
            e: u64,
            s: KeyRecord,
        ) -> Result<(KeyRecord, KeyRecord), StoreError> {
            self.0.rotate(p, e, s).await
        }
        async fn revoke_owner(&self, o: &str, r: Revocation) -> Result<Vec<KeyId>, StoreError> {
            self.0.revoke_owner(o, r).await
        }
        async fn revoke_matching(
            &self,
            p: &Prefix,
            c: Range<OffsetDateTime>,
            r: Revocation,
        ) -> Result<Vec<KeyId>, StoreError> {
            self.0.revoke_matching(p, c, r).await
        }
    }
    impl UsageStore for NoLimit {
        async fn record_usage(&self, b: &UsageBatch) -> Result<FlushOutcome, StoreError> {
            self.0.record_usage(b).await
        }
    }
    conformance::run_all(&NoLimit(MemoryStore::new())).await;
}

/// The read-only part: a store with only `fetch` and `find_legacy` (here a
/// read-only view over a `MemoryStore` that something else loaded).
#[tokio::test]
async fn read_only_store_passes_its_part() {
    use apikey::{KeyDigest, KeyId, KeyRecord, KeyStore, KeyView, StoreError};

    struct ReadOnly(MemoryStore);
    impl KeyStore for ReadOnly {
        async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
            self.0.fetch(id).await
        }
        async fn find_legacy(&self, i: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
            self.0.find_legacy(i).await
        }
    }
    let records = conformance::read_sample();
    let backing = MemoryStore::new();
    for r in &records {
        backing.insert_sync(r.clone()).unwrap();
    }
    conformance::check_reads(&ReadOnly(backing), &records, true).await;
}

/// The read-only part must be able to fail: a store that loses a field.
#[tokio::test]
#[should_panic(expected = "exact view")]
async fn read_part_catches_a_store_that_drops_scopes() {
    use apikey::{KeyId, KeyStore, KeyView, ScopeSet, StoreError};

    struct Lossy(MemoryStore);
    impl KeyStore for Lossy {
        async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
            Ok(self.0.get_sync(id).map(|r| {
                let r = r
                    .to_builder()
                    .scopes(ScopeSet::default())
                    .build_unvalidated();
                Arc::new(KeyView::from_record(&r))
            }))
        }
    }
    let records = conformance::read_sample();
    let backing = MemoryStore::new();
    for r in &records {
        backing.insert_sync(r.clone()).unwrap();
    }
    conformance::check_reads(&Lossy(backing), &records, false).await;
}

#[tokio::test]
async fn memory_store_usage_replay_is_applied_once() {
    conformance::run_usage(&MemoryStore::new()).await;
}
