use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use crate::Timestamp;

use super::audit::{AuditEvent, AuditKind, AuditSink};
use super::usage::FastHasher;
use crate::key::KeyId;
use crate::record::IpNet;

/// Networks remembered per key (the oldest is forgotten first).
pub const NETWORKS_PER_KEY: usize = 8;

const SHARDS: usize = 16;

/// What a [`Monitor`] watches for. Every field says its default.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MonitorConfig {
    /// A network not seen for a key within this window is new. Defaults to
    /// 30 days.
    pub new_network_window: Duration,
    /// Failures within [`burst_window`](Self::burst_window) that make a
    /// burst. Defaults to 20.
    pub burst_threshold: u32,
    /// The failure-burst window. Defaults to 5 minutes.
    pub burst_window: Duration,
    /// Rate-limit and quota events are raised at most once per key per
    /// window, new-network events at most
    /// [`max_events_per_window`](Self::max_events_per_window) times.
    /// Defaults to 1 hour.
    pub dedupe_window: Duration,
    /// New-network events per key per dedupe window. Defaults to 3.
    pub max_events_per_window: u32,
    /// Unusual traffic: this hour's requests above `factor` × the trailing
    /// hourly average. Defaults to 5.
    pub traffic_factor: u32,
    /// Hours of history before traffic can be unusual. Defaults to 3.
    pub traffic_min_hours: u32,
    /// Fewer requests in an hour are never unusual. Defaults to 100.
    pub traffic_min_requests: u64,
    /// Keys tracked at most. Defaults to 10,000.
    pub max_keys: usize,
    /// Failing client networks tracked at most. Defaults to 4,096.
    pub max_networks: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            new_network_window: Duration::from_secs(30 * 86_400),
            burst_threshold: 20,
            burst_window: Duration::from_secs(5 * 60),
            dedupe_window: Duration::from_secs(3_600),
            max_events_per_window: 3,
            traffic_factor: 5,
            traffic_min_hours: 3,
            traffic_min_requests: 100,
            max_keys: 10_000,
            max_networks: 4_096,
        }
    }
}

impl MonitorConfig {
    /// An upper bound, in bytes, of the memory a [`Monitor`] with this
    /// configuration holds, whatever the traffic (entries, their network
    /// lists and the hash tables' spare capacity: a table holds at most
    /// twice its entries' slots).
    ///
    /// ```
    /// let bound = apikey::pipeline::MonitorConfig::default().memory_bound();
    /// assert!(bound < 8 * 1024 * 1024);
    /// ```
    pub fn memory_bound(&self) -> usize {
        let per_key = KEY_SLOT;
        let keys = per_shard(self.max_keys) * SHARDS;
        let nets = per_shard(self.max_networks) * SHARDS;
        2 * (keys * per_key + nets * NET_SLOT)
    }
}

/// Entries of one shard for `total` entries overall (at least one).
fn per_shard(total: usize) -> usize {
    total.div_ceil(SHARDS).max(1)
}

const KEY_SLOT: usize = std::mem::size_of::<(u64, KeyState)>() + 1;
const NET_SLOT: usize = std::mem::size_of::<(u64, NetState)>() + 1;

/// One key's monitoring state. What every verification reads and writes
/// comes first (the hour's count, the most recent network), so the common
/// case (the same network again, within the hour) touches one cache line
/// of it; the networks are kept inline, not behind a pointer.
#[derive(Default)]
#[repr(C)]
struct KeyState {
    /// The hour (unix seconds / 3600) being counted, its count, the
    /// trailing average of earlier hours and how many hours it holds.
    hour: i64,
    count: u64,
    average: f64,
    hours: u32,
    traffic_alerted: bool,
    /// Networks in use in `nets`.
    nets_len: u8,
    /// `(network, last seen in unix seconds)`: the first [`Self::nets_len`]
    /// entries, the most recently used first, at most [`NETWORKS_PER_KEY`].
    nets: [(u64, i64); NETWORKS_PER_KEY],
    /// Start of the current dedupe window for new-network events, and the
    /// events raised in it.
    net_window: i64,
    net_events: u32,
    failures: Burst,
    /// The last rate-limit and quota events (unix seconds; `None`: never),
    /// and the refusals since that were not reported.
    rate_limit: Option<i64>,
    rate_limit_suppressed: u64,
    quota: Option<i64>,
    quota_suppressed: u64,
}

/// Failures within one window.
#[derive(Default, Clone, Copy)]
struct Burst {
    window: i64,
    count: u64,
    raised: bool,
}

impl Burst {
    /// Counts one failure at `now`; `Some(count)` when this one makes the
    /// burst (once per window).
    fn fail(&mut self, now: i64, window: i64, threshold: u32) -> Option<u64> {
        if now.saturating_sub(self.window) >= window || now < self.window {
            *self = Self {
                window: now,
                count: 0,
                raised: false,
            };
        }
        self.count = self.count.saturating_add(1);
        if !self.raised && self.count >= u64::from(threshold.max(1)) {
            self.raised = true;
            return Some(self.count);
        }
        None
    }
}

type NetState = Burst;

type Table<V> = HashMap<u64, V>;

/// The key table: ids are random and only verified keys are tracked, so no
/// one chooses colliding ids; the multiply-xor hash is enough (the network
/// table, whose keys an attacker picks, keeps the keyed default hasher).
type KeyTable = HashMap<u64, KeyState, std::hash::BuildHasherDefault<FastHasher>>;

/// Monitoring: the alerts seed 001 asks for, raised by the pipeline itself.
///
/// A [`Monitor`] watches what the [`Authenticator`](crate::Authenticator)
/// and the [`Gate`](crate::web::Gate) decide and raises, through the audit
/// sink and an optional notification hook (any [`AuditSink`]):
///
/// | Event ([`AuditKind`]) | Raised when | At most |
/// |---|---|---|
/// | [`NewNetwork`](AuditKind::NewNetwork) | a key is used from a network (IPv4 /24, IPv6 /48) not seen for it within [`new_network_window`](MonitorConfig::new_network_window); the key's first use sets the baseline and raises nothing | [`max_events_per_window`](MonitorConfig::max_events_per_window) per key per [`dedupe_window`](MonitorConfig::dedupe_window) |
/// | [`FailureBurst`](AuditKind::FailureBurst) | [`burst_threshold`](MonitorConfig::burst_threshold) failed verifications within [`burst_window`](MonitorConfig::burst_window), of one key (after its tag matched: wrong secret, revoked, expired, ...) or from one client network (any failure) | one per key or network per burst window |
/// | [`RateLimitHit`](AuditKind::RateLimitHit) | the gate refuses a key with 429 `RATE_LIMITED` | one per key per dedupe window |
/// | [`QuotaExceeded`](AuditKind::QuotaExceeded) | the gate refuses a key with 429 `USAGE_EXCEEDED` (its own or its owner's credits ran out) | one per key per dedupe window |
/// | [`UnusualTraffic`](AuditKind::UnusualTraffic) | a key's requests this hour exceed [`traffic_factor`](MonitorConfig::traffic_factor) × its trailing hourly average (after [`traffic_min_hours`](MonitorConfig::traffic_min_hours) hours of history, and at least [`traffic_min_requests`](MonitorConfig::traffic_min_requests)) | one per key per hour |
///
/// Each event carries the key id and owner when it concerns a key; a
/// network is the masked prefix, never the full address.
///
/// # Bounded memory
///
/// State is kept for at most [`max_keys`](MonitorConfig::max_keys) keys
/// (each with at most [`NETWORKS_PER_KEY`] networks) and
/// [`max_networks`](MonitorConfig::max_networks) failing client networks,
/// whatever the traffic: when a table is full, an entry is evicted to make
/// room, so attacker-chosen addresses cannot grow it.
/// [`MonitorConfig::memory_bound`] states the bound in bytes; a key whose
/// entry was evicted starts a new baseline (its next network raises
/// nothing), a network's failure count starts again.
///
/// ```
/// use std::net::IpAddr;
/// use std::sync::Arc;
/// use apikey::*;
/// use apikey::pipeline::{Monitor, MonitorConfig};
/// use time::macros::datetime;
///
/// let audit = Arc::new(MemoryAuditSink::new());
/// let monitor = Monitor::new(MonitorConfig::default(), audit.clone());
/// let id = KeyId::from_u64(7);
/// let t = "2026-05-01T12:00:00Z".parse::<apikey::Timestamp>().unwrap();
/// let home: IpAddr = "198.51.100.4".parse().unwrap();
/// let away: IpAddr = "203.0.113.9".parse().unwrap();
/// monitor.used(id, None, Some(home), t); // the baseline
/// monitor.used(id, None, Some(home), t); // seen
/// monitor.used(id, None, Some(away), t); // new network
/// let kinds: Vec<&str> = audit.events().iter().map(|e| e.kind.as_str()).collect();
/// assert_eq!(kinds, ["new_network"]);
/// ```
///
/// Share one monitor (`Arc`) between the authenticator and the gate; set it with
/// [`Authenticator::with_monitor`](crate::Authenticator::with_monitor) or
/// [`KeyManager::with_monitor`](crate::KeyManager::with_monitor).
pub struct Monitor {
    config: MonitorConfig,
    sink: Arc<dyn AuditSink>,
    hook: Option<Arc<dyn AuditSink>>,
    keys: Box<[Mutex<KeyTable>]>,
    nets: Box<[Mutex<Table<NetState>>]>,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.config)
            .field("entries", &self.entries())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The network of `ip`: an IPv4 /24 or an IPv6 /48 (IPv4-mapped IPv6
/// addresses count as IPv4), as a tagged number.
fn network(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (1 << 63) | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => (u128::from(v6) >> 80) as u64,
    }
}

/// The [`IpNet`] of a [`network`] number.
fn ip_net(net: u64) -> Option<IpNet> {
    if net >> 63 == 1 {
        let v4 = std::net::Ipv4Addr::from(((net & 0xFF_FFFF) as u32) << 8);
        IpNet::new(IpAddr::V4(v4), 24).ok()
    } else {
        let v6 = std::net::Ipv6Addr::from(u128::from(net) << 80);
        IpNet::new(IpAddr::V6(v6), 48).ok()
    }
}

/// A shard index for `n` (ids are random; networks are mixed first).
fn shard_of(n: u64) -> usize {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// Makes room in a full `table` (at most `cap` entries) for one more entry:
/// evicts one entry, preferring one that `stale` says is stale.
fn make_room<V, H: std::hash::BuildHasher>(
    table: &mut HashMap<u64, V, H>,
    cap: usize,
    stale: impl Fn(&V) -> bool,
) {
    if table.len() < cap {
        return;
    }
    let victim = table
        .iter()
        .find(|(_, v)| stale(v))
        .or_else(|| table.iter().next())
        .map(|(k, _)| *k);
    if let Some(k) = victim {
        table.remove(&k);
    }
}

impl Monitor {
    /// A monitor raising its events into `sink` (the audit sink).
    pub fn new(config: MonitorConfig, sink: Arc<dyn AuditSink>) -> Self {
        Self {
            keys: (0..SHARDS)
                .map(|_| Mutex::new(KeyTable::default()))
                .collect(),
            nets: (0..SHARDS).map(|_| Mutex::new(Table::default())).collect(),
            config,
            sink,
            hook: None,
        }
    }

    /// Also sends every monitoring event to `hook` (a pager, a chat
    /// webhook queue). Called on the request's task: a hook that talks to
    /// the network should hand the event to a queue. Defaults to none.
    pub fn with_hook(mut self, hook: Arc<dyn AuditSink>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.config
    }

    /// Entries held: keys plus failing networks. At most
    /// `max_keys + max_networks` (rounded up to whole shards).
    pub fn entries(&self) -> usize {
        let k: usize = self.keys.iter().map(|s| lock(s).len()).sum();
        let n: usize = self.nets.iter().map(|s| lock(s).len()).sum();
        k + n
    }

    /// The memory held now, in bytes, counted as
    /// [`MonitorConfig::memory_bound`] counts it (never above it).
    pub fn memory_used(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|s| lock(s).capacity() * KEY_SLOT)
            .sum();
        let nets: usize = self
            .nets
            .iter()
            .map(|s| lock(s).capacity() * NET_SLOT)
            .sum();
        keys + nets
    }

    fn emit(&self, event: AuditEvent) {
        crate::metrics::monitoring_event(event.kind.as_str());
        self.sink.record(&event);
        if let Some(h) = &self.hook {
            h.record(&event);
        }
    }

    /// Runs `f` on `id`'s state, made (room first) when the key has none.
    /// A tracked key (every verification but its first) costs one lookup.
    fn with_key<R>(&self, id: KeyId, f: impl FnOnce(&mut KeyState) -> R) -> R {
        let key = id.as_u64();
        let mut shard = lock(&self.keys[shard_of(key)]);
        if let Some(state) = shard.get_mut(&key) {
            return f(state);
        }
        make_room(&mut shard, per_shard(self.config.max_keys), |_| false);
        f(shard.entry(key).or_default())
    }

    /// A successful verification of `id` (owned by `owner`) from `ip` at
    /// `now`: the new-network and unusual-traffic checks.
    pub fn used(&self, id: KeyId, owner: Option<&str>, ip: Option<IpAddr>, now: Timestamp) {
        self.verified(id, || owner, ip, now);
    }

    /// [`used`](Self::used) with the owner read only when an event is
    /// raised (the authenticator's path: most verifications raise none).
    pub(crate) fn verified<'o>(
        &self,
        id: KeyId,
        owner: impl FnOnce() -> Option<&'o str>,
        ip: Option<IpAddr>,
        now: Timestamp,
    ) {
        let c = &self.config;
        let t = now.as_unix_secs();
        let (new_net, unusual) = self.with_key(id, |k| {
            let new_net = ip.and_then(|ip| k.network_used(network(ip), t, c));
            (new_net, k.count_request(t, c))
        });
        if new_net.is_none() && unusual.is_none() {
            return;
        }
        let owner = owner();
        if let Some(net) = new_net.and_then(ip_net) {
            self.emit(AuditEvent::new(now, AuditKind::NewNetwork { network: net }).key(id, owner));
        }
        if let Some((last_hour, average)) = unusual {
            self.emit(
                AuditEvent::new(
                    now,
                    AuditKind::UnusualTraffic {
                        last_hour,
                        trailing_average: average,
                    },
                )
                .key(id, owner),
            );
        }
    }

    /// A failed verification of key `id` after its tag matched (wrong
    /// secret, revoked, expired, ...): the per-key burst check.
    pub fn key_failed(&self, id: KeyId, owner: Option<&str>, now: Timestamp) {
        let c = &self.config;
        let window = i64::try_from(c.burst_window.as_secs()).unwrap_or(i64::MAX);
        let burst = self.with_key(id, |k| {
            k.failures
                .fail(now.as_unix_secs(), window, c.burst_threshold)
        });
        if let Some(failures) = burst {
            self.emit(
                AuditEvent::new(
                    now,
                    AuditKind::FailureBurst {
                        network: None,
                        failures,
                        window_secs: window.max(0).unsigned_abs(),
                    },
                )
                .key(id, owner),
            );
        }
    }

    /// A failed verification (any reason) from `ip`: the per-network burst
    /// check.
    pub fn network_failed(&self, ip: IpAddr, now: Timestamp) {
        let c = &self.config;
        let window = i64::try_from(c.burst_window.as_secs()).unwrap_or(i64::MAX);
        let net = network(ip);
        let t = now.as_unix_secs();
        let burst = {
            let mut shard = lock(&self.nets[shard_of(net)]);
            if !shard.contains_key(&net) {
                make_room(&mut shard, per_shard(c.max_networks), |b| {
                    t.saturating_sub(b.window) >= window
                });
            }
            shard
                .entry(net)
                .or_default()
                .fail(t, window, c.burst_threshold)
        };
        if let (Some(failures), Some(network)) = (burst, ip_net(net)) {
            self.emit(AuditEvent::new(
                now,
                AuditKind::FailureBurst {
                    network: Some(network),
                    failures,
                    window_secs: window.max(0).unsigned_abs(),
                },
            ));
        }
    }

    /// The gate refused `id` with 429 `RATE_LIMITED`.
    pub fn rate_limited(&self, id: KeyId, owner: Option<&str>, now: Timestamp) {
        let window = i64::try_from(self.config.dedupe_window.as_secs()).unwrap_or(i64::MAX);
        let t = now.as_unix_secs();
        let raise = self.with_key(id, |k| {
            once_per(&mut k.rate_limit, &mut k.rate_limit_suppressed, t, window)
        });
        if let Some(suppressed) = raise {
            self.emit(AuditEvent::new(now, AuditKind::RateLimitHit { suppressed }).key(id, owner));
        }
    }

    /// The gate refused `id` with 429 `USAGE_EXCEEDED` (credits).
    pub fn quota_exceeded(&self, id: KeyId, owner: Option<&str>, now: Timestamp) {
        let window = i64::try_from(self.config.dedupe_window.as_secs()).unwrap_or(i64::MAX);
        let t = now.as_unix_secs();
        let raise = self.with_key(id, |k| {
            once_per(&mut k.quota, &mut k.quota_suppressed, t, window)
        });
        if let Some(suppressed) = raise {
            self.emit(AuditEvent::new(now, AuditKind::QuotaExceeded { suppressed }).key(id, owner));
        }
    }
}

/// `Some(refusals not reported since the last event)` when an event is due
/// (none yet, or the last one a window ago); counts the refusal otherwise.
fn once_per(last: &mut Option<i64>, suppressed: &mut u64, now: i64, window: i64) -> Option<u64> {
    match *last {
        Some(at) if now.saturating_sub(at) < window && now >= at => {
            *suppressed = suppressed.saturating_add(1);
            None
        }
        _ => {
            *last = Some(now);
            Some(std::mem::take(suppressed))
        }
    }
}

impl KeyState {
    /// Records `net` at `now`; `Some(net)` when it is new for the key (not
    /// the first network, not seen within the window) and the key's event
    /// budget allows an event.
    fn network_used(&mut self, net: u64, now: i64, c: &MonitorConfig) -> Option<u64> {
        let len = usize::from(self.nets_len).min(NETWORKS_PER_KEY);
        let first = len == 0;
        let window = i64::try_from(c.new_network_window.as_secs()).unwrap_or(i64::MAX);
        // The common case: the most recent network again.
        if let Some((n, seen)) = self.nets.first_mut()
            && !first
            && *n == net
            && now.saturating_sub(*seen) < window
        {
            *seen = (*seen).max(now);
            return None;
        }
        let new = match self.nets[..len].iter().position(|(n, _)| *n == net) {
            Some(i) => {
                let seen = self.nets[i].1;
                let stale = now.saturating_sub(seen) >= window;
                self.nets[i].1 = seen.max(now);
                // Most recent first.
                self.nets[..=i].rotate_right(1);
                stale
            }
            None => {
                // Full: the least recently seen is forgotten.
                let keep = if len >= NETWORKS_PER_KEY {
                    let oldest = self.nets[..len]
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, seen))| *seen)
                        .map_or(len - 1, |(i, _)| i);
                    self.nets[oldest..len].rotate_left(1);
                    len - 1
                } else {
                    len
                };
                self.nets[..=keep].rotate_right(1);
                self.nets[0] = (net, now);
                self.nets_len = u8::try_from(keep + 1).unwrap_or(u8::MAX);
                true
            }
        };
        if !new || first {
            return None;
        }
        let dedupe = i64::try_from(c.dedupe_window.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(self.net_window) >= dedupe || now < self.net_window {
            self.net_window = now;
            self.net_events = 0;
        }
        if self.net_events >= c.max_events_per_window {
            return None;
        }
        self.net_events += 1;
        Some(net)
    }

    /// Counts one request at `now`; `Some((this hour, trailing average))`
    /// when the hour just became unusual.
    fn count_request(&mut self, now: i64, c: &MonitorConfig) -> Option<(u64, u64)> {
        let hour = now.div_euclid(3600);
        if hour != self.hour {
            if self.hours > 0 || self.count > 0 {
                // Fold the finished hour and the silent hours after it
                // (at most a week of them) into the trailing average.
                let silent = hour
                    .saturating_sub(self.hour)
                    .saturating_sub(1)
                    .clamp(0, 168);
                self.fold(self.count);
                for _ in 0..silent {
                    self.fold(0);
                }
            }
            self.hour = hour;
            self.count = 0;
            self.traffic_alerted = false;
        }
        self.count = self.count.saturating_add(1);
        let unusual = !self.traffic_alerted
            && self.hours >= c.traffic_min_hours
            && self.count >= c.traffic_min_requests
            && self.count as f64 > f64::from(c.traffic_factor) * self.average.max(1.0);
        if unusual {
            self.traffic_alerted = true;
            return Some((self.count, self.average.round() as u64));
        }
        None
    }

    /// Adds one finished hour to the trailing average (the mean of the
    /// last day, exponentially weighted beyond it).
    fn fold(&mut self, count: u64) {
        self.hours = self.hours.saturating_add(1);
        let n = f64::from(self.hours.min(24));
        self.average += (count as f64 - self.average) / n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        let a = network("198.51.100.4".parse().unwrap());
        assert_eq!(a, network("198.51.100.250".parse().unwrap()));
        assert_ne!(a, network("198.51.101.4".parse().unwrap()));
        assert_eq!(a, network("::ffff:198.51.100.9".parse().unwrap()));
        let b = network("2001:db8:1:2::1".parse().unwrap());
        assert_eq!(b, network("2001:db8:1:ffff::1".parse().unwrap()));
        assert_ne!(b, network("2001:db8:2::1".parse().unwrap()));
        assert_eq!(ip_net(a).unwrap().to_string(), "198.51.100.0/24");
        assert_eq!(ip_net(b).unwrap().to_string(), "2001:db8:1::/48");
    }

    /// The per-key network list: the first network is the baseline, up to
    /// `NETWORKS_PER_KEY` are remembered, the least recently seen is
    /// forgotten first, and one not seen within the window is new again.
    #[test]
    fn networks_are_remembered_most_recent_first_and_forgotten_oldest_first() {
        let c = MonitorConfig {
            max_events_per_window: u32::MAX,
            new_network_window: Duration::from_secs(1_000),
            ..MonitorConfig::default()
        };
        let mut k = KeyState::default();
        let t = 1_000_000;
        assert_eq!(k.network_used(1, t, &c), None, "the baseline");
        assert_eq!(k.network_used(1, t, &c), None);
        for n in 2..=8 {
            assert_eq!(k.network_used(n, t + n as i64, &c), Some(n), "network {n}");
        }
        assert_eq!(usize::from(k.nets_len), NETWORKS_PER_KEY);
        // Network 1 used again: now the most recent; 2 is the least recent.
        assert_eq!(k.network_used(1, t + 20, &c), None);
        assert_eq!(k.nets[0].0, 1);
        // A ninth network forgets 2, the least recently seen.
        assert_eq!(k.network_used(9, t + 21, &c), Some(9));
        assert_eq!(usize::from(k.nets_len), NETWORKS_PER_KEY);
        let kept: Vec<u64> = k.nets.iter().map(|(n, _)| *n).collect();
        assert!(
            !kept.contains(&2) && kept.contains(&1) && kept.contains(&3),
            "{kept:?}"
        );
        assert_eq!(k.network_used(3, t + 22, &c), None, "still remembered");
        assert_eq!(k.network_used(2, t + 23, &c), Some(2), "forgotten, so new");
        // Not seen within the window: new again, whether first or not.
        let later = t + 23 + 1_000;
        assert_eq!(k.network_used(2, later, &c), Some(2));
        assert_eq!(k.network_used(2, later, &c), None);
        assert_eq!(k.network_used(9, later + 1, &c), Some(9));
    }
}
