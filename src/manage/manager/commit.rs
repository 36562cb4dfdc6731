//! The manager's one way to write: plan over what was read, commit with
//! guards, retry a conflicting plan (bounded, with jittered backoff), and
//! learn the outcome of a commit whose answer was lost.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::KeyManager;
use crate::clock::Clock;
use crate::error::{Error, Result, StoreError, StoreErrorKind};
use crate::key::KeyId;
use crate::limits::Limits;
use crate::record::KeyRecord;
use crate::store::{Changes, KeyQuery, KeyStoreWrite, Put, UsageStore};

/// How often a plan is made again after a conflicting commit (the record
/// or the owner changed concurrently), with a timed [`backoff`] before each:
/// at most about 5.8 s of waiting in all, then `STORE_UNAVAILABLE`.
pub(crate) const MAX_RETRIES: u32 = 64;
/// How often a commit whose answer was lost (a timeout, a dropped
/// connection) is sent again to learn whether it committed.
const RESENDS: usize = 2;

/// Whether a failed write's outcome is unknown: the deadline passed or the
/// connection was lost, possibly while the database was committing (both
/// PostgreSQL and SQLite finish a COMMIT whose client went away).
fn outcome_unknown(e: &StoreError) -> bool {
    matches!(
        e.kind(),
        StoreErrorKind::Timeout | StoreErrorKind::Unavailable
    )
}

/// Whether `stored` is the record `ours` that this manager wrote: the same
/// id, digest, legacy index and predecessor (ids are random 64-bit values
/// and digests are keyed by the server secret, so another write never
/// matches).
fn same_key(stored: &KeyRecord, ours: &KeyRecord) -> bool {
    stored.id == ours.id
        && stored.digest == ours.digest
        && stored.legacy.as_ref().map(|l| &l.index) == ours.legacy.as_ref().map(|l| &l.index)
        && stored.rotated_from == ours.rotated_from
}

/// The error of a plan that kept conflicting: the store is too contended
/// to decide (`STORE_UNAVAILABLE`, 503; nothing was written).
pub(crate) fn contended() -> Error {
    Error::StoreUnavailable(StoreError::new(StoreErrorKind::Conflict))
}

/// The first backoff's ceiling: about one database round trip.
const BACKOFF_BASE: Duration = Duration::from_micros(500);
/// The largest backoff ceiling. With [`MAX_RETRIES`] plans, the waiting of
/// one call is at most 0.5 + 1 + ... + 64 + 56 × 100 ms < 5.8 s (2.9 s
/// on average), after which it fails with `STORE_UNAVAILABLE`.
///
/// Sized for the case that makes conflicts across instances: an instance
/// whose plans commit on its cached owner count (one round trip each)
/// keeps the owner busy for a while (see [`OwnerGates::turn_over`]), and
/// the other instances, which must read the owner's listing first, get in
/// between mostly when it pauses or its queue drains. Their patience must
/// outlast such a burst: with 32 plans and a 32 ms ceiling, 4 instances ×
/// 16 tasks × 50 keys on a loaded PostgreSQL lost 1–3 creates of 800.
const BACKOFF_CAP: Duration = Duration::from_millis(100);

/// The backoff ceiling before plan `attempt + 1`: [`BACKOFF_BASE`] doubled
/// per attempt, at most [`BACKOFF_CAP`].
fn backoff_ceiling(attempt: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP)
}

/// Waits a random time in `[0, ceiling(attempt)]` ("full jitter") after a
/// conflicting commit, before the plan is made again.
///
/// The wait is measured in time, not in executor yields: a conflict with
/// another instance costs that instance a database round trip, so a backoff
/// that only yields comes back before anything changed and conflicts again
/// (4 instances × 16 tasks on one PostgreSQL owner exhausted 32 plans).
/// The crate core is runtime-agnostic (no tokio without the `axum`
/// feature), so the wait is driven by one helper thread, started on the
/// first conflict of the process, that wakes sleeping plans at their
/// deadlines (the approach of `futures-timer`); it holds nothing else and
/// takes no lock a plan holds. If the thread cannot be started, the wait
/// falls back to yielding to the executor.
pub(crate) async fn backoff(attempt: u32) {
    use rand_core::Rng;
    let ceiling = backoff_ceiling(attempt);
    let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    let wait = Duration::from_micros(crate::OsRng.next_u64() % micros.saturating_add(1));
    Sleep::new(wait).await;
}

/// A future ready once its deadline passed, woken by [`timer`].
struct Sleep {
    deadline: Instant,
    /// Its key in the timer's queue, once registered.
    key: Option<(Instant, u64)>,
}

impl Sleep {
    fn new(wait: Duration) -> Self {
        Self {
            deadline: Instant::now() + wait,
            key: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let Some(timer) = timer() else {
            // No helper thread: yield once per poll until the deadline.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        let mut queue = timer.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let key = match self.key {
            Some(key) => key,
            None => {
                queue.next = queue.next.wrapping_add(1);
                (self.deadline, queue.next)
            }
        };
        self.key = Some(key);
        let first = queue.sleepers.keys().next().is_none_or(|k| key < *k);
        queue.sleepers.insert(key, cx.waker().clone());
        drop(queue);
        if first {
            timer.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let (Some(key), Some(timer)) = (self.key, timer()) {
            timer
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sleepers
                .remove(&key);
        }
    }
}

/// The sleeping plans, by deadline.
#[derive(Default)]
struct Queue {
    sleepers: BTreeMap<(Instant, u64), Waker>,
    next: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// The process's backoff timer: a helper thread waking [`Sleep`]s at their
/// deadlines, started on first use; `None` if it could not be started.
fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("apikey-backoff".into())
            .spawn(move || run_timer(timer))
            .ok()
            .map(|_| timer)
    })
}

fn run_timer(timer: &Timer) {
    let mut due = Vec::new();
    let mut queue = timer.queue.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        while let Some(entry) = queue.sleepers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            // Wake without the lock: a waker may poll its task at once.
            drop(queue);
            due.drain(..).for_each(Waker::wake);
            queue = timer.queue.lock().unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        queue = match queue.sleepers.keys().next() {
            Some(&(deadline, _)) => {
                let wait = deadline.saturating_duration_since(now);
                timer
                    .changed
                    .wait_timeout(queue, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => timer
                .changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner),
        };
    }
}

/// One gate per owner that has a guarded plan in flight in this process,
/// and the owner counts this process last committed.
///
/// A guarded plan (an owner snapshot, then a commit with its version)
/// conflicts with every other guarded commit on the owner that lands in
/// between. Plans of one process on one owner therefore pass the gate one
/// at a time, so they never conflict with each other: 16 tasks creating
/// keys for one owner commit one after another instead of re-planning
/// (`examples/contention.rs`). Plans of other processes still meet the
/// store's guard, and are re-planned on a conflict after a timed
/// [`backoff`].
///
/// Waiting is cancel-safe: a released gate wakes every waiter, and each
/// one still alive tries again.
#[derive(Default)]
pub(crate) struct OwnerGates {
    held: Mutex<HashMap<String, Vec<Waker>>>,
    counts: Mutex<HashMap<String, CountBound>>,
    /// Owners on which this process met a conflict lately: when, and how
    /// many commits it made on its cache since (see [`Self::turn_over`]).
    contended: Mutex<HashMap<String, (Instant, u32)>>,
}

/// How long after a conflict an owner counts as shared with other
/// instances.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// On a shared owner, how many creates in a row a process plans on its
/// cache before it pauses and plans on the listing like the others.
const TURN: u32 = 4;

/// What a guarded commit of this process left behind: the owner version
/// it produced and an upper bound of the owner's counting keys at that
/// version.
///
/// Sound because every write that can raise an owner's count (create,
/// import, derive, revival by update or enable) is guarded and so moves
/// the version, while the writes that lower it (revoke, disable, delete,
/// rotation, expiry passing) need not: as long as the stored version is
/// still `version`, the owner holds at most `count` counting keys. A store
/// never reuses a version (it only ever adds one), so a stale entry can
/// only make a commit conflict, never pass. It assumes every manager
/// writing to the store keeps the owner limit (a manager without the limit
/// inserts unguarded) and a clock that does not run backwards (an expired
/// key would count again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CountBound {
    pub(crate) version: u64,
    pub(crate) count: u32,
}

/// How many owners' [`CountBound`]s a manager keeps; past it, an arbitrary
/// entry goes (the next create of that owner reads its listing).
const CACHED_OWNERS: usize = 1024;

impl OwnerGates {
    /// Waits for `owner`'s gate; it is held until the guard drops.
    pub(crate) fn enter<'a>(&'a self, owner: &'a str) -> Enter<'a> {
        Enter { gates: self, owner }
    }

    /// The bound this process left for `owner`, if any.
    fn cached(&self, owner: &str) -> Option<CountBound> {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(owner)
            .copied()
    }

    /// Whether this process's turn on `owner` is over: the owner is shared
    /// with other instances (a conflict within [`CONTENDED_FOR`]) and this
    /// process made [`TURN`] commits in a row on its cache. An instance
    /// planning on its cache commits in one round trip, while the others
    /// must read the listing first, so without turns the first one keeps
    /// the owner while its queue lasts and the others run out of plans.
    fn turn_over(&self, owner: &str) -> bool {
        let mut contended = self
            .contended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match contended.get_mut(owner) {
            Some((at, streak)) if at.elapsed() < CONTENDED_FOR && *streak >= TURN => {
                *streak = 0;
                true
            }
            _ => false,
        }
    }

    /// Notes a commit on `owner`: a conflict, or a commit made on the cache.
    fn note(&self, owner: &str, conflict: bool) {
        let mut contended = self
            .contended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if conflict {
            if contended.len() >= CACHED_OWNERS && !contended.contains_key(owner) {
                contended.retain(|_, (at, _)| at.elapsed() < CONTENDED_FOR);
                if contended.len() >= CACHED_OWNERS {
                    return;
                }
            }
            contended.insert(owner.to_owned(), (Instant::now(), 0));
        } else if let Some((_, streak)) = contended.get_mut(owner) {
            *streak = streak.saturating_add(1);
        }
    }

    /// Remembers `bound` for `owner` (`None`: forgets it), keeping at most
    /// [`CACHED_OWNERS`] entries.
    fn remember(&self, owner: &str, bound: Option<CountBound>) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(bound) = bound else {
            counts.remove(owner);
            return;
        };
        if let Some(entry) = counts.get_mut(owner) {
            *entry = bound;
            return;
        }
        if counts.len() >= CACHED_OWNERS
            && let Some(victim) = counts.keys().next().cloned()
        {
            counts.remove(&victim);
        }
        counts.insert(owner.to_owned(), bound);
    }
}

pub(crate) struct Enter<'a> {
    gates: &'a OwnerGates,
    owner: &'a str,
}

impl<'a> Future for Enter<'a> {
    type Output = GateGuard<'a>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<GateGuard<'a>> {
        let mut held = self
            .gates
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match held.get_mut(self.owner) {
            None => {
                held.insert(self.owner.to_owned(), Vec::new());
                Poll::Ready(GateGuard {
                    gates: self.gates,
                    owner: self.owner,
                })
            }
            Some(waiters) => {
                if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// Holds an owner's gate; releasing it wakes every waiter.
pub(crate) struct GateGuard<'a> {
    gates: &'a OwnerGates,
    owner: &'a str,
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let waiters = self
            .gates
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.owner)
            .unwrap_or_default();
        for w in waiters {
            w.wake();
        }
    }
}

/// An owner's records and the guard version read before them.
pub(super) struct OwnerSnapshot {
    pub(super) records: Vec<KeyRecord>,
    pub(super) version: u64,
}

impl OwnerSnapshot {
    /// Records that count toward the owner limit at `now`, `except` one.
    pub(super) fn counting(&self, now: OffsetDateTime, except: Option<KeyId>) -> u32 {
        let n = self
            .records
            .iter()
            .filter(|r| Some(r.id) != except && r.counts_toward_limit(now))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl<S: KeyStoreWrite + UsageStore, C: Clock, L: Limits> KeyManager<S, C, L> {
    /// Every record of `owner` (all pages), with the owner version of the
    /// first page: read before any record, so a plan on this snapshot
    /// commits only if no guarded write came in between.
    pub(super) async fn owner_snapshot(&self, owner: &str) -> Result<OwnerSnapshot> {
        let mut query = KeyQuery::owner(owner);
        let first = self.store().list(&query).await.map_err(Error::from)?;
        let version = first.owner_version;
        let mut records = Vec::new();
        let mut page = first;
        loop {
            let next = query.next_page(&page);
            records.append(&mut page.records);
            let Some(next) = next else { break };
            query = next;
            page = self.store().list(&query).await.map_err(Error::from)?;
        }
        Ok(OwnerSnapshot { records, version })
    }

    /// Commits `changes`; when the answer was lost ([`outcome_unknown`]),
    /// sends the same commit again (at most [`RESENDS`] times), which the
    /// database orders after the lost one. When the resend is refused
    /// (`Conflict`: a revision or owner version moved; `IdCollision`: the
    /// id is taken) and `ours` is stored, the lost commit went through:
    /// `Ok`. Otherwise the resend's answer (the last one unknown: the
    /// outcome could not be learned).
    pub(super) async fn commit_resolved(
        &self,
        changes: &Changes,
        ours: &KeyRecord,
    ) -> Result<(), StoreError> {
        let store = self.store();
        let mut answer = store.commit(changes).await;
        for _ in 0..RESENDS {
            match &answer {
                Err(e) if outcome_unknown(e) => {}
                _ => break,
            }
            answer = match store.commit(changes).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        StoreErrorKind::Conflict | StoreErrorKind::IdCollision
                    ) =>
                {
                    match store.get(ours.id).await {
                        Ok(Some(stored)) if same_key(&stored, ours) => Ok(()),
                        Ok(_) => Err(e),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            };
        }
        answer
    }

    /// Inserts the new `record` under the owner limit (and, for a derived
    /// key, `children`: the parent and its live-children limit), planned on
    /// an owner snapshot and committed with the owner guard; re-planned on a
    /// conflict. A record without owner, with no limit to keep, is one
    /// unguarded insert.
    ///
    /// # Errors
    /// [`Error::KeyLimitReached`]; a store error (`IdCollision` for a
    /// taken id or legacy index: the caller decides); [`contended`].
    pub(crate) async fn insert_planned(
        &self,
        record: &KeyRecord,
        now: OffsetDateTime,
        children: Option<(KeyId, u32)>,
    ) -> Result<(), InsertError> {
        let owner = match (&record.owner, self.max_per_owner, children) {
            (Some(o), Some(_), _) | (Some(o), _, Some(_)) => Some(o.clone()),
            _ => None,
        };
        let _gate = match &owner {
            Some(o) => Some(self.gates.enter(o).await),
            None => None,
        };
        for attempt in 0..MAX_RETRIES {
            let mut changes = Changes::new();
            // The bound this plan leaves when it commits, and whether it
            // was planned on this process's cache (no listing read).
            let mut after = None;
            let mut from_cache = false;
            if let Some(owner) = &owner {
                let cached = match (self.max_per_owner, children) {
                    (Some(_), None) if self.gates.turn_over(owner) => {
                        // Leave the others a gap, then plan as they do.
                        backoff(1).await;
                        None
                    }
                    (Some(max), None) => self.gates.cached(owner).filter(|b| b.count < max),
                    _ => None,
                };
                let planned = match cached {
                    Some(bound) => {
                        from_cache = true;
                        bound
                    }
                    None => {
                        let snap = self.owner_snapshot(owner).await?;
                        let count = snap.counting(now, Some(record.id));
                        if let Some(max) = self.max_per_owner
                            && count >= max
                        {
                            return Err(Error::KeyLimitReached { limit: max }.into());
                        }
                        if let Some((parent, max)) = children {
                            let live = snap
                                .records
                                .iter()
                                .filter(|r| super::super::derive::is_child_of(r, parent))
                                .filter(|r| r.counts_toward_limit(now))
                                .count();
                            if live >= usize::try_from(max).unwrap_or(usize::MAX) {
                                return Err(Error::KeyLimitReached { limit: max }.into());
                            }
                        }
                        CountBound {
                            version: snap.version,
                            count,
                        }
                    }
                };
                changes = changes.guard(owner.clone(), planned.version);
                after = planned.version.checked_add(1).map(|version| CountBound {
                    version,
                    count: planned.count.saturating_add(1),
                });
            }
            changes.puts.push(Put::insert(record.clone()));
            let answer = self.commit_resolved(&changes, record).await;
            if let Some(owner) = &owner {
                let kept = if answer.is_ok() { after } else { None };
                self.gates.remember(owner, kept);
                let conflict = matches!(&answer, Err(e) if e.kind() == StoreErrorKind::Conflict);
                if conflict || from_cache {
                    self.gates.note(owner, conflict);
                }
            }
            match answer {
                Ok(()) => return Ok(()),
                // A stale cache entry: plan again on the listing, at once.
                Err(e) if e.kind() == StoreErrorKind::Conflict && from_cache => {}
                Err(e) if e.kind() == StoreErrorKind::Conflict => backoff(attempt).await,
                Err(e) => return Err(InsertError::Store(e)),
            }
        }
        Err(contended().into())
    }

    /// Reads key `id`, lets `change` compute the new record (`None`: nothing
    /// to do), and commits it at the revision read, planning again when the
    /// record changed in between. Returns (before, after-if-written).
    ///
    /// With an owner limit, a change that makes the key count toward the
    /// limit again (an expiry cleared or extended on an expired key, an
    /// owner change) is planned on an owner snapshot: refused with
    /// [`Error::KeyLimitReached`] when the owner is at the limit, else
    /// committed with the owner guard. Changes that cannot raise the count
    /// (disable, revoke, a rename) need no guard.
    pub(crate) async fn modify<F>(
        &self,
        id: KeyId,
        now: OffsetDateTime,
        mut change: F,
    ) -> Result<(KeyRecord, Option<KeyRecord>)>
    where
        F: FnMut(&KeyRecord) -> Result<Option<KeyRecord>>,
    {
        for attempt in 0..MAX_RETRIES {
            let current = self.record(id).await?;
            let Some(next) = change(&current)? else {
                return Ok((current, None));
            };
            let mut changes = Changes::new();
            let owner = next.owner.clone();
            let mut _gate = None;
            let mut after = None;
            let mut from_cache = false;
            if let (Some(max), Some(owner)) = (self.max_per_owner, owner.as_deref())
                && next.counts_toward_limit(now)
                && !(current.counts_toward_limit(now) && current.owner.as_deref() == Some(owner))
            {
                _gate = Some(self.gates.enter(owner).await);
                // The revived key does not count yet, so a bound of the
                // owner's counting keys bounds the others too.
                let planned = match self.gates.cached(owner).filter(|b| b.count < max) {
                    Some(bound) => {
                        from_cache = true;
                        bound
                    }
                    None => {
                        let snap = self.owner_snapshot(owner).await?;
                        let count = snap.counting(now, Some(id));
                        if count >= max {
                            return Err(Error::KeyLimitReached { limit: max });
                        }
                        CountBound {
                            version: snap.version,
                            count,
                        }
                    }
                };
                changes = changes.guard(owner, planned.version);
                after = planned.version.checked_add(1).map(|version| CountBound {
                    version,
                    count: planned.count.saturating_add(1),
                });
            }
            changes
                .puts
                .push(Put::update(next.clone(), current.revision));
            let answer = self.store().commit(&changes).await;
            if _gate.is_some()
                && let Some(owner) = owner.as_deref()
            {
                let kept = if answer.is_ok() { after } else { None };
                self.gates.remember(owner, kept);
            }
            match answer {
                Ok(()) => {
                    let mut stored = next;
                    stored.revision = current.revision.wrapping_add(1);
                    stored.last_used_at = current.last_used_at;
                    return Ok((current, Some(stored)));
                }
                // A stale cache entry or a record changed meanwhile.
                Err(e) if e.kind() == StoreErrorKind::Conflict && from_cache => {}
                Err(e) if e.kind() == StoreErrorKind::Conflict => backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(contended())
    }
}

/// Why [`KeyManager::insert_planned`] wrote nothing: a rule (already an
/// [`Error`]) or the store's answer, which the caller may act on.
#[derive(Debug)]
pub(crate) enum InsertError {
    Rule(Error),
    Store(StoreError),
}

impl From<Error> for InsertError {
    fn from(e: Error) -> Self {
        Self::Rule(e)
    }
}

impl From<InsertError> for Error {
    fn from(e: InsertError) -> Self {
        match e {
            InsertError::Rule(e) => e,
            InsertError::Store(e) => e.into(),
        }
    }
}
