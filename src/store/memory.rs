//! The in-memory [`MemoryStore`].

use std::collections::HashMap;
use std::future::{Future, ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyView};
use crate::store::{KeyStore, KeyStoreWrite};
use crate::sync::{self, Mutex, RwLock};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Hashes a random 64-bit id with one multiply. Ids are drawn from a CSPRNG
/// and forged ids are stopped by the tag before any lookup, so a
/// DoS-resistant hasher buys nothing here.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

struct Slot {
    view: Arc<KeyView>,
    record: Box<KeyRecord>,
}

/// A thread-safe in-memory store, the default.
///
/// Records are spread over 64 shards, each behind its own `RwLock`, chosen
/// by the top bits of the id. A verification takes one shard's read lock for
/// the length of a hash lookup and an `Arc` clone, and holds no lock while
/// the verifier computes the digest; writes lock one shard (plus the owner
/// index) briefly, so they never block readers for long.
///
/// Besides the async [`KeyStore`] / [`KeyStoreWrite`] methods it offers
/// plain synchronous ones (`*_sync`) for blocking code and fuzz harnesses.
///
/// ```
/// use apikey::*;
/// let store = MemoryStore::new();
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
/// let (key, record) = verifier.issue(NewKey::new("sk_live_").owner("u1"), time::OffsetDateTime::UNIX_EPOCH)?;
/// store.insert_sync(record.clone())?;
/// assert!(store.insert_sync(record).is_err()); // id collision: never overwritten
/// assert_eq!(store.len(), 1);
/// assert_eq!(store.list_by_owner_sync("u1").len(), 1);
/// # Ok::<(), apikey::Error>(())
/// ```
pub struct MemoryStore {
    shards: Box<[RwLock<IdMap<Slot>>]>,
    owners: Mutex<HashMap<Arc<str>, Vec<KeyId>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(IdMap::default())).collect(),
            owners: Mutex::new(HashMap::new()),
        }
    }

    #[inline]
    fn shard(&self, id: KeyId) -> &RwLock<IdMap<Slot>> {
        &self.shards[(id.as_u64() >> (64 - SHARD_BITS)) as usize]
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| sync::read(s).len()).sum()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hot-path read, synchronously.
    ///
    /// # Errors
    /// Never fails; the `Result` matches the trait.
    #[inline]
    pub fn fetch_sync(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        Ok(sync::read(self.shard(id))
            .get(&id.as_u64())
            .map(|s| Arc::clone(&s.view)))
    }

    /// The full record, synchronously.
    pub fn get_sync(&self, id: KeyId) -> Option<KeyRecord> {
        sync::read(self.shard(id))
            .get(&id.as_u64())
            .map(|s| (*s.record).clone())
    }

    /// Records owned by `owner`, oldest first.
    pub fn list_by_owner_sync(&self, owner: &str) -> Vec<KeyRecord> {
        let ids = sync::lock(&self.owners)
            .get(owner)
            .cloned()
            .unwrap_or_default();
        let mut out: Vec<KeyRecord> = ids.into_iter().filter_map(|id| self.get_sync(id)).collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    /// Inserts a record, synchronously.
    ///
    /// # Errors
    /// [`StoreErrorKind::IdCollision`] when the id is taken (nothing is
    /// written); [`StoreErrorKind::Corrupt`] when the record breaks its
    /// invariants.
    pub fn insert_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        record
            .validate()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))?;
        let mut owners = sync::lock(&self.owners);
        let mut shard = sync::write(self.shard(record.id));
        let id = record.id;
        if shard.contains_key(&id.as_u64()) {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        let owner = record.owner.as_deref().map(|o| intern(&mut owners, o));
        let view = Arc::new(KeyView::from_record_with(&record, owner.clone()));
        shard.insert(
            id.as_u64(),
            Slot {
                view,
                record: Box::new(record),
            },
        );
        if let Some(o) = owner {
            owners.entry(o).or_default().push(id);
        }
        Ok(())
    }

    /// Replaces a record, synchronously. Every fetch that starts after this
    /// returns sees the new record.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when there is no such record;
    /// [`StoreErrorKind::Corrupt`] when the record breaks its invariants.
    pub fn update_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        record
            .validate()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))?;
        let mut owners = sync::lock(&self.owners);
        let mut shard = sync::write(self.shard(record.id));
        let id = record.id;
        let Some(slot) = shard.get_mut(&id.as_u64()) else {
            return Err(StoreError::new(StoreErrorKind::NotFound));
        };
        if slot.record.owner != record.owner {
            if let Some(old) = slot.record.owner.as_deref() {
                remove_owned(&mut owners, old, id);
            }
            if let Some(new) = record.owner.as_deref() {
                let o = intern(&mut owners, new);
                owners.entry(o).or_default().push(id);
            }
        }
        let owner = record.owner.as_deref().map(|o| intern(&mut owners, o));
        slot.view = Arc::new(KeyView::from_record_with(&record, owner));
        *slot.record = record;
        Ok(())
    }

    /// Deletes a record, synchronously; returns whether it existed.
    pub fn delete_sync(&self, id: KeyId) -> bool {
        let mut owners = sync::lock(&self.owners);
        let mut shard = sync::write(self.shard(id));
        match shard.remove(&id.as_u64()) {
            Some(slot) => {
                if let Some(o) = slot.record.owner.as_deref() {
                    remove_owned(&mut owners, o, id);
                }
                true
            }
            None => false,
        }
    }
}

/// The shared copy of an owner string (one allocation per owner).
fn intern(owners: &mut HashMap<Arc<str>, Vec<KeyId>>, owner: &str) -> Arc<str> {
    match owners.get_key_value(owner) {
        Some((k, _)) => Arc::clone(k),
        None => Arc::from(owner),
    }
}

fn remove_owned(owners: &mut HashMap<Arc<str>, Vec<KeyId>>, owner: &str, id: KeyId) {
    if let Some(ids) = owners.get_mut(owner) {
        ids.retain(|k| *k != id);
        if ids.is_empty() {
            owners.remove(owner);
        }
    }
}

impl KeyStore for MemoryStore {
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
        ready(self.fetch_sync(id))
    }

    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.get_sync(id)))
    }

    fn list_by_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.list_by_owner_sync(owner)))
    }
}

impl KeyStoreWrite for MemoryStore {
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_sync(record))
    }

    fn update(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.update_sync(record))
    }

    fn delete(&self, id: KeyId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        ready(Ok(self.delete_sync(id)))
    }
}
