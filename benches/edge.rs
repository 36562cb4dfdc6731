//! Benches for the web edge: key extraction and the rate-limit check.
//!
//! `cargo bench --bench edge -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

use apikey_testkit::VerifyExt;
use std::hint::black_box;

use apikey::PrefixRegistry;
use apikey::limits::Quota;
use apikey::web::Extractor;
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
    for (name, headers) in [
        ("x_api_key_8_headers", &x_api_key),
        ("bearer_8_headers", &by_bearer),
        ("jwt_not_ours_8_headers", &by_jwt),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let h = black_box(headers);
                black_box(extractor.extract(h.iter().map(|(n, v)| (*n, *v))).is_ok())
            })
        });
    }
    g.finish();
}

/// The per-request work after verification: rate limit (both windows) and
/// an atomic key + owner credit debit. (`benches/ratelimit.rs` has the
/// limiter alone, single thread and two threads contending on one key.)
fn charge(c: &mut Criterion) {
    use apikey::limits::{CreditAccount, MemoryLimits};
    use apikey::web::Scheme;
    use apikey::web::{Decision, Gate, QuotaTable, Route};
    use apikey::*;

    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32]).unwrap()).unwrap());
    let store = MemoryStore::new();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let (key, record) = verifier
        .issue(NewKey::new("sk_live_").owner("org_1"), now)
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let verified = verifier
        .verify_with(
            key.expose_secret(),
            |id| store.fetch_sync(id),
            now,
            &Requirement::none(),
        )
        .unwrap();
    let wide = Quota::new(Some(u32::MAX), Some(u32::MAX));
    let limits = MemoryLimits::new();
    limits.set_credits_sync(CreditAccount::Key(record.id.as_u64()), u64::MAX, None);
    let owner = CreditAccount::Owner {
        owner: "org_1",
        api: "rest",
    };
    limits.set_credits_sync(owner, u64::MAX, None);
    let gate = Gate::new(Authenticator::read_only(verifier.clone(), store))
        .with_limits(limits)
        .with_quotas(QuotaTable::fixed(wide))
        .with_credits("rest");
    let route = Route::any_key();

    let mut g = c.benchmark_group("gate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("charge_rate_limit_and_credits", |b| {
        b.iter(|| {
            let d = gate.charge_blocking(black_box(verified.clone()), Scheme::ApiKeyHeader, &route);
            black_box(matches!(d, Decision::Admitted(_)))
        })
    });
    g.finish();
}

criterion_group!(benches, extraction, charge);
criterion_main!(benches);
