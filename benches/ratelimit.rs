//! Rate-limit check throughput.
//!
//! Run: `cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use apikey::limits::ratelimit::{FailureThrottle, FailureThrottleConfig, Quota, RateLimiter};
use criterion::{Criterion, criterion_group, criterion_main};

/// A quota that always admits, so every check takes the write path.
const WIDE: Quota = Quota::new(Some(u32::MAX), Some(u32::MAX));

/// Runs `threads` threads, each doing `iters` checks on the key it is given,
/// and returns wall time divided by `threads`, so criterion reports the
/// wall-clock time per operation across all threads.
fn contended(limiter: &RateLimiter, threads: u64, iters: u64, key_of: fn(u64) -> u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let key = key_of(t);
                for _ in 0..iters {
                    let _ = black_box(limiter.check(black_box(key), &WIDE));
                }
            });
        }
    });
    start.elapsed() / u32::try_from(threads).unwrap_or(1)
}

fn bench(c: &mut Criterion) {
    let limiter = RateLimiter::new();
    c.bench_function("check/1 thread/one key", |b| {
        b.iter(|| black_box(limiter.check(black_box(42), &WIDE)));
    });

    let limiter = RateLimiter::new();
    let mut key = 0u64;
    c.bench_function("check/1 thread/10k keys", |b| {
        b.iter(|| {
            key = (key + 1) % 10_000;
            black_box(limiter.check(black_box(key), &Quota::FREE))
        });
    });

    let limiter = RateLimiter::new();
    c.bench_function("check/2 threads/same key (per op)", |b| {
        b.iter_custom(|iters| contended(&limiter, 2, iters, |_| 7));
    });

    let limiter = RateLimiter::new();
    c.bench_function("check/2 threads/different keys (per op)", |b| {
        b.iter_custom(|iters| contended(&limiter, 2, iters, |t| t));
    });

    let throttle = FailureThrottle::new(FailureThrottleConfig::default());
    let ip = IpAddr::from([203, 0, 113, 5]);
    let _ = throttle.record_failure(ip);
    c.bench_function("failure throttle/check tracked address", |b| {
        b.iter(|| black_box(throttle.check(black_box(ip))));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
