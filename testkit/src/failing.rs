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
