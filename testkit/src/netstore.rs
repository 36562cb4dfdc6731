//! `NetStore`: a second `KeyStore` implementation shaped like a networked
//! database rather than an in-process map. Every call waits a simulated
//! round trip (`tokio::time::sleep`), yields to the scheduler, can be made
//! to fail on demand, and runs its "transaction" under an async mutex held
//! across further yields, the way a SQL transaction holds row locks across
//! round trips. Fetches build a fresh `KeyView` from the stored row, like a
//! decode from the wire.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apikey::{
    Changes, FlushId, FlushOutcome, KeyDigest, KeyFilter, KeyId, KeyQuery, KeyRecord, KeyStore,
    KeyStoreQuery, KeyStoreWrite, KeyView, Listing, StoreError, StoreErrorKind, UsageBatch,
    UsageStore,
};
use tokio::sync::Mutex;

#[derive(Debug, Default)]
struct Tables {
    rows: HashMap<KeyId, KeyRecord>,
    legacy: HashMap<[u8; 32], KeyId>,
    flushes: std::collections::HashSet<FlushId>,
    owners: HashMap<String, u64>,
    usage: HashMap<KeyId, BTreeMap<time::Date, u64>>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct NetStore {
    tables: Mutex<Tables>,
    failing: AtomicBool,
    latency_us: AtomicU64,
    /// Number of calls that reached the "server".
    pub calls: AtomicU64,
}

fn err(kind: StoreErrorKind) -> StoreError {
    StoreError::new(kind)
}

impl NetStore {
    /// A store whose every call waits `latency` first.
    pub fn new(latency: Duration) -> Arc<Self> {
        let s = Self::default();
        s.latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Sets the simulated round trip of every following call.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Makes every following call fail (`true`) or work (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// A round trip: latency, a yield, and the failure switch.
    async fn round_trip(&self) -> Result<(), StoreError> {
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
        tokio::task::yield_now().await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::with_source(
                StoreErrorKind::Unavailable,
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ),
            ));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The checks of a commit, against the tables as they are (the caller
    /// holds the "transaction").
    fn check(t: &Tables, c: &Changes) -> Result<(), StoreError> {
        c.check()?;
        for g in &c.guards {
            if t.owners.get(&g.owner).copied().unwrap_or(0) != g.version {
                return Err(err(StoreErrorKind::Conflict));
            }
        }
        let expected = c
            .puts
            .iter()
            .filter_map(|p| p.expected.map(|e| (p.record.id, e)));
        for (id, e) in expected.chain(c.deletes.iter().map(|d| (d.id, d.expected))) {
            match t.rows.get(&id) {
                None => return Err(err(StoreErrorKind::NotFound)),
                Some(r) if r.revision != e => return Err(err(StoreErrorKind::Conflict)),
                Some(_) => {}
            }
        }
        if c.puts
            .iter()
            .any(|p| p.expected.is_none() && t.rows.contains_key(&p.record.id))
        {
            return Err(err(StoreErrorKind::IdCollision));
        }
        // The legacy index after the commit: unique.
        let touched: std::collections::HashSet<KeyId> = c
            .puts
            .iter()
            .map(|p| p.record.id)
            .chain(c.deletes.iter().map(|d| d.id))
            .collect();
        let mut held: HashMap<[u8; 32], KeyId> = t
            .legacy
            .iter()
            .filter(|(_, id)| !touched.contains(id))
            .map(|(k, v)| (*k, *v))
            .collect();
        for r in c.puts.iter().map(|p| &p.record) {
            if let Some(l) = &r.legacy
                && held.insert(*l.index.as_bytes(), r.id).is_some()
            {
                return Err(err(StoreErrorKind::IdCollision));
            }
        }
        Ok(())
    }
}

impl KeyStore for NetStore {
    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        Ok(t.rows.get(&id).map(|r| Arc::new(KeyView::from_record(r))))
    }

    async fn find_legacy(&self, index: &KeyDigest) -> Result<Option<KeyRecord>, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        Ok(t.legacy
            .get(index.as_bytes())
            .and_then(|id| t.rows.get(id))
            .cloned())
    }
}

impl KeyStoreQuery for NetStore {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.round_trip().await?;
        Ok(self.tables.lock().await.rows.get(&id).cloned())
    }

    /// The owner version is read first, the rows after another round trip
    /// (under the same lock, as `REPEATABLE READ` would).
    async fn list(&self, query: &KeyQuery) -> Result<Listing, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        let owner_version = match &query.filter {
            KeyFilter::Owner(o) => t.owners.get(o).copied().unwrap_or(0),
            _ => 0,
        };
        tokio::task::yield_now().await;
        Ok(Listing {
            records: query.page(t.rows.values().cloned()),
            owner_version,
        })
    }
}

impl KeyStoreWrite for NetStore {
    /// One "transaction": the checks, a yield (locks held across a round
    /// trip), then every change.
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        Self::check(&t, changes)?;
        tokio::task::yield_now().await;
        for g in &changes.guards {
            t.owners.insert(g.owner.clone(), g.version + 1);
        }
        let touched = changes
            .puts
            .iter()
            .map(|p| p.record.id)
            .chain(changes.deletes.iter().map(|d| d.id));
        for id in touched.collect::<Vec<_>>() {
            if let Some(l) = t.rows.get(&id).and_then(|r| r.legacy.clone()) {
                t.legacy.remove(l.index.as_bytes());
            }
        }
        for d in &changes.deletes {
            t.rows.remove(&d.id);
            t.usage.remove(&d.id);
        }
        for p in &changes.puts {
            let mut r = p.record.clone();
            if let Some(e) = p.expected {
                if let Some(stored) = t.rows.get(&r.id) {
                    r.keep_last_use(stored);
                }
                r.revision = e + 1;
            }
            if let Some(l) = &r.legacy {
                t.legacy.insert(*l.index.as_bytes(), r.id);
            }
            t.rows.insert(r.id, r);
        }
        Ok(())
    }
}

impl UsageStore for NetStore {
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        if !t.flushes.insert(batch.id) {
            return Ok(FlushOutcome::AlreadyApplied);
        }
        tokio::task::yield_now().await;
        for d in &batch.deltas {
            let Some(r) = t.rows.get_mut(&d.id) else {
                continue;
            };
            d.apply_to(r);
            *t.usage.entry(d.id).or_default().entry(d.day).or_insert(0) += d.count;
        }
        Ok(FlushOutcome::Applied)
    }

    async fn usage(
        &self,
        id: KeyId,
        days: Range<time::Date>,
    ) -> Result<Vec<(time::Date, u64)>, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        Ok(t.usage
            .get(&id)
            .map(|rows| rows.range(days).map(|(d, n)| (*d, *n)).collect())
            .unwrap_or_default())
    }
}
