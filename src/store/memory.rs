//! The in-memory [`MemoryStore`].

use std::collections::HashMap;
use std::future::{Future, ready};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use std::ops::Range;

use time::OffsetDateTime;

use crate::digest::KeyDigest;
use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyId;
use crate::prefix::Prefix;
use crate::record::{KeyRecord, KeyStatus, KeyView, Revocation};
use crate::store::{
    KeyStore, KeyStoreLifecycle, KeyStoreQuery, KeyStoreWrite, LimitedInsert, UsageDelta,
};
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
/// Every write, compound ones included ([`KeyStoreLifecycle`]), holds the
/// owner-index mutex for its whole length, so writes are serialized and the
/// per-owner limit is checked and applied in one step; `fetch` never takes
/// that mutex. A compound write validates everything before it changes
/// anything, so a failed write changes nothing.
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
    /// Owner index. Every write holds this lock for its whole length, so
    /// writes are serialized (compound writes are atomic with respect to
    /// each other); `fetch` never takes it. Lock order: `owners`, then
    /// shards, then `legacy`.
    owners: Mutex<OwnerMap>,
    /// Legacy-key index: keyed hash -> id.
    legacy: RwLock<HashMap<[u8; 32], KeyId>>,
}

type OwnerMap = HashMap<Arc<str>, Vec<KeyId>>;

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

fn corrupt(e: crate::Error) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, e)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(IdMap::default())).collect(),
            owners: Mutex::new(HashMap::new()),
            legacy: RwLock::new(HashMap::new()),
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
        sort_by_creation(&mut out);
        out
    }

    /// Inserts a record, synchronously.
    ///
    /// # Errors
    /// [`StoreErrorKind::IdCollision`] when the id (or the legacy index) is
    /// taken (nothing is written); [`StoreErrorKind::Corrupt`] when the
    /// record breaks its invariants.
    pub fn insert_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(corrupt)?;
        let mut owners = sync::lock(&self.owners);
        self.check_insert(&record)?;
        self.put_new(&mut owners, record);
        Ok(())
    }

    /// Replaces a record, synchronously (revision set to the stored one plus
    /// one). Every fetch that starts after this returns sees the new record.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when there is no such record;
    /// [`StoreErrorKind::Corrupt`] when the record breaks its invariants.
    pub fn update_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        record.validate().map_err(corrupt)?;
        let mut owners = sync::lock(&self.owners);
        let stored = self.check_replace(&record, None)?;
        let mut record = record;
        // Usage fields belong to `record_usage`: a flush that landed between
        // the caller's read and this write is kept.
        record.usage = stored.usage;
        record.last_used_at = stored.last_used_at;
        record.revision = stored.revision.wrapping_add(1);
        self.replace(&mut owners, &stored, record);
        Ok(())
    }

    /// Deletes a record, synchronously; returns whether it existed. Clears
    /// the rotation links of its predecessor and successor.
    pub fn delete_sync(&self, id: KeyId) -> bool {
        let mut owners = sync::lock(&self.owners);
        let removed = sync::write(self.shard(id)).remove(&id.as_u64());
        let Some(slot) = removed else {
            return false;
        };
        if let Some(o) = slot.record.owner.as_deref() {
            remove_owned(&mut owners, o, id);
        }
        if let Some(l) = &slot.record.legacy {
            sync::write(&self.legacy).remove(l.index.as_bytes());
        }
        for (other, is_successor) in [
            (slot.record.rotated_to, true),
            (slot.record.rotated_from, false),
        ] {
            let Some(other) = other else { continue };
            if let Some(Slot { record, view }) =
                sync::write(self.shard(other)).get_mut(&other.as_u64())
            {
                let link = if is_successor {
                    &mut record.rotated_from
                } else {
                    &mut record.rotated_to
                };
                if *link == Some(id) {
                    *link = None;
                    record.revision = record.revision.wrapping_add(1);
                    *view = Arc::new(KeyView::from_record_with(record, view.owner.clone()));
                }
            }
        }
        true
    }

    /// [`KeyStoreLifecycle::insert_limited`], synchronously.
    ///
    /// # Errors
    /// As [`insert_sync`](Self::insert_sync).
    pub fn insert_limited_sync(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        record.validate().map_err(corrupt)?;
        let mut owners = sync::lock(&self.owners);
        self.check_insert(&record)?;
        if let Some(owner) = record.owner.as_deref() {
            let active = owners.get(owner).map_or(0, |ids| {
                ids.iter()
                    .filter(|id| {
                        sync::read(self.shard(**id))
                            .get(&id.as_u64())
                            .is_some_and(|s| s.record.counts_toward_limit(now))
                    })
                    .count()
            });
            let active = u32::try_from(active).unwrap_or(u32::MAX);
            if active >= max {
                return Ok(LimitedInsert::LimitReached { active });
            }
        }
        self.put_new(&mut owners, record);
        Ok(LimitedInsert::Inserted)
    }

    /// [`KeyStoreLifecycle::update_if`], synchronously.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`], [`StoreErrorKind::Conflict`],
    /// [`StoreErrorKind::Corrupt`], [`StoreErrorKind::IdCollision`] (legacy
    /// index taken).
    pub fn update_if_sync(
        &self,
        record: KeyRecord,
        expected: u64,
    ) -> Result<KeyRecord, StoreError> {
        record.validate().map_err(corrupt)?;
        let mut owners = sync::lock(&self.owners);
        let stored = self.check_replace(&record, Some(expected))?;
        let record = conditional(record, &stored, expected);
        self.replace(&mut owners, &stored, record.clone());
        Ok(record)
    }

    /// [`KeyStoreLifecycle::rotate`], synchronously.
    ///
    /// # Errors
    /// As [`update_if_sync`](Self::update_if_sync) for the predecessor and
    /// [`insert_sync`](Self::insert_sync) for the successor.
    pub fn rotate_sync(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        predecessor.validate().map_err(corrupt)?;
        successor.validate().map_err(corrupt)?;
        if predecessor.id == successor.id {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        if let (Some(a), Some(b)) = (&predecessor.legacy, &successor.legacy)
            && a.index == b.index
        {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        let mut owners = sync::lock(&self.owners);
        let stored = self.check_replace(&predecessor, Some(expected))?;
        self.check_insert(&successor)?;
        let predecessor = conditional(predecessor, &stored, expected);
        self.replace(&mut owners, &stored, predecessor.clone());
        self.put_new(&mut owners, successor.clone());
        Ok((predecessor, successor))
    }

    /// [`KeyStoreLifecycle::revoke_owner`], synchronously.
    pub fn revoke_owner_sync(&self, owner: &str, revocation: &Revocation) -> Vec<KeyId> {
        let owners = sync::lock(&self.owners);
        let ids = owners.get(owner).cloned().unwrap_or_default();
        let mut changed = Vec::new();
        for id in ids {
            let mut shard = sync::write(self.shard(id));
            if let Some(slot) = shard.get_mut(&id.as_u64())
                && revoke_slot(slot, revocation)
            {
                changed.push((slot.record.created_at, id));
            }
        }
        drop(owners);
        changed.sort();
        changed.into_iter().map(|(_, id)| id).collect()
    }

    /// [`KeyStoreLifecycle::revoke_matching`], synchronously.
    pub fn revoke_matching_sync(
        &self,
        prefix: &Prefix,
        created: &Range<OffsetDateTime>,
        revocation: &Revocation,
    ) -> Vec<KeyId> {
        let owners = sync::lock(&self.owners);
        let mut changed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = sync::write(shard);
            for slot in shard.values_mut() {
                if slot.record.prefix == *prefix
                    && created.contains(&slot.record.created_at)
                    && revoke_slot(slot, revocation)
                {
                    changed.push((slot.record.created_at, slot.record.id));
                }
            }
        }
        drop(owners);
        changed.sort();
        changed.into_iter().map(|(_, id)| id).collect()
    }

    /// [`KeyStoreLifecycle::record_usage`], synchronously.
    pub fn record_usage_sync(&self, batch: &[UsageDelta]) {
        let _owners = sync::lock(&self.owners);
        for d in batch {
            if let Some(slot) = sync::write(self.shard(d.id)).get_mut(&d.id.as_u64()) {
                let r = &mut slot.record;
                r.usage.apply(d.day, d.count);
                r.last_used_at = Some(
                    r.last_used_at
                        .map_or(d.last_used_at, |t| t.max(d.last_used_at)),
                );
            }
        }
    }

    /// [`KeyStoreQuery::list_expiring`], synchronously.
    pub fn list_expiring_sync(
        &self,
        owner: Option<&str>,
        window: &Range<OffsetDateTime>,
    ) -> Vec<KeyRecord> {
        let keep = |r: &KeyRecord| {
            r.status != KeyStatus::Revoked && r.expires_at.is_some_and(|e| window.contains(&e))
        };
        let mut out: Vec<KeyRecord> = match owner {
            Some(o) => self
                .list_by_owner_sync(o)
                .into_iter()
                .filter(|r| keep(r))
                .collect(),
            None => self
                .shards
                .iter()
                .flat_map(|s| {
                    sync::read(s)
                        .values()
                        .filter(|slot| keep(&slot.record))
                        .map(|slot| (*slot.record).clone())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        out.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        out
    }

    /// [`KeyStoreQuery::find_legacy`], synchronously.
    pub fn find_legacy_sync(&self, index: &KeyDigest) -> Option<KeyRecord> {
        let id = *sync::read(&self.legacy).get(index.as_bytes())?;
        self.get_sync(id)
    }

    /// Checks that `record` can be inserted (caller holds `owners`).
    fn check_insert(&self, record: &KeyRecord) -> Result<(), StoreError> {
        if sync::read(self.shard(record.id)).contains_key(&record.id.as_u64()) {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        if let Some(l) = &record.legacy
            && sync::read(&self.legacy).contains_key(l.index.as_bytes())
        {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        Ok(())
    }

    /// Checks that `record` can replace the stored one (caller holds
    /// `owners`) and returns the stored one.
    fn check_replace(
        &self,
        record: &KeyRecord,
        expected: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        let stored = self
            .get_sync(record.id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound))?;
        if expected.is_some_and(|e| e != stored.revision) {
            return Err(StoreError::new(StoreErrorKind::Conflict));
        }
        if let Some(l) = &record.legacy
            && sync::read(&self.legacy)
                .get(l.index.as_bytes())
                .is_some_and(|holder| *holder != record.id)
        {
            return Err(StoreError::new(StoreErrorKind::IdCollision));
        }
        Ok(stored)
    }

    /// Writes a checked new record (caller holds `owners`).
    fn put_new(&self, owners: &mut OwnerMap, record: KeyRecord) {
        let id = record.id;
        let owner = record.owner.as_deref().map(|o| intern(owners, o));
        if let Some(o) = &owner {
            owners.entry(Arc::clone(o)).or_default().push(id);
        }
        if let Some(l) = &record.legacy {
            sync::write(&self.legacy).insert(*l.index.as_bytes(), id);
        }
        let view = Arc::new(KeyView::from_record_with(&record, owner));
        sync::write(self.shard(id)).insert(
            id.as_u64(),
            Slot {
                view,
                record: Box::new(record),
            },
        );
    }

    /// Writes a checked replacement (caller holds `owners`).
    fn replace(&self, owners: &mut OwnerMap, stored: &KeyRecord, record: KeyRecord) {
        let id = record.id;
        if stored.owner != record.owner {
            if let Some(old) = stored.owner.as_deref() {
                remove_owned(owners, old, id);
            }
            if let Some(new) = record.owner.as_deref() {
                let o = intern(owners, new);
                owners.entry(o).or_default().push(id);
            }
        }
        let owner = record.owner.as_deref().map(|o| intern(owners, o));
        if stored.legacy.as_ref().map(|l| l.index) != record.legacy.as_ref().map(|l| l.index) {
            let mut legacy = sync::write(&self.legacy);
            if let Some(l) = &stored.legacy {
                legacy.remove(l.index.as_bytes());
            }
            if let Some(l) = &record.legacy {
                legacy.insert(*l.index.as_bytes(), id);
            }
        }
        let view = Arc::new(KeyView::from_record_with(&record, owner));
        if let Some(slot) = sync::write(self.shard(id)).get_mut(&id.as_u64()) {
            slot.view = view;
            *slot.record = record;
        }
    }
}

/// `record` as a conditional write stores it: usage fields as stored,
/// revision `expected + 1`.
fn conditional(mut record: KeyRecord, stored: &KeyRecord, expected: u64) -> KeyRecord {
    record.usage = stored.usage;
    record.last_used_at = stored.last_used_at;
    record.revision = expected.wrapping_add(1);
    record
}

fn revoke_slot(slot: &mut Slot, revocation: &Revocation) -> bool {
    let r = &mut slot.record;
    if r.status == KeyStatus::Revoked {
        return false;
    }
    r.status = KeyStatus::Revoked;
    r.revocation = Some(revocation.clone());
    r.revision = r.revision.wrapping_add(1);
    slot.view = Arc::new(KeyView::from_record_with(r, slot.view.owner.clone()));
    true
}

fn sort_by_creation(records: &mut [KeyRecord]) {
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
}

/// The shared copy of an owner string (one allocation per owner).
fn intern(owners: &mut OwnerMap, owner: &str) -> Arc<str> {
    match owners.get_key_value(owner) {
        Some((k, _)) => Arc::clone(k),
        None => Arc::from(owner),
    }
}

fn remove_owned(owners: &mut OwnerMap, owner: &str, id: KeyId) {
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

impl KeyStoreQuery for MemoryStore {
    fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.list_expiring_sync(owner, &window)))
    }

    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.find_legacy_sync(index)))
    }
}

impl KeyStoreLifecycle for MemoryStore {
    fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<LimitedInsert, StoreError>> + Send {
        ready(self.insert_limited_sync(record, max, now))
    }

    fn update_if(
        &self,
        record: KeyRecord,
        expected: u64,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send {
        ready(self.update_if_sync(record, expected))
    }

    fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> impl Future<Output = Result<(KeyRecord, KeyRecord), StoreError>> + Send {
        ready(self.rotate_sync(predecessor, expected, successor))
    }

    fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
        ready(Ok(self.revoke_owner_sync(owner, &revocation)))
    }

    fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> impl Future<Output = Result<Vec<KeyId>, StoreError>> + Send {
        ready(Ok(self.revoke_matching_sync(prefix, &created, &revocation)))
    }

    fn record_usage(
        &self,
        batch: &[UsageDelta],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.record_usage_sync(batch);
        ready(Ok(()))
    }
}
