//! `NetStore`: a second `KeyStore` implementation shaped like a networked
//! database rather than an in-process map. Every call waits a simulated
//! round trip (`tokio::time::sleep`), yields to the scheduler, can be made
//! to fail on demand, and runs its "transaction" under an async mutex held
//! across further yields, the way a SQL transaction holds row locks across
//! round trips. Fetches build a fresh `KeyView` from the stored row, like a
//! decode from the wire.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apikey::{
    FlushId, FlushOutcome, KeyDigest, KeyId, KeyRecord, KeyStatus, KeyStore, KeyStoreLifecycle,
    KeyStoreQuery, KeyStoreWrite, KeyView, LimitedInsert, LimitedUpdate, Prefix, Revocation,
    StoreError, StoreErrorKind, UsageBatch, UsageStore,
};
use time::OffsetDateTime;
use tokio::sync::Mutex;

#[derive(Debug, Default)]
struct Tables {
    rows: HashMap<KeyId, KeyRecord>,
    legacy: HashMap<[u8; 32], KeyId>,
    flushes: std::collections::HashSet<FlushId>,
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

    fn check_insert(t: &Tables, r: &KeyRecord) -> Result<(), StoreError> {
        r.validate()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))?;
        if t.rows.contains_key(&r.id) {
            return Err(err(StoreErrorKind::IdCollision));
        }
        if let Some(l) = &r.legacy
            && t.legacy.contains_key(l.index.as_bytes())
        {
            return Err(err(StoreErrorKind::IdCollision));
        }
        Ok(())
    }

    fn put(t: &mut Tables, r: KeyRecord) {
        if let Some(old) = t.rows.get(&r.id).and_then(|o| o.legacy.clone()) {
            t.legacy.remove(old.index.as_bytes());
        }
        if let Some(l) = &r.legacy {
            t.legacy.insert(*l.index.as_bytes(), r.id);
        }
        t.rows.insert(r.id, r);
    }

    fn check_replace(
        t: &Tables,
        r: &KeyRecord,
        expected: Option<u64>,
    ) -> Result<KeyRecord, StoreError> {
        r.validate()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Corrupt, e))?;
        let stored = t
            .rows
            .get(&r.id)
            .cloned()
            .ok_or_else(|| err(StoreErrorKind::NotFound))?;
        if expected.is_some_and(|e| e != stored.revision) {
            return Err(err(StoreErrorKind::Conflict));
        }
        if let Some(l) = &r.legacy
            && t.legacy.get(l.index.as_bytes()).is_some_and(|h| *h != r.id)
        {
            return Err(err(StoreErrorKind::IdCollision));
        }
        Ok(stored)
    }

    fn sorted(mut v: Vec<KeyRecord>) -> Vec<KeyRecord> {
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    fn revoke_where(
        t: &mut Tables,
        rev: &Revocation,
        pred: impl Fn(&KeyRecord) -> bool,
    ) -> Vec<KeyId> {
        let mut hit: Vec<&mut KeyRecord> = t
            .rows
            .values_mut()
            .filter(|r| r.status != KeyStatus::Revoked && pred(r))
            .collect();
        hit.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        hit.into_iter()
            .map(|r| {
                r.status = KeyStatus::Revoked;
                r.revocation = Some(rev.clone());
                r.revision += 1;
                r.id
            })
            .collect()
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

impl KeyStoreWrite for NetStore {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        Self::check_insert(&t, &record)?;
        tokio::task::yield_now().await;
        Self::put(&mut t, record);
        Ok(())
    }

    async fn update(&self, mut record: KeyRecord) -> Result<(), StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        let stored = Self::check_replace(&t, &record, None)?;
        record.usage = stored.usage;
        record.last_used_at = stored.last_used_at;
        record.revision = stored.revision + 1;
        Self::put(&mut t, record);
        Ok(())
    }

    async fn delete(&self, id: KeyId) -> Result<bool, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        let Some(r) = t.rows.remove(&id) else {
            return Ok(false);
        };
        if let Some(l) = &r.legacy {
            t.legacy.remove(l.index.as_bytes());
        }
        if let Some(s) = r.rotated_to.and_then(|s| t.rows.get_mut(&s))
            && s.rotated_from == Some(id)
        {
            s.rotated_from = None;
            s.revision += 1;
        }
        if let Some(p) = r.rotated_from.and_then(|p| t.rows.get_mut(&p))
            && p.rotated_to == Some(id)
        {
            p.rotated_to = None;
            p.revision += 1;
        }
        Ok(true)
    }
}

impl KeyStoreQuery for NetStore {
    async fn get(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.round_trip().await?;
        Ok(self.tables.lock().await.rows.get(&id).cloned())
    }

    async fn list_by_owner(&self, owner: &str) -> Result<Vec<KeyRecord>, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        Ok(Self::sorted(
            t.rows
                .values()
                .filter(|r| r.owner.as_deref() == Some(owner))
                .cloned()
                .collect(),
        ))
    }

    async fn list_expiring(
        &self,
        owner: Option<&str>,
        window: Range<OffsetDateTime>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.round_trip().await?;
        let t = self.tables.lock().await;
        let mut v: Vec<KeyRecord> = t
            .rows
            .values()
            .filter(|r| owner.is_none_or(|o| r.owner.as_deref() == Some(o)))
            .filter(|r| {
                r.status != KeyStatus::Revoked && r.expires_at.is_some_and(|e| window.contains(&e))
            })
            .cloned()
            .collect();
        v.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }
}

impl KeyStoreLifecycle for NetStore {
    async fn insert_limited(
        &self,
        record: KeyRecord,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedInsert, StoreError> {
        self.round_trip().await?;
        // BEGIN; SELECT count(*) ... FOR UPDATE; (round trip) INSERT; COMMIT
        let mut t = self.tables.lock().await;
        Self::check_insert(&t, &record)?;
        if let Some(owner) = record.owner.as_deref() {
            let active = t
                .rows
                .values()
                .filter(|r| r.owner.as_deref() == Some(owner) && r.counts_toward_limit(now))
                .count() as u32;
            tokio::task::yield_now().await;
            if active >= max {
                return Ok(LimitedInsert::LimitReached { active });
            }
        }
        Self::put(&mut t, record);
        Ok(LimitedInsert::Inserted)
    }

    async fn update_if(
        &self,
        mut record: KeyRecord,
        expected: u64,
    ) -> Result<KeyRecord, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        let stored = Self::check_replace(&t, &record, Some(expected))?;
        tokio::task::yield_now().await;
        record.usage = stored.usage;
        record.last_used_at = stored.last_used_at;
        record.revision = expected + 1;
        Self::put(&mut t, record.clone());
        Ok(record)
    }

    async fn update_limited(
        &self,
        mut record: KeyRecord,
        expected: u64,
        max: u32,
        now: OffsetDateTime,
    ) -> Result<LimitedUpdate, StoreError> {
        self.round_trip().await?;
        // BEGIN; lock the owner; SELECT ... FOR UPDATE; count; UPDATE; COMMIT
        let mut t = self.tables.lock().await;
        let stored = Self::check_replace(&t, &record, Some(expected))?;
        if let Some(owner) = record.owner.as_deref()
            && record.counts_toward_limit(now)
            && !(stored.counts_toward_limit(now) && stored.owner.as_deref() == Some(owner))
        {
            let active = t
                .rows
                .values()
                .filter(|r| {
                    r.id != record.id
                        && r.owner.as_deref() == Some(owner)
                        && r.counts_toward_limit(now)
                })
                .count() as u32;
            tokio::task::yield_now().await;
            if active >= max {
                return Ok(LimitedUpdate::LimitReached { active });
            }
        }
        tokio::task::yield_now().await;
        record.usage = stored.usage;
        record.last_used_at = stored.last_used_at;
        record.revision = expected + 1;
        Self::put(&mut t, record.clone());
        Ok(LimitedUpdate::Updated(record))
    }

    async fn rotate(
        &self,
        mut predecessor: KeyRecord,
        expected: u64,
        successor: KeyRecord,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        let stored = Self::check_replace(&t, &predecessor, Some(expected))?;
        Self::check_insert(&t, &successor)?;
        if predecessor.id == successor.id {
            return Err(err(StoreErrorKind::IdCollision));
        }
        tokio::task::yield_now().await;
        // End the grace of the predecessor's predecessor (same transaction).
        let ended = stored
            .rotated_from
            .and_then(|g| t.rows.get(&g))
            .filter(|g| {
                g.rotated_to == Some(predecessor.id)
                    && g.expires_at.is_none_or(|e| e > successor.created_at)
            })
            .cloned()
            .map(|mut g| {
                g.expires_at = Some(successor.created_at);
                if g.not_before.is_some_and(|nb| nb >= successor.created_at) {
                    g.not_before = None;
                }
                g.revision += 1;
                g
            });
        predecessor.usage = stored.usage;
        predecessor.last_used_at = stored.last_used_at;
        predecessor.revision = expected + 1;
        Self::put(&mut t, predecessor.clone());
        Self::put(&mut t, successor.clone());
        if let Some(g) = ended {
            Self::put(&mut t, g);
        }
        Ok((predecessor, successor))
    }

    async fn revoke_owner(
        &self,
        owner: &str,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        Ok(Self::revoke_where(&mut t, &revocation, |r| {
            r.owner.as_deref() == Some(owner)
        }))
    }

    async fn revoke_matching(
        &self,
        prefix: &Prefix,
        created: Range<OffsetDateTime>,
        revocation: Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        Ok(Self::revoke_where(&mut t, &revocation, |r| {
            r.prefix == *prefix && created.contains(&r.created_at)
        }))
    }
}

impl UsageStore for NetStore {
    /// Records flush ids like a `usage_flushes` table would: exactly once.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<FlushOutcome, StoreError> {
        self.round_trip().await?;
        let mut t = self.tables.lock().await;
        if !t.flushes.insert(batch.id) {
            return Ok(FlushOutcome::AlreadyApplied);
        }
        for d in &batch.deltas {
            if let Some(r) = t.rows.get_mut(&d.id) {
                r.usage.apply(d.day, d.count);
                r.last_used_at = Some(
                    r.last_used_at
                        .map_or(d.last_used_at, |l| l.max(d.last_used_at)),
                );
            }
        }
        Ok(FlushOutcome::Applied)
    }
}
