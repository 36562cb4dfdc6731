//! A complete key store written outside the crate, against public API only:
//! `BTreeStore`, a `Mutex<BTreeMap>` with an owner index, a legacy index and
//! the ids of applied usage flushes. It implements every store trait
//! (`KeyStore`, `KeyStoreQuery`, `KeyStoreWrite`, `KeyStoreLifecycle`,
//! `UsageStore`) with plain `async fn`, and `tests/custom_store.rs` runs the
//! whole conformance suite of `apikey-testkit` against it.
//!
//! Every method takes the one lock, checks everything, then changes
//! everything, and never awaits while holding it: so each write is atomic and
//! all-or-nothing, the way one SQL transaction per method would be.
//!
//! Run with `cargo run --example custom_store`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use apikey::{
    FlushId, FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStatus, KeyStore, KeyStoreLifecycle,
    KeyStoreQuery, KeyStoreWrite, KeyView, LimitedInsert, LimitedUpdate, Prefix, Revocation,
    StoreError, StoreErrorKind, UsageBatch, UsageStore,
};
use time::OffsetDateTime;

/// How many applied flush ids the store remembers (the contract allows
/// forgetting ids older than a day; a bounded count is simpler).
const FLUSH_IDS_KEPT: usize = 4096;

/// A thread-safe in-memory store built on `BTreeMap`s, with a failure
/// switch for tests ([`set_failing`](Self::set_failing)).
pub struct BTreeStore {
    state: Mutex<State>,
    failing: AtomicBool,
}

/// Everything behind the lock: the rows and their indexes.
#[derive(Default)]
struct State {
    rows: BTreeMap<KeyId, Row>,
    /// Owner -> (created_at, id): "oldest first, ties by id" is index order.
    by_owner: BTreeMap<String, BTreeSet<(OffsetDateTime, KeyId)>>,
    /// Legacy index (unique) -> id.
    by_legacy: BTreeMap<[u8; 32], KeyId>,
    /// Applied flush ids, and the same ids oldest first for eviction.
    flushes: BTreeSet<FlushId>,
    flush_order: VecDeque<FlushId>,
}

/// One stored record and the view `fetch` hands out (rebuilt on each write,
/// so the hot path is a map lookup and an `Arc` clone).
struct Row {
    record: KeyRecord,
    view: Arc<KeyView>,
}

impl Row {
    fn new(record: KeyRecord) -> Self {
        let view = Arc::new(KeyView::from_record(&record));
        Self { record, view }
    }
}

fn error(kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind)
}

/// The record's own invariants (times in range, revocation matches status,
/// versions in range): a record that breaks them is `Corrupt`.
fn check_valid(record: &KeyRecord) -> Result<(), StoreError> {
    record
        .validate()
        .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))
}

/// `record` as a replacing write stores it: the usage fields as stored
/// (they belong to `record_usage`) and `revision`.
fn as_replacement(mut record: KeyRecord, stored: &KeyRecord, revision: u64) -> KeyRecord {
    record.usage = stored.usage;
    record.last_used_at = stored.last_used_at;
    record.revision = revision;
    record
}

impl State {
    fn record(&self, id: KeyId) -> Option<&KeyRecord> {
        self.rows.get(&id).map(|row| &row.record)
    }

    /// Writes an already checked record, new or replacing, and keeps the
    /// indexes in step.
    fn put(&mut self, record: KeyRecord) {
        self.unindex(record.id);
        if let Some(owner) = &record.owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert((record.created_at, record.id));
        }
        if let Some(legacy) = &record.legacy {
            self.by_legacy.insert(*legacy.index.as_bytes(), record.id);
        }
        self.rows.insert(record.id, Row::new(record));
    }

    /// Removes record `id` from the indexes (not from `rows`).
    fn unindex(&mut self, id: KeyId) {
        let Some(old) = self.rows.get(&id).map(|row| &row.record) else {
            return;
        };
        if let Some(owner) = &old.owner
            && let Some(ids) = self.by_owner.get_mut(owner)
        {
            ids.remove(&(old.created_at, id));
            if ids.is_empty() {
                self.by_owner.remove(owner);
            }
        }
        if let Some(legacy) = &old.legacy {
            self.by_legacy.remove(legacy.index.as_bytes());
        }
    }

    /// Whether another record than `id` holds `record`'s legacy index.
    fn legacy_taken(&self, record: &KeyRecord) -> bool {
        record.legacy.as_ref().is_some_and(|l| {
            self.by_legacy
                .get(l.index.as_bytes())
                .is_some_and(|holder| *holder != record.id)
        })
    }

    /// Checks that `record` can be inserted.
    fn check_new(&self, record: &KeyRecord) -> Result<(), StoreError> {
        check_valid(record)?;
        if self.rows.contains_key(&record.id) || self.legacy_taken(record) {
            return Err(error(StoreErrorKind::IdCollision));
        }
        Ok(())
    }

    /// Checks that `record` can replace the stored one (at revision
    /// `expected`, when given) and returns what the write stores.
    fn check_replace(
        &self,
        record: KeyRecord,
        expected: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        check_valid(&record)?;
        let stored = self
            .record(record.id)
            .ok_or_else(|| error(StoreErrorKind::NotFound))?;
        if expected.is_some_and(|e| e != stored.revision) {
            return Err(error(StoreErrorKind::Conflict));
        }
        if self.legacy_taken(&record) {
            return Err(error(StoreErrorKind::IdCollision));
        }
        let revision = stored.revision.wrapping_add(1);
        Ok(as_replacement(record, stored, revision))
    }

    /// Records of `owner` other than `except` that count toward its limit.
    fn counting(&self, owner: &str, now: OffsetDateTime, except: Option<KeyId>) -> u32 {
        let n = self.by_owner.get(owner).map_or(0, |ids| {
            ids.iter()
                .filter(|(_, id)| Some(*id) != except)
                .filter_map(|(_, id)| self.record(*id))
                .filter(|r| r.counts_toward_limit(now))
                .count()
        });
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn insert(&mut self, record: KeyRecord) -> Result<(), StoreError> {
        self.check_new(&record)?;
        self.put(record);
        Ok(())
    }

    fn update(&mut self, record: KeyRecord) -> Result<(), StoreError> {
        let record = self.check_replace(record, None)?;
        self.put(record);
        Ok(())
    }

    fn delete(&mut self, id: KeyId) -> bool {
        self.unindex(id);
        let Some(gone) = self.rows.remove(&id) else {
            return false;
        };
        // Clear the links to it: its successor's `rotated_from` and its
        // predecessor's `rotated_to` (each a write: revision + 1).
        let successor = gone.record.rotated_to.and_then(|s| self.record(s)).cloned();
        if let Some(mut r) = successor.filter(|r| r.rotated_from == Some(id)) {
            r.rotated_from = None;
            r.revision = r.revision.wrapping_add(1);
            self.put(r);
        }
        let predecessor = gone
            .record
            .rotated_from
            .and_then(|p| self.record(p))
            .cloned();
        if let Some(mut r) = predecessor.filter(|r| r.rotated_to == Some(id)) {
            r.rotated_to = None;
            r.revision = r.revision.wrapping_add(1);
            self.put(r);
        }
        true
    }

    fn insert_limited(
        &mut self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        self.check_new(&record)?;
        if let Some(owner) = &record.owner {
            let active = self.counting(owner, now, None);
            if active >= max {
                return Ok(LimitedInsert::LimitReached { active });
            }
        }
        self.put(record);
        Ok(LimitedInsert::Inserted)
    }

    fn update_if(&mut self, record: KeyRecord, expected: u64) -> Result<KeyRecord, StoreError> {
        let record = self.check_replace(record, Some(expected))?;
        self.put(record.clone());
        Ok(record)
    }

    fn update_limited(
        &mut self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        let record = self.check_replace(record, Some(expected))?;
        let counted_before = self
            .record(record.id)
            .is_some_and(|s| s.counts_toward_limit(now) && s.owner == record.owner);
        if let Some(owner) = &record.owner
            && record.counts_toward_limit(now)
            && !counted_before
        {
            let active = self.counting(owner, now, Some(record.id));
            if active >= max {
                return Ok(LimitedUpdate::LimitReached { active });
            }
        }
        self.put(record.clone());
        Ok(LimitedUpdate::Updated(record))
    }

    fn rotate(
        &mut self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let same_legacy = match (&predecessor.legacy, &successor.legacy) {
            (Some(a), Some(b)) => a.index == b.index,
            _ => false,
        };
        if predecessor.id == successor.id || same_legacy {
            return Err(error(StoreErrorKind::IdCollision));
        }
        // The stored predecessor's own predecessor, read before the write.
        let grandparent = self.record(predecessor.id).and_then(|s| s.rotated_from);
        let predecessor = self.check_replace(predecessor, Some(expected))?;
        self.check_new(&successor)?;
        // Its grace ends at the rotation time, if it still points back and
        // would otherwise work past it.
        let at = successor.created_at;
        let ended = grandparent
            .filter(|g| *g != successor.id && *g != predecessor.id)
            .and_then(|g| self.record(g))
            .filter(|g| g.rotated_to == Some(predecessor.id))
            .filter(|g| g.expires_at.is_none_or(|e| e > at))
            .map(|g| {
                let mut g = g.clone();
                g.expires_at = Some(at);
                if g.not_before.is_some_and(|nb| nb >= at) {
                    g.not_before = None;
                }
                g.revision = g.revision.wrapping_add(1);
                g
            });
        if let Some(g) = &ended {
            check_valid(g)?;
        }
        self.put(predecessor.clone());
        self.put(successor.clone());
        if let Some(g) = ended {
            self.put(g);
        }
        Ok((predecessor, successor))
    }

    /// Revokes each of `ids` that is not revoked yet; returns the ids
    /// changed, oldest first.
    fn revoke(&mut self, ids: Vec<KeyId>, revocation: &Revocation) -> Vec<KeyId> {
        let changed: Vec<KeyRecord> = ids
            .into_iter()
            .filter_map(|id| self.record(id))
            .filter(|r| r.status != KeyStatus::Revoked)
            .cloned()
            .collect();
        let mut order: Vec<(OffsetDateTime, KeyId)> =
            changed.iter().map(|r| (r.created_at, r.id)).collect();
        order.sort();
        for mut r in changed {
            r.status = KeyStatus::Revoked;
            r.revocation = Some(revocation.clone());
            r.revision = r.revision.wrapping_add(1);
            self.put(r);
        }
        order.into_iter().map(|(_, id)| id).collect()
    }

    fn owned_ids(&self, owner: &str) -> Vec<KeyId> {
        self.by_owner
            .get(owner)
            .map(|ids| ids.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }

    fn record_usage(&mut self, batch: &UsageBatch) -> FlushOutcome {
        if self.flushes.contains(&batch.id) {
            return FlushOutcome::AlreadyApplied;
        }
        for d in &batch.deltas {
            // Deleted keys are skipped.
            let Some(mut r) = self.record(d.id).cloned() else {
                continue;
            };
            r.usage.apply(d.day, d.count);
            r.last_used_at = Some(
                r.last_used_at
                    .map_or(d.last_used_at, |t| t.max(d.last_used_at)),
            );
            // Usage changes no other field and not the revision.
            self.rows.insert(r.id, Row::new(r));
        }
        if self.flush_order.len() >= FLUSH_IDS_KEPT
            && let Some(oldest) = self.flush_order.pop_front()
        {
            self.flushes.remove(&oldest);
        }
        self.flushes.insert(batch.id);
        self.flush_order.push_back(batch.id);
        FlushOutcome::Applied
    }
}

impl BTreeStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            failing: AtomicBool::new(false),
        }
    }

    /// While `on`, every call fails with [`StoreErrorKind::Unavailable`]
    /// and changes nothing (a cut network, for tests).
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rows
            .len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` under the lock, unless the store is failing. Nothing here
    /// panics while holding the lock and every write checks before it
    /// changes anything, so a poisoned lock still holds consistent state.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(error(StoreErrorKind::Unavailable));
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(f(&mut state))
    }
}

impl Default for BTreeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BTreeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BTreeStore")
            .field("len", &self.len())
            .field("failing", &self.failing.load(Ordering::SeqCst))
            .finish()
    }
}

impl KeyStore for BTreeStore {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.with(|s| s.rows.get(&id).map(|row| Arc::clone(&row.view)))
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|s| {
            let id = s.by_legacy.get(index.as_bytes())?;
            s.record(*id).cloned()
        })
    }
}

impl KeyStoreQuery for BTreeStore {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|s| s.record(id).cloned())
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|s| {
            s.owned_ids(owner)
                .into_iter()
                .filter_map(|id| s.record(id).cloned())
                .collect()
        })
    }

    async fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|s| {
            let mut out: Vec<KeyRecord> = s
                .rows
                .values()
                .map(|row| &row.record)
                .filter(|r| owner.is_none_or(|o| r.owner.as_deref() == Some(o)))
                .filter(|r| r.status != KeyStatus::Revoked)
                .filter(|r| r.expires_at.is_some_and(|e| window.contains(&e)))
                .cloned()
                .collect();
            out.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
            out
        })
    }
}

impl KeyStoreWrite for BTreeStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.with(|s| s.insert(record))?
    }

    async fn update(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.with(|s| s.update(record))?
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.with(|s| s.delete(id))
    }
}

impl KeyStoreLifecycle for BTreeStore {
    async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        self.with(|s| s.insert_limited(record, max, now))?
    }

    async fn update_if(&self, record: KeyRecord, expected: u64) -> Result<KeyRecord, StoreError> {
        self.with(|s| s.update_if(record, expected))?
    }

    async fn update_limited(
        &self,
        record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        self.with(|s| s.update_limited(record, expected, max, now))?
    }

    async fn rotate(
        &self,
        predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        self.with(|s| s.rotate(predecessor, expected, successor))?
    }

    async fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.with(|s| {
            let ids = s.owned_ids(owner);
            s.revoke(ids, &revocation)
        })
    }

    async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.with(|s| {
            let ids = s
                .rows
                .values()
                .map(|row| &row.record)
                .filter(|r| r.prefix == *prefix && created.contains(&r.created_at))
                .map(|r| r.id)
                .collect();
            s.revoke(ids, &revocation)
        })
    }
}

impl UsageStore for BTreeStore {
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        self.with(|s| s.record_usage(batch))
    }
}

// ----- the demonstration -----

/// Creates, authenticates, flushes usage, rotates and revokes a key through
/// a `KeyManager` over a `BTreeStore`, printing what happens.
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use apikey::{
        Actor, Clock, KeyManager, Keyring, ManualClock, NewKey, Requirement, Rotation,
        ServerSecret, Verifier,
    };
    use time::{Duration, macros::datetime};

    let verifier = Verifier::new(Keyring::new(1, ServerSecret::generate())?);
    let clock = ManualClock::new(datetime!(2026-06-01 9:00 UTC));
    let manager = KeyManager::with_clock(verifier, BTreeStore::new(), clock.clone())
        .with_max_keys_per_owner(2);
    let admin = Actor::new("admin_1").reason("custom store demo");
    let read = Requirement::scope("tasks:read")?;

    let (key, summary) = manager
        .create(
            NewKey::new("kwi_sk_")
                .owner("user_42")
                .name("CI")
                .scopes(["tasks:read"]),
            &admin,
        )
        .await?;
    println!("created {} in a {:?}", summary.display, manager.store());

    for _ in 0..3 {
        manager
            .authenticate(key.expose_secret(), &read, None)
            .await?;
    }
    let written = manager.flush().await?;
    let record = manager.record(summary.id).await?;
    println!(
        "authenticated 3 times; flushed {written} uses; stored: {} today, last used {}",
        record.usage.today(clock.now().date()),
        record
            .last_used_at
            .map_or_else(|| "never".to_owned(), |t| t.to_string()),
    );

    let (new_key, new_summary) = manager
        .rotate(summary.id, Rotation::with_grace(Duration::hours(1)), &admin)
        .await?;
    println!("rotated {} -> {}", summary.display, new_summary.display);
    clock.advance(Duration::hours(2));
    let old = manager.authenticate(key.expose_secret(), &read, None).await;
    println!(
        "old key 2 h later: {}",
        old.map_or_else(|e| e.code().as_str(), |_| "OK")
    );
    manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await?;
    println!("new key: OK");

    let revoked = manager.revoke_owner("user_42", "demo over", &admin).await?;
    let gone = manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await;
    println!(
        "revoked {} key(s) of user_42; new key now: {}",
        revoked.len(),
        gone.map_or_else(|e| e.code().as_str(), |_| "OK")
    );

    manager.store().set_failing(true);
    let down = manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await;
    println!(
        "with the store failing: {}",
        down.map_or_else(|e| e.code().as_str(), |_| "OK")
    );
    manager.store().set_failing(false);

    manager.shutdown().await?;
    for k in manager.list("user_42").await? {
        println!("  {} {:?} state={:?}", k.display, k.name, k.state);
    }
    Ok(())
}
