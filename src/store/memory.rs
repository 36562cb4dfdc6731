use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::{Future, ready};
use std::hash::{BuildHasher, RandomState};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use std::ops::Range;

use super::idtable::IdTable;
use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::record::ScopeSet;
use crate::record::{KeyRecord, KeyView, LastUse, Owner};
use crate::store::{
    Changes, FlushId, FlushOutcome, KeyFilter, KeyQuery, KeyStore, KeyStoreQuery, KeyStoreWrite,
    Listing, UsageBatch, UsageStore,
};
use crate::sync::{self, Mutex, RwLock};
use crate::timestamp::Timestamp;

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
/// Every [`commit`](KeyStoreWrite::commit) holds the owner-index mutex for
/// its whole length, so commits are serialized and checked against owner
/// versions and revisions in one step; `fetch` never takes that mutex. A
/// commit checks everything before it changes anything, so a failed commit
/// changes nothing. The store holds no lifecycle rule: the
/// [`KeyManager`](crate::KeyManager) plans them.
///
/// Usage is kept as additive per-day rows (the latest 400 days of each
/// key) beside the records.
///
/// Besides the async trait methods it offers plain synchronous ones
/// (`*_sync`) for blocking code and fuzz harnesses.
///
/// ```
/// use apikey::*;
/// let store = MemoryStore::new();
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
/// let (key, record) = verifier.issue(NewKey::new("sk_live_").owner("u1"), apikey::Timestamp::MIN)?;
/// store.insert_sync(record.clone())?;
/// assert!(store.insert_sync(record.clone()).is_err()); // id collision: never overwritten
/// assert_eq!(store.len(), 1);
/// assert_eq!(store.list_by_owner_sync("u1"), vec![record]);
/// assert_eq!(store.list_sync(&store::KeyQuery::owner("u1")).owner_version, 0);
/// # Ok::<(), apikey::Error>(())
/// ```
pub struct MemoryStore {
    shards: Box<[RwLock<IdTable>]>,
    /// Owner index, owner versions, usage rows and interned scope sets.
    /// Every write holds this lock for its whole length, so commits are
    /// atomic with respect to each other; `fetch` never takes it. Lock
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
    /// Owner guard versions (owners never guarded are absent: 0).
    versions: HashMap<String, u64>,
    /// Per key, per UTC day: uses.
    usage: IdMap<BTreeMap<time::Date, u64>>,
}

/// How many days of usage rows `MemoryStore` keeps per key.
const USAGE_DAYS_KEPT: i64 = 400;

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

    /// Every record owned by `owner`, oldest first (all pages of
    /// [`list_sync`](Self::list_sync)).
    pub fn list_by_owner_sync(&self, owner: &str) -> Vec<KeyRecord> {
        let index = sync::lock(&self.owners);
        let q = KeyQuery::owner(owner).limit(u32::MAX);
        let mut out: Vec<KeyRecord> = self
            .owned_ids(&index, owner)
            .into_iter()
            .filter_map(|id| self.get_sync(id))
            .collect();
        out.sort_by_key(|r| (q.position(r).at, r.id));
        out
    }

    /// [`KeyStoreQuery::list`], synchronously. The owner version and the
    /// records are read under one lock: one snapshot.
    pub fn list_sync(&self, query: &KeyQuery) -> Listing {
        let index = sync::lock(&self.owners);
        let owner_version = match &query.filter {
            KeyFilter::Owner(o) => index.versions.get(o).copied().unwrap_or(0),
            _ => 0,
        };
        let records = match query.owner_of() {
            Some(o) => query.page(
                self.owned_ids(&index, o)
                    .into_iter()
                    .filter_map(|id| self.get_sync(id)),
            ),
            None => query.page(self.page_views(query)),
        };
        Listing {
            records,
            owner_version,
        }
    }

    /// Inserts a record, synchronously: a [`commit`](Self::commit_sync) of
    /// one insert.
    ///
    /// # Errors
    /// [`StoreErrorKind::IdCollision`] when the id (or the legacy index) is
    /// taken (nothing is written); [`StoreErrorKind::Corrupt`] when the
    /// record breaks its invariants.
    pub fn insert_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        let mut changes = Changes::new();
        changes.puts.push(crate::store::Put::insert(record));
        self.commit_sync(&changes)
    }

    /// Replaces a record over whatever revision is stored (tests and
    /// tools; the manager uses revision-checked commits): revision set to
    /// the stored one plus one, `last_used_at` kept.
    ///
    /// # Errors
    /// [`StoreErrorKind::NotFound`] when there is no such record;
    /// [`StoreErrorKind::Corrupt`] when the record breaks its invariants.
    pub fn update_sync(&self, record: KeyRecord) -> Result<(), StoreError> {
        let stored = self
            .view(record.id)
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound))?;
        let mut changes = Changes::new();
        changes
            .puts
            .push(crate::store::Put::update(record, stored.revision()));
        self.commit_sync(&changes)
    }

    /// Removes a record whatever its revision (tests and tools); returns
    /// whether it existed. Links to it are left as they are (the manager
    /// clears them in its commit).
    pub fn delete_sync(&self, id: KeyId) -> bool {
        let Some(stored) = self.view(id) else {
            return false;
        };
        let mut changes = Changes::new();
        changes.deletes.push(crate::store::Delete {
            id,
            expected: stored.revision(),
        });
        self.commit_sync(&changes).is_ok()
    }

    /// [`KeyStoreWrite::commit`], synchronously.
    ///
    /// # Errors
    /// As the trait: `Corrupt`, `Conflict`, `NotFound`, `IdCollision`;
    /// nothing is written then.
    pub fn commit_sync(&self, changes: &Changes) -> Result<(), StoreError> {
        changes.check()?;
        let mut index = sync::lock(&self.owners);
        let err = |k| Err(StoreError::new(k));
        for g in &changes.guards {
            if index.versions.get(&g.owner).copied().unwrap_or(0) != g.version {
                return err(StoreErrorKind::Conflict);
            }
        }
        // Every stored record this commit replaces or removes, checked.
        let mut stored = Vec::new();
        for (id, expected) in changes
            .puts
            .iter()
            .filter_map(|p| p.expected.map(|e| (p.record.id, e)))
            .chain(changes.deletes.iter().map(|d| (d.id, d.expected)))
        {
            let Some(v) = self.view(id) else {
                return err(StoreErrorKind::NotFound);
            };
            if v.revision() != expected {
                return err(StoreErrorKind::Conflict);
            }
            stored.push(v);
        }
        for p in changes.puts.iter().filter(|p| p.expected.is_none()) {
            if sync::read(self.shard(p.record.id)).contains_key(p.record.id.as_u64()) {
                return err(StoreErrorKind::IdCollision);
            }
        }
        // Legacy indexes after the commit: the ones this commit gives up
        // are free, the ones it sets must be free (and set once).
        let freed: HashSet<KeyId> = stored.iter().map(|v| v.id()).collect();
        let mut claimed = HashSet::new();
        {
            let legacy = sync::read(&self.legacy);
            for r in changes.puts.iter().map(|p| &p.record) {
                let Some(l) = &r.legacy else { continue };
                let held = legacy.get(l.index.as_bytes());
                if !claimed.insert(*l.index.as_bytes())
                    || held.is_some_and(|h| *h != r.id && !freed.contains(h))
                {
                    return err(StoreErrorKind::IdCollision);
                }
            }
        }
        // Checked: apply.
        for g in &changes.guards {
            index
                .versions
                .insert(g.owner.clone(), g.version.wrapping_add(1));
        }
        {
            let mut legacy = sync::write(&self.legacy);
            for v in &stored {
                if let Some(l) = v.legacy()
                    && legacy.get(l.index.as_bytes()) == Some(&v.id())
                {
                    legacy.remove(l.index.as_bytes());
                }
            }
            for r in changes.puts.iter().map(|p| &p.record) {
                if let Some(l) = &r.legacy {
                    legacy.insert(*l.index.as_bytes(), r.id);
                }
            }
        }
        for d in &changes.deletes {
            if let Some(view) = sync::write(self.shard(d.id)).remove(d.id.as_u64())
                && let Some(o) = view.owner()
            {
                index.remove_owned(o, d.id);
            }
            index.usage.remove(&d.id.as_u64());
        }
        for p in &changes.puts {
            match p.expected {
                None => self.put_new(&mut index, &p.record),
                Some(e) => {
                    let Some(old) = stored.iter().find(|v| v.id() == p.record.id) else {
                        continue;
                    };
                    let mut r = p.record.clone();
                    old.last_use_into(&mut r);
                    r.revision = e.wrapping_add(1);
                    self.replace(&mut index, old, &r);
                }
            }
        }
        Ok(())
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
                if d.supersedes(state.last_used_at) {
                    state.last_used_at = Some(d.last_used_at);
                    state.last_use = LastUse::of(d.last_used_ip, d.last_used_route.as_deref());
                }
            } else {
                continue;
            }
            let days = index.usage.entry(d.id.as_u64()).or_default();
            let n = days.entry(d.day).or_insert(0);
            *n = n.saturating_add(d.count);
            if let Some((&latest, _)) = days.last_key_value() {
                let keep = latest - time::Duration::days(USAGE_DAYS_KEPT);
                days.retain(|day, _| *day > keep);
            }
        }
        FlushOutcome::Applied
    }

    /// [`UsageStore::usage`], synchronously.
    pub fn usage_sync(&self, id: KeyId, days: Range<time::Date>) -> Vec<(time::Date, u64)> {
        let index = sync::lock(&self.owners);
        index.usage.get(&id.as_u64()).map_or_else(Vec::new, |rows| {
            rows.range(days).map(|(d, n)| (*d, *n)).collect()
        })
    }

    /// [`KeyStore::find_legacy`], synchronously.
    pub fn find_legacy_sync(&self, index: &KeyDigest) -> Option<KeyRecord> {
        let id = *sync::read(&self.legacy).get(index.as_bytes())?;
        self.get_sync(id)
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

    /// Writes a checked new record (caller holds `owners`; the legacy
    /// index is the caller's).
    fn put_new(&self, index: &mut Index, record: &KeyRecord) {
        let id = record.id;
        let view = self.make_view(index, record);
        if let Some(o) = view.owner() {
            index.add_owned(o, id);
        }
        sync::write(self.shard(id)).insert(id.as_u64(), view);
    }

    /// Writes a checked replacement (caller holds `owners`; the legacy
    /// index is the caller's).
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
        if let Some(slot) = sync::write(self.shard(id)).get_mut(id.as_u64()) {
            *slot = view;
        }
    }
}

impl MemoryStore {
    /// The records of one page of a listing that names no owner: the views
    /// are filtered and ordered by position first, and only the page's
    /// views are rebuilt into records (so paging through n keys costs O(n)
    /// per page, not n record rebuilds per page).
    fn page_views(&self, query: &KeyQuery) -> Vec<KeyRecord> {
        let position = |v: &KeyView| {
            let c = query.position_of(v.id(), v.created_at(), v.expires_at());
            (c.at, c.id)
        };
        let after = query.after.map(|c| (c.at, c.id));
        let mut views: Vec<((Timestamp, KeyId), Arc<KeyView>)> = self
            .shards
            .iter()
            .flat_map(|s| {
                sync::read(s)
                    .values()
                    .filter(|v| prefilter(query, v))
                    .map(|v| (position(v), Arc::clone(v)))
                    .filter(|(p, _)| after.is_none_or(|a| *p > a))
                    .collect::<Vec<_>>()
            })
            .collect();
        let n = query.page_size();
        if views.len() > n && n > 0 {
            views.select_nth_unstable_by_key(n - 1, |(p, _)| *p);
            views.truncate(n);
        }
        // `page` checks the whole filter on the records and orders them.
        views.into_iter().map(|(_, v)| v.to_record()).collect()
    }
}

/// A cheap test on the view before a record is rebuilt for the listing.
fn prefilter(query: &KeyQuery, v: &KeyView) -> bool {
    match &query.filter {
        KeyFilter::Owner(o) => v.owner() == Some(o.as_str()),
        KeyFilter::Expiring { window, .. } => {
            v.status != crate::record::KeyStatus::Revoked
                && v.expires_at().is_some_and(|e| window.contains(&e))
        }
        KeyFilter::Created { prefix, window } => {
            v.prefix() == prefix && window.contains(&v.created_at())
        }
    }
}

impl KeyStore for MemoryStore {
    /// A map lookup: not measured as a store call.
    const IN_PROCESS: bool = true;

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

impl KeyStoreQuery for MemoryStore {
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        ready(Ok(self.get_sync(id)))
    }

    fn list(&self, query: &KeyQuery) -> impl Future<Output = Result<Listing, StoreError>> + Send {
        ready(Ok(self.list_sync(query)))
    }
}

impl KeyStoreWrite for MemoryStore {
    fn commit(&self, changes: &Changes) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.commit_sync(changes))
    }
}

impl UsageStore for MemoryStore {
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
        ready(Ok(self.record_usage_sync(batch)))
    }

    fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> impl Future<Output = Result<Vec<(time::Date, u64)>, StoreError>> + Send {
        ready(Ok(self.usage_sync(id, days)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use crate::key::Prefix;
    use crate::record::IpNet;
    use crate::record::{KeyStatus, LegacyInfo, Revocation};
    use crate::store::UsageDelta;

    fn suite_now() -> Timestamp {
        Timestamp::from_unix_secs(1_893_456_000).unwrap()
    }

    /// A record with a random id and digest, created a day before `suite_now`.
    fn sample_record(owner: Option<&str>) -> KeyRecord {
        use crate::OsRng;
        use rand_core::Rng;
        let mut digest = [0u8; 32];
        OsRng.fill_bytes(&mut digest);
        KeyRecord {
            schema_version: crate::record::KeyRecord::SCHEMA_VERSION,
            id: KeyId::from_u64(OsRng.next_u64()),
            prefix: Prefix::new("sk_test_").unwrap(),
            environment: crate::key::Environment::Test,
            owner: owner.map(str::to_owned),
            name: "unit".into(),
            description: None,
            secret_version: 1,
            digest: KeyDigest::from_bytes(digest),
            scopes: crate::record::ScopeSet::parse(["read"]).unwrap(),
            created_at: suite_now() - Duration::from_secs(86_400),
            expires_at: None,
            not_before: None,
            status: KeyStatus::Active,
            revocation: None,
            last_used_at: None,
            last_used_ip: None,
            last_used_route: None,
            metadata: Default::default(),
            rotated_from: None,
            rotated_to: None,
            revision: 0,
            ip_allowlist: Vec::new(),
            legacy: None,
        }
    }
    use std::time::Duration;

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
        let mut cases = Vec::new();
        // Plain, and with nothing cold.
        let mut r = sample_record(Some("u1"));
        r.name = String::new();
        r.description = None;
        r.metadata.clear();
        cases.push(r);
        cases.push(sample_record(None));
        // Sub-second precision.
        let mut r = sample_record(Some("u1"));
        r.created_at = suite_now() + Duration::from_micros(123_456);
        r.not_before = Some(suite_now());
        r.expires_at = Some(suite_now() + Duration::from_secs(3 * 86_400));
        cases.push(r);
        // Exactly on the ends of the supported range.
        let mut r = sample_record(Some("u2"));
        r.created_at = Timestamp::MIN;
        r.not_before = Some(Timestamp::MIN);
        r.expires_at = Some(Timestamp::MAX);
        cases.push(r);
        // Every cold field set, usage and revision too.
        let mut r = sample_record(Some("u3"));
        r.status = KeyStatus::Revoked;
        r.revocation = Some(Revocation {
            at: suite_now(),
            reason: "leaked".into(),
        });
        r.rotated_from = Some(KeyId::from_u64(7));
        r.rotated_to = Some(KeyId::from_u64(8));
        r.revision = 41;
        r.last_used_at = Some(suite_now());
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
        let listed = store.list_sync(&KeyQuery::created(
            Prefix::new("p299_").unwrap(),
            suite_now() - Duration::from_secs(2 * 86_400)..suite_now(),
        ));
        assert_eq!(listed.records, vec![records[299].clone()]);
    }

    #[test]
    fn usage_flush_keeps_the_rest_of_the_record() {
        let store = MemoryStore::new();
        let r = sample_record(Some("u1"));
        store.insert_sync(r.clone()).unwrap();
        let held = store.fetch_sync(r.id).unwrap().unwrap();
        let at = suite_now() + Duration::from_secs(3_600);
        let ip = "2001:db8::7".parse().ok();
        store.record_usage_sync(&UsageBatch::new(vec![
            UsageDelta::new(r.id, at.utc_date(), 2, at).from(ip, Some("GET /v1/a".into())),
        ]));
        let mut want = r.clone();
        want.last_used_at = Some(at);
        want.last_used_ip = ip;
        want.last_used_route = Some("GET /v1/a".into());
        assert_exact(&store, &want);
        let day = at.utc_date();
        assert_eq!(
            store.usage_sync(r.id, day..day.next_day().unwrap()),
            vec![(day, 2)]
        );
        // The view a verification held is not changed under it.
        assert_eq!(*held, KeyView::from_record(&r));
    }
}
