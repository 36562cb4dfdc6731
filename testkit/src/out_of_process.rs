//! [`OutOfProcess`]: a store the pipeline treats as one that leaves the process, over any store.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use apikey::{
    FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStore, KeyView, StoreError, UsageBatch,
    UsageStore,
};

/// Forwards to `inner` with [`KeyStore::IN_PROCESS`] left at `false`, so its
/// fetches are store calls for the metrics and tracing spans even over a
/// [`MemoryStore`](apikey::MemoryStore): for tests of what a database-backed
/// store records.
///
/// ```
/// use apikey::{KeyStore, MemoryStore};
/// use apikey_testkit::OutOfProcess;
/// assert!(MemoryStore::IN_PROCESS);
/// assert!(!<OutOfProcess<MemoryStore> as KeyStore>::IN_PROCESS);
/// ```
#[derive(Debug, Default)]
pub struct OutOfProcess<S>(pub S);

impl<S: KeyStore> KeyStore for OutOfProcess<S> {
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
        self.0.fetch(id)
    }

    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.0.find_legacy(index)
    }
}

impl<S: UsageStore> UsageStore for OutOfProcess<S> {
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
        self.0.record_usage(batch)
    }

    fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> impl Future<Output = Result<Vec<(time::Date, u64)>, StoreError>> + Send {
        self.0.usage(id, days)
    }
}
