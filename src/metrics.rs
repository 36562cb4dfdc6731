//! Metrics on the `metrics` facade (feature `metrics`); without the
//! feature every function here is empty and inlined away, and no clock is
//! read. See `docs/metrics.md` for the table of names, types, units and
//! labels. Labels never carry a key id, an owner or an address: every label
//! value is a `&'static str` from a fixed set.

#[cfg(feature = "metrics")]
use std::time::Instant;

#[cfg(feature = "metrics")]
use crate::error::StoreErrorKind;
use crate::error::{Error, StoreError};

/// A start time, read only with the feature.
#[derive(Clone, Copy)]
pub(crate) struct Started(#[cfg(feature = "metrics")] Instant);

impl Started {
    #[inline(always)]
    pub(crate) fn now() -> Self {
        Self(
            #[cfg(feature = "metrics")]
            Instant::now(),
        )
    }

    #[cfg(feature = "metrics")]
    fn seconds(self) -> f64 {
        self.0.elapsed().as_secs_f64()
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
        None => hot::with(|h| h.success.record(started.seconds())),
        Some(e) => {
            let reason = e.code().as_str();
            metrics::histogram!("apikey.authentication.duration", "result" => "failure", "reason" => reason)
                .record(started.seconds());
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

/// One store call of `operation`: its duration, and a timeout.
#[inline(always)]
pub(crate) fn store_call<T>(
    operation: &'static str,
    started: Started,
    result: &Result<T, StoreError>,
) {
    #[cfg(feature = "metrics")]
    {
        if operation == "fetch" && result.is_ok() {
            hot::with(|h| h.fetch_ok.record(started.seconds()));
            return;
        }
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) if e.kind() == StoreErrorKind::Timeout => "timeout",
            Err(_) => "error",
        };
        metrics::histogram!("apikey.store.duration", "operation" => operation, "outcome" => outcome)
            .record(started.seconds());
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
