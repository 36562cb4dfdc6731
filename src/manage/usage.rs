//! Usage tracking without a store write per request.
//!
//! [`UsageRecorder`] counts successful verifications per key and UTC day in
//! memory (16 shards, each a short mutex around a small map) and writes them
//! to the store in batches with
//! [`KeyStoreLifecycle::record_usage`],
//! which updates `last_used_at` and the daily and monthly counters of each
//! record ([`UsageCounters`](crate::UsageCounters)).
//!
//! # Staleness
//!
//! The [`KeyManager`](crate::KeyManager) flushes from the first verification
//! that finds the flush interval (default 60 s, from the injected clock)
//! elapsed since the last flush, so the store lags the truth by at most the
//! interval plus one flush, **as long as verifications keep arriving**. When
//! traffic stops, call [`KeyManager::flush`](crate::KeyManager::flush) from a
//! timer for a hard bound, and always call
//! [`KeyManager::shutdown`](crate::KeyManager::shutdown) before exit (there
//! is no async drop): counts not flushed are lost with the process.
//!
//! # Guarantees
//!
//! No count is lost or doubled under concurrency: each count is taken out of
//! memory by exactly one flush; a flush that fails puts its counts back for
//! the next one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use time::{Date, OffsetDateTime};

use crate::error::StoreError;
use crate::key::KeyId;
use crate::record::unix_nanos;
use crate::store::{KeyStoreLifecycle, UsageDelta};

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Pending {
    count: u64,
    last: OffsetDateTime,
}

/// Multiply-xor hasher for `(key id, day)`: ids are random and only keys
/// that verified are counted, so no one can choose colliding keys.
#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }
}

type Shard = HashMap<(u64, Date), Pending, std::hash::BuildHasherDefault<FastHasher>>;

/// In-memory usage counts waiting to be flushed to a store.
///
/// ```
/// use apikey::{KeyId, MemoryStore, UsageRecorder};
/// use time::macros::datetime;
/// # tokio_test_block_on(async {
/// let usage = UsageRecorder::new(time::Duration::minutes(1));
/// let now = datetime!(2026-05-01 12:00 UTC);
/// usage.record(KeyId::from_u64(7), now); // the key does not exist: skipped at flush
/// assert_eq!(usage.pending(), 1);
/// let store = MemoryStore::new();
/// assert_eq!(usage.flush(&store, now).await?, 1);
/// assert_eq!(usage.pending(), 0);
/// # Ok::<(), apikey::StoreError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct UsageRecorder {
    shards: Box<[Mutex<Shard>]>,
    last_flush: AtomicI64,
    interval_nanos: i64,
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("pending", &self.pending())
            .field("interval_nanos", &self.interval_nanos)
            .finish()
    }
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UsageRecorder {
    /// A recorder whose [`flush_due`](Self::flush_due) fires every `interval`.
    pub fn new(interval: time::Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            last_flush: AtomicI64::new(i64::MIN),
            interval_nanos: interval.whole_nanoseconds().clamp(0, i128::from(i64::MAX)) as i64,
        }
    }

    fn shard(&self, id: KeyId) -> &Mutex<Shard> {
        &self.shards[(id.as_u64() % SHARDS as u64) as usize]
    }

    /// Counts one successful verification of `id` at `now` (its UTC day).
    pub fn record(&self, id: KeyId, now: OffsetDateTime) {
        let now = now.to_offset(time::UtcOffset::UTC);
        let mut shard = lock(self.shard(id));
        let e = shard.entry((id.as_u64(), now.date())).or_insert(Pending {
            count: 0,
            last: now,
        });
        e.count = e.count.saturating_add(1);
        e.last = e.last.max(now);
    }

    /// Total counts not yet flushed.
    pub fn pending(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| lock(s).values().map(|p| p.count).sum::<u64>())
            .sum()
    }

    /// Whether a flush is due at `now`; claims it (only one caller per
    /// interval gets `true`). The first call is always due.
    pub fn flush_due(&self, now: OffsetDateTime) -> bool {
        let now = unix_nanos(now);
        let last = self.last_flush.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_nanos
            && self
                .last_flush
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Writes every pending count to `store` in one batch and returns the
    /// number of uses written.
    ///
    /// # Errors
    /// The store's error; the counts stay pending for the next flush.
    pub async fn flush<S: KeyStoreLifecycle + ?Sized>(
        &self,
        store: &S,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.last_flush.store(unix_nanos(now), Ordering::Relaxed);
        let mut batch: Vec<UsageDelta> = Vec::new();
        for s in self.shards.iter() {
            let taken = std::mem::take(&mut *lock(s));
            batch.extend(
                taken.into_iter().map(|((id, day), p)| {
                    UsageDelta::new(KeyId::from_u64(id), day, p.count, p.last)
                }),
            );
        }
        if batch.is_empty() {
            return Ok(0);
        }
        batch.sort_by_key(|d| (d.id, d.day));
        let total = batch.iter().map(|d| d.count).sum();
        match store.record_usage(&batch).await {
            Ok(()) => Ok(total),
            Err(e) => {
                self.restore(&batch);
                Err(e)
            }
        }
    }

    fn restore(&self, batch: &[UsageDelta]) {
        for d in batch {
            let mut shard = lock(self.shard(d.id));
            let e = shard.entry((d.id.as_u64(), d.day)).or_insert(Pending {
                count: 0,
                last: d.last_used_at,
            });
            e.count = e.count.saturating_add(d.count);
            e.last = e.last.max(d.last_used_at);
        }
    }
}
