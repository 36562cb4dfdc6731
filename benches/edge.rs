//! Benches for the web edge: key extraction and the rate-limit check.
//!
//! `cargo bench --bench edge -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use apikey::PrefixRegistry;
use apikey::extract::Extractor;
use apikey::ratelimit::{Quota, RateLimiter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const KEY: &str = "sk_live_1BarQadMB0VMCpVQ67ByDWQjkpFKntvLG1LzhuARbZftXivkFvTA47XM6b";

fn extraction(c: &mut Criterion) {
    let extractor = Extractor::new(PrefixRegistry::with_builtins());
    let bearer = format!("Bearer {KEY}");
    let jwt = format!("Bearer eyJhbGciOiJIUzI1NiJ9.{}.sig", "e".repeat(400));
    let common = [
        ("host", "api.example.com"),
        ("user-agent", "python-requests/2.32"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, deflate"),
        ("content-type", "application/json"),
        ("content-length", "128"),
        ("x-request-id", "0b5f9a4e-2f6c-4c0e-9a64-3d2c5e7f8a91"),
    ];
    let with = |name: &'static str, value: &'static str| {
        let mut h: Vec<(&str, &str)> = common.to_vec();
        h.push((name, value));
        h
    };
    let x_api_key = with("X-API-Key", KEY);
    let leaked_bearer: &'static str = Box::leak(bearer.into_boxed_str());
    let leaked_jwt: &'static str = Box::leak(jwt.into_boxed_str());
    let by_bearer = with("Authorization", leaked_bearer);
    let by_jwt = with("Authorization", leaked_jwt);

    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    for (name, headers) in [("x_api_key_8_headers", &x_api_key), ("bearer_8_headers", &by_bearer), ("jwt_not_ours_8_headers", &by_jwt)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let h = black_box(headers);
                black_box(extractor.extract(h.iter().map(|(n, v)| (*n, *v))).is_ok())
            })
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    // Limits high enough that every check is admitted (the common case).
    let quota = Quota::new(Some(u32::MAX), Some(u32::MAX));
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    let limiter = RateLimiter::new();
    g.bench_function("check_single_thread", |b| {
        b.iter(|| black_box(limiter.check(black_box(7), &quota).is_allowed()))
    });
    let refusing = RateLimiter::new();
    let tight = Quota::new(Some(1), None);
    let _ = refusing.check(7, &tight);
    g.bench_function("check_refused_single_thread", |b| {
        b.iter(|| black_box(refusing.check(black_box(7), &tight).is_allowed()))
    });

    // Two threads, each doing `iters` checks; time per check pair.
    g.throughput(Throughput::Elements(2));
    for (name, keys) in [("check_two_threads_same_key", [7u64, 7]), ("check_two_threads_distinct_keys", [7u64, 1 << 40])] {
        let limiter = Arc::new(RateLimiter::new());
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                let handles: Vec<_> = keys
                    .iter()
                    .map(|&key| {
                        let limiter = Arc::clone(&limiter);
                        let barrier = Arc::clone(&barrier);
                        std::thread::spawn(move || {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                black_box(limiter.check(black_box(key), &quota).is_allowed());
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .max()
                    .unwrap_or(Duration::ZERO)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, extraction, rate_limit);
criterion_main!(benches);
