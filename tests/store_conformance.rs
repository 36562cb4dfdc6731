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
    conformance::run_rules(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn memory_store_through_arc_passes_the_suite() {
    let store = Arc::new(MemoryStore::new());
    conformance::run_all(&store).await;
    conformance::run_rules(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_store_passes_the_suite() {
    let store = NetStore::new(Duration::from_micros(200));
    conformance::run_all(&*store).await;
    conformance::run_rules(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_store_concurrent_guards_under_real_tasks() {
    // Guarded commits at one owner version on separate tokio tasks: one
    // wins.
    use apikey::{Changes, KeyStoreWrite, Put};
    let store = NetStore::new(Duration::from_micros(100));
    let owner = conformance::unique_owner();
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (store, owner) = (store.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Changes::new().guard(owner.clone(), 0);
            c.puts
                .push(Put::insert(conformance::sample_record(Some(&owner))));
            store.commit(&c).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e.kind(), apikey::StoreErrorKind::Conflict),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn net_store_failed_writes_change_nothing() {
    let store = NetStore::new(Duration::ZERO);
    conformance::failed_writes_change_nothing(&*store, |f| store.set_failing(f)).await;
}

/// A store that ignores owner guards (commits every plan as if no one else
/// wrote), for the two checks below.
mod unguarded {
    use std::ops::Range;
    use std::sync::Arc;

    use apikey::*;

    pub struct NoGuards(pub MemoryStore);
    impl KeyStore for NoGuards {
        async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
            self.0.fetch(id).await
        }
        async fn find_legacy(&self, i: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
            self.0.find_legacy(i).await
        }
    }
    impl KeyStoreQuery for NoGuards {
        async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
            self.0.get(id).await
        }
        async fn list(&self, q: &KeyQuery) -> Result<Listing, StoreError> {
            self.0.list(q).await
        }
    }
    impl KeyStoreWrite for NoGuards {
        async fn commit(&self, c: &Changes) -> Result<(), StoreError> {
            let mut c = c.clone();
            c.guards.clear();
            // Yield between the plan and the write, as a network would.
            tokio::task::yield_now().await;
            self.0.commit(&c).await
        }
    }
    impl UsageStore for NoGuards {
        async fn record_usage(&self, b: &UsageBatch) -> Result<FlushOutcome, StoreError> {
            self.0.record_usage(b).await
        }
        async fn usage(
            &self,
            id: KeyId,
            days: Range<time::Date>,
        ) -> Result<Vec<(time::Date, u64)>, StoreError> {
            self.0.usage(id, days).await
        }
    }
}

/// The suite must be able to fail: a store that ignores owner guards is
/// caught by the primitive's checks.
#[tokio::test]
#[should_panic(expected = "a guard at version v must leave v + 1")]
async fn suite_catches_a_store_that_ignores_guards() {
    conformance::run_writes(&unguarded::NoGuards(MemoryStore::new())).await;
}

/// ... and by the manager's rules: over it, concurrent creates break the
/// owner limit.
#[tokio::test]
#[should_panic(expected = "must make exactly 3 keys")]
async fn rules_catch_a_store_that_ignores_guards() {
    conformance::owner_limit_holds_under_concurrency(
        Arc::new(unguarded::NoGuards(MemoryStore::new())),
        16,
    )
    .await;
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
