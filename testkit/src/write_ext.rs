//! [`WriteExt`]: one-record writes over [`KeyStoreWrite::commit`], for
//! tests and tools that set up records by hand (the crate's
//! [`KeyManager`](apikey::KeyManager) plans its own commits).

use std::future::Future;

use apikey::{Changes, Delete, KeyId, KeyRecord, KeyStoreWrite, Put, StoreError, StoreErrorKind};

/// One-record writes for any [`KeyStoreWrite`].
///
/// ```
/// use apikey::{KeyStoreQuery, MemoryStore};
/// use apikey_testkit::WriteExt;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let r = apikey_testkit::conformance::sample_record(None);
/// store.insert(r.clone()).await.unwrap();
/// assert_eq!(store.get(r.id).await.unwrap(), Some(r));
/// # });
/// ```
pub trait WriteExt: KeyStoreWrite {
    /// A commit of one insert.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let mut c = Changes::new();
            c.puts.push(Put::insert(record));
            self.commit(&c).await
        }
    }

    /// A put over whatever revision is stored (read first): the record's
    /// fields, `last_used_at` kept by the store.
    fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let stored = self
                .get(record.id)
                .await?
                .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound))?;
            let mut c = Changes::new();
            c.puts.push(Put::update(record, stored.revision));
            self.commit(&c).await
        }
    }

    /// A delete at the stored revision (no link clearing: that is the
    /// manager's); whether the record existed.
    fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            let Some(stored) = self.get(id).await? else {
                return Ok(false);
            };
            let mut c = Changes::new();
            c.deletes.push(Delete {
                id,
                expected: stored.revision,
            });
            self.commit(&c).await.map(|()| true)
        }
    }
}

impl<S: KeyStoreWrite + ?Sized> WriteExt for S {}
