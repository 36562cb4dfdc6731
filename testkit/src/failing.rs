//! [`FailingStore`]: a store whose every call fails, to prove that store
//! errors propagate (as `STORE_UNAVAILABLE`, never "valid" and never
//! "invalid key") and that their causes never reach a client.

use std::ops::Range;
use std::sync::Arc;

use apikey::{
    FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStore, KeyStoreLifecycle, KeyStoreQuery,
    KeyStoreWrite, KeyView, LimitedInsert, LimitedUpdate, Prefix, Revocation, StoreError,
    StoreErrorKind, UsageBatch, UsageStore,
};
use time::OffsetDateTime;

/// A store that fails every call with [`StoreErrorKind::Unavailable`],
/// whose cause (`connection refused: db-primary.internal:5432`) stands for
/// internal detail that must never reach a response body.
#[derive(Clone, Copy, Debug, Default)]
pub struct FailingStore;

/// The error every [`FailingStore`] call returns.
pub fn failure() -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Unavailable,
        std::io::Error::other("connection refused: db-primary.internal:5432"),
    )
}

impl KeyStore for FailingStore {
    async fn fetch(&self, _: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        Err(failure())
    }
    async fn find_legacy(&self, _: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        Err(failure())
    }
}

impl KeyStoreWrite for FailingStore {
    async fn insert(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(failure())
    }
    async fn update(&self, _: KeyRecord) -> Result<(), StoreError> {
        Err(failure())
    }
    async fn delete(&self, _: KeyId) -> Result<bool, StoreError> {
        Err(failure())
    }
}

impl KeyStoreQuery for FailingStore {
    async fn get(&self, _: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(failure())
    }
    async fn list_by_owner(&self, _: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Err(failure())
    }
    async fn list_expiring(
        &self,
        _: Option<&str>,
        _: Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        Err(failure())
    }
}

impl KeyStoreLifecycle for FailingStore {
    async fn insert_limited(
        &self,
        _: KeyRecord,
        _: u32,
        _: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        Err(failure())
    }
    async fn update_if(&self, _: KeyRecord, _: u64) -> Result<KeyRecord, StoreError> {
        Err(failure())
    }
    async fn update_limited(
        &self,
        _: KeyRecord,
        _: u64,
        _: u32,
        _: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        Err(failure())
    }
    async fn rotate(
        &self,
        _: KeyRecord,
        _: u64,
        _: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        Err(failure())
    }
    async fn revoke_owner(&self, _: &str, _: Revocation) -> Result<Vec<KeyId>, StoreError> {
        Err(failure())
    }
    async fn revoke_matching(
        &self,
        _: &Prefix,
        _: Range<OffsetDateTime>,
        _: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        Err(failure())
    }
}

impl UsageStore for FailingStore {
    async fn record_usage(&self, _: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        Err(failure())
    }
}

/// A wrapper over a working store that injects the failures a real
/// database shows, on demand:
///
/// * [`lose_answers`](Self::lose_answers): the next writes are **applied**,
///   then answered `StoreErrorKind::Timeout` (a deadline that fell during
///   `COMMIT`: the write committed, the caller never heard).
/// * [`drop_writes`](Self::drop_writes): the next writes are answered
///   `Timeout` **without** being applied.
/// * [`cut_next_write`](Self::cut_next_write): the next write runs under
///   a deadline and is dropped when it passes, answered `Timeout`: over a
///   real database, whatever it had reached (maybe a `COMMIT` that
///   completes anyway).
/// * [`corrupt`](Self::corrupt): every read that would return key `id`
///   (`fetch`, `get`, `find_legacy`, listings holding it) answers
///   `StoreErrorKind::Corrupt` with `apikey::Error::InvalidRecord` as its
///   source, as the SQL stores do for a row they cannot decode.
///
/// ```
/// use apikey::{KeyStoreWrite, MemoryStore, StoreErrorKind};
/// use apikey_testkit::failing::FaultyStore;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = FaultyStore::new(MemoryStore::new());
/// store.lose_answers(1);
/// let record = apikey_testkit::conformance::sample_record(None);
/// let err = store.insert(record.clone()).await.unwrap_err();
/// assert_eq!(err.kind(), StoreErrorKind::Timeout);
/// assert!(store.inner().get_sync(record.id).is_some()); // applied anyway
/// # });
/// ```
#[derive(Debug, Default)]
pub struct FaultyStore<S> {
    inner: S,
    lose: std::sync::atomic::AtomicU32,
    drop: std::sync::atomic::AtomicU32,
    corrupt: std::sync::Mutex<std::collections::HashSet<KeyId>>,
    cut: std::sync::Mutex<Option<std::time::Duration>>,
    /// Writes answered `Timeout` after being applied.
    pub lost: std::sync::atomic::AtomicU32,
    /// Writes dropped at their deadline ([`cut_next_write`](Self::cut_next_write)).
    pub cut_short: std::sync::atomic::AtomicU32,
}

/// The `Timeout` of a [`FaultyStore`] write.
pub fn timeout() -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Timeout,
        std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5ms"),
    )
}

fn take(n: &std::sync::atomic::AtomicU32) -> bool {
    use std::sync::atomic::Ordering;
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

impl<S> FaultyStore<S> {
    /// `inner`, with no failure planned.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            lose: Default::default(),
            drop: Default::default(),
            corrupt: Default::default(),
            cut: Default::default(),
            lost: Default::default(),
            cut_short: Default::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` writes are applied, then answered `Timeout`.
    pub fn lose_answers(&self, n: u32) {
        self.lose.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next `n` writes are answered `Timeout` without being applied.
    pub fn drop_writes(&self, n: u32) {
        self.drop.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next write is dropped `after` its start when it has not
    /// answered by then (answered `Timeout`).
    pub fn cut_next_write(&self, after: std::time::Duration) {
        *self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(after);
    }

    /// Reads of key `id` answer `Corrupt` from now on.
    pub fn corrupt(&self, id: KeyId) {
        self.corrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
    }

    fn is_corrupt(&self, id: KeyId) -> bool {
        self.corrupt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }

    fn check(&self, id: KeyId) -> Result<(), StoreError> {
        if self.is_corrupt(id) {
            Err(StoreError::with_source(
                StoreErrorKind::Corrupt,
                apikey::Error::InvalidRecord("stored row: status".into()),
            ))
        } else {
            Ok(())
        }
    }

    fn check_all(&self, records: Vec<KeyRecord>) -> Result<Vec<KeyRecord>, StoreError> {
        for r in &records {
            self.check(r.id)?;
        }
        Ok(records)
    }

    async fn write<T>(
        &self,
        w: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if take(&self.drop) {
            return Err(timeout());
        }
        let cut = self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let r = match cut {
            None => w.await,
            Some(after) => match tokio::time::timeout(after, w).await {
                Ok(r) => r,
                Err(_) => {
                    self.cut_short
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Err(timeout())
                }
            },
        };
        if take(&self.lose) {
            self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(timeout());
        }
        r
    }
}

impl<S: KeyStore> KeyStore for FaultyStore<S> {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.check(id)?;
        self.inner.fetch(id).await
    }
    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        let r = self.inner.find_legacy(index).await?;
        if let Some(r) = &r {
            self.check(r.id)?;
        }
        Ok(r)
    }
}

impl<S: KeyStoreWrite> KeyStoreWrite for FaultyStore<S> {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.write(self.inner.insert(record)).await
    }
    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.write(self.inner.update(record)).await
    }
    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.write(self.inner.delete(id)).await
    }
}

impl<S: KeyStoreQuery> KeyStoreQuery for FaultyStore<S> {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.check(id)?;
        self.inner.get(id).await
    }
    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.check_all(self.inner.list_by_owner(owner).await?)
    }
    async fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.check_all(self.inner.list_expiring(owner, window).await?)
    }
}

impl<S: KeyStoreLifecycle> KeyStoreLifecycle for FaultyStore<S> {
    async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        self.write(self.inner.insert_limited(record, max, now))
            .await
    }
    async fn update_if(&self, record: KeyRecord, expected: u64) -> Result<KeyRecord, StoreError> {
        self.write(self.inner.update_if(record, expected)).await
    }
    async fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        self.write(self.inner.update_limited(record, expected, max, now))
            .await
    }
    async fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        self.write(self.inner.rotate(predecessor, expected, successor))
            .await
    }
    async fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.write(self.inner.revoke_owner(owner, revocation)).await
    }
    async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.write(self.inner.revoke_matching(prefix, created, revocation))
            .await
    }
}

impl<S: UsageStore> UsageStore for FaultyStore<S> {
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        self.inner.record_usage(batch).await
    }
}
