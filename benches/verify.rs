//! Criterion benches of the verify hot path and its budget (issue 5).
//!
//! Run everything: `cargo bench --bench verify`; one group, e.g.
//! `cargo bench --bench verify -- verify_1k`. `.ci/bench-report.sh` prints
//! the budget table (ratios) from the results of one run.
//!
//! Groups:
//! * `floor`: the primitives (pre-keyed HMAC-SHA256, SHA-256, `ct_eq`).
//! * `naive`: the baseline a user would otherwise write, exactly as measured
//!   in issue 5, with `String` ids and with `u64` ids, at 1,000 and 1,000,000
//!   keys.
//! * `verify_1k` / `verify_1m`: `Verifier::verify_with` over `MemoryStore`
//!   for every input class (a fixed `now` passed in), and `valid_clock`: the
//!   full verify a service runs, `Verifier::verify` with a clock with
//!   `SystemClock` (clock read, expiry, status, environment and a scope
//!   check; issue 11's first two rows). The 1,000,000-key store is built
//!   once per process; keys are verified in random order.
//! * `async`: the `Authenticator` over `MemoryStore` vs the sync core, with
//!   usage, audit and throttle off (`authenticator_noop_poll`, fixed clock;
//!   `authenticator_system_clock`), with usage recording on
//!   (`authenticator_usage_on`), and through `KeyManager::authenticate`.
//! * `generate`: key issuing, record included, no store insert: with OS
//!   randomness per key, with the default per-thread CSPRNG, and with a
//!   caller's seeded ChaCha20.
//! * `scopes`: requirement checks.
//! * `threads`: one vs two threads verifying against one store, and a
//!   register-only loop's scaling measured in the same run.

#![allow(missing_docs, clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use apikey::Timestamp;
use apikey::{
    Authenticator, Clock, KeyStore, Keyring, MemoryStore, NewKey, Requirement, Scope, ScopeSet,
    ServerSecret, SystemClock, Verifier,
};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng, TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[path = "support/naive.rs"]
mod naive;
use naive::{FixedClock, Record, naive_record, naive_verify, poll_ready};

const SMALL: usize = 1_000;
const LARGE: usize = 1_000_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn now() -> Timestamp {
    // 2026-11-25T00:00:00Z
    Timestamp::from_unix_secs(1_795_564_800).unwrap()
}

fn expiry() -> Timestamp {
    now() + std::time::Duration::from_secs(365 * 86_400)
}

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap())
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Replaces one secret character and returns a key with a bad checksum.
fn flip(key: &str, pos: usize) -> String {
    let mut b = key.as_bytes().to_vec();
    b[pos] = if b[pos] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

fn with_checksum(text: Vec<u8>) -> String {
    apikey_testkit::fuzzing::with_valid_checksum(text).expect("a key-length ASCII text")
}

/// Inputs of every class for one store.
struct Fixture {
    verifier: Verifier,
    store: MemoryStore,
    /// Valid keys in random order.
    valid: Vec<String>,
    /// Issued keys with one secret character changed and the checksum fixed,
    /// so they pass parse only if the tag still matched: used for "forged".
    forged: Vec<String>,
    /// Keys that are well-formed, correctly tagged, but never stored.
    unknown: Vec<String>,
    /// Keys with a wrong secret that reach the store: a stored id, another
    /// secret, a correct tag and checksum.
    wrong_secret: Vec<String>,
    bad_checksum: Vec<String>,
}

fn build_fixture(n: usize, seed: u64) -> Fixture {
    let verifier = verifier();
    let store = MemoryStore::new();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut valid = Vec::with_capacity(n);
    for i in 0..n {
        let (key, record) = verifier
            .issue_with_rng(
                NewKey::new("sk_live_")
                    .owner(format!("owner_{}", i % 1000))
                    .scopes(["tasks:read", "projects:*"])
                    .expires_at(expiry()),
                now(),
                &mut rng,
            )
            .unwrap();
        store.insert_sync(record).unwrap();
        valid.push(key.expose_secret().to_owned());
    }
    shuffle(&mut valid, &mut rng);
    // Stored-id classes cycle over every stored id (random order), so at
    // 1,000,000 keys they miss the cache like valid keys do; store-free
    // classes need only a sample.
    let sample = n.min(SMALL);
    // Wrong secret: a stored id with another secret, correctly tagged and
    // checksummed (see `wrong_secret_keys`).
    let wrong_secret = wrong_secret_keys(&verifier, &store, &valid, seed);
    let mut unknown = Vec::with_capacity(n);
    for _ in 0..n {
        let (key, _) = verifier
            .issue_with_rng(NewKey::new("sk_live_"), now(), &mut rng)
            .unwrap();
        unknown.push(key.expose_secret().to_owned());
    }
    let forged = valid[..sample]
        .iter()
        .map(|k| {
            let mut b = k.as_bytes().to_vec();
            let pos = 8 + 1 + 11 + 3; // a secret character
            b[pos] = if b[pos] == b'a' { b'b' } else { b'a' };
            with_checksum(b)
        })
        .collect();
    let bad_checksum = valid[..sample]
        .iter()
        .map(|k| flip(k, k.len() - 1))
        .collect();
    Fixture {
        verifier,
        store,
        valid,
        forged,
        unknown,
        wrong_secret,
        bad_checksum,
    }
}

/// Keys whose id is stored but whose secret is not the stored one, made by
/// issuing with a seeded RNG whose first `next_u64` (the id) is forced to a
/// stored id. Not inserted: the store keeps the original record.
fn wrong_secret_keys(
    verifier: &Verifier,
    store: &MemoryStore,
    valid: &[String],
    seed: u64,
) -> Vec<String> {
    let mut out = Vec::with_capacity(valid.len());
    for (i, k) in valid.iter().enumerate() {
        let id = verifier.parse(k).unwrap().id();
        let mut rng = ForcedId {
            first: Some(id.as_u64()),
            inner: ChaCha20Rng::seed_from_u64(seed ^ (i as u64 + 1) << 32),
        };
        let (key, _) = verifier
            .issue_with_rng(NewKey::new("sk_live_"), now(), &mut rng)
            .unwrap();
        if i == 0 {
            assert_eq!(key.id(), id);
            assert!(store.fetch_sync(id).unwrap().is_some());
        }
        out.push(key.expose_secret().to_owned());
    }
    out
}

/// A CSPRNG wrapper whose first `next_u64` returns a chosen value (the id).
struct ForcedId {
    first: Option<u64>,
    inner: ChaCha20Rng,
}

impl TryRng for ForcedId {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.inner.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.first.take().unwrap_or_else(|| self.inner.next_u64()))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.fill_bytes(dest);
        Ok(())
    }
}
impl TryCryptoRng for ForcedId {}

fn small() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| build_fixture(SMALL, 1))
}

fn large() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let t = Instant::now();
        let f = build_fixture(LARGE, 2);
        eprintln!("built the 1,000,000-key MemoryStore in {:?}", t.elapsed());
        f
    })
}

// ---------------------------------------------------------------------------
// The naive baseline, exactly as measured in issue 5.

struct Naive<K> {
    mac: Hmac<Sha256>,
    map: HashMap<K, Record>,
    /// Keys in random order.
    keys: Vec<String>,
}

fn alnum(rng: &mut ChaCha20Rng, n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        let b = (rng.next_u32() & 0xFF) as u8;
        if b < 248 {
            s.push(char::from(BASE62[usize::from(b % 62)]));
        }
    }
    s
}

fn naive_mac() -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(&[9u8; 32]).unwrap()
}

fn build_naive_string(n: usize, seed: u64) -> Naive<String> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mac = naive_mac();
    let mut map = HashMap::new();
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let id = alnum(&mut rng, 8);
        let secret = alnum(&mut rng, 43);
        if map.contains_key(&id) {
            continue;
        }
        keys.push(format!("sk_live_{id}_{secret}"));
        map.insert(id, naive_record(&mac, &secret));
    }
    shuffle(&mut keys, &mut rng);
    Naive { mac, map, keys }
}

/// The id's 8 alphanumeric characters read as a base62 number (62^8 < 2^48),
/// with a 256-entry table, as a careful hand-written parser would.
fn id_u64(id: &str) -> Option<u64> {
    const TABLE: [u8; 256] = {
        let mut t = [0xFF; 256];
        let mut i = 0;
        while i < 62 {
            t[BASE62[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    if id.len() != 8 {
        return None;
    }
    id.bytes().try_fold(0u64, |acc, b| {
        let d = TABLE[usize::from(b)];
        (d != 0xFF).then_some(acc * 62 + u64::from(d))
    })
}

fn build_naive_u64(n: usize, seed: u64) -> Naive<u64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mac = naive_mac();
    let mut map = HashMap::new();
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let id = alnum(&mut rng, 8);
        let secret = alnum(&mut rng, 43);
        let num = id_u64(&id).unwrap();
        if map.contains_key(&num) {
            continue;
        }
        keys.push(format!("sk_live_{id}_{secret}"));
        map.insert(num, naive_record(&mac, &secret));
    }
    shuffle(&mut keys, &mut rng);
    Naive { mac, map, keys }
}

#[inline(never)]
fn naive_verify_string<'m>(
    map: &'m HashMap<String, Record>,
    mac: &Hmac<Sha256>,
    key: &str,
    now: i64,
) -> Result<&'m Record, ()> {
    naive_verify(|id| map.get(id), mac, key, now)
}

#[inline(never)]
fn naive_verify_u64<'m>(
    map: &'m HashMap<u64, Record>,
    mac: &Hmac<Sha256>,
    key: &str,
    now: i64,
) -> Result<&'m Record, ()> {
    naive_verify(|id| map.get(&id_u64(id)?), mac, key, now)
}

fn naive_small() -> &'static (Naive<String>, Naive<u64>) {
    static F: OnceLock<(Naive<String>, Naive<u64>)> = OnceLock::new();
    F.get_or_init(|| (build_naive_string(SMALL, 3), build_naive_u64(SMALL, 4)))
}

fn naive_large() -> &'static (Naive<String>, Naive<u64>) {
    static F: OnceLock<(Naive<String>, Naive<u64>)> = OnceLock::new();
    F.get_or_init(|| (build_naive_string(LARGE, 5), build_naive_u64(LARGE, 6)))
}

/// Cycles through `keys` (random order) one per iteration.
fn cycle<'a>(keys: &'a [String]) -> impl FnMut() -> &'a str {
    let mut i = 0;
    move || {
        let k = &keys[i];
        i += 1;
        if i == keys.len() {
            i = 0;
        }
        k.as_str()
    }
}

// ---------------------------------------------------------------------------

fn floor(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("floor");
    g.throughput(Throughput::Elements(1));
    let mac = naive_mac();
    let msg = [b'a'; 43];
    g.bench_function("hmac_sha256_prekeyed_43B", |b| {
        b.iter(|| {
            let mut m = mac.clone();
            m.update(black_box(&msg));
            m.finalize().into_bytes()
        })
    });
    let m32 = [1u8; 32];
    g.bench_function("sha256_32B", |b| b.iter(|| Sha256::digest(black_box(&m32))));
    let (x, y) = ([3u8; 32], [3u8; 32]);
    g.bench_function("subtle_slice_ct_eq_32B", |b| {
        b.iter(|| bool::from(black_box(&x[..]).ct_eq(black_box(&y[..]))))
    });
    let (dx, dy) = (
        apikey::KeyDigest::from_bytes(x),
        apikey::KeyDigest::from_bytes(y),
    );
    g.bench_function("keydigest_ct_eq", |b| {
        b.iter(|| black_box(&dx) == black_box(&dy))
    });
    g.finish();
}

fn naive(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("naive");
    g.throughput(Throughput::Elements(1));
    let now = 1_795_564_800i64;
    type Maps = fn() -> &'static (Naive<String>, Naive<u64>);
    for (label, maps) in [("1k", naive_small as Maps), ("1m", naive_large as Maps)] {
        // Fixtures are built lazily, inside the closures, so a filtered run
        // does not build the 1,000,000-key maps.
        g.bench_function(BenchmarkId::new("string_id", label), |b| {
            let s = &maps().0;
            let mut next = cycle(&s.keys);
            b.iter(|| naive_verify_string(&s.map, &s.mac, black_box(next()), now).is_ok())
        });
        g.bench_function(BenchmarkId::new("u64_id", label), |b| {
            let u = &maps().1;
            let mut next = cycle(&u.keys);
            b.iter(|| naive_verify_u64(&u.map, &u.mac, black_box(next()), now).is_ok())
        });
    }
    g.finish();
}

fn verify_group(c: &mut Criterion<ThreadCpu>, name: &str, fixture: fn() -> &'static Fixture) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let req = Requirement::scope("tasks:read").unwrap();
    let now = now();
    type Pick = fn(&Fixture) -> &[String];
    let classes: [(&str, Pick, bool); 5] = [
        ("valid", |f| &f.valid, true),
        ("wrong_secret", |f| &f.wrong_secret, false),
        ("unknown_id", |f| &f.unknown, false),
        ("bad_checksum", |f| &f.bad_checksum, false),
        ("forged", |f| &f.forged, false),
    ];
    for (class, pick, ok) in classes {
        g.bench_function(class, |b| {
            let f = fixture();
            let (v, store, keys) = (&f.verifier, &f.store, pick(f));
            // Sanity: the input gives the expected outcome.
            let first = v.verify_with(&keys[0], |id| store.fetch_sync(id), now, &req);
            assert_eq!(first.is_ok(), ok, "{class}");
            let mut next = cycle(keys);
            b.iter(|| v.verify_with(black_box(next()), |id| store.fetch_sync(id), now, &req))
        });
    }
    // The full verify a service runs: the clock is read inside (what the
    // issue's goal counts), not passed in.
    g.bench_function("valid_clock", |b| {
        let f = fixture();
        let (v, store) = (&f.verifier, &f.store);
        assert!(verify_now(v, store, &f.valid[0], &req).is_ok());
        let mut next = cycle(&f.valid);
        b.iter(|| verify_now(v, store, black_box(next()), &req))
    });
    g.bench_function("garbage", |b| {
        let f = fixture();
        let (v, store) = (&f.verifier, &f.store);
        let garbage = "hello, I am not an API key at all".to_owned();
        b.iter(|| v.verify_with(black_box(&garbage), |id| store.fetch_sync(id), now, &req))
    });
    g.bench_function("wrong_charset", |b| {
        let f = fixture();
        let (v, store) = (&f.verifier, &f.store);
        // Right length, right prefix, one character outside the alphabet.
        let mut text = f.valid[0].clone().into_bytes();
        text[20] = b'-';
        let text = String::from_utf8(text).unwrap();
        b.iter(|| v.verify_with(black_box(&text), |id| store.fetch_sync(id), now, &req))
    });
    g.bench_function("wrong_length", |b| {
        let f = fixture();
        let (v, store) = (&f.verifier, &f.store);
        let text = f.valid[0][..f.valid[0].len() - 1].to_owned();
        b.iter(|| v.verify_with(black_box(&text), |id| store.fetch_sync(id), now, &req))
    });
    g.finish();
}

/// The public synchronous entry point with the system clock read inside.
#[inline(never)]
fn verify_now(
    v: &Verifier,
    store: &MemoryStore,
    key: &str,
    req: &Requirement,
) -> apikey::Result<apikey::VerifiedKey> {
    v.verify_with(key, |id| store.fetch_sync(id), SystemClock, req)
}

fn verify_1k(c: &mut Criterion<ThreadCpu>) {
    verify_group(c, "verify_1k", small);
}

fn verify_1m(c: &mut Criterion<ThreadCpu>) {
    verify_group(c, "verify_1m", large);
}

fn async_path(c: &mut Criterion<ThreadCpu>) {
    let f = small();
    let mut g = c.benchmark_group("async");
    g.throughput(Throughput::Elements(1));
    let req = Requirement::scope("tasks:read").unwrap();
    let clock = FixedClock::new(now());
    let v = &f.verifier;
    let store = &f.store;
    let mut next = cycle(&f.valid);
    g.bench_function("sync_core", |b| {
        b.iter(|| {
            v.verify_with(
                black_box(next()),
                |id| store.fetch_sync(id),
                clock.now(),
                &req,
            )
        })
    });
    // Control: the sync core wrapped in a future with no await, polled the
    // same way, to separate the harness's cost from the authenticator's.
    let mut next = cycle(&f.valid);
    g.bench_function("sync_core_in_future", |b| {
        b.iter(|| {
            let key = black_box(next());
            poll_ready(async { v.verify_with(key, |id| store.fetch_sync(id), clock.now(), &req) })
        })
    });
    let auth = Authenticator::read_only_with_clock(f.verifier.clone(), store, clock);
    let mut next = cycle(&f.valid);
    g.bench_function("authenticator_noop_poll", |b| {
        b.iter(|| poll_ready(auth.authenticate(black_box(next()), &req, None)))
    });
    // What a service runs: the authenticator reading the system clock.
    let sys_auth = Authenticator::read_only(f.verifier.clone(), store);
    let mut next = cycle(&f.valid);
    g.bench_function("authenticator_system_clock", |b| {
        b.iter(|| poll_ready(sys_auth.authenticate(black_box(next()), &req, None)))
    });
    // Usage recording on (a `UsageRecorder`, never flushed here: the fixed
    // clock never makes a flush due after the first), audit and throttle off.
    let usage_auth = Authenticator::read_only_with_clock(f.verifier.clone(), store, clock)
        .with_usage(std::sync::Arc::new(apikey::UsageRecorder::new(
            std::time::Duration::from_secs(3_600),
        )));
    let mut next = cycle(&f.valid);
    g.bench_function("authenticator_usage_on", |b| {
        b.iter(|| poll_ready(usage_auth.authenticate(black_box(next()), &req, None)))
    });
    // The same through `KeyManager::authenticate`: usage recording on (the
    // default), audit off (no sink), no throttle.
    let manager = apikey::KeyManager::with_clock(f.verifier.clone(), store, clock);
    let mut next = cycle(&f.valid);
    g.bench_function("manager_usage_on", |b| {
        b.iter(|| poll_ready(manager.authenticate(black_box(next()), &req, None)))
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut next = cycle(&f.valid);
    g.bench_function("authenticator_tokio_block_on", |b| {
        b.iter(|| rt.block_on(auth.authenticate(black_box(next()), &req, None)))
    });
    // The store trait's future alone.
    let id = v.parse(&f.valid[0]).unwrap().id();
    g.bench_function("store_fetch_future", |b| {
        b.iter(|| poll_ready(KeyStore::fetch(store, black_box(id))))
    });
    // Issue 22: monitoring and metrics on (a Prometheus recorder, a
    // `Monitor`) against both off, in the same run, over the system clock
    // and a client address. Needs `--features metrics`. Last in the group:
    // the recorder is installed globally, as a service does (the valid
    // path caches its handles for the process-wide recorder only), and
    // nothing after it in this process calls the authenticator.
    #[cfg(feature = "metrics")]
    {
        let ip = Some(std::net::IpAddr::from([198, 51, 100, 7]));
        let off = Authenticator::read_only(f.verifier.clone(), store);
        let mut next = cycle(&f.valid);
        g.bench_function("authenticator_ops_off", |b| {
            b.iter(|| poll_ready(off.authenticate(black_box(next()), &req, ip)))
        });
        let monitor = std::sync::Arc::new(apikey::pipeline::Monitor::new(
            apikey::pipeline::MonitorConfig::default(),
            std::sync::Arc::new(apikey::NoAudit),
        ));
        let on = Authenticator::read_only(f.verifier.clone(), store).with_monitor(monitor);
        let mut next = cycle(&f.valid);
        g.bench_function("authenticator_monitor_only", |b| {
            b.iter(|| poll_ready(on.authenticate(black_box(next()), &req, ip)))
        });
        // Drained every second on another thread, as a service's exporter
        // does (its upkeep, default every 5 s, and every scrape): without
        // it the recorder's buckets only grow, and the bench measures page
        // faults of memory no service keeps.
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap();
        let upkeep = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = std::sync::Arc::clone(&upkeep);
        let drainer = std::thread::spawn(move || {
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                for _ in 0..10 {
                    if !running.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                handle.run_upkeep();
            }
        });
        let mut next = cycle(&f.valid);
        g.bench_function("authenticator_metrics_only", |b| {
            b.iter(|| poll_ready(off.authenticate(black_box(next()), &req, ip)))
        });
        let mut next = cycle(&f.valid);
        g.bench_function("authenticator_ops_on", |b| {
            b.iter(|| poll_ready(on.authenticate(black_box(next()), &req, ip)))
        });
        // The recorder's own share: one value into a histogram of the same
        // recorder, what the valid path adds besides its two clock reads.
        let alone = metrics::histogram!("apikey.bench.record_alone");
        g.bench_function("prometheus_record_alone", |b| {
            b.iter(|| alone.record(black_box(3.0e-7)))
        });
        upkeep.store(false, std::sync::atomic::Ordering::Relaxed);
        drainer.join().unwrap();
    }
    g.finish();
}

fn generate(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("generate");
    g.throughput(Throughput::Elements(1));
    let v = verifier();
    let now = now();
    // OS randomness for every key (two getrandom calls per key).
    g.bench_function("issue_os_rng", |b| {
        b.iter(|| {
            v.issue_with_os_rng(NewKey::new(black_box("sk_live_")), now)
                .unwrap()
        })
    });
    // The default: this thread's ChaCha20 generator seeded from the OS,
    // fork-checked on every key (`KeyRng`).
    g.bench_function("issue_thread_csprng", |b| {
        b.iter(|| v.issue(NewKey::new(black_box("sk_live_")), now).unwrap())
    });
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    g.bench_function("issue_chacha20", |b| {
        b.iter(|| {
            v.issue_with_rng(NewKey::new(black_box("sk_live_")), now, &mut rng)
                .unwrap()
        })
    });
    g.finish();
}

fn scopes(c: &mut Criterion<ThreadCpu>) {
    let mut g = c.benchmark_group("scopes");
    g.throughput(Throughput::Elements(1));
    let granted = ScopeSet::parse(["tasks:read", "projects:*"]).unwrap();
    let none: &[Scope] = &[];
    let cases = [
        ("exact", Requirement::scope("tasks:read").unwrap()),
        ("wildcard", Requirement::scope("projects:42:write").unwrap()),
        (
            "all_of_2",
            Requirement::all_of(["tasks:read", "projects:7"]).unwrap(),
        ),
        (
            "any_of_miss_then_hit",
            Requirement::any_of(["billing:read", "tasks:read"]).unwrap(),
        ),
        ("denied", Requirement::scope("billing:write").unwrap()),
    ];
    for (name, req) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(req).check(black_box(&granted), none))
        });
    }
    g.bench_function("parse_scope", |b| {
        b.iter(|| Scope::parse(black_box("corpus:42:query")))
    });
    g.finish();
}

/// Runs `work(thread, iters)` on `threads` threads started together; returns
/// the wall time of the slowest.
fn parallel<W: Fn(usize, u64) + Sync>(threads: usize, iters: u64, work: &W) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                work(t, iters);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before returning.
        start
    })
    .elapsed()
}

/// About as long as one verification, touching only registers.
#[inline(never)]
fn register_loop(iters: u64) {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..iters {
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
    }
    black_box(x);
}

fn threads(c: &mut Criterion) {
    let f = small();
    let mut g = c.benchmark_group("threads");
    let req = Requirement::scope("tasks:read").unwrap();
    let now = now();
    let v = &f.verifier;
    let store = Arc::new(&f.store);
    // Each thread walks its own half of the keys (different records, so no
    // shared refcount lines beyond the store's shard locks).
    let half = f.valid.len() / 2;
    let verify_work = |t: usize, iters: u64| {
        let keys = &f.valid[t * half..(t + 1) * half];
        let mut next = cycle(keys);
        for _ in 0..iters {
            let r = v.verify_with(black_box(next()), |id| store.fetch_sync(id), now, &req);
            black_box(r.is_ok());
        }
    };
    // Control: the same work with one store per thread (no shared lock or
    // counter lines), to tell contention in the store from the machine.
    let other = build_fixture(SMALL, 7);
    let own = [f, &other];
    let own_store_work = |t: usize, iters: u64| {
        let f = own[t];
        let mut next = cycle(&f.valid);
        for _ in 0..iters {
            let r =
                f.verifier
                    .verify_with(black_box(next()), |id| f.store.fetch_sync(id), now, &req);
            black_box(r.is_ok());
        }
    };
    let reg_work = |_t: usize, iters: u64| register_loop(iters);
    for n in [1usize, 2] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("verify", n), |b| {
            b.iter_custom(|iters| parallel(n, iters, &verify_work))
        });
        g.bench_function(BenchmarkId::new("verify_store_per_thread", n), |b| {
            b.iter_custom(|iters| parallel(n, iters, &own_store_work))
        });
        g.bench_function(BenchmarkId::new("register_loop", n), |b| {
            b.iter_custom(|iters| parallel(n, iters, &reg_work))
        });
    }
    g.finish();
}

/// Time spent on the CPU by the measuring thread (user + system), from
/// `CLOCK_THREAD_CPUTIME_ID`. On an idle machine it equals wall time for
/// this single-threaded, I/O-free code; on a shared machine it leaves out
/// the time the thread sat preempted, which wall time would add as noise.
/// (Cache and frequency effects of other load remain.)
struct ThreadCpu;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // Linux supports. The call writes `ts` and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn short<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = single_thread;
    config = short(Criterion::default().with_measurement(ThreadCpu));
    targets = floor, naive, verify_1k, async_path, generate, scopes, verify_1m
}
// Two threads: wall time, with the register-only loop as the machine's own
// scaling reference in the same run.
criterion_group! {
    name = multi_thread;
    config = short(Criterion::default());
    targets = threads
}
criterion_main!(single_thread, multi_thread);
