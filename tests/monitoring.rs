//! Monitoring (issue 22, seed 001) through the authenticator and the gate,
//! without a server: the memory bound, unusual traffic, rate-limit hits and
//! per-key failure bursts. The events over real HTTP are in
//! `tests/http_server.rs`.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use apikey::Timestamp;
use apikey::limits::{MemoryLimits, Quota};
use apikey::pipeline::{Monitor, MonitorConfig};
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::*;
use std::time::Duration;

const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[11; 32]).unwrap()).unwrap())
}

struct Setup {
    auth: Authenticator<Arc<MemoryStore>, ManualClock>,
    monitor: Arc<Monitor>,
    events: Arc<MemoryAuditSink>,
    hook: Arc<MemoryAuditSink>,
    key: ApiKey,
    id: KeyId,
    clock: ManualClock,
}

fn setup(config: MonitorConfig) -> Setup {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier()
        .issue(NewKey::new("sk_live_").owner("org_1"), T0)
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let events = Arc::new(MemoryAuditSink::new());
    let hook = Arc::new(MemoryAuditSink::new());
    let monitor = Arc::new(Monitor::new(config, events.clone()).with_hook(hook.clone()));
    let clock = ManualClock::new(T0);
    let auth = Authenticator::with_clock(verifier(), store, clock.clone())
        .with_monitor(Arc::clone(&monitor));
    Setup {
        auth,
        monitor,
        events,
        hook,
        key,
        id: record.id,
        clock,
    }
}

fn kinds(sink: &MemoryAuditSink) -> Vec<&'static str> {
    sink.events().iter().map(|e| e.kind.as_str()).collect()
}

/// The `i`-th of a million distinct addresses, half IPv4 and half IPv6,
/// every one in a network of its own.
fn distinct(i: u32) -> IpAddr {
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from((i / 2) << 8 | 1))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::from(i) << 80 | 1))
    }
}

/// Issue 22: 1,000,000 requests from distinct addresses (every tenth a
/// valid key, the rest junk and wrong secrets) keep the monitoring state
/// within `MonitorConfig::memory_bound` (under 8 MiB with the defaults) and
/// its entry caps.
#[tokio::test]
async fn a_million_requests_from_distinct_addresses_keep_monitoring_state_bounded() {
    let config = MonitorConfig::default();
    let bound = config.memory_bound();
    assert!(bound < 8 * 1024 * 1024, "{bound}");
    let caps = config.max_keys + config.max_networks + 2 * 16;
    let s = setup(config);
    let req = Requirement::none();
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        let ip = Some(distinct(i));
        if i.is_multiple_of(10) {
            s.auth
                .authenticate(s.key.expose_secret(), &req, ip)
                .await
                .unwrap();
        } else {
            s.auth
                .authenticate("sk_live_junk", &req, ip)
                .await
                .unwrap_err();
        }
        if i % 100_000 == 99_999 {
            peak = peak.max(s.monitor.memory_used());
            assert!(s.monitor.entries() <= caps, "{}", s.monitor.entries());
        }
    }
    assert!(peak <= bound, "{peak} > {bound}");
    println!("monitoring state: peak {peak} bytes, bound {bound} bytes");
    // The key's networks changed every time: new-network events are
    // rate-bounded, not one per request.
    let new_networks = kinds(&s.events)
        .into_iter()
        .filter(|k| *k == "new_network")
        .count();
    assert_eq!(new_networks, 3, "at most 3 per key per dedupe window");
}

/// Issue 22 (seed 001, "unusual traffic patterns"): three quiet hours set
/// the baseline; an hour with more than five times the average raises one
/// event.
#[tokio::test]
async fn traffic_above_the_trailing_average_raises_one_unusual_traffic_event() {
    let s = setup(MonitorConfig::default());
    let req = Requirement::none();
    for _ in 0..3 {
        for _ in 0..40 {
            s.auth
                .authenticate(s.key.expose_secret(), &req, None)
                .await
                .unwrap();
        }
        s.clock.advance(Duration::from_secs(3_600));
    }
    assert!(s.events.events().is_empty());
    for _ in 0..400 {
        s.auth
            .authenticate(s.key.expose_secret(), &req, None)
            .await
            .unwrap();
    }
    let events = s.events.events();
    assert_eq!(kinds(&s.events), ["unusual_traffic"]);
    assert_eq!(
        events[0].kind,
        AuditKind::UnusualTraffic {
            last_hour: 201,
            trailing_average: 40
        }
    );
    assert_eq!(events[0].owner.as_deref(), Some("org_1"));
    assert_eq!(s.hook.events(), events, "the hook gets the same events");
}

/// Issue 22 (seed 001, "rate limit hits"): one event per key per window.
#[tokio::test]
async fn rate_limit_hits_raise_one_event_per_window() {
    let s = setup(MonitorConfig::default());
    let gate = Gate::new(s.auth.clone())
        .with_limits(MemoryLimits::with_clock(s.clock.clone()))
        .with_quotas(QuotaTable::fixed(Quota::unlimited().per_minute(2)));
    let header = s.key.expose_secret().to_owned();
    let route = Route::any_key();
    let check = || gate.check([("x-api-key", header.as_str())], None, None, &route);
    let mut refused = 0;
    for _ in 0..10 {
        if let Decision::Rejected(r) = check().await {
            assert_eq!(r.error.code(), "RATE_LIMITED");
            refused += 1;
        }
    }
    assert_eq!(refused, 8);
    assert_eq!(kinds(&s.events), ["rate_limit_hit"]);
    s.clock.advance(Duration::from_secs(3_600));
    for _ in 0..10 {
        let _ = check().await;
    }
    let events = s.events.events();
    assert_eq!(kinds(&s.events), ["rate_limit_hit", "rate_limit_hit"]);
    assert_eq!(events[1].kind, AuditKind::RateLimitHit { suppressed: 7 });
    assert_eq!(events[1].key_id, Some(s.id));
}

/// Issue 22 (seed 001, "authentication failures"): failures of one key
/// after its tag matched (here: disabled) make one burst event per window.
#[tokio::test]
async fn failures_of_one_key_raise_one_burst_per_window() {
    let s = setup(MonitorConfig::default());
    let mut record = s.auth.store().get(s.id).await.unwrap().unwrap();
    record.status = KeyStatus::Disabled;
    s.auth.store().update_sync(record).unwrap();
    for _ in 0..100 {
        s.auth
            .authenticate(s.key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap_err();
    }
    let events = s.events.events();
    assert_eq!(kinds(&s.events), ["failure_burst"]);
    assert_eq!(
        events[0].kind,
        AuditKind::FailureBurst {
            network: None,
            failures: 20,
            window_secs: 300
        }
    );
    assert_eq!(events[0].key_id, Some(s.id));
}
