//! The failure throttle: see the docs of `crate::limits`.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::limits::gcra::micros;
use crate::timestamp::Timestamp;

/// Configuration of a [`FailureThrottle`] (per key id and per address).
///
/// ```
/// use std::time::Duration;
/// use apikey::limits::FailureThrottleConfig;
/// let cfg = FailureThrottleConfig { max_failures: 5, ..FailureThrottleConfig::default() };
/// assert_eq!(cfg.lockout, Duration::from_secs(15 * 60));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailureThrottleConfig {
    /// Failures within `window` that trigger a lockout (and, for
    /// addresses, the bound on attempts in flight plus failed). Values below
    /// 1 are treated as 1. Default 10.
    pub max_failures: u32,
    /// The counting window, started by the first failure. Default 10
    /// minutes.
    pub window: Duration,
    /// How long a key id or address stays locked out. Zero disables
    /// lockouts (the in-flight bound stays). Default 15 minutes.
    pub lockout: Duration,
    /// The most key ids, and the most addresses, tracked at once (values
    /// below 1 are treated as 1). Default 65,536 each.
    pub max_tracked: usize,
    /// IPv6 addresses are grouped by this prefix length (clamped to 128).
    /// Default 64.
    pub ipv6_prefix_len: u8,
}

impl Default for FailureThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(10 * 60),
            lockout: Duration::from_secs(15 * 60),
            max_tracked: 65_536,
            ipv6_prefix_len: 64,
        }
    }
}

// Defined in `error`, next to the one reason enum it is read from.
pub use crate::error::FailureClass;

#[derive(Clone, Copy, Debug)]
struct Entry {
    window_start: i64,
    failures: u32,
    in_flight: u32,
    locked_until: Option<i64>,
    last_seen: i64,
}

impl Entry {
    fn new(now: i64) -> Self {
        Self {
            window_start: now,
            failures: 0,
            in_flight: 0,
            locked_until: None,
            last_seen: now,
        }
    }

    fn locked(&self, now: i64) -> Option<i64> {
        self.locked_until.filter(|&u| u > now).map(|u| u - now)
    }

    /// Forgets an expired lockout or a finished window.
    fn roll(&mut self, now: i64, window: i64) {
        if self.locked_until.is_some_and(|u| u <= now) {
            self.locked_until = None;
            self.failures = 0;
            self.window_start = now;
        }
        if self.locked_until.is_none() && now.saturating_sub(self.window_start) >= window {
            self.failures = 0;
            self.window_start = now;
        }
    }

    fn is_stale(&self, now: i64, window: i64) -> bool {
        self.in_flight == 0
            && match self.locked_until {
                Some(until) => until <= now,
                None => now.saturating_sub(self.window_start) >= window,
            }
    }
}

#[derive(Debug)]
struct Table<K> {
    shards: Vec<(usize, Mutex<HashMap<K, Entry>>)>,
    entries: AtomicUsize,
}

const MAX_SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Copy> Table<K> {
    fn new(max: usize) -> Self {
        let n = max.clamp(1, MAX_SHARDS);
        let (base, extra) = (max / n, max % n);
        Self {
            shards: (0..n)
                .map(|i| (base + usize::from(i < extra), Mutex::new(HashMap::new())))
                .collect(),
            entries: AtomicUsize::new(0),
        }
    }

    fn shard(&self, hasher: &RandomState, k: &K) -> Option<&(usize, Mutex<HashMap<K, Entry>>)> {
        let n = self.shards.len().max(1) as u64;
        self.shards
            .get(usize::try_from(hasher.hash_one(k) % n).unwrap_or(0))
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|(_, m)| lock(m).len()).sum()
    }

    /// Runs `f` on `k`'s entry, creating it (evicting if full) when
    /// `create`; removes it afterwards if it became stale.
    fn with<T>(
        &self,
        hasher: &RandomState,
        k: K,
        now: i64,
        window: i64,
        create: bool,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<T> {
        let (cap, m) = self.shard(hasher, &k)?;
        let mut map = lock(m);
        if !map.contains_key(&k) {
            if !create {
                return None;
            }
            if map.len() >= *cap {
                let before = map.len();
                evict(&mut map, *cap, now, window);
                self.entries
                    .fetch_sub(before - map.len(), Ordering::Relaxed);
            }
            map.insert(k, Entry::new(now));
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        let e = map.get_mut(&k)?;
        e.roll(now, window);
        let out = f(e);
        if e.is_stale(now, window) && e.failures == 0 {
            map.remove(&k);
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
        Some(out)
    }

    fn purge(&self, now: i64, window: i64) -> usize {
        let mut removed = 0;
        for (_, m) in &self.shards {
            let mut map = lock(m);
            let before = map.len();
            map.retain(|_, e| !e.is_stale(now, window));
            removed += before - map.len();
        }
        self.entries.fetch_sub(removed, Ordering::Relaxed);
        removed
    }
}

/// Makes room in a full shard: drops stale entries, then about one eighth
/// of the capacity, preferring entries that are neither locked nor in
/// flight (least recently seen first), then locked ones ending soonest.
fn evict<K: Hash + Eq + Copy>(map: &mut HashMap<K, Entry>, cap: usize, now: i64, window: i64) {
    map.retain(|_, e| !e.is_stale(now, window));
    if map.len() < cap {
        return;
    }
    let free = (cap / 8).max(1);
    let excess = (map.len() + free).saturating_sub(cap);
    let mut order: Vec<((bool, i64), K)> = map
        .iter()
        .map(|(k, e)| {
            let rank = match e.locked_until {
                Some(until) if until > now => (true, until),
                _ if e.in_flight > 0 => (true, i64::MAX),
                _ => (false, e.last_seen),
            };
            (rank, *k)
        })
        .collect();
    order.sort_unstable_by_key(|(rank, _)| *rank);
    for (_, k) in order.into_iter().take(excess) {
        map.remove(&k);
    }
}

/// The in-process failure throttle (see the [limits docs](crate::limits)): per key
/// id backoff and the per-address bound on untagged lookups. Every call
/// takes the current time, so it follows whatever clock its owner
/// ([`MemoryLimits`](crate::limits::MemoryLimits), `RedisLimits`) reads.
///
/// # Memory bound and eviction
///
/// At most `max_tracked` key ids and `max_tracked` addresses, each split
/// over up to 16 shards chosen by a randomly keyed hash. A new entry in a
/// full shard first drops stale entries, then about an eighth of the
/// shard, preferring entries neither locked nor in flight (least recently
/// seen first), then locked ones ending soonest. An attacker rotating
/// addresses can push out other counters, but cannot grow memory.
///
/// ```
/// use std::time::Duration;
/// use apikey::Timestamp;
/// use apikey::limits::FailureThrottleConfig;
/// use apikey::limits::backend::FailureThrottle;
/// let t = FailureThrottle::new(FailureThrottleConfig { max_failures: 2, ..Default::default() });
/// let now = Timestamp::from_unix_micros(1_000_000)?;
/// assert!(t.record_key_failure(7, now).is_ok());
/// assert_eq!(t.record_key_failure(7, now), Err(Duration::from_secs(900)));
/// assert!(t.check_key(7, now).is_err());
/// assert!(t.check_key(8, now).is_ok());
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Debug)]
pub struct FailureThrottle {
    config: FailureThrottleConfig,
    hasher: RandomState,
    keys: Table<u64>,
    addrs: Table<IpAddr>,
}

impl FailureThrottle {
    /// A throttle with `config` (clamped as documented on its fields).
    #[must_use]
    pub fn new(mut config: FailureThrottleConfig) -> Self {
        config.max_failures = config.max_failures.max(1);
        config.max_tracked = config.max_tracked.max(1);
        config.ipv6_prefix_len = config.ipv6_prefix_len.min(128);
        Self {
            keys: Table::new(config.max_tracked),
            addrs: Table::new(config.max_tracked),
            config,
            hasher: RandomState::new(),
        }
    }

    /// The effective configuration.
    #[must_use]
    pub const fn config(&self) -> &FailureThrottleConfig {
        &self.config
    }

    fn window(&self) -> i64 {
        i64::try_from(self.config.window.as_micros()).unwrap_or(i64::MAX)
    }

    fn lockout(&self) -> i64 {
        i64::try_from(self.config.lockout.as_micros()).unwrap_or(i64::MAX)
    }

    /// The address as counted: IPv4-mapped IPv6 as IPv4, other IPv6 cut to
    /// the configured prefix.
    #[must_use]
    pub fn normalize(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let shift = 128 - u32::from(self.config.ipv6_prefix_len);
                let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// `Err(wait)` while `key_id` is backed off. Purely local: one atomic
    /// load when nothing is tracked, else a hash lookup under a shard lock.
    ///
    /// # Errors
    /// The remaining backoff.
    pub fn check_key(&self, key_id: u64, now: Timestamp) -> Result<(), Duration> {
        if self.keys.entries.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let now = now.as_unix_micros();
        match self
            .keys
            .with(&self.hasher, key_id, now, self.window(), false, |e| {
                e.locked(now)
            }) {
            Some(Some(wait)) => Err(micros(wait)),
            _ => Ok(()),
        }
    }

    fn fail(&self, e: &mut Entry, now: i64) -> Result<(), Duration> {
        if let Some(wait) = e.locked(now) {
            // Failures while locked neither count nor extend the lockout.
            return Err(micros(wait));
        }
        e.failures = e.failures.saturating_add(1);
        e.last_seen = now;
        let lockout = self.lockout();
        if e.failures >= self.config.max_failures && lockout > 0 {
            e.locked_until = Some(now.saturating_add(lockout));
            return Err(micros(lockout));
        }
        Ok(())
    }

    /// Locks `k` in `table` until `until` (a lockout learnt from a shared
    /// store), unless a later one is already in force.
    fn adopt_lock<K: Hash + Eq + Copy>(
        &self,
        table: &Table<K>,
        k: K,
        until: Timestamp,
        now: Timestamp,
    ) {
        let (now, until) = (now.as_unix_micros(), until.as_unix_micros());
        if until <= now {
            return;
        }
        let _ = table.with(&self.hasher, k, now, self.window(), true, |e| {
            e.failures = e.failures.max(self.config.max_failures);
            e.locked_until = Some(e.locked_until.map_or(until, |u| u.max(until)));
            e.last_seen = now;
        });
    }

    /// Counts a key-status failure of `key_id`.
    ///
    /// # Errors
    /// The backoff, if this failure started one or one is in force.
    pub fn record_key_failure(&self, key_id: u64, now: Timestamp) -> Result<(), Duration> {
        let now = now.as_unix_micros();
        self.keys
            .with(&self.hasher, key_id, now, self.window(), true, |e| {
                self.fail(e, now)
            })
            .unwrap_or(Ok(()))
    }

    /// Backs `key_id` off until `until` (a lockout learnt from a shared
    /// store), unless a later one is already in force.
    pub fn lock_key_until(&self, key_id: u64, until: Timestamp, now: Timestamp) {
        self.adopt_lock(&self.keys, key_id, until, now);
    }

    /// Forgets `key_id`'s failures and backoff (e.g. after an operator
    /// re-enabled the key). Returns whether it was tracked.
    pub fn clear_key(&self, key_id: u64) -> bool {
        self.keys
            .shard(&self.hasher, &key_id)
            .is_some_and(|(_, m)| {
                let removed = lock(m).remove(&key_id).is_some();
                if removed {
                    self.keys.entries.fetch_sub(1, Ordering::Relaxed);
                }
                removed
            })
    }

    /// Starts an untagged lookup from `client`: counted at once, so that
    /// in-flight plus failed attempts never exceed `max_failures`. Without
    /// an address the attempt is not bounded.
    ///
    /// # Errors
    /// The wait while the address is locked out, or 1 s while it has
    /// `max_failures` attempts in flight or failed.
    pub fn begin_untagged(
        &self,
        client: Option<IpAddr>,
        now: Timestamp,
    ) -> Result<UntaggedAttempt<'_>, Duration> {
        let Some(ip) = client.map(|ip| self.normalize(ip)) else {
            return Ok(UntaggedAttempt::unbounded());
        };
        let started = now;
        let now = now.as_unix_micros();
        let max = self.config.max_failures;
        self.addrs
            .with(&self.hasher, ip, now, self.window(), true, |e| {
                if let Some(wait) = e.locked(now) {
                    return Err(micros(wait));
                }
                if e.failures.saturating_add(e.in_flight) >= max {
                    return Err(Duration::from_secs(1));
                }
                e.in_flight += 1;
                e.last_seen = now;
                Ok(())
            })
            .unwrap_or(Ok(()))?;
        Ok(UntaggedAttempt {
            throttle: Some(self),
            ip: Some(ip),
            started,
        })
    }

    fn finish(&self, ip: IpAddr, failed: bool, now: Timestamp) -> Result<(), Duration> {
        let now = now.as_unix_micros();
        self.addrs
            .with(&self.hasher, ip, now, self.window(), false, |e| {
                e.in_flight = e.in_flight.saturating_sub(1);
                if failed { self.fail(e, now) } else { Ok(()) }
            })
            .unwrap_or(Ok(()))
    }

    /// `Err(wait)` while `client` is locked out (no attempt is started).
    ///
    /// # Errors
    /// The remaining lockout.
    pub fn check_address(&self, client: IpAddr, now: Timestamp) -> Result<(), Duration> {
        let ip = self.normalize(client);
        let now = now.as_unix_micros();
        match self
            .addrs
            .with(&self.hasher, ip, now, self.window(), false, |e| {
                e.locked(now)
            }) {
            Some(Some(wait)) => Err(micros(wait)),
            _ => Ok(()),
        }
    }

    /// Locks `client` out until `until` (a lockout learnt from a shared
    /// store), unless a later one is already in force: its next
    /// [`begin_untagged`](Self::begin_untagged) is refused. Attempts already
    /// in flight are kept.
    pub fn lock_address_until(&self, client: IpAddr, until: Timestamp, now: Timestamp) {
        self.adopt_lock(&self.addrs, self.normalize(client), until, now);
    }

    /// Forgets an address. Returns whether it was tracked.
    pub fn clear_address(&self, client: IpAddr) -> bool {
        let ip = self.normalize(client);
        self.addrs.shard(&self.hasher, &ip).is_some_and(|(_, m)| {
            let removed = lock(m).remove(&ip).is_some();
            if removed {
                self.addrs.entries.fetch_sub(1, Ordering::Relaxed);
            }
            removed
        })
    }

    /// Key ids and addresses currently tracked (each at most
    /// `max_tracked`).
    #[must_use]
    pub fn tracked(&self) -> (usize, usize) {
        (self.keys.len(), self.addrs.len())
    }

    /// Drops stale entries; returns how many. Optional: full shards do it
    /// themselves.
    pub fn purge_expired(&self, now: Timestamp) -> usize {
        let now = now.as_unix_micros();
        self.keys.purge(now, self.window()) + self.addrs.purge(now, self.window())
    }
}

/// An untagged lookup in flight, counted against its address from the
/// start. Finish it with [`Limits::untagged_failed`] on failure; dropping it
/// (success, cancellation) releases the slot without counting a failure.
///
/// [`Limits::untagged_failed`]: crate::limits::Limits::untagged_failed
#[derive(Debug)]
#[must_use]
pub struct UntaggedAttempt<'a> {
    throttle: Option<&'a FailureThrottle>,
    ip: Option<IpAddr>,
    started: Timestamp,
}

impl UntaggedAttempt<'_> {
    /// An attempt no throttle counts (no throttle configured, or no client
    /// address known).
    pub const fn unbounded() -> Self {
        Self {
            throttle: None,
            ip: None,
            started: Timestamp::MIN,
        }
    }

    /// The address counted, after normalisation.
    #[must_use]
    pub const fn address(&self) -> Option<IpAddr> {
        self.ip
    }

    /// Ends the attempt as a failure at `now`.
    ///
    /// # Errors
    /// The address's lockout, if this failure started one or one is in
    /// force.
    pub fn failed(mut self, now: Timestamp) -> Result<(), Duration> {
        match (self.throttle.take(), self.ip) {
            (Some(t), Some(ip)) => t.finish(ip, true, now),
            _ => Ok(()),
        }
    }
}

impl Drop for UntaggedAttempt<'_> {
    fn drop(&mut self) {
        if let (Some(t), Some(ip)) = (self.throttle.take(), self.ip) {
            let _ = t.finish(ip, false, self.started);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn throttle(max_failures: u32, max_tracked: usize) -> FailureThrottle {
        FailureThrottle::new(FailureThrottleConfig {
            max_failures,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_tracked,
            ipv6_prefix_len: 64,
        })
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::MIN.saturating_add_micros(secs * 1_000_000 + 1_000_000_000)
    }

    #[test]
    fn key_failures_back_off_and_expire() {
        let t = throttle(3, 100);
        assert_eq!(t.record_key_failure(1, at(0)), Ok(()));
        assert_eq!(t.record_key_failure(1, at(0)), Ok(()));
        assert_eq!(t.check_key(1, at(0)), Ok(()));
        assert_eq!(
            t.record_key_failure(1, at(0)),
            Err(Duration::from_secs(300))
        );
        assert_eq!(t.check_key(1, at(100)), Err(Duration::from_secs(200)));
        // Failures during the lockout neither count nor extend it.
        assert_eq!(
            t.record_key_failure(1, at(100)),
            Err(Duration::from_secs(200))
        );
        assert_eq!(t.check_key(2, at(100)), Ok(()));
        assert_eq!(t.check_key(1, at(300)), Ok(()));
        assert_eq!(t.record_key_failure(1, at(300)), Ok(()));
        assert!(t.clear_key(1));
        assert_eq!(t.tracked().0, 0);
    }

    #[test]
    fn failures_outside_window_are_forgotten() {
        let t = throttle(2, 100);
        assert_eq!(t.record_key_failure(5, at(0)), Ok(()));
        assert_eq!(t.record_key_failure(5, at(60)), Ok(()));
        assert!(t.record_key_failure(5, at(60)).is_err());
    }

    #[test]
    fn shared_lockout_is_merged() {
        let t = throttle(3, 100);
        t.lock_key_until(9, at(50), at(0));
        assert_eq!(t.check_key(9, at(10)), Err(Duration::from_secs(40)));
        t.lock_key_until(9, at(20), at(10));
        assert_eq!(t.check_key(9, at(10)), Err(Duration::from_secs(40)));
        assert_eq!(t.check_key(9, at(50)), Ok(()));
    }

    #[test]
    fn in_flight_attempts_are_bounded_from_the_start() {
        let t = throttle(3, 100);
        let ip = Some(IpAddr::from([198, 51, 100, 1]));
        let held: Vec<_> = (0..100)
            .filter_map(|_| t.begin_untagged(ip, at(0)).ok())
            .collect();
        assert_eq!(held.len(), 3);
        // All fail: the third starts a lockout.
        let outcomes: Vec<_> = held.into_iter().map(|a| a.failed(at(0))).collect();
        assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
        assert_eq!(
            t.begin_untagged(ip, at(1)).map(|_| ()),
            Err(Duration::from_secs(299))
        );
        assert_eq!(
            t.check_address(IpAddr::from([198, 51, 100, 1]), at(1)),
            Err(Duration::from_secs(299))
        );
        // Successes (drops) release the slot without counting.
        let other = Some(IpAddr::from([198, 51, 100, 2]));
        for _ in 0..50 {
            let a = t.begin_untagged(other, at(0));
            assert!(a.is_ok());
        }
        // No address: not bounded.
        assert!(t.begin_untagged(None, at(0)).is_ok());
    }

    #[test]
    fn ipv6_grouped_by_prefix_and_mapped_v4() {
        let t = throttle(2, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let _ = t.begin_untagged(Some(a), at(0)).map(|x| x.failed(at(0)));
        let r = t.begin_untagged(Some(b), at(0)).map(|x| x.failed(at(0)));
        assert_eq!(r, Ok(Err(Duration::from_secs(300))));
        assert!(t.check_address(a, at(0)).is_err());
        let v4 = IpAddr::from([192, 0, 2, 9]);
        let mapped: IpAddr = "::ffff:192.0.2.9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let _ = t.begin_untagged(Some(v4), at(0)).map(|x| x.failed(at(0)));
        let _ = t
            .begin_untagged(Some(mapped), at(0))
            .map(|x| x.failed(at(0)));
        assert!(t.check_address(v4, at(0)).is_err());
    }

    #[test]
    fn cap_holds_and_prefers_evicting_unlocked() {
        let t = throttle(1, 50);
        let t2 = throttle(1000, 50);
        for i in 0..10_000u32 {
            let ip = Some(IpAddr::from(i.to_be_bytes()));
            let _ = t.begin_untagged(ip, at(0)).map(|a| a.failed(at(0)));
            let _ = t2.begin_untagged(ip, at(0)).map(|a| a.failed(at(0)));
            let _ = t.record_key_failure(u64::from(i), at(0));
            assert!(t.tracked().0 <= 50 && t.tracked().1 <= 50);
            assert!(t2.tracked().1 <= 50);
        }
        assert!(t.tracked().1 > 0);
        let (k, a) = t.tracked();
        assert_eq!(t.purge_expired(at(10_000)), k + a);
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn eviction_order() {
        let mut map = HashMap::new();
        let e = |ws: i64, locked: Option<i64>, in_flight: u32| Entry {
            window_start: ws,
            failures: 1,
            in_flight,
            locked_until: locked,
            last_seen: ws,
        };
        map.insert(1u64, e(0, Some(100), 0));
        map.insert(2, e(1, None, 0));
        map.insert(3, e(2, None, 0));
        map.insert(4, e(0, None, 1));
        evict(&mut map, 4, 5, 50);
        assert!(map.contains_key(&1) && map.contains_key(&3) && map.contains_key(&4));
        assert!(!map.contains_key(&2));
    }

    #[test]
    fn classes() {
        assert_eq!(
            FailureClass::after_lookup(&Error::InvalidApiKey),
            FailureClass::KeyStatus
        );
        assert_eq!(
            FailureClass::after_lookup(&Error::InsufficientScope {
                required: "x".into()
            }),
            FailureClass::Authenticated
        );
        assert_eq!(
            FailureClass::after_lookup(&Error::UsageExceeded),
            FailureClass::Other
        );
    }
}
