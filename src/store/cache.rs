use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::feed::{Invalidate, Invalidation};
use super::memory::IdMap;
use super::{
    Changes, FlushOutcome, KeyFilter, KeyQuery, KeyStore, KeyStoreQuery, KeyStoreWrite, Listing,
    UsageBatch, UsageStore, measured_fetch,
};
use crate::clock::Clock;
use crate::error::{StoreError, StoreErrorKind};
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::record::{KeyRecord, KeyView, Revocation};
use crate::sync::{self, Mutex, RwLock};

/// Default [`CachedStore::with_capacity`]: entries kept.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;
/// Default [`CachedStore::with_max_age`]: the worst-case revocation delay
/// when no invalidation arrives.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
/// Default [`CachedStore::with_negative_max_age`]: how long "no such key"
/// is remembered.
pub const DEFAULT_NEGATIVE_MAX_AGE: Duration = Duration::from_millis(100);

/// At most 64 shards.
const MAX_SHARD_BITS: u32 = 6;
/// How many abandoned flights a fetch joins before it queries the store
/// itself, without the cache.
const MAX_JOINS: usize = 4;

/// A read-through cache of [`KeyView`]s by key id, in front of any
/// [`KeyStore`]: hits cost a shard read lock and an `Arc` clone, like a
/// [`MemoryStore`](crate::MemoryStore) fetch, while the store stays the
/// source of truth.
///
/// It implements every store trait its inner store implements: reads of
/// full records ([`KeyStoreQuery`], [`KeyStore::find_legacy`]) and usage
/// flushes go straight to the store; [`KeyStore::fetch`] is cached; writes
/// go to the store and then invalidate.
///
/// # Staleness bounds
/// - **Writes through this cache** (every [`KeyStoreWrite::commit`] and
///   [`KeyStoreWrite::revoke_where`]) drop the entries they change before they
///   return, also when they fail or their future is dropped mid-way (a
///   cancelled write may have committed). So a verification that starts
///   after a local revoke, disable or delete returned never succeeds with
///   the old state: in-process revocation is immediate. Bulk revokes drop
///   the ids the store returns (or, on error or cancellation, every cached
///   entry of the owner or prefix window, or every entry for an expiry
///   window).
/// - **Writes elsewhere** (other instances) arrive through a
///   [`ChangeFeed`](crate::ChangeFeed) calling [`invalidate`](Self::invalidate).
/// - **When no invalidation arrives**, an entry is refetched once it is
///   older than the maximum age ([`with_max_age`](Self::with_max_age),
///   default [`DEFAULT_MAX_AGE`], 1 s): that is the worst-case revocation
///   delay. The age counts from the start of the store read that filled the
///   entry, and a fetch never takes the answer of a read that started the
///   maximum age or more before it (see "Single flight").
/// - **Unknown ids** (deleted or never created keys whose tag passed) are
///   cached as "none" for at most the negative maximum age
///   ([`with_negative_max_age`](Self::with_negative_max_age), default
///   [`DEFAULT_NEGATIVE_MAX_AGE`], 100 ms; `Duration::ZERO` turns it off).
///   Caching "none" can only refuse a key: a key created on another
///   instance is refused for at most that long if its announcement is lost.
/// - **Store errors are never cached.** During an outage, entries younger
///   than the maximum age are still served (a hit does not ask the store),
///   and nothing older: an expired entry is refetched, and the store's
///   error is returned (503 `STORE_UNAVAILABLE`), never a stale view. So
///   an outage does not extend the revocation bound.
/// - Usage fields and rotation links of cached views (which verification
///   does not read and `KeyView` does not expose) may lag by up to the
///   maximum age: usage flushes do not invalidate, and deleting a key does
///   not drop the views of its rotation neighbours unless they are known.
///
/// # Race freedom
/// A miss installs a *pending* slot for the id and queries the store; the
/// result is cached only if that same slot is still in place. An
/// invalidation removes the slot (ready or pending), so a fetch that started
/// before an invalidation can never re-insert a view older than the write
/// (`tests/loom.rs` model-checks this with the real code).
///
/// # Single flight
/// Concurrent misses for one id share the pending slot: one store query,
/// every waiter gets its answer. A fetch joins a query only while it is
/// younger than the maximum age (what its answer would be worth as a cached
/// entry); a fetch finding an older query still in flight (a slow store)
/// starts a new one, whose slot replaces the old one, so the old answer is
/// not cached either. So single flight never stretches the staleness
/// bound: every fetch's answer comes from a store read that started less
/// than the maximum age before the fetch. With a maximum age of zero no
/// fetch joins another's read. If the querying future is dropped
/// (cancelled), the slot is removed and the waiters are woken; one of them
/// queries the store next. Waiters get the error kind of a failed query
/// ([`StoreError::new`]); the error is not cached.
///
/// # Capacity
/// At most [`capacity`](Self::capacity) entries, spread over up to 64 shards
/// by the top bits of the id (ids are random), each behind its own
/// `RwLock`; a full shard evicts its oldest entry (first in, first out,
/// which with a maximum age of a second is close to least recently
/// refreshed).
///
/// ```
/// use std::time::Duration;
/// use apikey::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
/// let store = CachedStore::new(MemoryStore::new()).with_max_age(Duration::from_millis(500));
/// let manager = KeyManager::new(verifier, store);
/// let admin = Actor::new("admin");
/// let (key, summary) = manager.create(NewKey::new("sk_live_").owner("org"), &admin).await?;
/// manager.authenticate(key.expose_secret(), &Requirement::none(), None).await?;
/// assert_eq!(manager.store().len(), 1); // cached
/// manager.revoke(summary.id, "leaked", &admin).await?;
/// // Seen at once: the revoke went through the cache.
/// let err = manager.authenticate(key.expose_secret(), &Requirement::none(), None).await.unwrap_err();
/// assert_eq!(err.code().as_str(), "REVOKED_API_KEY");
/// # Ok::<(), apikey::Error>(())
/// # }).unwrap();
/// ```
pub struct CachedStore<S> {
    inner: S,
    shards: Box<[RwLock<ShardMap>]>,
    shard_bits: u32,
    per_shard: usize,
    max_age_us: i64,
    negative_age_us: i64,
    ticker: Ticker,
}

/// Where entry ages come from: the monotonic clock, or a [`Clock`] (tests).
enum Ticker {
    Monotonic(Instant),
    Clock(Arc<dyn Clock>),
}

impl Ticker {
    fn now_us(&self) -> i64 {
        match self {
            Self::Monotonic(origin) => {
                i64::try_from(origin.elapsed().as_micros()).unwrap_or(i64::MAX)
            }
            Self::Clock(c) => c.now().as_unix_micros(),
        }
    }
}

/// One cached id.
enum Slot {
    /// A store answer, `born` (µs on the ticker) when its read started.
    Ready {
        view: Option<Arc<KeyView>>,
        born: i64,
        seq: u64,
    },
    /// A store read in flight; its result is cached only if this slot is
    /// still here when it ends.
    Pending(Arc<Flight>),
}

#[derive(Default)]
struct ShardMap {
    slots: IdMap<Slot>,
    /// Insertion order of ready slots, `(id, seq)`; entries whose slot is
    /// gone or newer are skipped (and compacted away).
    order: VecDeque<(u64, u64)>,
    ready: usize,
    next_seq: u64,
}

impl ShardMap {
    fn remove(&mut self, key: u64) {
        if let Some(Slot::Ready { .. }) = self.slots.remove(&key) {
            self.ready -= 1;
        }
    }

    fn is_ours(&self, key: u64, flight: &Arc<Flight>) -> bool {
        matches!(self.slots.get(&key), Some(Slot::Pending(f)) if Arc::ptr_eq(f, flight))
    }

    fn live(&self, key: u64, seq: u64) -> bool {
        matches!(self.slots.get(&key), Some(Slot::Ready { seq: s, .. }) if *s == seq)
    }

    /// Replaces our pending slot with a ready one, evicting the oldest
    /// ready slots while the shard is full.
    fn insert_ready(&mut self, key: u64, view: Option<Arc<KeyView>>, born: i64, cap: usize) {
        let mut budget = self.order.len();
        while self.ready >= cap && budget > 0 {
            budget -= 1;
            let Some((victim, seq)) = self.order.pop_front() else {
                break;
            };
            if self.live(victim, seq) {
                self.remove(victim);
                crate::metrics::cache_eviction();
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.slots.insert(key, Slot::Ready { view, born, seq });
        self.ready += 1;
        self.order.push_back((key, seq));
        if self.order.len() > 2 * cap + 8 {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|&(k, s)| self.live(k, s));
            self.order = order;
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.order.clear();
        self.ready = 0;
    }
}

/// One store read shared by every concurrent miss of an id.
struct Flight {
    /// When the read started (µs on the ticker): the entry's birth.
    started: i64,
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    outcome: Option<Outcome>,
    wakers: Vec<Option<Waker>>,
}

#[derive(Clone)]
enum Outcome {
    Found(Option<Arc<KeyView>>),
    Failed(StoreErrorKind),
    /// The leader's future was dropped before the store answered.
    Abandoned,
}

impl Flight {
    fn finish(&self, outcome: Outcome) {
        let wakers = {
            let mut s = sync::lock(&self.state);
            if s.outcome.is_some() {
                return;
            }
            s.outcome = Some(outcome);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

/// A follower waiting for a flight's outcome.
struct Wait {
    flight: Arc<Flight>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let mut s = sync::lock(&this.flight.state);
        if let Some(o) = &s.outcome {
            return Poll::Ready(o.clone());
        }
        match this.slot.and_then(|i| s.wakers.get_mut(i)) {
            Some(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
            }
            None => {
                this.slot = Some(s.wakers.len());
                s.wakers.push(Some(cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut s = sync::lock(&self.flight.state);
            if let Some(w) = s.wakers.get_mut(i) {
                *w = None;
            }
        }
    }
}

/// Ends a flight whose leader was dropped: removes the pending slot and
/// wakes the followers, so one of them leads next.
struct Abandon<'a> {
    shard: &'a RwLock<ShardMap>,
    key: u64,
    flight: &'a Arc<Flight>,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            {
                let mut m = sync::write(self.shard);
                if m.is_ours(self.key, self.flight) {
                    m.slots.remove(&self.key);
                }
            }
            self.flight.finish(Outcome::Abandoned);
        }
    }
}

/// Invalidates when dropped: at the end of a write, whether it returned,
/// failed or was cancelled.
struct AfterWrite<'a, S> {
    cache: &'a CachedStore<S>,
    change: Option<Invalidation>,
}

impl<S> AfterWrite<'_, S> {
    fn disarm(&mut self) {
        self.change = None;
    }
}

impl<S> Drop for AfterWrite<'_, S> {
    fn drop(&mut self) {
        if let Some(c) = self.change.take() {
            self.cache.invalidate(&c);
        }
    }
}

enum Lookup {
    Hit(Option<Arc<KeyView>>),
    Join(Arc<Flight>),
    Lead(Arc<Flight>),
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl<S> CachedStore<S> {
    /// A cache in front of `inner` with the defaults:
    /// [`DEFAULT_CACHE_CAPACITY`] entries, [`DEFAULT_MAX_AGE`],
    /// [`DEFAULT_NEGATIVE_MAX_AGE`], ages on the monotonic clock.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            shards: Box::new([]),
            shard_bits: 0,
            per_shard: 1,
            max_age_us: micros(DEFAULT_MAX_AGE),
            negative_age_us: micros(DEFAULT_NEGATIVE_MAX_AGE),
            ticker: Ticker::Monotonic(Instant::now()),
        }
        .with_capacity(DEFAULT_CACHE_CAPACITY)
    }

    /// Keeps at most about `capacity` entries (at least 1; rounded up to a
    /// multiple of the shard count, 64 from 64 entries on). Drops what is
    /// cached.
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let bits = (usize::BITS - 1 - capacity.leading_zeros()).min(MAX_SHARD_BITS);
        let shards = 1usize << bits;
        self.shard_bits = bits;
        self.per_shard = capacity.div_ceil(shards);
        self.shards = (0..shards)
            .map(|_| RwLock::new(ShardMap::default()))
            .collect();
        self
    }

    /// Entries older than `max_age` are refetched: the worst-case delay
    /// before a write made elsewhere is seen when no invalidation arrives.
    /// A fetch joins a store read in flight only while that read is younger
    /// than `max_age` (see "Single flight" above). `Duration::ZERO` caches
    /// nothing (every fetch reads the store itself). Also caps the negative
    /// maximum age.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age_us = micros(max_age);
        self.negative_age_us = self.negative_age_us.min(self.max_age_us);
        self
    }

    /// "No such key" answers are kept this long (at most the maximum age);
    /// `Duration::ZERO` does not keep them.
    pub fn with_negative_max_age(mut self, max_age: Duration) -> Self {
        self.negative_age_us = micros(max_age).min(self.max_age_us);
        self
    }

    /// Measures entry ages on `clock` instead of the monotonic clock (for
    /// tests with a [`ManualClock`](crate::ManualClock)). A clock that goes
    /// back makes entries expire, never live longer.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.ticker = Ticker::Clock(Arc::new(clock));
        self
    }

    /// The store behind the cache. Writes made on it directly bypass the
    /// cache's invalidation (they are seen after the maximum age, or when
    /// a feed announces them).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The configured maximum age.
    pub fn max_age(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.max_age_us).unwrap_or(0))
    }

    /// The configured negative maximum age.
    pub fn negative_max_age(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.negative_age_us).unwrap_or(0))
    }

    /// The most entries kept.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Entries cached now (fresh or expired, not yet dropped), "none"
    /// answers included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| sync::read(s).ready).sum()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything, in-flight reads included (their results are not
    /// cached).
    pub fn invalidate_all(&self) {
        for s in self.shards.iter() {
            sync::write(s).clear();
        }
    }

    /// Drops whatever `change` may have made stale: the named ids, or every
    /// cached view matching the owner or prefix window (and every read in
    /// flight, whose answer is then not cached), or everything.
    ///
    /// ```
    /// use apikey::{CachedStore, Invalidation, KeyId, MemoryStore};
    /// let cache = CachedStore::new(MemoryStore::new());
    /// cache.invalidate(&Invalidation::Key(KeyId::from_u64(1)));
    /// cache.invalidate(&Invalidation::Owner("org".into()));
    /// ```
    pub fn invalidate(&self, change: &Invalidation) {
        match change {
            Invalidation::Key(id) => self.drop_keys(std::slice::from_ref(id)),
            Invalidation::Keys(ids) => self.drop_keys(ids),
            Invalidation::Owner(owner) => self.drop_where(|v| v.owner() == Some(owner.as_str())),
            Invalidation::Prefix { prefix, created } => {
                self.drop_where(|v| v.prefix() == prefix && created.contains(&v.created_at()))
            }
            Invalidation::All => self.invalidate_all(),
        }
    }

    fn shard_index(&self, key: u64) -> usize {
        match key.checked_shr(64 - self.shard_bits) {
            Some(i) if self.shard_bits > 0 => i as usize,
            _ => 0,
        }
    }

    fn shard(&self, key: u64) -> &RwLock<ShardMap> {
        &self.shards[self.shard_index(key) % self.shards.len().max(1)]
    }

    fn drop_keys(&self, ids: &[KeyId]) {
        if ids.len() <= 16 {
            for id in ids {
                sync::write(self.shard(id.as_u64())).remove(id.as_u64());
            }
            return;
        }
        let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); self.shards.len()];
        for id in ids {
            let k = id.as_u64();
            if let Some(b) = buckets.get_mut(self.shard_index(k)) {
                b.push(k);
            }
        }
        for (shard, keys) in self.shards.iter().zip(buckets) {
            if keys.is_empty() {
                continue;
            }
            let mut m = sync::write(shard);
            for k in keys {
                m.remove(k);
            }
        }
    }

    fn drop_where(&self, stale: impl Fn(&KeyView) -> bool) {
        for shard in self.shards.iter() {
            let mut m = sync::write(shard);
            let mut ready = 0;
            m.slots.retain(|_, slot| match slot {
                Slot::Ready { view, .. } => {
                    let keep = !view.as_deref().is_some_and(&stale);
                    ready += usize::from(keep);
                    keep
                }
                Slot::Pending(_) => false,
            });
            m.ready = ready;
        }
    }

    fn fresh(&self, view: &Option<Arc<KeyView>>, born: i64, now: i64) -> bool {
        let limit = if view.is_some() {
            self.max_age_us
        } else {
            self.negative_age_us
        };
        now >= born && now - born < limit
    }

    /// Whether a fetch at `now` may take the answer of `flight`: only while
    /// that answer, cached, would still be fresh (younger than the maximum
    /// age), so joining never stretches the no-announcement bound.
    fn joinable(&self, flight: &Flight, now: i64) -> bool {
        now >= flight.started && now - flight.started < self.max_age_us
    }

    fn lookup(&self, key: u64) -> Lookup {
        let now = self.ticker.now_us();
        let shard = self.shard(key);
        {
            let m = sync::read(shard);
            match m.slots.get(&key) {
                Some(Slot::Ready { view, born, .. }) if self.fresh(view, *born, now) => {
                    crate::metrics::cache_lookup("hit");
                    return Lookup::Hit(view.clone());
                }
                Some(Slot::Pending(f)) if self.joinable(f, now) => {
                    crate::metrics::cache_lookup("joined");
                    return Lookup::Join(Arc::clone(f));
                }
                _ => {}
            }
        }
        let mut m = sync::write(shard);
        let result = match m.slots.get(&key) {
            Some(Slot::Ready { view, born, .. }) if self.fresh(view, *born, now) => {
                crate::metrics::cache_lookup("hit");
                return Lookup::Hit(view.clone());
            }
            Some(Slot::Pending(f)) if self.joinable(f, now) => {
                crate::metrics::cache_lookup("joined");
                return Lookup::Join(Arc::clone(f));
            }
            Some(Slot::Ready { .. }) => "expired",
            _ => "miss",
        };
        crate::metrics::cache_lookup(result);
        // A miss, an expired entry, or a flight too old to join: this fetch
        // leads a new read. Replacing an older flight's slot keeps that
        // flight's answer out of the cache (`complete` finds the slot is not
        // its own); its followers, who joined while it was young enough,
        // still get it.
        let flight = Arc::new(Flight {
            started: now,
            state: Mutex::new(FlightState::default()),
        });
        if let Some(Slot::Ready { .. }) = m.slots.insert(key, Slot::Pending(Arc::clone(&flight))) {
            m.ready -= 1;
        }
        Lookup::Lead(flight)
    }

    /// Caches a leader's answer if its pending slot is still in place.
    fn complete(&self, key: u64, flight: &Arc<Flight>, view: Option<Arc<KeyView>>) {
        let mut m = sync::write(self.shard(key));
        if !m.is_ours(key, flight) {
            // Invalidated while in flight: the answer may predate the write.
            return;
        }
        if view.is_none() && self.negative_age_us == 0 {
            m.slots.remove(&key);
            return;
        }
        m.insert_ready(key, view, flight.started, self.per_shard);
    }

    fn after_write(&self, change: Invalidation) -> AfterWrite<'_, S> {
        AfterWrite {
            cache: self,
            change: Some(change),
        }
    }
}

impl<S: KeyStore> CachedStore<S> {
    async fn lead(
        &self,
        id: KeyId,
        flight: Arc<Flight>,
    ) -> Result<Option<Arc<KeyView>>, StoreError> {
        let key = id.as_u64();
        let mut guard = Abandon {
            shard: self.shard(key),
            key,
            flight: &flight,
            armed: true,
        };
        let result = measured_fetch(&self.inner, id).await;
        guard.armed = false;
        drop(guard);
        let outcome = match &result {
            Ok(view) => {
                self.complete(key, &flight, view.clone());
                Outcome::Found(view.clone())
            }
            Err(e) => {
                let mut m = sync::write(self.shard(key));
                if m.is_ours(key, &flight) {
                    m.slots.remove(&key);
                }
                Outcome::Failed(e.kind())
            }
        };
        flight.finish(outcome);
        result
    }
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("max_age", &self.max_age())
            .field("negative_max_age", &self.negative_max_age())
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> Invalidate for CachedStore<S> {
    fn invalidate(&self, change: &Invalidation) {
        CachedStore::invalidate(self, change)
    }
}

impl<S: KeyStore> KeyStore for CachedStore<S> {
    /// A hit stays in the process; a miss is measured as a call of the
    /// inner store (unless that one stays in the process too).
    const IN_PROCESS: bool = true;

    async fn fetch(&self, id: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        let key = id.as_u64();
        for _ in 0..MAX_JOINS {
            let flight = match self.lookup(key) {
                Lookup::Hit(view) => return Ok(view),
                Lookup::Lead(flight) => return self.lead(id, flight).await,
                Lookup::Join(flight) => flight,
            };
            match (Wait { flight, slot: None }).await {
                Outcome::Found(view) => return Ok(view),
                Outcome::Failed(kind) => return Err(StoreError::new(kind)),
                Outcome::Abandoned => {}
            }
        }
        // Leaders keep being cancelled: read without the cache.
        measured_fetch(&self.inner, id).await
    }

    /// Not cached: legacy keys read the store every time.
    fn find_legacy(
        &self,
        index: &KeyDigest,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.inner.find_legacy(index)
    }
}

impl<S: KeyStoreQuery> KeyStoreQuery for CachedStore<S> {
    fn get(&self, id: KeyId) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send {
        self.inner.get(id)
    }

    fn list(&self, query: &KeyQuery) -> impl Future<Output = Result<Listing, StoreError>> + Send {
        self.inner.list(query)
    }
}

impl<S: KeyStoreWrite> KeyStoreWrite for CachedStore<S> {
    /// Drops the views of every id the commit names (put or deleted) when
    /// it ends, whether it committed, failed or was cancelled.
    async fn commit(&self, changes: &Changes) -> Result<(), StoreError> {
        let ids = changes
            .puts
            .iter()
            .map(|p| p.record.id)
            .chain(changes.deletes.iter().map(|d| d.id))
            .collect();
        let _g = self.after_write(Invalidation::Keys(ids));
        self.inner.commit(changes).await
    }

    /// The inner store's (a SQL store's one statement is kept); drops the
    /// revoked views, or everything the filter may name when it fails.
    async fn revoke_where(
        &self,
        query: &KeyQuery,
        revocation: &Revocation,
    ) -> Result<Vec<KeyId>, StoreError> {
        let change = match &query.filter {
            KeyFilter::Owner(o) => Invalidation::Owner(o.clone()),
            KeyFilter::Created { prefix, window } => Invalidation::Prefix {
                prefix: prefix.clone(),
                created: window.clone(),
            },
            _ => Invalidation::All,
        };
        let mut g = self.after_write(change);
        let revoked = self.inner.revoke_where(query, revocation).await?;
        self.drop_keys(&revoked);
        g.disarm();
        Ok(revoked)
    }
}

impl<S: UsageStore> UsageStore for CachedStore<S> {
    /// Goes to the store and invalidates nothing: verification reads no
    /// usage field.
    fn record_usage(
        &self,
        batch: &UsageBatch,
    ) -> impl Future<Output = Result<FlushOutcome, StoreError>> + Send {
        self.inner.record_usage(batch)
    }

    fn usage(
        &self,
        id: KeyId,
        days: std::ops::Range<time::Date>,
    ) -> impl Future<Output = Result<Vec<(time::Date, u64)>, StoreError>> + Send {
        self.inner.usage(id, days)
    }
}
