//! [`CountingStore`]: forwards every call to a store and counts the commits, the commits refused as
//! conflicts and the listing pages read, for contention benchmarks and store-call tests.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use apikey::{
    Changes, FlushOutcome, KeyDigest, KeyId, KeyQuery, KeyRecord, KeyStore, KeyStoreQuery,
    KeyStoreWrite, KeyView, Listing, StoreError, StoreErrorKind, UsageBatch, UsageStore,
};

/// A store that forwards to `inner` and counts commits, conflicts and listings.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use apikey::{KeyQuery, KeyStoreQuery, MemoryStore};
/// use apikey_testkit::CountingStore;
/// let store = CountingStore::new(MemoryStore::new());
/// store.list(&KeyQuery::owner("o")).await.unwrap();
/// assert_eq!(store.lists(), 1);
/// assert_eq!((store.commits(), store.conflicts()), (0, 0));
/// # });
/// ```
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    commits: AtomicU64,
    conflicts: AtomicU64,
    lists: AtomicU64,
}

impl<S> CountingStore<S> {
    /// Counts the calls made to `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            lists: AtomicU64::new(0),
        }
    }

    /// The store counted.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Commits sent.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Commits refused with [`StoreErrorKind::Conflict`].
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Listing pages read.
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::Relaxed)
    }
}

impl<S: KeyStore> KeyStore for CountingStore<S> {
    const IN_PROCESS: bool = S::IN_PROCESS;

    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.inner.fetch(id).await
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.find_legacy(index).await
    }
}

impl<S: KeyStoreQuery> KeyStoreQuery for CountingStore<S> {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list(query).await
    }
}

impl<S: KeyStoreWrite> KeyStoreWrite for CountingStore<S> {
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let r = self.inner.commit(changes).await;
        if matches!(&r, Err(e) if e.kind() == StoreErrorKind::Conflict) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: UsageStore> UsageStore for CountingStore<S> {
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
