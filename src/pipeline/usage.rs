use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use time::Date;

use crate::Timestamp;

use crate::error::StoreError;
use crate::key::KeyId;
use crate::store::{FlushId, UsageBatch, UsageDelta, UsageStore};

const SHARDS: usize = 16;

#[derive(Clone)]
struct Pending {
    count: u64,
    last: Timestamp,
    /// The address and route of the latest use.
    ip: Option<IpAddr>,
    route: Option<Arc<str>>,
}

/// The longest route kept, in bytes.
const MAX_ROUTE_LEN: usize = 200;

/// The longest path segment kept as written (longer ones are `*`).
const MAX_SEGMENT_LEN: usize = 24;

/// The route of a use: the request's method and path, as the web edge saw
/// them, kept as `"METHOD /path"` in a normal form that cannot carry a
/// secret or a control character:
///
/// * the query and fragment are dropped;
/// * a method other than 1 to 16 ASCII capital letters is `OTHER`;
/// * a path segment is kept only when it is 1 to 24 characters of
///   `A-Z a-z 0-9 . _ ~ -` with at least one letter (`v1`, `items`,
///   `search`, and so a short id with a letter, such as an 11-character
///   key id); any other segment (a number, a longer id or token, a key or
///   its body, anything percent-encoded, an e-mail address) becomes `*`,
///   so `GET /v1/items/42` is kept as `GET /v1/items/*`;
/// * the whole is cut to 200 bytes (always ASCII).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RouteOf<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
}

/// Whether a path segment is kept as written (see [`RouteOf`]).
fn plain_segment(segment: &str) -> bool {
    segment.len() <= MAX_SEGMENT_LEN
        && segment.bytes().any(|b| b.is_ascii_alphabetic())
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

impl<'a> RouteOf<'a> {
    /// A route given as text: `"METHOD /path"`, or a path alone.
    pub(crate) fn parse(text: &'a str) -> Self {
        match text.split_once(' ') {
            Some((method, path)) => Self { method, path },
            None => Self {
                method: "",
                path: text,
            },
        }
    }

    /// The normal form's pieces, in order, before the length cut.
    fn pieces(&self) -> impl Iterator<Item = &'a str> + 'a {
        let method = self.method;
        let method = if method.is_empty() {
            None
        } else if method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase()) {
            Some(method)
        } else {
            Some("OTHER")
        };
        let path = self.path;
        let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
        let path = path.strip_prefix('/').unwrap_or(path);
        let head = method.into_iter().flat_map(|m| [m, " "]);
        let segments = path.split('/').flat_map(|seg| {
            let seg = if seg.is_empty() || plain_segment(seg) {
                seg
            } else {
                "*"
            };
            ["/", seg]
        });
        head.chain(segments)
    }

    /// The normal form's pieces cut to [`MAX_ROUTE_LEN`] bytes (every piece
    /// is ASCII, so any cut is a character boundary).
    fn cut_pieces(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut room = MAX_ROUTE_LEN;
        self.pieces().map_while(move |p| {
            if room == 0 {
                return None;
            }
            let piece = &p[..p.len().min(room)];
            room -= piece.len();
            Some(piece)
        })
    }

    /// Whether `kept` is this route's normal form (no allocation).
    fn is(&self, kept: &str) -> bool {
        let mut rest = kept;
        for piece in self.cut_pieces() {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    fn to_arc(self) -> Arc<str> {
        self.cut_pieces().collect::<String>().into()
    }
}

/// Multiply-xor hasher for `(key id, day)` (and the monitor's key ids):
/// ids are random and only keys that verified are counted, so no one can
/// choose colliding keys.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

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

/// Usage tracking without a store write per request.
///
/// [`UsageRecorder`] counts successful verifications per key and UTC day in
/// memory (16 shards, each a short mutex around a small map) and writes them
/// to the store in batches with [`UsageStore::record_usage`], which updates
/// `last_used_at` and the daily and monthly counters of each record
/// ([`UsageCounters`](crate::UsageCounters)).
///
/// # Flushing, off the request path
///
/// Verification only counts; it never writes. [`UsageRecorder::flush`] (and
/// [`KeyManager::flush`](crate::KeyManager::flush)) is a plain future: spawn
/// it from a timer (every few seconds to a minute), so the store lags the
/// truth by at most the timer's period plus one flush.
///
/// # Guarantees
///
/// * No count is lost or doubled under concurrency: each count is taken out
///   of memory by exactly one flush, into one batch with a [`FlushId`].
/// * No count is lost when a flush fails or is cancelled (its future dropped
///   at any await point: a client disconnect, a timeout, a shutdown): the
///   batch stays in the recorder's outbox until a flush of it returns `Ok`,
///   and is sent again, with the same id, by the next flush.
/// * So delivery is exactly once with a store that records flush ids
///   ([`MemoryStore`](crate::MemoryStore), the SQL stores of `apikey-sqlx`),
///   and at least once with a store that does not (see [`UsageStore`]).
///
/// # Shutdown
///
/// Stop taking requests, then `flush().await` until it returns `Ok` (or call
/// [`KeyManager::shutdown`](crate::KeyManager::shutdown)), then exit: there
/// is no async drop, and counts still in memory are lost with the process.
///
/// In-memory usage counts waiting to be flushed to a store.
///
/// ```
/// use apikey::{KeyId, MemoryStore, UsageRecorder};
/// use time::macros::datetime;
/// # tokio_test_block_on(async {
/// let usage = UsageRecorder::new(std::time::Duration::from_secs(60));
/// let now = "2026-05-01T12:00:00Z".parse::<apikey::Timestamp>().unwrap();
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
    /// Batches taken out of the shards and not yet acknowledged by a store,
    /// oldest first.
    outbox: Mutex<Vec<Outgoing>>,
    last_flush: AtomicI64,
    interval_micros: i64,
}

/// A batch in the outbox.
struct Outgoing {
    batch: UsageBatch,
    /// A flush is sending it right now (cleared when that flush ends,
    /// however it ends, by [`Sending`]'s `Drop`).
    sending: bool,
    /// It was sent at least once: its outcome may be unknown, so it keeps
    /// its id and contents.
    attempted: bool,
}

/// Marks a batch as being sent; clears the mark when dropped, so a flush
/// future dropped mid-await leaves the batch to the next flush.
struct Sending<'a> {
    outbox: &'a Mutex<Vec<Outgoing>>,
    id: FlushId,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = outbox.iter_mut().find(|o| o.batch.id == self.id) {
            o.sending = false;
        }
    }
}

impl fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageRecorder")
            .field("pending", &self.pending())
            .field("interval_micros", &self.interval_micros)
            .finish()
    }
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UsageRecorder {
    /// How often an authenticator made by
    /// [`Authenticator::new`](crate::Authenticator::new) writes its usage
    /// counts: the gate's axum layer starts a flush in the background at
    /// most once per interval.
    pub const DEFAULT_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// A recorder whose [`flush_due`](Self::flush_due) fires every `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            outbox: Mutex::new(Vec::new()),
            last_flush: AtomicI64::new(i64::MIN),
            interval_micros: i64::try_from(interval.as_micros()).unwrap_or(i64::MAX),
        }
    }

    fn shard(&self, id: KeyId) -> &Mutex<Shard> {
        &self.shards[(id.as_u64() % SHARDS as u64) as usize]
    }

    /// Counts one successful verification of `id` at `now` (its UTC day),
    /// from an unknown address and route.
    pub fn record(&self, id: KeyId, now: Timestamp) {
        self.record_from(id, now, None, None);
    }

    /// Counts one successful verification of `id` at `now` (its UTC day)
    /// from `ip` on `route` (`"GET /v1/search"`, or a path alone; kept in a
    /// normal form without the query, with every segment that is not a
    /// short word (a number, a key, anything over 24 characters) as `*`
    /// (a short id with a letter is kept), ASCII only,
    /// at most 200 bytes), which become the record's
    /// `last_used_ip` and `last_used_route` at the next flush when this is
    /// the key's latest use.
    ///
    /// ```
    /// use apikey::{KeyId, UsageRecorder};
    /// let usage = UsageRecorder::new(std::time::Duration::from_secs(60));
    /// let now = "2026-05-01T12:00:00Z".parse::<apikey::Timestamp>().unwrap();
    /// let ip = "198.51.100.7".parse().ok();
    /// usage.record_use(KeyId::from_u64(7), now, ip, Some("GET /v1/search"));
    /// assert_eq!(usage.pending(), 1);
    /// ```
    pub fn record_use(&self, id: KeyId, now: Timestamp, ip: Option<IpAddr>, route: Option<&str>) {
        let route = route.map(RouteOf::parse);
        self.record_from(id, now, ip, route);
    }

    /// [`record_use`](Self::record_use) with the route in its two parts:
    /// no allocation when the key's latest route is the same.
    pub(crate) fn record_from(
        &self,
        id: KeyId,
        now: Timestamp,
        ip: Option<IpAddr>,
        route: Option<RouteOf<'_>>,
    ) {
        let mut shard = lock(self.shard(id));
        let e = shard
            .entry((id.as_u64(), now.utc_date()))
            .or_insert(Pending {
                count: 0,
                last: now,
                ip: None,
                route: None,
            });
        e.count = e.count.saturating_add(1);
        if now >= e.last {
            e.last = now;
            e.ip = ip;
            match (route, &e.route) {
                (Some(r), Some(kept)) if r.is(kept) => {}
                (r, _) => e.route = r.map(RouteOf::to_arc),
            }
        }
    }

    /// Total counts not yet acknowledged by a store (in memory and in
    /// batches waiting to be sent again).
    pub fn pending(&self) -> u64 {
        let counted: u64 = self
            .shards
            .iter()
            .map(|s| lock(s).values().map(|p| p.count).sum::<u64>())
            .sum();
        let queued: u64 = self
            .outbox()
            .iter()
            .map(|o| o.batch.deltas.iter().map(|d| d.count).sum::<u64>())
            .sum();
        counted.saturating_add(queued)
    }

    /// Batches taken out of memory and waiting for an acknowledgement.
    pub fn queued_batches(&self) -> usize {
        self.outbox().len()
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Vec<Outgoing>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a flush is due at `now`; claims it (only one caller per
    /// interval gets `true`). The first call is always due.
    pub fn flush_due(&self, now: Timestamp) -> bool {
        let now = now.as_unix_micros();
        let last = self.last_flush.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_micros
            && self
                .last_flush
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Writes every pending count to `store` and returns the number of uses
    /// this call wrote. Counts are moved into a batch with a fresh
    /// [`FlushId`] (merged into the newest batch instead if that one was
    /// never sent); then every batch in the outbox that no other flush is
    /// sending is written, oldest first, and removed once the store
    /// acknowledged it ([`FlushOutcome::Applied`](crate::FlushOutcome) or
    /// `AlreadyApplied`).
    ///
    /// Cancellation-safe: dropping the future at any point loses nothing;
    /// the batch it was sending is sent again, with the same id, by the
    /// next flush.
    ///
    /// # Errors
    /// The store's error; the batch stays queued for the next flush.
    pub async fn flush<S: UsageStore + ?Sized>(
        &self,
        store: &S,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let previous = self
            .last_flush
            .swap(now.as_unix_micros(), Ordering::Relaxed);
        let lag = (previous != i64::MIN)
            .then(|| now.as_unix_micros().saturating_sub(previous) as f64 / 1e6)
            .filter(|l| *l >= 0.0);
        self.take_pending();
        let mut written = 0u64;
        loop {
            let next = {
                let mut outbox = self.outbox();
                outbox.iter_mut().find(|o| !o.sending).map(|o| {
                    o.sending = true;
                    o.attempted = true;
                    o.batch.clone()
                })
            };
            let Some(batch) = next else {
                return Ok(written);
            };
            let _sending = Sending {
                outbox: &self.outbox,
                id: batch.id,
            };
            let started = crate::metrics::Started::now();
            let recorded =
                crate::trace::flush(batch.deltas.len(), store.record_usage(&batch)).await;
            crate::metrics::store_call("record_usage", started, &recorded);
            recorded?;
            crate::metrics::usage_flushed(batch.deltas.len(), lag);
            self.outbox().retain(|o| o.batch.id != batch.id);
            written = written.saturating_add(batch.deltas.iter().map(|d| d.count).sum());
        }
    }

    /// Moves the counts out of the shards into the outbox.
    fn take_pending(&self) {
        let mut deltas: Vec<UsageDelta> = Vec::new();
        for s in self.shards.iter() {
            let taken = std::mem::take(&mut *lock(s));
            deltas.extend(taken.into_iter().map(|((id, day), p)| {
                UsageDelta::new(KeyId::from_u64(id), day, p.count, p.last).from(p.ip, p.route)
            }));
        }
        if deltas.is_empty() {
            return;
        }
        let mut outbox = self.outbox();
        match outbox.last_mut() {
            Some(o) if !o.attempted && !o.sending => merge(&mut o.batch.deltas, deltas),
            _ => {
                deltas.sort_by_key(|d| (d.id, d.day));
                outbox.push(Outgoing {
                    batch: UsageBatch::new(deltas),
                    sending: false,
                    attempted: false,
                });
            }
        }
    }
}

/// Adds `more` into `into` (one delta per key and day), sorted by key and day.
fn merge(into: &mut Vec<UsageDelta>, more: Vec<UsageDelta>) {
    let mut all: HashMap<(KeyId, Date), UsageDelta> =
        into.drain(..).map(|d| ((d.id, d.day), d)).collect();
    for d in more {
        all.entry((d.id, d.day))
            .and_modify(|e| {
                e.count = e.count.saturating_add(d.count);
                if d.last_used_at >= e.last_used_at {
                    e.last_used_at = d.last_used_at;
                    e.last_used_ip = d.last_used_ip;
                    e.last_used_route = d.last_used_route.clone();
                }
            })
            .or_insert(d);
    }
    into.extend(all.into_values());
    into.sort_by_key(|d| (d.id, d.day));
}

#[cfg(test)]
mod route_tests {
    use super::RouteOf;

    fn kept(method: &str, path: &str) -> String {
        let r = RouteOf { method, path };
        let text = r.to_arc();
        assert!(r.is(&text), "{method:?} {path:?} -> {text:?}");
        assert!(text.len() <= 200 && text.bytes().all(|b| (b' '..=b'~').contains(&b)));
        text.to_string()
    }

    /// Issue 22: the last-used route's normal form carries no query, no
    /// id, token or key, no control character, and is bounded.
    #[test]
    fn routes_are_kept_in_a_normal_form() {
        let key = "sk_live_wQEOjsQkB3a6H1RlgDFP9Yt0xZ4LmNcVbTeUiKoPqAs";
        for (method, path, want) in [
            ("GET", "/v1/search", "GET /v1/search"),
            ("GET", "/v1/items/42?api_token=zzz#top", "GET /v1/items/*"),
            ("POST", "/", "POST /"),
            ("GET", "", "GET /"),
            (
                "DELETE",
                "/users/ada@example.com/keys",
                "DELETE /users/*/keys",
            ),
            ("GET", &format!("/check/{key}"), "GET /check/*"),
            ("GET", &format!("/x/{}", &key[8..]), "GET /x/*"),
            ("GET", "/items/%73k_live_abc", "GET /items/*"),
            ("GET", "/a\u{0}b/c\u{9b}31m/\u{202e}x", "GET /*/*/*"),
            ("get", "/a", "OTHER /a"),
            ("", "search", "/search"),
            ("", "/v1/a-b_c.d~e", "/v1/a-b_c.d~e"),
        ] {
            assert_eq!(kept(method, path), want, "{method:?} {path:?}");
        }
        let long_method = "X".repeat(60_000);
        assert_eq!(kept(&long_method, "/a"), "OTHER /a");
        let many = "/seg".repeat(1_000);
        assert_eq!(kept("GET", &many).len(), 200);
        assert_eq!(
            RouteOf::parse("PUT /v1/keys/9").to_arc().as_ref(),
            "PUT /v1/keys/*"
        );
        // A different route is not taken for the kept one.
        let r = RouteOf {
            method: "GET",
            path: "/v1/a",
        };
        assert!(!r.is("GET /v1/ab") && !r.is("GET /v1/") && !r.is("POST /v1/a"));
    }
}
