//! A gate check (extraction, verification against `MemoryStore`, one Redis
//! admission: both windows and key + owner credits) over loopback.
//!
//! Run: `cargo bench -p apikey-redis --bench redis_gate`
//! (needs `redis-server` on `PATH`; the bench starts its own on a free
//! port). Prints p50 / p99 and requests per second for 1 and 32 concurrent
//! tasks, then the criterion figure for one task.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey::limits::{CreditAccount, CreditBalances, Quota};
use apikey::web::{Decision, Gate, QuotaTable, Route};
use apikey::{ApiKey, Authenticator, Keyring, MemoryStore, NewKey, ServerSecret, Verifier};
use apikey_redis::RedisLimits;
use criterion::{Criterion, criterion_group, criterion_main};

type RGate = Gate<Arc<MemoryStore>, apikey::SystemClock, RedisLimits>;

fn setup(rt: &tokio::runtime::Runtime, server: &support::RedisServer) -> (Arc<RGate>, Arc<ApiKey>) {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[8; 32]).unwrap()).unwrap());
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier
        .issue(
            NewKey::new("sk_live_").owner("org_1"),
            apikey::Clock::now(&apikey::SystemClock),
        )
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let _g = rt.enter();
    let limits = server
        .builder("bench")
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    rt.block_on(async {
        limits
            .set_credits(CreditAccount::Key(record.id.as_u64()), 1 << 50, None)
            .await
            .unwrap();
        limits
            .set_credits(
                CreditAccount::Owner {
                    owner: "org_1",
                    api: "rest",
                },
                1 << 50,
                None,
            )
            .await
            .unwrap();
    });
    let gate = Gate::new(Authenticator::read_only(verifier, store))
        .with_limits(limits)
        .with_quotas(QuotaTable::fixed(Quota::new(
            Some(u32::MAX),
            Some(u32::MAX),
        )))
        .with_credits("rest");
    (Arc::new(gate), Arc::new(key))
}

async fn check(gate: &RGate, key: &ApiKey) -> bool {
    let h = [("x-api-key", key.expose_secret())];
    matches!(
        gate.check(
            h.iter().map(|(n, v)| (*n, *v)),
            None,
            None,
            &Route::any_key()
        )
        .await,
        Decision::Admitted(_)
    )
}

fn percentiles(rt: &tokio::runtime::Runtime, gate: &Arc<RGate>, key: &Arc<ApiKey>, tasks: usize) {
    let per_task = 20_000 / tasks.max(1);
    let started = Instant::now();
    let lat: Vec<Duration> = rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (gate, key) = (Arc::clone(gate), Arc::clone(key));
                tokio::spawn(async move {
                    let mut v = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        assert!(check(&gate, &key).await);
                        v.push(t.elapsed());
                    }
                    v
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let mut lat = lat;
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "redis gate check, {tasks:>2} task(s): p50 {:>7.1} µs  p99 {:>7.1} µs  {:>8.0} requests/s ({} requests)",
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        lat.len() as f64 / elapsed.as_secs_f64(),
        lat.len()
    );
}

fn bench(c: &mut Criterion) {
    let Some(server) = support::RedisServer::start("bench") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gate, key) = setup(&rt, &server);
    // Warm up (connect, load the script).
    rt.block_on(async {
        for _ in 0..1_000 {
            assert!(check(&gate, &key).await);
        }
    });
    percentiles(&rt, &gate, &key, 1);
    percentiles(&rt, &gate, &key, 32);
    c.bench_function("redis gate check (1 task)", |b| {
        b.to_async(&rt).iter(|| check(&gate, &key));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
