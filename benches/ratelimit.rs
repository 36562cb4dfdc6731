//! Rate-limit check throughput.
//!
//! Run: `cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use apikey::Timestamp;
use apikey::limits::backend::FailureThrottle;
use apikey::limits::{
    Admission, CreditAccount, CreditCharge, FailureThrottleConfig, MemoryLimits, OwnerApi, Quota,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// A quota that always admits, so every check takes the write path.
const WIDE: Quota = Quota::new(Some(u32::MAX), Some(u32::MAX));
/// A plan as the examples define it.
const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);

/// Runs `threads` threads, each doing `iters` checks on the key it is given,
/// and returns wall time divided by `threads`, so criterion reports the
/// wall-clock time per operation across all threads.
fn contended(limiter: &MemoryLimits, threads: u64, iters: u64, key_of: fn(u64) -> u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let key = key_of(t);
                for _ in 0..iters {
                    let _ = black_box(limiter.check_sync(black_box(key), WIDE));
                }
            });
        }
    });
    start.elapsed() / u32::try_from(threads).unwrap_or(1)
}

fn bench(c: &mut Criterion) {
    let limiter = MemoryLimits::new();
    c.bench_function("check/1 thread/one key", |b| {
        b.iter(|| black_box(limiter.check_sync(black_box(42), WIDE)));
    });

    let limiter = MemoryLimits::new();
    let mut key = 0u64;
    c.bench_function("check/1 thread/10k keys", |b| {
        b.iter(|| {
            key = (key + 1) % 10_000;
            black_box(limiter.check_sync(black_box(key), FREE))
        });
    });

    let limiter = MemoryLimits::new();
    c.bench_function("check/2 threads/same key (per op)", |b| {
        b.iter_custom(|iters| contended(&limiter, 2, iters, |_| 7));
    });

    let limiter = MemoryLimits::new();
    c.bench_function("check/2 threads/different keys (per op)", |b| {
        b.iter_custom(|iters| contended(&limiter, 2, iters, |t| t));
    });

    let limits = MemoryLimits::new();
    limits.set_credits_sync(CreditAccount::Key(42), 1 << 50, None);
    let owner = OwnerApi {
        owner: "org_1",
        api: "rest",
    };
    limits.set_credits_sync(
        CreditAccount::Owner {
            owner: "org_1",
            api: "rest",
        },
        1 << 50,
        None,
    );
    let admission = Admission::new(42, WIDE).credits(CreditCharge::new(1).owner(Some(owner)));
    c.bench_function("admit/both windows + key and owner credits", |b| {
        b.iter(|| black_box(limits.admit_sync(black_box(&admission))));
    });

    let throttle = FailureThrottle::new(FailureThrottleConfig::default());
    let now = Timestamp::from_unix_micros(1_800_000_000_000_000).unwrap_or(Timestamp::MIN);
    let ip = IpAddr::from([203, 0, 113, 5]);
    let _ = throttle
        .begin_untagged(Some(ip), now)
        .map(|a| a.failed(now));
    c.bench_function("failure throttle/check tracked address", |b| {
        b.iter(|| black_box(throttle.check_address(black_box(ip), now)));
    });
    c.bench_function("failure throttle/check key, nothing tracked", |b| {
        b.iter(|| black_box(throttle.check_key(black_box(7), now)));
    });
    let _ = throttle.record_key_failure(7, now);
    c.bench_function("failure throttle/check tracked key", |b| {
        b.iter(|| black_box(throttle.check_key(black_box(7), now)));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
