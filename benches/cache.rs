//! `CachedStore`: the hit path against `MemoryStore`, the cache structure
//! against `quick_cache`, the miss path's constant, and memory per entry.
//!
//! ```sh
//! cargo bench --bench cache                      # every group
//! cargo bench --bench cache -- cache_hit_verify  # one group
//! cargo bench --bench cache -- --memory          # bytes per entry (RSS), no criterion
//! ```
//!
//! Groups, each at 1,000 and 100,000 keys, in one run:
//! - `cache_hit_verify/N`: a whole verification (parse, fetch, HMAC,
//!   checks) over `MemoryStore` and over a warm `CachedStore<MemoryStore>`;
//!   the issue's hit-path ratio is the second over the first. The hit path
//!   is the same whatever the store behind the cache (a hit never reaches
//!   it), so this is also the hit path of `CachedStore<PostgresStore>`.
//! - `cache_structure/N`: the fetch alone: `MemoryStore::fetch_sync`, a
//!   `CachedStore` hit (sharded `RwLock<HashMap>`, age check, `Arc` clone)
//!   and `quick_cache::sync::Cache::get` holding the same `Arc<KeyView>`s.
//! - `cache_miss`: a `CachedStore` whose every fetch misses (maximum age
//!   zero) over `MemoryStore`, against the bare `MemoryStore` fetch: the
//!   difference is the constant a miss adds to the store's round trip.

#![allow(missing_docs, clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use apikey::Timestamp;
use apikey::{
    CachedStore, KeyId, KeyStore, KeyView, Keyring, MemoryStore, NewKey, Requirement, ServerSecret,
    Verifier,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

const SIZES: [usize; 2] = [1_000, 100_000];

fn now() -> Timestamp {
    "2026-06-01T12:00:00Z".parse::<Timestamp>().unwrap()
}

/// Polls a future that is ready at once (a hit, or a `MemoryStore` read).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("MemoryStore and cache hits never wait"),
    }
}

struct Fixture {
    verifier: Verifier,
    memory: Arc<MemoryStore>,
    cached: CachedStore<Arc<MemoryStore>>,
    keys: Vec<String>,
    ids: Vec<KeyId>,
}

fn fixture(n: usize) -> Fixture {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[5; 32]).unwrap()).unwrap());
    let memory = Arc::new(MemoryStore::new());
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let mut keys = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (key, record) = verifier
            .issue_with_rng(
                NewKey::new("sk_live_")
                    .owner(format!("owner_{}", i % 1000))
                    .scopes(["tasks:read", "projects:*"])
                    .expires_at(now() + std::time::Duration::from_secs(365 * 86_400)),
                now(),
                &mut rng,
            )
            .unwrap();
        ids.push(record.id);
        memory.insert_sync(record).unwrap();
        keys.push(key.expose_secret().to_owned());
    }
    // Criterion runs for minutes: a maximum age that outlives the run keeps
    // every measured fetch a hit.
    let cached = CachedStore::new(Arc::clone(&memory))
        .with_capacity(n * 2)
        .with_max_age(Duration::from_secs(3600));
    for id in &ids {
        ready(cached.fetch(*id)).unwrap();
    }
    assert_eq!(cached.len(), n);
    Fixture {
        verifier,
        memory,
        cached,
        keys,
        ids,
    }
}

fn cycle<'a, T>(v: &'a [T]) -> impl FnMut() -> &'a T {
    let mut i = 0;
    move || {
        i = (i + 1) % v.len();
        &v[i]
    }
}

fn hit_verify(c: &mut Criterion) {
    for n in SIZES {
        let f = fixture(n);
        let req = Requirement::none();
        let mut g = c.benchmark_group(format!("cache_hit_verify/{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("memory_store", |b| {
            let mut next = cycle(&f.keys);
            b.iter(|| {
                f.verifier
                    .verify_with(next(), |id| f.memory.fetch_sync(id), now(), &req)
                    .unwrap()
            })
        });
        g.bench_function("cached_store_hit", |b| {
            let mut next = cycle(&f.keys);
            b.iter(|| {
                f.verifier
                    .verify_with(next(), |id| ready(f.cached.fetch(id)), now(), &req)
                    .unwrap()
            })
        });
        g.finish();
    }
}

fn structure(c: &mut Criterion) {
    for n in SIZES {
        let f = fixture(n);
        let qc: quick_cache::sync::Cache<u64, Arc<KeyView>> = quick_cache::sync::Cache::new(n * 2);
        for id in &f.ids {
            qc.insert(id.as_u64(), f.memory.fetch_sync(*id).unwrap().unwrap());
        }
        let mut g = c.benchmark_group(format!("cache_structure/{n}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("memory_store_fetch", n), |b| {
            let mut next = cycle(&f.ids);
            b.iter(|| black_box(f.memory.fetch_sync(*next()).unwrap()))
        });
        g.bench_function(BenchmarkId::new("cached_store_hit", n), |b| {
            let mut next = cycle(&f.ids);
            b.iter(|| black_box(ready(f.cached.fetch(*next())).unwrap()))
        });
        g.bench_function(BenchmarkId::new("quick_cache_get", n), |b| {
            let mut next = cycle(&f.ids);
            b.iter(|| black_box(qc.get(&next().as_u64())))
        });
        g.finish();
    }
}

fn miss(c: &mut Criterion) {
    let f = fixture(1_000);
    let missing = CachedStore::new(Arc::clone(&f.memory)).with_max_age(Duration::ZERO);
    let mut g = c.benchmark_group("cache_miss");
    g.throughput(Throughput::Elements(1));
    g.bench_function("memory_store_fetch", |b| {
        let mut next = cycle(&f.ids);
        b.iter(|| black_box(f.memory.fetch_sync(*next()).unwrap()))
    });
    g.bench_function("cached_store_miss", |b| {
        let mut next = cycle(&f.ids);
        b.iter(|| black_box(ready(missing.fetch(*next())).unwrap()))
    });
    g.finish();
}

/// Reads a `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            let kb = l.strip_prefix(field)?.strip_prefix(':')?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes per entry: the cache's own structure (views shared with the
/// `MemoryStore` behind it), and a fresh view per entry as a networked
/// store decodes one.
fn memory() {
    let n = 1_000_000;
    let f = fixture(n);
    let before = status_bytes("VmRSS");
    let cache = CachedStore::new(Arc::clone(&f.memory)).with_capacity(n);
    for id in &f.ids {
        ready(cache.fetch(*id)).unwrap();
    }
    let after = status_bytes("VmRSS");
    println!(
        "cache structure: {} entries, {:.1} bytes/entry (views shared with the store)",
        cache.len(),
        (after - before) as f64 / n as f64
    );
    let before = status_bytes("VmRSS");
    let views: Vec<Arc<KeyView>> = f
        .ids
        .iter()
        .map(|id| Arc::new(KeyView::from_record(&f.memory.get_sync(*id).unwrap())))
        .collect();
    let after = status_bytes("VmRSS");
    println!(
        "a decoded view (owner, two scopes, expiry): {:.1} bytes/entry (plus 8 for the Vec slot here)",
        (after - before) as f64 / n as f64
    );
    black_box(views);
}

criterion_group!(benches, hit_verify, structure, miss);

fn main() {
    if std::env::args().any(|a| a == "--memory") {
        memory();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
