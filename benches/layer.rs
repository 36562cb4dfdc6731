//! The layer's cost, deterministic: `ApiKeyLayer`'s `call` on a prebuilt
//! request against the same axum route without the layer, polled once
//! (every future is ready at once: `MemoryStore`, `MemoryLimits`, the
//! handler). No sockets, no runtime, so a regression shows here before it
//! drowns in the noise of `benches/web_edge.rs`; the callgrind guard runs
//! the same calls (`examples/callgrind_driver.rs`, classes `layer_*`).
//!
//! `cargo bench --features axum --bench layer -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tower_service::Service;

#[path = "support/naive.rs"]
mod naive;
#[path = "support/web.rs"]
mod web;
use naive::{FixedClock, poll_ready};
use web::Mode;

fn layer_call(c: &mut Criterion) {
    let now = apikey::Clock::now(&apikey::SystemClock);
    let (verifier, store, keys) = web::keys(now);
    let store = Arc::new(store);
    let mut g = c.benchmark_group("layer_call");
    g.throughput(Throughput::Elements(1));
    for (name, mode) in [
        ("bare", Mode::Bare),
        ("memory_store", Mode::Memory),
        ("limits_usage", Mode::LimitsUsage),
    ] {
        for (clock, label) in [(false, "system_clock"), (true, "fixed_clock")] {
            let mut router = if clock {
                web::router(mode, &verifier, &store, FixedClock::new(now))
            } else {
                web::router(mode, &verifier, &store, apikey::SystemClock)
            };
            let mut i = 0usize;
            g.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    let req = web::request(&keys[i]);
                    let res = poll_ready(router.call(black_box(req))).unwrap();
                    black_box(res.status())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, layer_call);
criterion_main!(benches);
