//! Deterministic driver for the instruction-count guard (`.ci/callgrind.sh`).
//!
//! `callgrind_driver CLASS N` builds a 1,000-key `MemoryStore` from a fixed
//! seed, then runs `N` operations of `CLASS` inside `measured_loop`, the only
//! function callgrind collects (`--toggle-collect=*measured_loop*`), so the
//! setup is not counted. Classes:
//!
//! * `valid`, `wrong_secret`, `garbage`, `forged`: `Verifier::verify_with`
//!   over `MemoryStore::fetch_sync`;
//! * `async_valid`: `Authenticator::authenticate` of valid keys, polled
//!   once with a no-op waker (MemoryStore futures are ready at once);
//! * `async_monitor`: the same with a [`Monitor`](apikey::pipeline::Monitor)
//!   and a client address (the monitor's own cost per valid verification);
//! * `async_metrics`, `async_ops_on` (`--features metrics`, not gated):
//!   `async_valid` and `async_monitor` under a local Prometheus recorder
//!   (the recorder's cost; for profiling issue 22's row);
//! * `naive`: issue 5's naive baseline verify (1,000 `String` ids);
//! * `layer_bare`, `layer_memory`, `layer_limits_usage`: one GET through
//!   an axum route with the 12-byte handler (`benches/support/web.rs`):
//!   bare, behind `ApiKeyLayer` over `MemoryStore`, and with `MemoryLimits`
//!   plus usage recording, polled once with a no-op waker; the guard also
//!   gates each layered count minus the bare one (the layer's own cost);
//! * `hmac`: a bare HMAC-SHA256 of a 42-byte message from a cloned,
//!   pre-keyed state (sha2 0.11 + hmac 0.13 with `zeroize`, as the crate does), the
//!   software-crypto part to subtract.
//!
//! Everything is seeded (ChaCha20, fixed server secret, `MemoryStore`'s
//! fixed id hasher), so the counts repeat exactly from run to run.

#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;

use apikey::Timestamp;
use apikey::{Authenticator, Keyring, MemoryStore, NewKey, Requirement, ServerSecret, Verifier};
use hmac::{Hmac, KeyInit, Mac};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sha2::Sha256;

#[path = "../benches/support/naive.rs"]
mod naive;
#[path = "../benches/support/web.rs"]
mod web;
use naive::{FixedClock, Record, naive_record, naive_verify, poll_ready};
use tower_service::Service;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

enum Op<'a> {
    Verify(
        &'a Verifier,
        &'a MemoryStore,
        &'a [String],
        &'a Requirement,
        Timestamp,
    ),
    Hmac(&'a Hmac<Sha256>),
    Naive(&'a NaiveMap, &'a Hmac<Sha256>, &'a [String]),
    Async(
        &'a Authenticator<&'a MemoryStore, FixedClock>,
        &'a [String],
        &'a Requirement,
        Option<std::net::IpAddr>,
    ),
    Layer(&'a axum::Router, &'a [String]),
}

/// std SipHash-1-3 (what `RandomState` builds) with fixed zero keys.
type NaiveMap = HashMap<String, Record, BuildHasherDefault<std::hash::DefaultHasher>>;

#[inline(never)]
fn naive_ok(map: &NaiveMap, mac: &Hmac<Sha256>, key: &str) -> bool {
    naive_verify(|id| map.get(id), mac, key, 1_795_564_800).is_ok()
}

#[inline(never)]
fn measured_loop(op: &Op<'_>, n: usize) -> usize {
    let mut ok = 0usize;
    match op {
        Op::Verify(v, store, keys, req, now) => {
            for i in 0..n {
                let key = &keys[i % keys.len()];
                let r = v.verify_with(black_box(key), |id| store.fetch_sync(id), *now, req);
                ok += usize::from(r.is_ok());
            }
        }
        Op::Naive(map, mac, keys) => {
            for i in 0..n {
                ok += usize::from(naive_ok(map, mac, black_box(&keys[i % keys.len()])));
            }
        }
        Op::Async(auth, keys, req, ip) => {
            for i in 0..n {
                let key = &keys[i % keys.len()];
                ok += usize::from(poll_ready(auth.authenticate(black_box(key), req, *ip)).is_ok());
            }
        }
        Op::Layer(router, keys) => {
            let mut router = (*router).clone();
            for i in 0..n {
                let req = web::request(black_box(&keys[i % keys.len()]));
                let res = poll_ready(router.call(req)).unwrap();
                ok += usize::from(res.status() == http::StatusCode::OK);
            }
        }
        Op::Hmac(mac) => {
            let msg = [0x5Au8; 42];
            for _ in 0..n {
                let mut m = (*mac).clone();
                m.update(black_box(&msg));
                let out = m.finalize().into_bytes();
                ok += usize::from(out[0] & 1);
            }
        }
    }
    ok
}

fn with_checksum(text: Vec<u8>) -> String {
    apikey_testkit::fuzzing::with_valid_checksum(text).expect("a key-length ASCII text")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let class = args.next().unwrap_or_else(|| "valid".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);

    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap());
    let now = Timestamp::from_unix_secs(1_795_564_800).unwrap();
    let store = MemoryStore::new();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut valid = Vec::new();
    for _ in 0..1000 {
        let (key, record) = verifier
            .issue_with_rng(
                NewKey::new("sk_live_")
                    .scopes(["tasks:read", "projects:*"])
                    .expires_at(now + std::time::Duration::from_secs(365 * 86_400)),
                now,
                &mut rng,
            )
            .unwrap();
        store.insert_sync(record).unwrap();
        valid.push(key.expose_secret().to_owned());
    }
    let req = Requirement::scope("tasks:read").unwrap();
    // Wrong secret: the valid keys against a store whose records hold the
    // same ids with other digests (exactly the wrong-secret path).
    let layer_mode = match class.as_str() {
        "layer_bare" => Some(web::Mode::Bare),
        "layer_memory" => Some(web::Mode::Memory),
        "layer_limits_usage" => Some(web::Mode::LimitsUsage),
        _ => None,
    };
    if let Some(mode) = layer_mode {
        let (verifier, store, keys) = web::keys(now);
        let router = web::router(
            mode,
            &verifier,
            &std::sync::Arc::new(store),
            FixedClock::new(now),
        );
        // Every call must be admitted (a refusal would measure the wrong path).
        assert_eq!(measured_loop(&Op::Layer(&router, &keys), 1), 1, "{class}");
        let ok = measured_loop(&Op::Layer(&router, &keys), n);
        assert_eq!(ok, n, "{class}");
        println!("{class} {n} ok={ok}");
        return;
    }
    let keys: Vec<String> = match class.as_str() {
        "valid" | "wrong_secret" | "hmac" | "naive" | "async_valid" | "async_monitor"
        | "async_metrics" | "async_ops_on" => valid.clone(),
        "garbage" => vec!["hello, I am not an API key at all".to_owned()],
        "forged" => valid
            .iter()
            .map(|k| {
                let mut b = k.as_bytes().to_vec();
                b[23] = if b[23] == b'a' { b'b' } else { b'a' };
                with_checksum(b)
            })
            .collect(),
        other => {
            eprintln!(
                "unknown class {other}: valid | wrong_secret | garbage | forged | hmac | naive | async_valid | async_monitor | async_metrics | async_ops_on | layer_bare | layer_memory | layer_limits_usage"
            );
            std::process::exit(2);
        }
    };
    let wrong_store;
    let store_ref = if class == "wrong_secret" {
        wrong_store = MemoryStore::new();
        for k in &valid {
            let id = verifier.parse(k).unwrap().id();
            let mut record = store.get_sync(id).unwrap();
            let mut d = *record.digest.as_bytes();
            d[0] ^= 1;
            record.digest = apikey::KeyDigest::from_bytes(d);
            wrong_store.insert_sync(record).unwrap();
        }
        &wrong_store
    } else {
        &store
    };
    // Check every class does what it says before measuring.
    let first = verifier.verify_with(&keys[0], |id| store_ref.fetch_sync(id), now, &req);
    assert_eq!(
        first.is_ok(),
        matches!(
            class.as_str(),
            "valid"
                | "hmac"
                | "naive"
                | "async_valid"
                | "async_monitor"
                | "async_metrics"
                | "async_ops_on"
        ),
        "{class}"
    );

    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&[9u8; 32]).unwrap();
    // The naive map, with a fixed-seed hasher (std's SipHash-1-3, as
    // RandomState, but with zero keys so counts repeat).
    let mut naive_map = NaiveMap::default();
    let mut naive_keys = Vec::new();
    if class == "naive" {
        let mut x = 1u64;
        let mut alnum = |n: usize| -> String {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(BASE62[(x % 62) as usize])
                })
                .collect()
        };
        for _ in 0..1000 {
            let (id, secret) = (alnum(8), alnum(43));
            naive_map.insert(id.clone(), naive_record(&mac, &secret));
            naive_keys.push(format!("sk_live_{id}_{secret}"));
        }
    }
    let mut auth =
        Authenticator::read_only_with_clock(verifier.clone(), store_ref, FixedClock::new(now));
    if matches!(class.as_str(), "async_monitor" | "async_ops_on") {
        auth = auth.with_monitor(std::sync::Arc::new(apikey::pipeline::Monitor::new(
            apikey::pipeline::MonitorConfig::default(),
            std::sync::Arc::new(apikey::NoAudit),
        )));
    }
    let ip = Some(std::net::IpAddr::from([198, 51, 100, 7]));
    if matches!(class.as_str(), "async_metrics" | "async_ops_on") {
        #[cfg(feature = "metrics")]
        {
            // Installed globally, as a service does (the valid path caches
            // its handles for the process-wide recorder only).
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            metrics::set_global_recorder(recorder).expect("one recorder per process");
            let op = Op::Async(&auth, &keys, &req, ip);
            // Registers the handles and calibrates the recorder's clock
            // outside the measured loop.
            for _ in 0..10 {
                let _ = poll_ready(auth.authenticate(&keys[0], &req, ip));
            }
            let ok = measured_loop(&op, n);
            println!("{class} {n} ok={ok}");
            return;
        }
        #[cfg(not(feature = "metrics"))]
        panic!("{class} needs --features metrics");
    }
    let op = if class == "hmac" {
        Op::Hmac(&mac)
    } else if class == "async_valid" {
        // Outside the measured loop: with `--features metrics` (the guard's
        // zero-cost check, no recorder installed) the first authentication
        // of a thread learns that the no-op recorder drops durations.
        for _ in 0..10 {
            let _ = poll_ready(auth.authenticate(&keys[0], &req, None));
        }
        Op::Async(&auth, &keys, &req, None)
    } else if class == "async_monitor" {
        Op::Async(&auth, &keys, &req, ip)
    } else if class == "naive" {
        Op::Naive(&naive_map, &mac, &naive_keys)
    } else {
        Op::Verify(&verifier, store_ref, &keys, &req, now)
    };
    let ok = measured_loop(&op, n);
    println!("{class} {n} ok={ok}");
}
