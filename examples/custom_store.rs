//! A complete key store written outside the crate, against public API only:
//! `BTreeStore`, a `Mutex<BTreeMap>` with an owner index, owner versions, a
//! legacy index, per-day usage rows and the ids of applied usage flushes.
//! It implements every store trait (`KeyStore`, `KeyStoreQuery`,
//! `KeyStoreWrite`, `UsageStore`: six required methods plus `find_legacy`)
//! with plain `async fn`, and `tests/custom_store.rs` runs the whole
//! conformance suite of `apikey-testkit` against it, the `KeyManager`'s
//! rules included.
//!
//! The store holds no lifecycle rule (no owner limit, no rotation chain):
//! `commit` takes the one lock, checks everything, then changes everything,
//! and never awaits while holding it, so each commit is atomic and
//! all-or-nothing, the way one SQL transaction would be.
//!
//! Run with `cargo run --example custom_store`.

// ----- store code: from here to the end-of-store marker -----
use apikey::Timestamp;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use apikey::{
    Changes, FlushId, FlushOutcome, KeyDigest, KeyId, KeyQuery, KeyRecord, KeyStore, KeyStoreQuery,
    KeyStoreWrite, KeyView, Listing, StoreError, StoreErrorKind, UsageBatch, UsageStore,
};
use time::Date;

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
    /// Owner -> ids of its records.
    by_owner: BTreeMap<String, BTreeSet<KeyId>>,
    /// Owner guard versions (absent: 0).
    versions: BTreeMap<String, u64>,
    /// Legacy index (unique) -> id.
    by_legacy: BTreeMap<[u8; 32], KeyId>,
    /// (key, UTC day) -> uses.
    usage: BTreeMap<(KeyId, Date), u64>,
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

fn error(kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind)
}

impl State {
    /// Every check of a commit, before anything changes.
    fn check(&self, c: &Changes) -> Result<(), StoreError> {
        c.check()?; // item limit, one id twice, invalid records: Corrupt
        for g in &c.guards {
            if self.versions.get(&g.owner).copied().unwrap_or(0) != g.version {
                return Err(error(StoreErrorKind::Conflict));
            }
        }
        let replaced = c
            .puts
            .iter()
            .filter_map(|p| Some((p.record.id, p.expected?)));
        for (id, expected) in replaced.chain(c.deletes.iter().map(|d| (d.id, d.expected))) {
            match self.rows.get(&id) {
                None => return Err(error(StoreErrorKind::NotFound)),
                Some(row) if row.record.revision != expected => {
                    return Err(error(StoreErrorKind::Conflict));
                }
                Some(_) => {}
            }
        }
        let touched: HashSet<KeyId> = c.puts.iter().map(|p| p.record.id).collect();
        let gone: HashSet<KeyId> = c.deletes.iter().map(|d| d.id).collect();
        let mut claimed = HashSet::new();
        for p in &c.puts {
            if p.expected.is_none() && self.rows.contains_key(&p.record.id) {
                return Err(error(StoreErrorKind::IdCollision));
            }
            if let Some(l) = &p.record.legacy {
                let held = self.by_legacy.get(l.index.as_bytes());
                let free = held.is_none_or(|h| touched.contains(h) || gone.contains(h));
                if !free || !claimed.insert(*l.index.as_bytes()) {
                    return Err(error(StoreErrorKind::IdCollision));
                }
            }
        }
        Ok(())
    }

    fn remove(&mut self, id: KeyId) -> Option<KeyRecord> {
        let row = self.rows.remove(&id)?;
        if let Some(owner) = &row.record.owner {
            self.by_owner.entry(owner.clone()).or_default().remove(&id);
        }
        if let Some(l) = &row.record.legacy {
            self.by_legacy.remove(l.index.as_bytes());
        }
        Some(row.record)
    }

    fn put(&mut self, record: KeyRecord) {
        if let Some(owner) = &record.owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(record.id);
        }
        if let Some(l) = &record.legacy {
            self.by_legacy.insert(*l.index.as_bytes(), record.id);
        }
        let view = Arc::new(KeyView::from_record(&record));
        self.rows.insert(record.id, Row { record, view });
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

    /// Makes every following call fail with `Unavailable` (`true`), or work
    /// again (`false`): for tests of error paths.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// The lock, or the failure a down database would give. A poisoned lock
    /// is taken over: every commit checks before it changes anything, so a
    /// panic mid-call never leaves a half-applied commit behind.
    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::with_source(
                StoreErrorKind::Unavailable,
                std::io::Error::other("BTreeStore is set to fail"),
            ));
        }
        Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl KeyStore for BTreeStore {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        Ok(self.state()?.rows.get(&id).map(|row| Arc::clone(&row.view)))
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        let state = self.state()?;
        let id = state.by_legacy.get(index.as_bytes());
        Ok(id
            .and_then(|id| state.rows.get(id))
            .map(|row| row.record.clone()))
    }
}

impl KeyStoreQuery for BTreeStore {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.state()?.rows.get(&id).map(|row| row.record.clone()))
    }

    /// The owner version and the records under one lock: one snapshot.
    /// `KeyQuery::page` filters, orders and cuts the candidates.
    async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        let state = self.state()?;
        let owner = query.owner_of();
        let candidates: Vec<KeyRecord> = match owner.and_then(|o| state.by_owner.get(o)) {
            Some(ids) => ids
                .iter()
                .filter_map(|id| state.rows.get(id))
                .map(|r| r.record.clone())
                .collect(),
            None if owner.is_some() => Vec::new(),
            None => state.rows.values().map(|row| row.record.clone()).collect(),
        };
        let owner_version = match &query.filter {
            apikey::KeyFilter::Owner(o) => state.versions.get(o).copied().unwrap_or(0),
            _ => 0,
        };
        Ok(Listing {
            records: query.page(candidates),
            owner_version,
        })
    }
}

impl KeyStoreWrite for BTreeStore {
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let mut state = self.state()?;
        state.check(changes)?;
        for g in &changes.guards {
            state.versions.insert(g.owner.clone(), g.version + 1);
        }
        for d in &changes.deletes {
            state.remove(d.id);
            state.usage.retain(|(id, _), _| *id != d.id);
        }
        // Replaced records leave every index before any put claims it.
        let mut stored = BTreeMap::new();
        for p in changes.puts.iter().filter(|p| p.expected.is_some()) {
            stored.extend(state.remove(p.record.id).map(|r| (r.id, r)));
        }
        for p in &changes.puts {
            let mut record = p.record.clone();
            if let (Some(expected), Some(old)) = (p.expected, stored.get(&record.id)) {
                record.keep_last_use(old); // usage owns it
                record.revision = expected + 1;
            }
            state.put(record);
        }
        Ok(())
    }
}

impl UsageStore for BTreeStore {
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        let mut state = self.state()?;
        if !state.flushes.insert(batch.id) {
            return Ok(FlushOutcome::AlreadyApplied);
        }
        state.flush_order.push_back(batch.id);
        if state.flush_order.len() > FLUSH_IDS_KEPT
            && let Some(old) = state.flush_order.pop_front()
        {
            state.flushes.remove(&old);
        }
        for d in &batch.deltas {
            let Some(row) = state.rows.get_mut(&d.id) else {
                continue;
            };
            d.apply_to(&mut row.record);
            *state.usage.entry((d.id, d.day)).or_insert(0) += d.count;
        }
        Ok(FlushOutcome::Applied)
    }

    async fn usage(&self, id: KeyId, days: Range<Date>) -> Result<Vec<(Date, u64)>, StoreError> {
        let state = self.state()?;
        let rows = state.usage.range((id, days.start)..(id, days.end));
        Ok(rows.map(|((_, day), n)| (*day, *n)).collect())
    }
}

impl Default for BTreeStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for BTreeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.state.lock().map_or(0, |s| s.rows.len());
        f.debug_struct("BTreeStore")
            .field("len", &len)
            .finish_non_exhaustive()
    }
}
// ----- end of store code -----

// ----- the demonstration -----

/// Creates, authenticates, flushes usage, rotates and revokes a key through
/// a `KeyManager` over a `BTreeStore`, printing what happens.
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use apikey::{
        Actor, KeyManager, Keyring, ManualClock, NewKey, Requirement, Rotation, ServerSecret,
        Verifier,
    };
    use std::time::Duration;

    let verifier = Verifier::new(Keyring::new(1, ServerSecret::generate())?);
    let clock = ManualClock::new("2026-06-01T09:00:00Z".parse::<Timestamp>()?);
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
        manager.usage_of(summary.id).await?.today,
        record
            .last_used_at
            .map_or_else(|| "never".to_owned(), |t| t.to_string()),
    );

    let (new_key, new_summary) = manager
        .rotate(
            summary.id,
            Rotation::with_grace(Duration::from_secs(3_600)),
            &admin,
        )
        .await?;
    println!("rotated {} -> {}", summary.display, new_summary.display);
    clock.advance(Duration::from_secs(2 * 3_600));
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
