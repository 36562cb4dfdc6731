//! The in-memory [`MemoryStore`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::{Future, ready};
use std::hash::{BuildHasher, RandomState};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use std::ops::Range;

use time::OffsetDateTime;

use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::key::Prefix;
use crate::record::{KeyRecord, KeyStatus, KeyView, Owner, Revocation};
use crate::scope::ScopeSet;
use crate::store::idtable::IdTable;
use crate::store::{
    FlushId, FlushOutcome, KeyStore, KeyStoreLifecycle, KeyStoreQuery, KeyStoreWrite,
    LimitedInsert, LimitedUpdate, UsageBatch, UsageStore,
};
use crate::sync::{self, Mutex, RwLock};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Hashes a random 64-bit id with one multiply. Ids are drawn from a CSPRNG
/// and forged ids are stopped by the tag before any lookup, so a
/// DoS-resistant hasher buys nothing here.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

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

pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A thread-safe in-memory store, the default.
///
/// Records are spread over 64 shards, each behind its own `RwLock`, chosen
/// by the top bits of the id. A verification takes one shard's read lock for
/// the length of a hash lookup and an `Arc` clone, and holds no lock while
/// the verifier computes the digest; writes lock one shard (plus the owner
/// index) briefly, so they never block readers for long.
///
/// Each record is kept once, as the `Arc<KeyView>` that `fetch` returns (16
/// bytes of map entry per key); `get` and the listings rebuild the exact
/// [`KeyRecord`] from it. Owner strings and scope sets are interned: keys
/// with the same owner, or the same scopes, share one copy. At 1,000,000
/// keys with an owner, two scopes and an expiry the store takes about 190
/// bytes per key (`cargo bench --bench memory`); a key with recorded usage
/// or a later revision adds a 56-byte box, one with a name, description,
/// metadata or other rarely set fields a second one.
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
/// assert!(store.insert_sync(record.clone()).is_err()); // id collision: never overwritten
/// assert_eq!(store.len(), 1);
/// assert_eq!(store.list_by_owner_sync("u1"), vec![record]);
/// # Ok::<(), apikey::Error>(())
/// ```
pub struct MemoryStore {
    shards: Box<[RwLock<IdTable>]>,
    /// Owner index and interned scope sets. Every write holds this lock for
    /// its whole length, so writes are serialized (compound writes are
    /// atomic with respect to each other); `fetch` never takes it. Lock
    /// order: `owners`, then shards, then `legacy`.
    owners: Mutex<Index>,
    /// Legacy-key index: keyed hash -> id.
    legacy: RwLock<HashMap<[u8; 32], KeyId>>,
}

#[derive(Default)]
struct Index {
    /// The owner index: (keyed hash of the owner id, key id), one 16-byte
    /// entry per owned key and no per-owner allocation. Hash collisions are
    /// told apart by the owner the view holds.
    owned: BTreeSet<(u64, KeyId)>,
    /// Keys `owned`'s hashes (SipHash with random keys per store).
    hasher: RandomState,
    /// The one copy of each scope set in use.
    scopes: HashSet<Arc<ScopeSet>>,
    /// Size of `scopes` at which unused sets are next swept out.
    sweep_at: usize,
    /// Ids of the latest applied usage flushes (at most
    /// [`FLUSH_IDS_KEPT`]), oldest first, for exactly-once replays.
    flushes: std::collections::VecDeque<FlushId>,
}

/// How many applied flush ids `MemoryStore` remembers.
const FLUSH_IDS_KEPT: usize = 1024;

impl Index {
    fn owner_hash(&self, owner: &str) -> u64 {
        self.hasher.hash_one(owner)
    }

    /// Ids that may belong to `owner` (those whose owner hashes alike).
    fn candidates(&self, owner: &str) -> impl Iterator<Item = KeyId> + '_ {
        let h = self.owner_hash(owner);
        self.owned
            .range((h, KeyId::from_u64(0))..=(h, KeyId::from_u64(u64::MAX)))
            .map(|(_, id)| *id)
    }

    fn add_owned(&mut self, owner: &str, id: KeyId) {
        let h = self.owner_hash(owner);
        self.owned.insert((h, id));
    }

    fn remove_owned(&mut self, owner: &str, id: KeyId) {
        let h = self.owner_hash(owner);
        self.owned.remove(&(h, id));
    }

    /// The shared copy of a scope set. Sets no view uses any more are swept
    /// out whenever the table has doubled since the last sweep (amortized
    /// O(1) per insert).
    fn scopes(&mut self, scopes: &ScopeSet) -> Arc<ScopeSet> {
        if let Some(s) = self.scopes.get(scopes) {
            return Arc::clone(s);
        }
        if self.scopes.len() >= self.sweep_at {
            self.scopes.retain(|s| Arc::strong_count(s) > 1);
            self.sweep_at = (self.scopes.len() * 2).max(64);
        }
        let s = Arc::new(scopes.clone());
        self.scopes.insert(Arc::clone(&s));
        s
    }
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

fn corrupt(e: crate::Error) -> StoreError {
    StoreError::with_source(StoreErrorKind::Corrupt, e)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(IdTable::default()))
                .collect(),
            owners: Mutex::new(Index::default()),
            legacy: RwLock::new(HashMap::new()),
        }
    }

    #[inline]
    fn shard(&self, id: KeyId) -> &RwLock<IdTable> {
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
        Ok(sync::read(self.shard(id)).get(id.as_u64()).cloned())
    }

    /// The stored view, without rebuilding the record.
    fn view(&self, id: KeyId) -> Option<Arc<KeyView>> {
        sync::read(self.shard(id)).get(id.as_u64()).cloned()
    }

    /// The full record, synchronously.
    pub fn get_sync(&self, id: KeyId) -> Option<KeyRecord> {
        self.view(id).map(|v| v.to_record())
    }

    /// Records owned by `owner`, oldest first.
    pub fn list_by_owner_sync(&self, owner: &str) -> Vec<KeyRecord> {
        let ids = self.owned_ids(&sync::lock(&self.owners), owner);
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
        let mut index = sync::lock(&self.owners);
        self.check_insert(&record)?;
        self.put_new(&mut index, &record);
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
        let mut index = sync::lock(&self.owners);
        let stored = self.check_replace(&record, None)?;
        let revision = stored.revision().wrapping_add(1);
        // Usage fields belong to `record_usage`: a flush that landed between
        // the caller's read and this write is kept.
        let record = conditional(record, &stored, revision);
        self.replace(&mut index, &stored, &record);
        Ok(())
    }

    /// Deletes a record, synchronously; returns whether it existed. Clears
    /// the rotation links of its predecessor and successor.
    pub fn delete_sync(&self, id: KeyId) -> bool {
        let mut index = sync::lock(&self.owners);
        let removed = sync::write(self.shard(id)).remove(id.as_u64());
        let Some(view) = removed else {
            return false;
        };
        if let Some(o) = view.owner() {
            index.remove_owned(o, id);
        }
        if let Some(l) = view.legacy() {
            sync::write(&self.legacy).remove(l.index.as_bytes());
        }
        let cold = view.cold();
        for (other, is_successor) in [
            (cold.and_then(|c| c.rotated_to), true),
            (cold.and_then(|c| c.rotated_from), false),
        ] {
            let Some(other) = other else { continue };
            if let Some(slot) = sync::write(self.shard(other)).get_mut(other.as_u64()) {
                let mut record = slot.to_record();
                let link = if is_successor {
                    &mut record.rotated_from
                } else {
                    &mut record.rotated_to
                };
                if *link == Some(id) {
                    *link = None;
                    record.revision = record.revision.wrapping_add(1);
                    *slot = rebuilt(slot, &record);
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
        let mut index = sync::lock(&self.owners);
        self.check_insert(&record)?;
        if let Some(owner) = record.owner.as_deref() {
            let active = self.counting(&index, owner, now, None);
            if active >= max {
                return Ok(LimitedInsert::LimitReached { active });
            }
        }
        self.put_new(&mut index, &record);
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
        let mut index = sync::lock(&self.owners);
        let stored = self.check_replace(&record, Some(expected))?;
        let record = conditional(record, &stored, expected.wrapping_add(1));
        self.replace(&mut index, &stored, &record);
        Ok(record)
    }

    /// [`KeyStoreLifecycle::update_limited`], synchronously.
    ///
    /// # Errors
    /// As [`update_if_sync`](Self::update_if_sync).
    pub fn update_limited_sync(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        record.validate().map_err(corrupt)?;
        let mut index = sync::lock(&self.owners);
        let stored = self.check_replace(&record, Some(expected))?;
        if let Some(owner) = record.owner.as_deref()
            && record.counts_toward_limit(now)
            && !(stored.counts_toward_limit(now) && stored.owner() == Some(owner))
        {
            let active = self.counting(&index, owner, now, Some(record.id));
            if active >= max {
                return Ok(LimitedUpdate::LimitReached { active });
            }
        }
        let record = conditional(record, &stored, expected.wrapping_add(1));
        self.replace(&mut index, &stored, &record);
        Ok(LimitedUpdate::Updated(record))
    }

    /// Records of `owner` that count toward its limit at `now`, `except`
    /// one (caller holds `owners`).
    fn counting(
        &self,
        index: &Index,
        owner: &str,
        now: OffsetDateTime,
        except: Option<KeyId>,
    ) -> u32 {
        let n = index
            .candidates(owner)
            .filter(|id| Some(*id) != except)
            .filter(|id| {
                sync::read(self.shard(*id))
                    .get(id.as_u64())
                    .is_some_and(|v| v.owner() == Some(owner) && v.counts_toward_limit(now))
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
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
        let mut index = sync::lock(&self.owners);
        let stored = self.check_replace(&predecessor, Some(expected))?;
        self.check_insert(&successor)?;
        // The predecessor's own predecessor stops working now (see the
        // trait): computed and checked before anything is written.
        let ended = stored
            .cold()
            .and_then(|c| c.rotated_from)
            .filter(|g| *g != successor.id)
            .and_then(|g| self.view(g))
            .and_then(|g| end_grace(&g, predecessor.id, successor.created_at).map(|r| (g, r)));
        if let Some((_, r)) = &ended {
            r.validate().map_err(corrupt)?;
        }
        let predecessor = conditional(predecessor, &stored, expected.wrapping_add(1));
        self.replace(&mut index, &stored, &predecessor);
        self.put_new(&mut index, &successor);
        if let Some((g, r)) = ended {
            self.replace(&mut index, &g, &r);
        }
        Ok((predecessor, successor))
    }

    /// [`KeyStoreLifecycle::revoke_owner`], synchronously.
    pub fn revoke_owner_sync(&self, owner: &str, revocation: &Revocation) -> Vec<KeyId> {
        let index = sync::lock(&self.owners);
        let ids = self.owned_ids(&index, owner);
        let mut changed = Vec::new();
        for id in ids {
            let mut shard = sync::write(self.shard(id));
            if let Some(slot) = shard.get_mut(id.as_u64())
                && revoke_slot(slot, revocation)
            {
                changed.push((slot.created_at_exact(), id));
            }
        }
        drop(index);
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
        let index = sync::lock(&self.owners);
        let mut changed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = sync::write(shard);
            for slot in shard.values_mut() {
                let created_at = slot.created_at_exact();
                if slot.prefix() == prefix
                    && created.contains(&created_at)
                    && revoke_slot(slot, revocation)
                {
                    changed.push((created_at, slot.id));
                }
            }
        }
        drop(index);
        changed.sort();
        changed.into_iter().map(|(_, id)| id).collect()
    }

    /// [`UsageStore::record_usage`], synchronously. Remembers the ids of the
    /// latest 1,024 batches, so a replayed batch is applied once.
    pub fn record_usage_sync(&self, batch: &UsageBatch) -> FlushOutcome {
        let mut index = sync::lock(&self.owners);
        if index.flushes.contains(&batch.id) {
            return FlushOutcome::AlreadyApplied;
        }
        if index.flushes.len() >= FLUSH_IDS_KEPT {
            index.flushes.pop_front();
        }
        index.flushes.push_back(batch.id);
        for d in &batch.deltas {
            if let Some(slot) = sync::write(self.shard(d.id)).get_mut(d.id.as_u64()) {
                // In place unless a verification holds the view right now.
                let state = Arc::make_mut(slot).extra.get_or_insert_with(Box::default);
                state.usage.apply(d.day, d.count);
                state.last_used_at = Some(
                    state
                        .last_used_at
                        .map_or(d.last_used_at, |t| t.max(d.last_used_at)),
                );
            }
        }
        FlushOutcome::Applied
    }

    /// [`KeyStoreQuery::list_expiring`], synchronously.
    pub fn list_expiring_sync(
        &self,
        owner: Option<&str>,
        window: &Range<OffsetDateTime>,
    ) -> Vec<KeyRecord> {
        let mut out: Vec<KeyRecord> = match owner {
            Some(o) => self
                .list_by_owner_sync(o)
                .into_iter()
                .filter(|r| {
                    r.status != KeyStatus::Revoked
                        && r.expires_at.is_some_and(|e| window.contains(&e))
                })
                .collect(),
            None => self
                .shards
                .iter()
                .flat_map(|s| {
                    sync::read(s)
                        .values()
                        .filter(|v| {
                            v.status != KeyStatus::Revoked
                                && v.expires_at_exact().is_some_and(|e| window.contains(&e))
                        })
                        .map(|v| v.to_record())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        out.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        out
    }

    /// [`KeyStore::find_legacy`], synchronously.
    pub fn find_legacy_sync(&self, index: &KeyDigest) -> Option<KeyRecord> {
        let id = *sync::read(&self.legacy).get(index.as_bytes())?;
        self.get_sync(id)
    }

    /// Checks that `record` can be inserted (caller holds `owners`).
    fn check_insert(&self, record: &KeyRecord) -> Result<(), StoreError> {
        if sync::read(self.shard(record.id)).contains_key(record.id.as_u64()) {
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
    ) -> Result<Arc<KeyView>, StoreError> {
        let stored = self
            .view(record.id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound))?;
        if expected.is_some_and(|e| e != stored.revision()) {
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

    /// Ids of `owner`'s keys (caller holds `owners`).
    fn owned_ids(&self, index: &Index, owner: &str) -> Vec<KeyId> {
        index
            .candidates(owner)
            .filter(|id| {
                sync::read(self.shard(*id))
                    .get(id.as_u64())
                    .is_some_and(|v| v.owner() == Some(owner))
            })
            .collect()
    }

    /// `owner` as a view keeps it: inline when short, else the `Arc` a
    /// stored key of the same owner already holds (caller holds `owners`).
    fn owner_form(&self, index: &Index, owner: &str) -> Owner {
        if let Some(inline) = Owner::inline(owner) {
            return inline;
        }
        for id in index.candidates(owner) {
            if let Some(v) = sync::read(self.shard(id)).get(id.as_u64())
                && let Some(o @ Owner::Shared(_)) = &v.owner
                && o.as_str() == owner
            {
                return o.clone();
            }
        }
        Owner::Shared(Arc::from(owner))
    }

    /// The view of `record`, with shared owner and scopes (caller holds
    /// `owners`).
    fn make_view(&self, index: &mut Index, record: &KeyRecord) -> Arc<KeyView> {
        let owner = record.owner.as_deref().map(|o| self.owner_form(index, o));
        let scopes = index.scopes(&record.scopes);
        Arc::new(KeyView::build(record, owner, scopes))
    }

    /// Writes a checked new record (caller holds `owners`).
    fn put_new(&self, index: &mut Index, record: &KeyRecord) {
        let id = record.id;
        let view = self.make_view(index, record);
        if let Some(o) = view.owner() {
            index.add_owned(o, id);
        }
        if let Some(l) = &record.legacy {
            sync::write(&self.legacy).insert(*l.index.as_bytes(), id);
        }
        sync::write(self.shard(id)).insert(id.as_u64(), view);
    }

    /// Writes a checked replacement (caller holds `owners`).
    fn replace(&self, index: &mut Index, stored: &KeyView, record: &KeyRecord) {
        let id = record.id;
        let view = self.make_view(index, record);
        if stored.owner() != record.owner.as_deref() {
            if let Some(old) = stored.owner() {
                index.remove_owned(old, id);
            }
            if let Some(new) = view.owner() {
                index.add_owned(new, id);
            }
        }
        let old_legacy = stored.legacy().map(|l| l.index);
        if old_legacy != record.legacy.as_ref().map(|l| l.index) {
            let mut legacy = sync::write(&self.legacy);
            if let Some(l) = old_legacy {
                legacy.remove(l.as_bytes());
            }
            if let Some(l) = &record.legacy {
                legacy.insert(*l.index.as_bytes(), id);
            }
        }
        if let Some(slot) = sync::write(self.shard(id)).get_mut(id.as_u64()) {
            *slot = view;
        }
    }
}

/// `record` as a conditional write stores it: usage fields as stored,
/// revision `revision`.
fn conditional(mut record: KeyRecord, stored: &KeyView, revision: u64) -> KeyRecord {
    let state = stored.extra.as_deref();
    record.usage = state.map(|s| s.usage).unwrap_or_default();
    record.last_used_at = state.and_then(|s| s.last_used_at);
    record.revision = revision;
    record
}

/// The view of `record`, a changed copy of `old`'s record with the same
/// owner and scopes.
fn rebuilt(old: &KeyView, record: &KeyRecord) -> Arc<KeyView> {
    Arc::new(KeyView::build(
        record,
        old.owner.clone(),
        Arc::clone(&old.scopes),
    ))
}

/// The record of `view` with its grace period ended at `at`, when it is
/// still linked to `successor` and would otherwise work past `at`.
fn end_grace(view: &KeyView, successor: KeyId, at: OffsetDateTime) -> Option<KeyRecord> {
    if view.rotated_to() != Some(successor) || view.expires_at_exact().is_some_and(|e| e <= at) {
        return None;
    }
    let mut r = view.to_record();
    r.expires_at = Some(at);
    if r.not_before.is_some_and(|nb| nb >= at) {
        r.not_before = None;
    }
    r.revision = r.revision.wrapping_add(1);
    Some(r)
}

fn revoke_slot(slot: &mut Arc<KeyView>, revocation: &Revocation) -> bool {
    if slot.status == KeyStatus::Revoked {
        return false;
    }
    let mut r = slot.to_record();
    r.status = KeyStatus::Revoked;
    r.revocation = Some(revocation.clone());
    r.revision = r.revision.wrapping_add(1);
    *slot = rebuilt(slot, &r);
    true
}

fn sort_by_creation(records: &mut [KeyRecord]) {
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
}

impl KeyStore for MemoryStore {
    fn fetch(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<Arc<KeyView>>, StoreError>> + Send {
        ready(self.fetch_sync(id))
    }

    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.find_legacy_sync(index)))
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
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.get_sync(id)))
    }

    fn list_by_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.list_by_owner_sync(owner)))
    }

    fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.list_expiring_sync(owner, &window)))
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

    fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<LimitedUpdate, StoreError>> + Send {
        ready(self.update_limited_sync(record, expected, max, now))
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
}

impl UsageStore for MemoryStore {
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
        ready(Ok(self.record_usage_sync(batch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipnet::IpNet;
    use crate::record::LegacyInfo;
    use crate::store::UsageDelta;

    fn suite_now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap()
    }

    /// A record with a random id and digest, created a day before `suite_now`.
    fn sample_record(owner: Option<&str>) -> KeyRecord {
        use crate::OsRng;
        use rand_core::Rng;
        let mut digest = [0u8; 32];
        OsRng.fill_bytes(&mut digest);
        KeyRecord {
            schema_version: crate::record::SCHEMA_VERSION,
            id: KeyId::from_u64(OsRng.next_u64()),
            prefix: Prefix::new("sk_test_").unwrap(),
            environment: crate::key::Environment::Test,
            owner: owner.map(str::to_owned),
            name: "unit".into(),
            description: None,
            secret_version: 1,
            digest: KeyDigest::from_bytes(digest),
            scopes: crate::scope::ScopeSet::parse(["read"]).unwrap(),
            created_at: suite_now() - Duration::days(1),
            expires_at: None,
            not_before: None,
            status: KeyStatus::Active,
            revocation: None,
            last_used_at: None,
            metadata: Default::default(),
            rotated_from: None,
            rotated_to: None,
            revision: 0,
            ip_allowlist: Vec::new(),
            usage: Default::default(),
            legacy: None,
        }
    }
    use time::{Duration, UtcOffset};

    /// `get` must give back exactly what was inserted: `==` ignores UTC
    /// offsets, so compare the serialized form too.
    #[track_caller]
    fn assert_exact(store: &MemoryStore, record: &KeyRecord) {
        let back = store.get_sync(record.id).unwrap();
        assert_eq!(&back, record);
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(record).unwrap()
        );
    }

    #[test]
    fn records_round_trip_exactly() {
        let store = MemoryStore::new();
        let plus2 = UtcOffset::from_hms(2, 0, 0).unwrap();
        let mut cases = Vec::new();
        // Plain, and with nothing cold.
        let mut r = sample_record(Some("u1"));
        r.name = String::new();
        r.description = None;
        r.metadata.clear();
        cases.push(r);
        cases.push(sample_record(None));
        // Non-UTC offsets, sub-second precision.
        let mut r = sample_record(Some("u1"));
        r.created_at = (suite_now() + Duration::nanoseconds(123_456_789)).to_offset(plus2);
        r.not_before = Some(suite_now().to_offset(plus2));
        r.expires_at = Some((suite_now() + Duration::days(3)).to_offset(plus2));
        cases.push(r);
        // Exactly on the ends of the supported range, in UTC and not.
        let mut r = sample_record(Some("u2"));
        r.created_at = crate::clock::MIN_TIME;
        r.not_before = Some(crate::clock::MIN_TIME);
        r.expires_at = Some(crate::clock::MAX_TIME);
        cases.push(r);
        let mut r = sample_record(Some("u2"));
        r.created_at = crate::clock::MIN_TIME.to_offset(plus2);
        r.not_before = Some(crate::clock::MIN_TIME + Duration::nanoseconds(1));
        r.expires_at =
            Some(crate::clock::MAX_TIME.to_offset(UtcOffset::from_hms(-23, -59, 0).unwrap()));
        cases.push(r);
        // Outside it: refused, nothing written.
        for bad in [
            time::macros::datetime!(1500-01-01 0:00 UTC),
            crate::clock::MAX_TIME + Duration::MICROSECOND,
            time::macros::datetime!(9999-12-31 23:59:59 -23:59),
        ] {
            let mut r = sample_record(Some("u2"));
            r.expires_at = Some(bad);
            assert_eq!(
                store.insert_sync(r.clone()).unwrap_err().kind(),
                StoreErrorKind::Corrupt
            );
            assert!(store.get_sync(r.id).is_none());
        }
        // Every cold field set, usage and revision too.
        let mut r = sample_record(Some("u3"));
        r.status = KeyStatus::Revoked;
        r.revocation = Some(Revocation {
            at: suite_now().to_offset(plus2),
            reason: "leaked".into(),
        });
        r.rotated_from = Some(KeyId::from_u64(7));
        r.rotated_to = Some(KeyId::from_u64(8));
        r.revision = 41;
        r.last_used_at = Some(suite_now().to_offset(plus2));
        r.usage.apply(suite_now().date(), 3);
        r.ip_allowlist = vec!["10.0.0.0/8".parse::<IpNet>().unwrap()];
        r.legacy = Some(LegacyInfo::new(
            "old_",
            KeyDigest::from_bytes([5; 32]),
            1,
            true,
        ));
        r.scopes = ScopeSet::empty();
        cases.push(r);
        for r in &cases {
            store.insert_sync(r.clone()).unwrap();
        }
        for r in &cases {
            assert_exact(&store, r);
            let view = store.fetch_sync(r.id).unwrap().unwrap();
            assert_eq!(*view, KeyView::from_record(r));
            assert_eq!(view.not_before(), KeyView::from_record(r).not_before());
            assert_eq!(view.ip_allowlist(), r.ip_allowlist.as_slice());
            assert_eq!(view.metadata(), &r.metadata);
        }
    }

    #[test]
    fn views_are_compact() {
        #[cfg(target_pointer_width = "64")]
        assert!(
            std::mem::size_of::<KeyView>() <= 104,
            "KeyView grew to {} bytes",
            std::mem::size_of::<KeyView>()
        );
        #[cfg(target_pointer_width = "64")]
        assert!(std::mem::size_of::<crate::record::Extra>() <= 56);
    }

    #[test]
    fn owners_and_scope_sets_are_shared_and_swept() {
        let store = MemoryStore::new();
        let (a, b) = (sample_record(Some("u1")), sample_record(Some("u1")));
        store.insert_sync(a.clone()).unwrap();
        store.insert_sync(b.clone()).unwrap();
        let (va, vb) = (
            store.fetch_sync(a.id).unwrap().unwrap(),
            store.fetch_sync(b.id).unwrap().unwrap(),
        );
        assert!(Arc::ptr_eq(&va.scopes, &vb.scopes));
        // Short owner ids live inline in each view; long ones are shared.
        assert!(matches!(va.owner, Some(Owner::Inline(..))));
        let long = "organisation_with_a_long_identifier_0001";
        let (c, d) = (sample_record(Some(long)), sample_record(Some(long)));
        store.insert_sync(c.clone()).unwrap();
        store.insert_sync(d.clone()).unwrap();
        let (vc, vd) = (
            store.fetch_sync(c.id).unwrap().unwrap(),
            store.fetch_sync(d.id).unwrap().unwrap(),
        );
        match (&vc.owner, &vd.owner) {
            (Some(Owner::Shared(x)), Some(Owner::Shared(y))) => assert!(Arc::ptr_eq(x, y)),
            other => panic!("long owners are shared: {other:?}"),
        }
        assert_eq!(store.list_by_owner_sync(long).len(), 2);
        assert_eq!(store.list_by_owner_sync("u1").len(), 2);
        // Scope sets no record uses any more do not pile up.
        for round in 0..4 {
            let mut ids = Vec::new();
            for i in 0..300 {
                let mut r = sample_record(None);
                r.scopes = ScopeSet::parse([format!("s{round}x{i}")]).unwrap();
                ids.push(r.id);
                store.insert_sync(r).unwrap();
            }
            for id in ids {
                assert!(store.delete_sync(id));
            }
        }
        assert!(sync::lock(&store.owners).scopes.len() <= 700);
        assert_exact(&store, &a);
    }

    #[test]
    fn many_prefixes_round_trip() {
        // More distinct prefixes than the process-wide table holds.
        let store = MemoryStore::new();
        let mut records = Vec::new();
        for i in 0..300 {
            let mut r = sample_record(None);
            r.prefix = Prefix::new(&format!("p{i}_")).unwrap();
            store.insert_sync(r.clone()).unwrap();
            records.push(r);
        }
        for r in &records {
            assert_exact(&store, r);
        }
        let revoked = store.revoke_matching_sync(
            &Prefix::new("p299_").unwrap(),
            &(suite_now() - Duration::days(2)..suite_now()),
            &Revocation {
                at: suite_now(),
                reason: "r".into(),
            },
        );
        assert_eq!(revoked, vec![records[299].id]);
    }

    #[test]
    fn usage_flush_keeps_the_rest_of_the_record() {
        let store = MemoryStore::new();
        let r = sample_record(Some("u1"));
        store.insert_sync(r.clone()).unwrap();
        let held = store.fetch_sync(r.id).unwrap().unwrap();
        let at = suite_now() + Duration::hours(1);
        store.record_usage_sync(&UsageBatch::new(vec![UsageDelta {
            id: r.id,
            day: at.date(),
            count: 2,
            last_used_at: at,
        }]));
        let mut want = r.clone();
        want.usage.apply(at.date(), 2);
        want.last_used_at = Some(at);
        assert_exact(&store, &want);
        // The view a verification held is not changed under it.
        assert_eq!(*held, KeyView::from_record(&r));
    }
}
