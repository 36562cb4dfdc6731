//! Integration tests for `apikey::ratelimit`, through its public API only.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use apikey::limits::backend::{FailureThrottle, GcraState};
use apikey::limits::{Admission, FailureThrottleConfig, MemoryLimits, Quota, RateWindow, Verdict};
use apikey::{ManualClock, Timestamp};
use proptest::prelude::*;

/// Plans as the examples define them.
const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);
const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);

/// The check-oriented view of a [`MemoryLimits`] these tests were written
/// against.
struct Rl(MemoryLimits<ManualClock>);

impl Rl {
    fn check(&self, key: u64, quota: &Quota) -> Verdict {
        self.0.admit_sync(&Admission::new(key, *quota))
    }
    fn store(&self) -> &Self {
        self
    }
    fn get(&self, key: u64) -> Option<GcraState> {
        self.0.rate_state(key)
    }
}

trait Allowed {
    fn is_allowed(&self) -> bool;
    fn info(&self) -> Option<&apikey::limits::RateLimitInfo>;
}

impl Allowed for Verdict {
    fn is_allowed(&self) -> bool {
        self.is_admitted()
    }
    fn info(&self) -> Option<&apikey::limits::RateLimitInfo> {
        self.rate_limit()
    }
}

/// The clock the tests drive, in `std::time::Duration` steps.
#[derive(Clone)]
struct Clock(ManualClock);

const T0: apikey::Timestamp =
    match apikey::Timestamp::checked_from_unix_micros(1_767_225_600_000_000) {
        Some(t) => t,
        None => apikey::Timestamp::MIN,
    };

impl Clock {
    fn advance(&self, d: Duration) {
        self.0.advance(d);
    }
    /// Microseconds since T0.
    fn now(&self) -> u64 {
        let t = apikey::Clock::now(&self.0).as_unix_micros();
        let t0 = T0.as_unix_micros();
        u64::try_from(t - t0).unwrap_or(0)
    }
}

fn limiter() -> (Clock, Rl) {
    let clock = ManualClock::new(T0);
    (Clock(clock.clone()), Rl(MemoryLimits::with_clock(clock)))
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn free_plan_burst_is_exactly_the_minute_limit() {
    let (clock, rl) = limiter();
    for i in 0..100u32 {
        let d = rl.check(1, &FREE);
        let info = d.info().copied().expect("FREE enforces windows");
        assert!(d.is_allowed(), "request {i} refused");
        assert_eq!(info.window, RateWindow::Minute);
        assert_eq!(info.limit, 100);
        assert_eq!(info.remaining, 99 - i);
    }
    // 101st: refused; the minute window regains one request every 600 ms.
    let d = rl.check(1, &FREE);
    match d {
        Verdict::RateLimited { info, retry_after } => {
            assert_eq!(retry_after, Duration::from_millis(600));
            assert_eq!(info.window, RateWindow::Minute);
            assert_eq!((info.limit, info.remaining), (100, 0));
            // Full replenishment of the minute window: 100 × 600 ms.
            assert_eq!(info.reset_after, MINUTE);
        }
        other => panic!("101st request: {other:?}"),
    }
    assert_eq!(d.retry_after_secs(), Some(1));

    // Just before retry_after: still refused. At retry_after: one admitted.
    clock.advance(Duration::from_millis(599));
    assert!(!rl.check(1, &FREE).is_allowed());
    clock.advance(Duration::from_millis(1));
    assert!(rl.check(1, &FREE).is_allowed());
    assert!(!rl.check(1, &FREE).is_allowed());

    // After a full minute of silence the whole burst is back.
    clock.advance(MINUTE);
    let admitted = (0..200).filter(|_| rl.check(1, &FREE).is_allowed()).count();
    assert_eq!(admitted, 100);
}

#[test]
fn refusal_charges_neither_window() {
    let (_clock, rl) = limiter();
    for _ in 0..100 {
        assert!(rl.check(7, &FREE).is_allowed());
    }
    let state = rl.store().get(7);
    for _ in 0..500 {
        assert!(!rl.check(7, &FREE).is_allowed());
    }
    // Stored TATs are unchanged by the refusals...
    assert_eq!(rl.store().get(7), state);
    // ...so the hour window has been charged exactly 100 times: probing it
    // alone (which admits and charges once more) shows 1000 - 101 left.
    let hour_only = Quota::new(None, Some(1_000));
    let info = rl
        .check(7, &hour_only)
        .info()
        .copied()
        .expect("hour enforced");
    assert_eq!((info.window, info.remaining), (RateWindow::Hour, 899));
}

#[test]
fn hour_refusal_does_not_charge_minute() {
    let (clock, rl) = limiter();
    let q = Quota::new(Some(10), Some(12));
    for _ in 0..10 {
        assert!(rl.check(3, &q).is_allowed());
    }
    clock.advance(MINUTE);
    // Minute window full again, hour window has 2 left.
    assert!(rl.check(3, &q).is_allowed());
    let d = rl.check(3, &q);
    assert!(d.is_allowed());
    assert_eq!(
        d.info().map(|i| (i.window, i.remaining)),
        Some((RateWindow::Hour, 0))
    );
    let before = rl.store().get(3);
    let d = rl.check(3, &q);
    assert_eq!(d.info().map(|i| i.window), Some(RateWindow::Hour));
    // Hour: T = 300 s; TAT = 12 × 300 s, now = 60 s, τ = 11 × 300 s.
    assert_eq!(d.retry_after(), Some(Duration::from_secs(240)));
    assert_eq!(rl.store().get(3), before);
    // The minute window still shows 8 remaining once the hour allows again.
    clock.advance(Duration::from_secs(240));
    let minute_only = Quota::new(Some(10), None);
    let info = rl.check(3, &minute_only).info().copied().expect("enforced");
    assert_eq!(info.remaining, 9, "minute window was charged by a refusal");
}

#[test]
fn reports_window_with_least_remaining() {
    let (_clock, rl) = limiter();
    // Hour window is tighter in absolute terms here.
    let q = Quota::new(Some(50), Some(5));
    let info = rl.check(1, &q).info().copied().expect("enforced");
    assert_eq!(
        (info.window, info.limit, info.remaining),
        (RateWindow::Hour, 5, 4)
    );
    assert_eq!(info.reset_after, HOUR / 5);
    assert_eq!(info.reset_at_unix(1_700_000_000), 1_700_000_720);
    // Free plan: minute window has less remaining.
    let info = rl.check(2, &FREE).info().copied().expect("enforced");
    assert_eq!((info.window, info.remaining), (RateWindow::Minute, 99));
}

#[test]
fn keys_are_independent() {
    let (_clock, rl) = limiter();
    let q = Quota::new(Some(1), None);
    assert!(rl.check(1, &q).is_allowed());
    assert!(!rl.check(1, &q).is_allowed());
    assert!(rl.check(2, &q).is_allowed());
}

#[test]
fn concurrent_checks_on_frozen_clock_admit_exactly_the_limit() {
    let (clock, rl) = limiter();
    clock.advance(Duration::from_secs(12_345));
    let admitted = AtomicU32::new(0);
    let threads = 8;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..500 {
                    if rl.check(99, &PROFESSIONAL).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 500);

    // Hour window binding: 8 threads on a key with per-hour 37 only.
    let admitted = AtomicU32::new(0);
    let q = Quota::new(None, Some(37));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..100 {
                    if rl.check(100, &q).is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 37);
}

#[test]
fn limiters_sharing_a_store_share_state() {
    let clock = ManualClock::new(T0);
    let shared = std::sync::Arc::new(MemoryLimits::with_clock(clock));
    let a = std::sync::Arc::clone(&shared);
    let b = std::sync::Arc::clone(&shared);
    let q = Quota::new(Some(2), None);
    assert!(a.check_sync(5, q).is_admitted());
    assert!(b.check_sync(5, q).is_admitted());
    assert!(!a.check_sync(5, q).is_admitted());
    assert_eq!(shared.rate_len(), 1);
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_unix_micros(T0.as_unix_micros() + secs * 1_000_000).expect("in range")
}

#[test]
fn failure_throttle_backs_off_a_key_id_and_expires() {
    let cfg = FailureThrottleConfig {
        max_failures: 5,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(600),
        max_tracked: 1_000,
        ipv6_prefix_len: 64,
    };
    let t = FailureThrottle::new(cfg);
    for _ in 0..4 {
        assert_eq!(t.record_key_failure(7, at(0)), Ok(()));
        assert_eq!(t.check_key(7, at(0)), Ok(()));
    }
    assert_eq!(
        t.record_key_failure(7, at(0)),
        Err(Duration::from_secs(600))
    );
    assert_eq!(t.check_key(7, at(0)), Err(Duration::from_secs(600)));
    // Another key is never affected.
    assert_eq!(t.check_key(8, at(0)), Ok(()));
    assert_eq!(t.check_key(7, at(599)), Err(Duration::from_secs(1)));
    assert_eq!(t.check_key(7, at(600)), Ok(()));
    // A fresh window: one failure does not back off again.
    assert_eq!(t.record_key_failure(7, at(600)), Ok(()));
    assert_eq!(t.check_key(7, at(600)), Ok(()));
}

#[test]
fn failure_throttle_locks_out_an_address_for_untagged_lookups() {
    let cfg = FailureThrottleConfig {
        max_failures: 5,
        window: Duration::from_secs(60),
        lockout: Duration::from_secs(600),
        max_tracked: 1_000,
        ipv6_prefix_len: 64,
    };
    let t = FailureThrottle::new(cfg);
    let ip: IpAddr = "203.0.113.10".parse().expect("valid address");
    let other: IpAddr = "203.0.113.11".parse().expect("valid address");
    for _ in 0..4 {
        let attempt = t.begin_untagged(Some(ip), at(0)).expect("not locked");
        assert_eq!(attempt.failed(at(0)), Ok(()));
    }
    let attempt = t.begin_untagged(Some(ip), at(0)).expect("not locked");
    assert_eq!(attempt.failed(at(0)), Err(Duration::from_secs(600)));
    assert_eq!(t.check_address(ip, at(0)), Err(Duration::from_secs(600)));
    assert!(t.begin_untagged(Some(ip), at(0)).is_err());
    assert_eq!(t.check_address(other, at(0)), Ok(()));
    assert_eq!(t.check_address(ip, at(599)), Err(Duration::from_secs(1)));
    assert_eq!(t.check_address(ip, at(600)), Ok(()));
    let attempt = t.begin_untagged(Some(ip), at(600)).expect("lockout over");
    assert_eq!(attempt.failed(at(600)), Ok(()));
    assert_eq!(t.check_address(ip, at(600)), Ok(()));
}

/// The in-flight bound, under real concurrency: 100 attempts started at
/// once against `max_failures = 3` reach the store at most 3 times.
#[test]
fn concurrent_untagged_failures_make_at_most_max_failures_lookups() {
    let t = FailureThrottle::new(FailureThrottleConfig {
        max_failures: 3,
        ..FailureThrottleConfig::default()
    });
    let ip: IpAddr = "198.51.100.77".parse().expect("valid address");
    let lookups = AtomicU32::new(0);
    let barrier = std::sync::Barrier::new(100);
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                barrier.wait();
                if let Ok(attempt) = t.begin_untagged(Some(ip), at(0)) {
                    lookups.fetch_add(1, Ordering::Relaxed);
                    // The lookup fails slowly; others arrive meanwhile.
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = attempt.failed(at(0));
                }
            });
        }
    });
    assert!(lookups.load(Ordering::Relaxed) <= 3);
    assert!(t.check_address(ip, at(1)).is_err());
}

#[test]
fn failure_throttle_memory_is_bounded_under_address_rotation() {
    let cfg = FailureThrottleConfig {
        max_failures: 3,
        max_tracked: 256,
        ..FailureThrottleConfig::default()
    };
    let t = FailureThrottle::new(cfg);
    let victim: IpAddr = "198.51.100.1".parse().expect("valid address");
    for _ in 0..3 {
        let _ = t
            .begin_untagged(Some(victim), at(0))
            .map(|a| a.failed(at(0)));
    }
    assert!(t.check_address(victim, at(0)).is_err());
    for i in 0..20_000u32 {
        let now = at(0) + std::time::Duration::from_millis(u64::from(i));
        // Distinct IPv4 addresses and distinct IPv6 /64s.
        let v4 = IpAddr::from((0x0A00_0000 + i).to_be_bytes());
        let v6 = IpAddr::from((u128::from(i) << 64).to_be_bytes());
        let _ = t.begin_untagged(Some(v4), now).map(|a| a.failed(now));
        let _ = t.begin_untagged(Some(v6), now).map(|a| a.failed(now));
        let _ = t.record_key_failure(u64::from(i), now);
        assert!(t.tracked().0 <= 256 && t.tracked().1 <= 256);
    }
    // Addresses within one /64 share one entry.
    let t2 = FailureThrottle::new(cfg);
    for i in 0..10_000u128 {
        let ip = IpAddr::from(((7u128 << 64) | i).to_be_bytes());
        let _ = t2.begin_untagged(Some(ip), at(0)).map(|a| a.failed(at(0)));
    }
    assert_eq!(t2.tracked().1, 1);
}

#[test]
fn manual_clock_is_shareable() {
    let clock = ManualClock::new(T0);
    let c2: std::sync::Arc<dyn apikey::Clock> = std::sync::Arc::new(clock.clone());
    clock.advance(std::time::Duration::from_secs(2));
    clock.set(T0 + std::time::Duration::from_secs(10));
    assert_eq!(c2.now(), T0 + std::time::Duration::from_secs(10));
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Reference model: ITU-T I.371 "continuous-state leaky bucket", a second,
/// independent formulation of GCRA (bucket level `x` and last conformance
/// time instead of a TAT). Both windows must conform; only then both are
/// updated.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    emission: i128,
    tolerance: i128,
    level: i128,
    last: i128,
}

impl Bucket {
    fn new(period: Duration, limit: u32) -> Self {
        let p = period.as_micros() as i128;
        let t = (p + i128::from(limit) - 1) / i128::from(limit);
        Self {
            emission: t,
            tolerance: t * (i128::from(limit) - 1),
            level: 0,
            last: 0,
        }
    }
    /// `Ok(new_level)` if conforming at `now`, `Err(wait)` otherwise.
    fn probe(&self, now: i128) -> Result<i128, i128> {
        let x = (self.level - (now - self.last)).max(0);
        if x > self.tolerance {
            Err(x - self.tolerance)
        } else {
            Ok(x + self.emission)
        }
    }
}

/// Checks the GCRA conformance bound on the admitted times of one window:
/// for every pair of admissions `a_i <= a_j` (indices i <= j), the number of
/// admissions between them inclusive, `j - i + 1`, is at most
/// `L + floor((a_j - a_i) / T)` with `T = ceil(P / L)`. A burst of `L` at
/// once, then one per `T`. It implies the sliding-window check done too:
/// any half-open window `[a_i, a_i + P)` holds at most `2L - 1` admissions.
fn check_bound(admitted: &[u64], period: Duration, limit: u32) -> Result<(), TestCaseError> {
    let p = period.as_micros() as u64;
    let t = p.div_ceil(u64::from(limit));
    for i in 0..admitted.len() {
        let mut in_window = 0u64;
        for j in i..admitted.len() {
            let span = admitted[j] - admitted[i];
            let count = (j - i + 1) as u64;
            prop_assert!(
                count <= u64::from(limit) + span / t,
                "{count} admissions over {span} µs, limit {limit} per {period:?}"
            );
            if span < p {
                in_window += 1;
            }
        }
        prop_assert!(in_window < 2 * u64::from(limit));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random (advance, burst) sequences: the limiter agrees exactly with the
    /// reference model (decision and retry_after), never breaks the GCRA
    /// bound in either window, and a refused request retried after
    /// `retry_after` (with nothing admitted meanwhile) is admitted.
    #[test]
    fn gcra_matches_model_and_bound(
        per_minute in 1u32..12,
        per_hour in 1u32..60,
        steps in prop::collection::vec((0u64..30_000, 0usize..6), 1..120),
    ) {
        let (clock, rl) = limiter();
        let q = Quota::new(Some(per_minute), Some(per_hour));
        let mut model = [Bucket::new(MINUTE, per_minute), Bucket::new(HOUR, per_hour)];
        let mut admitted = Vec::new();
        let mut pending_retry: Option<u64> = None;
        for (advance_ms, burst) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            let now = clock.now();
            for _ in 0..burst {
                let d = rl.check(11, &q);
                let probes = [model[0].probe(i128::from(now)), model[1].probe(i128::from(now))];
                match (probes, d) {
                    ([Ok(a), Ok(b)], Verdict::Admitted { rate_limit: info, .. }) => {
                        model[0].level = a;
                        model[0].last = i128::from(now);
                        model[1].level = b;
                        model[1].last = i128::from(now);
                        prop_assert!(info.is_some());
                        admitted.push(now);
                        pending_retry = None;
                    }
                    ([a, b], Verdict::RateLimited { retry_after, info }) => {
                        let wait = a.err().unwrap_or(0).max(b.err().unwrap_or(0));
                        prop_assert!(wait > 0, "refused while the model conforms");
                        prop_assert_eq!(retry_after.as_micros() as i128, wait);
                        prop_assert_eq!(info.remaining, 0);
                        if let Some(at) = pending_retry {
                            prop_assert!(now < at, "refused at/after the promised retry time");
                        }
                        pending_retry = Some(now + retry_after.as_micros() as u64);
                    }
                    (p, d) => prop_assert!(false, "model {p:?} vs limiter {d:?}"),
                }
            }
        }
        check_bound(&admitted, MINUTE, per_minute)?;
        check_bound(&admitted, HOUR, per_hour)?;
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MemoryLimits>();
    assert_send_sync::<MemoryLimits<ManualClock>>();
    assert_send_sync::<FailureThrottle>();
    assert_send_sync::<apikey::limits::NoLimits>();
    assert_send_sync::<Verdict>();
}
