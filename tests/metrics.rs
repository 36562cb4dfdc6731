//! Metrics (issue 22, feature `metrics`): every metric in the table of
//! `docs/metrics.md` is emitted on the path it names, and no label carries
//! a key id, an owner or an address.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use apikey::Timestamp;
use apikey::limits::{CreditAccount, MemoryLimits, Quota};
use apikey::pipeline::{Monitor, MonitorConfig};
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::time::Duration;

const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[13; 32]).unwrap()).unwrap())
}

/// A store whose every read times out.
#[derive(Debug)]
struct TimingOut;

impl KeyStore for TimingOut {
    async fn fetch(&self, _: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        Err(StoreError::new(StoreErrorKind::Timeout))
    }
}

/// The metric names of the core crate's table in docs/metrics.md.
fn documented() -> BTreeSet<String> {
    let doc = include_str!("../docs/metrics.md");
    doc.lines()
        .take_while(|l| !l.starts_with("## apikey-sqlx"))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("apikey."))
        .map(str::to_owned)
        .collect()
}

/// Runs every path the table names once, under a debugging recorder.
async fn exercise() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(T0);
    let v = verifier();
    let (key, record) = v
        .issue(NewKey::new("sk_live_").owner("org_secret_owner"), T0)
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    // A cache of one entry per shard: a second key evicts the first.
    let (other, other_record) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    store.insert_sync(other_record).unwrap();
    let cache = Arc::new(
        CachedStore::new(Arc::clone(&store))
            .with_capacity(1)
            .with_clock(clock.clone()),
    );
    let events = Arc::new(MemoryAuditSink::new());
    let mut config = MonitorConfig::default();
    config.burst_threshold = 2;
    let monitor = Arc::new(Monitor::new(config, events));
    let auth = Authenticator::with_clock(v.clone(), Arc::clone(&cache), clock.clone())
        .with_monitor(monitor);
    let limits = MemoryLimits::with_clock(clock.clone());
    limits.set_credits_sync(CreditAccount::Key(record.id.as_u64()), 2, None);
    let gate = Gate::new(auth)
        .with_limits(limits)
        .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(3)))
        .with_credits("rest");
    let ip = Some("198.51.100.7".parse().unwrap());
    let check = |k: &str| {
        let header = k.to_owned();
        let gate = &gate;
        async move {
            gate.check(
                [("x-api-key", header.as_str())],
                None,
                ip,
                &Route::any_key(),
            )
            .await
        }
    };
    // Miss, then hit; admitted twice, then the key's credits run out.
    for _ in 0..4 {
        let _ = check(key.expose_secret()).await;
    }
    // A second key: its entry evicts the first (one entry per shard only
    // when both land in one shard; with capacity 1 there is one shard).
    let _ = check(other.expose_secret()).await;
    // The second key has no credit account: the rate limit (3 a minute)
    // refuses it.
    for _ in 0..3 {
        let _ = check(other.expose_secret()).await;
    }
    // Past the maximum age: the entry is expired and read again.
    clock.advance(Duration::from_secs(5));
    let _ = check(other.expose_secret()).await;
    // Junk from one network: rejections and a failure burst.
    for _ in 0..3 {
        let _ = check("sk_live_junk").await;
    }
    // No key at all: refused at the edge.
    let none: [(&str, &str); 0] = [];
    assert!(matches!(
        gate.check(none, None, ip, &Route::any_key()).await,
        Decision::Rejected(_)
    ));
    // Usage: two flushes, the second after a minute.
    gate.flush().await.unwrap();
    clock.advance(Duration::from_secs(60));
    let _ = check(other.expose_secret()).await;
    gate.flush().await.unwrap();
    // A store that times out.
    let slow = Authenticator::read_only_with_clock(v.clone(), TimingOut, clock.clone());
    slow.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    // The gate's own deadline over a store that never answers: the
    // pipeline's future is dropped, the 503 is still counted.
    #[cfg(feature = "axum")]
    {
        let hanging = Authenticator::read_only_with_clock(v, Hanging, clock);
        let gate = Gate::new(hanging).with_store_timeout(Duration::from_millis(5));
        let d = gate
            .check(
                [("x-api-key", key.expose_secret())],
                None,
                ip,
                &Route::any_key(),
            )
            .await;
        let Decision::Rejected(r) = d else {
            panic!("{d:?}")
        };
        assert_eq!(r.error.code().as_str(), "STORE_UNAVAILABLE");
    }
}

/// A store whose reads never finish.
#[derive(Debug)]
struct Hanging;

impl KeyStore for Hanging {
    async fn fetch(&self, _: KeyId) -> Result<Option<Arc<KeyView>>, StoreError> {
        std::future::pending().await
    }
}

/// Runs `work` on a current-thread runtime (with time) under a debugging
/// recorder of its own; what it recorded.
fn recorded<F: std::future::Future>(
    work: F,
) -> Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(work);
    });
    snapshotter.snapshot().into_vec()
}

/// Issue 22: every metric of the table is emitted, on the paths it names;
/// label values never hold the key id, the owner or the address.
#[test]
fn every_metric_in_the_table_is_emitted_on_its_path() {
    let snapshot = recorded(exercise());
    let mut emitted = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for (key, _, _, value) in &snapshot {
        let nonzero = match value {
            DebugValue::Counter(n) => *n > 0,
            DebugValue::Histogram(v) => !v.is_empty(),
            DebugValue::Gauge(_) => true,
        };
        if nonzero {
            emitted.insert(key.key().name().to_owned());
        }
        for l in key.key().labels() {
            labels.insert(format!("{}={}", l.key(), l.value()));
        }
    }
    let table = documented();
    assert!(table.len() >= 11, "{table:?}");
    let missing: Vec<_> = table.difference(&emitted).collect();
    assert!(missing.is_empty(), "documented, not emitted: {missing:?}");
    let undocumented: Vec<_> = emitted.difference(&table).collect();
    assert!(
        undocumented.is_empty(),
        "emitted, not documented: {undocumented:?}"
    );
    for expected in [
        "result=success",
        "reason=MALFORMED_API_KEY",
        "reason=MISSING_API_KEY",
        "decision=credits_exhausted",
        "decision=rate_limited",
        "result=hit",
        "result=miss",
        "result=expired",
        "operation=fetch",
        "operation=record_usage",
        "kind=failure_burst",
    ] {
        assert!(labels.contains(expected), "{expected} not in {labels:?}");
    }
    if cfg!(feature = "axum") {
        assert!(
            labels.contains("operation=deadline") && labels.contains("reason=STORE_UNAVAILABLE"),
            "the gate's deadline is not counted: {labels:?}"
        );
    }
    for l in &labels {
        assert!(!l.contains("org_secret_owner"), "{l}");
        assert!(!l.contains("198.51.100"), "{l}");
        assert!(!l.contains("sk_live_"), "{l}");
    }
}

/// The valid path's histogram values (`apikey.authentication.duration`
/// and `apikey.store.duration`) one authentication records, under a local
/// recorder of its own.
#[inline(never)]
fn histograms<S: KeyStore>(auth: &Authenticator<S>, key: &str) -> usize {
    recorded(async {
        auth.authenticate(key, &Requirement::none(), None)
            .await
            .unwrap();
    })
    .into_iter()
    .filter(|(k, ..)| {
        let name = k.key().name();
        name == "apikey.authentication.duration" || name == "apikey.store.duration"
    })
    .map(|(.., v)| match v {
        DebugValue::Histogram(h) => h.len(),
        _ => 0,
    })
    .sum()
}

/// Handles are cached only for the process-wide recorder: local recorders
/// made one after the other (the next often at the last one's address)
/// each see the valid path's metrics.
#[test]
fn consecutive_local_recorders_each_see_the_valid_path() {
    let v = verifier();
    let store = MemoryStore::new();
    let (key, record) = v.issue(NewKey::new("sk_live_"), SystemClock.now()).unwrap();
    store.insert_sync(record).unwrap();
    let auth = Authenticator::read_only(v, apikey_testkit::OutOfProcess(store));
    for round in 0..3 {
        assert_eq!(histograms(&auth, key.expose_secret()), 2, "round {round}");
    }
}

/// A fetch that stays in the process is not a store call: a `MemoryStore`
/// fetch and a `CachedStore` hit record no `apikey.store.duration`; a
/// cache miss records the inner store's fetch.
#[test]
fn only_fetches_that_leave_the_process_are_store_calls() {
    let v = verifier();
    let store = MemoryStore::new();
    let (key, record) = v.issue(NewKey::new("sk_live_"), SystemClock.now()).unwrap();
    store.insert_sync(record.clone()).unwrap();
    let memory = Authenticator::read_only(v.clone(), store);
    assert_eq!(histograms(&memory, key.expose_secret()), 1);
    let remote = MemoryStore::new();
    remote.insert_sync(record).unwrap();
    let cached =
        Authenticator::read_only(v, CachedStore::new(apikey_testkit::OutOfProcess(remote)));
    assert_eq!(histograms(&cached, key.expose_secret()), 2, "a miss");
    assert_eq!(histograms(&cached, key.expose_secret()), 1, "a hit");
}

/// Limits whose admission never finishes (a Redis that stopped answering).
#[cfg(feature = "axum")]
struct HangingLimits;

#[cfg(feature = "axum")]
impl apikey::limits::Limits for HangingLimits {
    async fn admit(
        &self,
        _: &apikey::limits::Admission<'_>,
    ) -> Result<apikey::limits::Verdict, StoreError> {
        std::future::pending().await
    }
    fn check_key(&self, _: u64) -> Result<(), Duration> {
        Ok(())
    }
    fn begin_untagged(
        &self,
        _: Option<std::net::IpAddr>,
    ) -> Result<apikey::limits::UntaggedAttempt<'_>, Duration> {
        Ok(apikey::limits::UntaggedAttempt::unbounded())
    }
    async fn key_failed(&self, _: u64) {}
    async fn untagged_failed(&self, _: apikey::limits::UntaggedAttempt<'_>) {}
}

/// A deadline that runs out in the admission, after the authentication was
/// counted (a success), is a store timeout of operation `deadline` and not
/// a second, contradicting count of the request as a rejection.
#[cfg(feature = "axum")]
#[test]
fn a_deadline_in_the_admission_is_not_counted_twice() {
    let snapshot = recorded(async {
        let store = MemoryStore::new();
        let v = verifier();
        let (key, record) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
        store.insert_sync(record).unwrap();
        let auth = Authenticator::read_only_with_clock(v, store, ManualClock::new(T0));
        let gate = Gate::new(auth)
            .with_limits(HangingLimits)
            .with_store_timeout(Duration::from_millis(5));
        let d = gate
            .check(
                [("x-api-key", key.expose_secret())],
                None,
                None,
                &Route::any_key(),
            )
            .await;
        assert!(
            matches!(&d, Decision::Rejected(r) if r.error.code().as_str() == "STORE_UNAVAILABLE"),
            "{d:?}"
        );
    });
    let mut rejections = 0;
    let mut deadlines = 0;
    for (key, _, _, value) in snapshot {
        let DebugValue::Counter(n) = value else {
            continue;
        };
        match key.key().name() {
            "apikey.authentication.rejections" => rejections += n,
            "apikey.store.timeouts"
                if key
                    .key()
                    .labels()
                    .any(|l| l.key() == "operation" && l.value() == "deadline") =>
            {
                deadlines += n;
            }
            _ => {}
        }
    }
    assert_eq!((rejections, deadlines), (0, 1));
}
