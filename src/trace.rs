//! `tracing` spans (feature `tracing`) on authentication, store calls,
//! admission and usage flushes. A span names the key only by its display
//! form (`sk_live_AbCdEf...`) and the failure only by its wire code; never
//! the key. Without the feature every function returns its future as it is.

#[cfg(feature = "tracing")]
use tracing::Instrument as _;
#[cfg(feature = "tracing")]
use tracing::instrument::Instrumented;

use crate::error::Error;
use crate::key::{KeyId, key_display_form};

/// The span of one authentication (`apikey.authenticate`), with empty
/// `key` and `reason` fields filled in as the pipeline learns them.
#[cfg(feature = "tracing")]
pub(crate) fn authenticate<F>(f: F) -> Instrumented<F> {
    f.instrument(span(|| {
        tracing::debug_span!(
            "apikey.authenticate",
            key = tracing::field::Empty,
            reason = tracing::field::Empty
        )
    }))
}

/// `make()` when a subscriber may want debug spans; else the disabled
/// span, without touching the dispatcher (one atomic load).
#[cfg(feature = "tracing")]
#[inline(always)]
fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        make()
    } else {
        tracing::Span::none()
    }
}

/// Whether debug spans may be recorded (one atomic load).
#[cfg(feature = "tracing")]
#[inline(always)]
fn on() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn authenticate<F>(f: F) -> F {
    f
}

/// Records the key's display form in the current authentication span
/// (computed only when the span is enabled).
#[inline(always)]
pub(crate) fn key(prefix: &str, id: KeyId) {
    #[cfg(feature = "tracing")]
    if on() {
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("key", key_display_form(prefix, id).as_str());
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = (prefix, id, key_display_form);
}

/// Records the failure's wire code in the current authentication span.
#[inline(always)]
pub(crate) fn reason(error: &Error) {
    #[cfg(feature = "tracing")]
    if on() {
        tracing::Span::current().record("reason", error.code().as_str());
    }
    #[cfg(not(feature = "tracing"))]
    let _ = error;
}

/// The span of one store call (`apikey.store`, field `operation`).
#[cfg(feature = "tracing")]
pub(crate) fn store<F>(operation: &'static str, f: F) -> Instrumented<F> {
    f.instrument(span(|| tracing::debug_span!("apikey.store", operation)))
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn store<F>(operation: &'static str, f: F) -> F {
    let _ = operation;
    f
}

/// The span of one admission (`apikey.admit`: rate limit and credits).
#[cfg(feature = "tracing")]
pub(crate) fn admit<F>(f: F) -> Instrumented<F> {
    f.instrument(span(|| tracing::debug_span!("apikey.admit")))
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn admit<F>(f: F) -> F {
    f
}

/// The span of one usage batch written (`apikey.usage.flush`, field
/// `deltas`).
#[cfg(feature = "tracing")]
pub(crate) fn flush<F>(deltas: usize, f: F) -> Instrumented<F> {
    f.instrument(span(|| tracing::debug_span!("apikey.usage.flush", deltas)))
}

#[cfg(not(feature = "tracing"))]
#[inline(always)]
pub(crate) fn flush<F>(deltas: usize, f: F) -> F {
    let _ = deltas;
    f
}
