//! Metrics on the `metrics` facade (feature `metrics`); without the
//! feature every function here is empty and inlined away, and no clock is
//! read. See `docs/metrics.md` for the table of names, types, units and
//! labels. Labels never carry a key id, an owner or an address: every label
//! value is a `&'static str` from a fixed set.
//!
//! With the feature and no recorder installed, an authentication reads no
//! clock either: a duration is a lazy value ([`Elapsed`]) that only a live
//! handle reads, and once the process-wide recorder has shown that it drops
//! the valid path's duration (the facade's no-op recorder, or a filter),
//! the start time is not read on that thread until the recorder changes.

#[cfg(feature = "metrics")]
use std::cell::Cell;
#[cfg(feature = "metrics")]
use std::sync::OnceLock;
#[cfg(feature = "metrics")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use crate::error::StoreErrorKind;
use crate::error::{Error, StoreError};

/// A start time, read only with the feature, and for an authentication
/// only while the recorder records durations.
#[derive(Clone, Copy)]
pub(crate) struct Started(#[cfg(feature = "metrics")] Option<Tick>);

/// A reading of the clock durations are measured with: the CPU's
/// time-stamp counter through `quanta` (about 9 ns a read where the OS
/// clock takes 24), or, until `quanta` has calibrated it, the OS's
/// monotonic clock.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy)]
enum Tick {
    Counter(u64),
    Os(Instant),
}

#[cfg(feature = "metrics")]
impl Tick {
    fn now() -> Self {
        match counter() {
            Some(clock) => Self::Counter(clock.raw()),
            None => Self::Os(Instant::now()),
        }
    }

    /// Seconds since this reading (0 on a counter that went backwards).
    fn elapsed_secs(self) -> f64 {
        match self {
            // A counter reading means the clock was ready.
            Self::Counter(start) => COUNTER
                .get()
                .map_or(0.0, |clock| clock.delta(start, clock.raw()).as_secs_f64()),
            Self::Os(start) => start.elapsed().as_secs_f64(),
        }
    }
}

/// The calibrated counter clock, once ready.
#[cfg(feature = "metrics")]
static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();

/// The counter clock, or `None` while it is not calibrated yet: its
/// calibration (about half a millisecond, once a process) runs on a
/// thread of its own, started by the first call, never on a request.
#[cfg(feature = "metrics")]
#[inline]
fn counter() -> Option<&'static quanta::Clock> {
    static CALIBRATING: AtomicBool = AtomicBool::new(false);
    if let Some(clock) = COUNTER.get() {
        return Some(clock);
    }
    if !CALIBRATING.swap(true, Ordering::Relaxed) {
        // A platform without threads keeps the OS clock: no retry on every
        // call.
        let _ = std::thread::Builder::new()
            .name("apikey-metrics-clock".into())
            .spawn(|| {
                COUNTER.get_or_init(quanta::Clock::new);
            });
    }
    None
}

impl Started {
    /// The start of a store call (always timed with the feature: a store
    /// call costs microseconds, a clock read nanoseconds).
    #[inline(always)]
    pub(crate) fn now() -> Self {
        Self(
            #[cfg(feature = "metrics")]
            Some(Tick::now()),
        )
    }

    /// The start of an authentication: no clock read while the
    /// process-wide recorder drops the valid path's duration.
    #[inline(always)]
    pub(crate) fn authentication() -> Self {
        Self(
            #[cfg(feature = "metrics")]
            hot::timing().then(Tick::now),
        )
    }

    /// The time since the start, read when (and only if) a live handle
    /// records it; `read` is set when it was.
    #[cfg(feature = "metrics")]
    fn elapsed(self, read: Option<&Cell<bool>>) -> Option<Elapsed<'_>> {
        self.0.map(|started| Elapsed { started, read })
    }
}

/// A duration for a histogram, read from the clock only by a handle that
/// records it (the facade's no-op handles never call `into_f64`).
#[cfg(feature = "metrics")]
struct Elapsed<'a> {
    started: Tick,
    read: Option<&'a Cell<bool>>,
}

#[cfg(feature = "metrics")]
impl metrics::IntoF64 for Elapsed<'_> {
    fn into_f64(self) -> f64 {
        if let Some(read) = self.read {
            read.set(true);
        }
        self.started.elapsed_secs()
    }
}

/// The handles of the valid-key path, registered once per thread for the
/// process-wide recorder (registering looks the name and labels up in the
/// recorder's registry on every call, which costs more than recording).
///
/// Only the recorder every thread sees (the global one, or the facade's
/// no-op fallback) is cached: it lives as long as the process, so its
/// address names it. A local recorder (`metrics::with_local_recorder`) may
/// be dropped and another made at the same address, which cached handles
/// would miss; with one, handles are registered on every call.
#[cfg(feature = "metrics")]
mod hot {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub(super) struct Handles {
        /// The recorder they were registered with (its address).
        recorder: usize,
        pub(super) success: metrics::Histogram,
        pub(super) fetch_ok: metrics::Histogram,
        /// Whether `success` read the last duration given to it (true
        /// until it was given one): a handle that drops one drops them
        /// all, so the start of an authentication need not be read.
        pub(super) live: Cell<bool>,
    }

    /// How many calls on one thread take a recorder other than the last
    /// process-wide one seen as local before probing again (the global
    /// recorder may have been installed since).
    const LOCAL_RECHECK: u32 = 4_096;

    /// The address of the process-wide recorder the last probe saw (0:
    /// none yet). It changes at most once after the first probe: from the
    /// no-op fallback to the global recorder, installed once.
    static PROCESS_WIDE: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static HANDLES: RefCell<Option<Handles>> = const { RefCell::new(None) };
        /// Calls left on this thread before the next probe.
        static UNTIL_PROBE: Cell<u32> = const { Cell::new(0) };
    }

    fn recorder() -> usize {
        metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
    }

    /// Whether `id` is the process-wide recorder (the one a thread without
    /// a local recorder sees). No thread is started when `id` is the one
    /// seen last; otherwise at most one probe (a short-lived thread) per
    /// [`LOCAL_RECHECK`] calls of this thread, however many local recorders
    /// it alternates between.
    fn process_wide(id: usize) -> bool {
        if PROCESS_WIDE.load(Ordering::Relaxed) == id {
            return true;
        }
        UNTIL_PROBE.with(|left| {
            if left.get() > 0 {
                left.set(left.get() - 1);
                return false;
            }
            left.set(LOCAL_RECHECK);
            let seen = std::thread::scope(|s| {
                std::thread::Builder::new()
                    .name("apikey-metrics-probe".into())
                    .spawn_scoped(s, recorder)
                    .ok()
                    .and_then(|t| t.join().ok())
            });
            match seen {
                Some(seen) => {
                    PROCESS_WIDE.store(seen, Ordering::Relaxed);
                    seen == id
                }
                None => false,
            }
        })
    }

    /// Whether an authentication starting now should read the clock: not
    /// when this thread's handles for the current recorder (the
    /// process-wide one; a local recorder's are never kept) dropped the
    /// last valid duration.
    pub(super) fn timing() -> bool {
        let id = recorder();
        HANDLES.with(|cell| {
            cell.try_borrow().map_or(true, |cached| {
                cached
                    .as_ref()
                    .is_none_or(|h| h.recorder != id || h.live.get())
            })
        })
    }

    /// Runs `f` with handles for the current recorder.
    pub(super) fn with(f: impl FnOnce(&Handles)) {
        let id = recorder();
        HANDLES.with(|cell| {
            // The common case: handles for this recorder, used in place
            // (a shared borrow, so a recorder that records through apikey
            // again from `f` still finds them).
            if let Ok(cached) = cell.try_borrow()
                && let Some(h) = cached.as_ref()
                && h.recorder == id
            {
                return f(h);
            }
            let handles = Handles {
                recorder: id,
                success: metrics::histogram!("apikey.authentication.duration", "result" => "success", "reason" => "none"),
                fetch_ok: metrics::histogram!("apikey.store.duration", "operation" => "fetch", "outcome" => "ok"),
                live: Cell::new(true),
            };
            f(&handles);
            if process_wide(id)
                && let Ok(mut cached) = cell.try_borrow_mut()
            {
                *cached = Some(handles);
            }
        });
    }
}

/// One authentication through the pipeline: its duration by result and
/// reason, and a rejection by reason when it failed.
#[inline(always)]
pub(crate) fn authenticated(started: Started, error: Option<&Error>) {
    #[cfg(feature = "metrics")]
    match error {
        // Not timed: the recorder drops durations (nothing to look up).
        None => {
            if let Some(started) = started.0 {
                hot::with(|h| {
                    let read = Cell::new(false);
                    h.success.record(Elapsed {
                        started,
                        read: Some(&read),
                    });
                    h.live.set(read.get());
                });
            }
        }
        Some(e) => {
            let reason = e.code().as_str();
            if let Some(elapsed) = started.elapsed(None) {
                metrics::histogram!("apikey.authentication.duration", "result" => "failure", "reason" => reason)
                    .record(elapsed);
            }
            metrics::counter!("apikey.authentication.rejections", "reason" => reason).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (started, error);
}

/// A rejection decided at the web edge before the pipeline (no key,
/// foreign credentials, an unreadable header).
#[inline(always)]
pub(crate) fn rejected_at_edge(error: &Error) {
    #[cfg(feature = "metrics")]
    metrics::counter!("apikey.authentication.rejections", "reason" => error.code().as_str())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = error;
}

/// The gate's own deadline ran out (`Gate::with_store_timeout`): a store
/// timeout of operation `deadline` (a fetch or an admission in flight) and,
/// when the pipeline's future was dropped before it could count anything
/// (`rejection`), the 503 as a rejection (`STORE_UNAVAILABLE`). A deadline
/// in the admission after the pipeline is not counted twice.
#[cfg(feature = "axum")]
#[inline(always)]
pub(crate) fn gate_deadline(error: &Error, rejection: bool) {
    #[cfg(feature = "metrics")]
    {
        if rejection {
            metrics::counter!("apikey.authentication.rejections", "reason" => error.code().as_str())
                .increment(1);
        }
        metrics::counter!("apikey.store.timeouts", "operation" => "deadline").increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (error, rejection);
}

/// One store call of `operation`: its duration, and a timeout.
#[inline(always)]
pub(crate) fn store_call<T>(
    operation: &'static str,
    started: Started,
    result: &Result<T, StoreError>,
) {
    #[cfg(feature = "metrics")]
    {
        let elapsed = started.elapsed(None);
        if operation == "fetch" && result.is_ok() {
            if let Some(elapsed) = elapsed {
                hot::with(|h| h.fetch_ok.record(elapsed));
            }
            return;
        }
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if e.kind() == StoreErrorKind::Timeout => "timeout",
            Err(_) => "error",
        };
        if let Some(elapsed) = elapsed {
            metrics::histogram!("apikey.store.duration", "operation" => operation, "outcome" => outcome)
                .record(elapsed);
        }
        if outcome == "timeout" {
            metrics::counter!("apikey.store.timeouts", "operation" => operation).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (operation, started, result);
}

/// Increments a counter whose one label takes a value from a known set: a
/// literal label value lets the facade build the key without allocating
/// (a computed one costs a `Vec` on every call, recorder or not).
#[cfg(feature = "metrics")]
macro_rules! count_one_of {
    ($name:literal, $label:literal, $value:expr, [$($known:literal),* $(,)?]) => {
        match $value {
            $($known => metrics::counter!($name, $label => $known).increment(1),)*
            other => metrics::counter!($name, $label => other).increment(1),
        }
    };
}

/// One admission decision of the gate (`admitted`, `rate_limited`,
/// `credits_exhausted`, `error`), and whether credits were metered.
#[inline(always)]
pub(crate) fn admission(decision: &'static str, metered: bool) {
    #[cfg(feature = "metrics")]
    {
        count_one_of!(
            "apikey.rate_limit.decisions",
            "decision",
            decision,
            ["admitted", "rate_limited", "credits_exhausted", "error"]
        );
        if metered {
            let credit = match decision {
                "admitted" => "spent",
                "credits_exhausted" => "exhausted",
                other => other,
            };
            count_one_of!(
                "apikey.credits.decisions",
                "decision",
                credit,
                ["spent", "exhausted", "rate_limited", "error"]
            );
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (decision, metered);
}

/// One cache lookup: `hit`, `miss`, `joined` (a read already in flight) or
/// `expired` (a cached entry past its maximum age, read again).
#[inline(always)]
pub(crate) fn cache_lookup(result: &'static str) {
    #[cfg(feature = "metrics")]
    count_one_of!(
        "apikey.cache.lookups",
        "result",
        result,
        ["hit", "miss", "joined", "expired"]
    );
    #[cfg(not(feature = "metrics"))]
    let _ = result;
}

/// One cache entry evicted to make room.
#[inline(always)]
pub(crate) fn cache_eviction() {
    #[cfg(feature = "metrics")]
    metrics::counter!("apikey.cache.evictions").increment(1);
}

/// One usage flush batch written: its size in deltas, and the time since
/// the previous flush (how far the store lagged behind).
#[inline(always)]
pub(crate) fn usage_flushed(deltas: usize, lag_seconds: Option<f64>) {
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("apikey.usage.flush.batch_size").record(deltas as f64);
        if let Some(lag) = lag_seconds {
            metrics::histogram!("apikey.usage.flush.lag").record(lag);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (deltas, lag_seconds);
}

/// One monitoring event raised, by kind.
#[inline(always)]
pub(crate) fn monitoring_event(kind: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("apikey.monitoring.events", "kind" => kind).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    fn durations(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<f64> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "apikey.authentication.duration")
            .flat_map(|(.., v)| match v {
                DebugValue::Histogram(h) => h.into_iter().map(|v| v.into_inner()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Without a recorder an authentication reads no clock once the no-op
    /// recorder has dropped one valid duration; a local recorder, and the
    /// process-wide recorder installed later, are timed again. The only
    /// test of this binary that installs a recorder for the whole process.
    #[test]
    fn no_clock_without_a_recorder_and_timed_again_with_one() {
        std::thread::spawn(|| {
            let first = Started::authentication();
            assert!(first.0.is_some(), "nothing is known of the recorder yet");
            authenticated(first, None);
            assert!(
                Started::authentication().0.is_none(),
                "the no-op recorder dropped the duration: no clock read"
            );
            // A failure without a start time records no duration (and no
            // made-up one).
            authenticated(Started::authentication(), Some(&Error::InvalidApiKey));
            assert!(Started::authentication().0.is_none());

            let local = DebuggingRecorder::new();
            metrics::with_local_recorder(&local, || {
                let started = Started::authentication();
                assert!(started.0.is_some(), "a local recorder is timed");
                authenticated(started, None);
            });
            let seen = durations(&local.snapshotter());
            assert_eq!(seen.len(), 1);
            assert!(seen[0].is_finite() && seen[0] >= 0.0);
            assert!(Started::authentication().0.is_none(), "back to the no-op");

            let global = Box::leak(Box::new(DebuggingRecorder::new()));
            let snapshot = global.snapshotter();
            metrics::set_global_recorder(&*global).unwrap();
            let started = Started::authentication();
            assert!(started.0.is_some(), "the recorder changed: timed again");
            authenticated(started, None);
            let seen = durations(&snapshot);
            assert_eq!(seen.len(), 1, "the valid path's duration reaches it");
            assert!(Started::authentication().0.is_some(), "and stays timed");
        })
        .join()
        .unwrap();
    }

    /// Durations are seconds, from the OS clock until the counter clock is
    /// calibrated (off the calling thread) and from the counter after.
    #[test]
    fn durations_are_seconds_on_either_clock() {
        let pause = std::time::Duration::from_millis(20);
        let first = Tick::now();
        std::thread::sleep(pause);
        let secs = first.elapsed_secs();
        assert!((0.019..5.0).contains(&secs), "{secs}");
        // Calibration takes about half a millisecond, on its own thread.
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while COUNTER.get().is_none() {
            assert!(Instant::now() < deadline, "the counter never calibrated");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let tick = Tick::now();
        assert!(matches!(tick, Tick::Counter(_)));
        std::thread::sleep(pause);
        let secs = tick.elapsed_secs();
        assert!((0.019..5.0).contains(&secs), "{secs}");
        // Readings taken before calibration still measure on their clock.
        assert!(first.elapsed_secs() > 0.039);
    }
}
