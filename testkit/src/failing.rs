//! [`FailingStore`]: a store whose every call fails, to prove that store
//! errors propagate (as `STORE_UNAVAILABLE`, never "valid" and never
//! "invalid key") and that their causes never reach a client.

use std::ops::Range;
use std::sync::Arc;

use apikey::{
    Changes, FlushOutcome, KeyDigest, KeyId, KeyQuery, KeyRecord, KeyStore, KeyStoreQuery,
    KeyStoreWrite, KeyView, Listing, StoreError, StoreErrorKind, UsageBatch, UsageStore,
};

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
    async fn commit(&self, _: &Changes) -> Result<(), StoreError> {
        Err(failure())
    }
}

impl KeyStoreQuery for FailingStore {
    async fn get(&self, _: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Err(failure())
    }
    async fn list(&self, _: &KeyQuery) -> Result<Listing, StoreError> {
        Err(failure())
    }
}

impl UsageStore for FailingStore {
    async fn record_usage(&self, _: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        Err(failure())
    }
    async fn usage(
        &self,
        _: KeyId,
        _: Range<time::Date>,
    ) -> Result<Vec<(time::Date, u64)>, StoreError> {
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
/// use apikey::{Changes, KeyStoreWrite, MemoryStore, Put, StoreErrorKind};
/// use apikey_testkit::failing::FaultyStore;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = FaultyStore::new(MemoryStore::new());
/// store.lose_answers(1);
/// let record = apikey_testkit::conformance::sample_record(None);
/// let mut changes = Changes::new();
/// changes.puts.push(Put::insert(record.clone()));
/// let err = store.commit(&changes).await.unwrap_err();
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
    /// answered by then (answered `Timeout`); with zero, at its first wait
    /// (polled once, dropped if not ready), whatever the timer's resolution.
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
            // Cut at the first wait, whatever the timer's resolution (a
            // zero `timeout` only fires at the timer's next tick, which a
            // fast write may beat): polled once, dropped if not ready.
            Some(after) if after.is_zero() => {
                let mut w = std::pin::pin!(w);
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(w.as_mut().poll(cx))).await;
                match first {
                    std::task::Poll::Ready(r) => r,
                    std::task::Poll::Pending => {
                        self.cut_short
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Err(timeout())
                    }
                }
            }
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
    /// Faults apply per commit; `revoke_where` is the default over it, so
    /// a bulk revocation meets them page by page.
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        self.write(self.inner.commit(changes)).await
    }
}

impl<S: KeyStoreQuery> KeyStoreQuery for FaultyStore<S> {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.check(id)?;
        self.inner.get(id).await
    }
    async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        let mut listing = self.inner.list(query).await?;
        listing.records = self.check_all(listing.records)?;
        Ok(listing)
    }
}

impl<S: UsageStore> UsageStore for FaultyStore<S> {
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
