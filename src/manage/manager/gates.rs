//! Waiting: the timed, jittered backoff after a conflicting commit (a small timer thread, any executor),
//! and the per-owner gates that let one manager's guarded plans for one owner take turns, with the owner's
//! cached version and count bound.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, StoreError, StoreErrorKind};

/// How often a plan is made again after a conflicting commit (the record
/// or the owner changed concurrently), with a timed [`backoff`] before each:
/// at most about 5.8 s of waiting in all, then `STORE_UNAVAILABLE`.
pub(crate) const MAX_RETRIES: u32 = 64;

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
    pub(super) fn cached(&self, owner: &str) -> Option<CountBound> {
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
    pub(super) fn turn_over(&self, owner: &str) -> bool {
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
    pub(super) fn note(&self, owner: &str, conflict: bool) {
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
    pub(super) fn remember(&self, owner: &str, bound: Option<CountBound>) {
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
