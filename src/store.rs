//! Where records live: the [`KeyStore`] traits and the default
//! [`MemoryStore`].
//!
//! The traits are shaped for async networked databases: every method returns
//! `impl Future + Send`, so a Postgres or Redis store implements them with
//! plain `async fn` and never blocks its runtime. Reads ([`KeyStore`]) are
//! separate from writes ([`KeyStoreWrite`]), so a read-only replica store is
//! small. The store only stores: every rule (digests, status, expiry, scopes)
//! is decided by the [`Verifier`](crate::Verifier).
//!
//! A store failure is reported as a [`StoreError`] and surfaces as
//! [`Error::StoreUnavailable`](crate::Error::StoreUnavailable) (HTTP 503):
//! never as "valid", never as "invalid key".
//!
//! Implementors run the public [`conformance`] suite against their store.

use std::future::Future;
use std::sync::Arc;

use crate::error::StoreError;
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyView};

pub mod conformance;
mod memory;

pub use memory::MemoryStore;

/// Read access to stored keys.
pub trait KeyStore: Send + Sync {
    /// The hot-path read: the compact view of key `id`, or `None`.
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send;

    /// The full record of key `id`, or `None`.
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Every record owned by `owner`, in creation order (oldest first, ties
    /// by id).
    fn list_by_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;
}

/// Write access to stored keys. Every method is all-or-nothing: when it
/// returns an error, the store is as it was.
pub trait KeyStoreWrite: KeyStore {
    /// Adds a new record. A record with the same id already present is a
    /// [`StoreErrorKind::IdCollision`](crate::StoreErrorKind::IdCollision)
    /// and is never overwritten.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the record with `record.id`. A missing record is
    /// [`StoreErrorKind::NotFound`](crate::StoreErrorKind::NotFound). Once
    /// this returns, every `fetch` that starts sees the new record.
    fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes record `id`; returns whether it existed.
    fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: KeyStore + ?Sized> KeyStore for $ty {
            fn fetch(&self, id: KeyId) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
                (**self).fetch(id)
            }
            fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
                (**self).get(id)
            }
            fn list_by_owner(&self, owner: &str) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
                (**self).list_by_owner(owner)
            }
        }
        impl<S: KeyStoreWrite + ?Sized> KeyStoreWrite for $ty {
            fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).insert(record)
            }
            fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
                (**self).update(record)
            }
            fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
                (**self).delete(id)
            }
        }
    )*};
}

forward_store!(&S, Arc<S>);
