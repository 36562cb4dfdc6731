//! The owner limit under contention: plans of several managers (service
//! instances) over one store meet only at the store's owner guard; a create
//! the limit allows must not fail because another instance kept the owner
//! busy, and the owner never passes the limit. One manager alone plans on
//! its cached owner count: one commit and no listing per create.
//! No timing assertions: outcomes and store-call counts only.

#![allow(clippy::unwrap_used)]

mod support;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apikey::*;
use support::netstore::NetStore;
use support::{fixture_with, verifier};

/// A store that counts its calls and, until `busy_until`, lets a rival
/// manager (another instance, writing to the same inner store) commit a
/// guarded create for the owner just before each guarded commit arrives,
/// as a busy instance would.
struct Observed {
    inner: Arc<MemoryStore>,
    commits: AtomicU64,
    lists: AtomicU64,
    busy_until: std::sync::Mutex<Option<Instant>>,
    rival: std::sync::Mutex<Option<Arc<KeyManager<Arc<MemoryStore>>>>>,
    rival_commits: AtomicU64,
}

impl Observed {
    fn new(inner: Arc<MemoryStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            commits: AtomicU64::new(0),
            lists: AtomicU64::new(0),
            busy_until: std::sync::Mutex::new(None),
            rival: std::sync::Mutex::new(None),
            rival_commits: AtomicU64::new(0),
        })
    }

    fn calls(&self) -> (u64, u64) {
        (
            self.commits.load(Ordering::SeqCst),
            self.lists.load(Ordering::SeqCst),
        )
    }
}

impl KeyStore for Observed {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.inner.fetch(id).await
    }
}

impl KeyStoreQuery for Observed {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(query).await
    }
}

impl KeyStoreWrite for Observed {
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let busy = self
            .busy_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until);
        let rival = self.rival.lock().unwrap().clone();
        if busy && let (Some(rival), Some(guard)) = (rival, changes.guards.first()) {
            rival
                .create(
                    NewKey::new("sk_live_").owner(guard.owner.as_str()),
                    &Actor::system(),
                )
                .await
                .unwrap();
            self.rival_commits.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.commit(changes).await
    }
}

impl UsageStore for Observed {
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        self.inner.record_usage(batch).await
    }

    async fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> Result<Vec<(time::Date, u64)>, StoreError> {
        self.inner.usage(id, days).await
    }
}

fn create(owner: &str) -> NewKey {
    NewKey::new("sk_live_").owner(owner)
}

#[tokio::test]
async fn another_instance_busy_on_the_owner_does_not_fail_a_create() {
    let inner = Arc::new(MemoryStore::new());
    let store = Observed::new(Arc::clone(&inner));
    let rival =
        Arc::new(KeyManager::new(verifier(), Arc::clone(&inner)).with_max_keys_per_owner(1000));
    let m = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(1000);
    *store.rival.lock().unwrap() = Some(rival);
    // The rival commits on the owner before each of our commits for 100 ms:
    // far longer than 32 plans take when the backoff only yields.
    *store.busy_until.lock().unwrap() = Some(Instant::now() + Duration::from_millis(100));
    let made = m.create(create("org"), &Actor::system()).await;
    assert!(made.is_ok(), "a create the limit allows failed: {made:?}");
    assert!(store.rival_commits.load(Ordering::SeqCst) >= 1);
    let listed = m.list("org").await.unwrap().len() as u64;
    assert_eq!(listed, store.rival_commits.load(Ordering::SeqCst) + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_creating_for_one_owner_fill_the_limit_exactly() {
    const INSTANCES: usize = 4;
    const TASKS: usize = 16;
    const PER_TASK: usize = 5;
    let limit = u32::try_from(TASKS * PER_TASK).unwrap();
    let store = NetStore::new(Duration::from_micros(100));
    let managers: Vec<_> = (0..INSTANCES)
        .map(|_| {
            Arc::new(
                fixture_with(verifier(), Arc::clone(&store))
                    .manager
                    .with_max_keys_per_owner(limit),
            )
        })
        .collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let m = Arc::clone(&managers[t % INSTANCES]);
            tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..PER_TASK {
                    if let Err(e) = m.create(create("org"), &Actor::system()).await {
                        failed.push(e.to_string());
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(t.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "creates within the limit failed: {failed:?}"
    );
    assert_eq!(
        managers[0].list("org").await.unwrap().len(),
        TASKS * PER_TASK
    );
    for m in &managers {
        match m.create(create("org"), &Actor::system()).await {
            Err(Error::KeyLimitReached { limit: l }) => assert_eq!(l, limit),
            other => panic!("past the limit: {other:?}"),
        }
    }
    assert_eq!(
        managers[0].list("org").await.unwrap().len(),
        TASKS * PER_TASK
    );
}

#[tokio::test]
async fn a_steady_create_is_one_commit_and_no_listing() {
    let store = Observed::new(Arc::new(MemoryStore::new()));
    let m = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(100);
    m.create(create("org"), &Actor::system()).await.unwrap();
    for _ in 0..10 {
        let before = store.calls();
        m.create(create("org"), &Actor::system()).await.unwrap();
        let (commits, lists) = store.calls();
        assert_eq!((commits - before.0, lists - before.1), (1, 0));
    }
    assert_eq!(m.list("org").await.unwrap().len(), 11);
}

#[tokio::test]
async fn the_cached_count_never_lets_another_instance_pass_the_limit() {
    let store = Arc::new(MemoryStore::new());
    let a = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(3);
    let b = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(3);
    // `a` remembers one key; `b` fills the owner meanwhile.
    a.create(create("org"), &Actor::system()).await.unwrap();
    b.create(create("org"), &Actor::system()).await.unwrap();
    b.create(create("org"), &Actor::system()).await.unwrap();
    match a.create(create("org"), &Actor::system()).await {
        Err(Error::KeyLimitReached { limit: 3 }) => {}
        other => panic!("past the limit: {other:?}"),
    }
    assert_eq!(a.list("org").await.unwrap().len(), 3);
}

#[tokio::test]
async fn the_cached_count_never_refuses_after_revocations() {
    let store = Arc::new(MemoryStore::new());
    let a = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(2);
    let b = fixture_with(verifier(), Arc::clone(&store))
        .manager
        .with_max_keys_per_owner(2);
    let (_, first) = a.create(create("org"), &Actor::system()).await.unwrap();
    let (_, second) = a.create(create("org"), &Actor::system()).await.unwrap();
    // Revocations lower the count without moving the owner version: by
    // this manager and by another instance.
    a.revoke(first.id, "gone", &Actor::system()).await.unwrap();
    a.create(create("org"), &Actor::system()).await.unwrap();
    b.revoke(second.id, "gone", &Actor::system()).await.unwrap();
    a.create(create("org"), &Actor::system()).await.unwrap();
    match a.create(create("org"), &Actor::system()).await {
        Err(Error::KeyLimitReached { limit: 2 }) => {}
        other => panic!("past the limit: {other:?}"),
    }
    let counting = a
        .list("org")
        .await
        .unwrap()
        .iter()
        .filter(|k| k.status != KeyStatus::Revoked)
        .count();
    assert_eq!(counting, 2);
}
