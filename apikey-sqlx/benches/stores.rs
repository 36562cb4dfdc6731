//! Store benchmarks at 1,000 and 100,000 keys, per store: verify latency
//! (criterion, plus p50/p99 from 5,000 timed calls), verifications per
//! second with 1 and 16 tasks, create and revoke throughput, and a usage
//! flush of 10,000 keys.
//!
//! ```text
//! cargo bench -p apikey-sqlx --all-features --bench stores
//! ```
//!
//! PostgreSQL runs on a throwaway local cluster (fsync on) over loopback
//! TCP; without PostgreSQL installed its half is skipped.
//!
//! `PING` lines (issue 23): uncached verification p50 through the store's
//! own pool (a ping only for a connection idle over a second) and through a
//! pool pinging before every acquire (sqlx's `test_before_acquire`
//! default), and `CachedStore` over
//! the store against `MemoryStore`, alternated within one run.
//! `STORES_PING_ONLY=1` prints only those.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey::{
    ApiKey, Authenticator, Changes, KeyStatus, KeyStoreWrite, Keyring, NewKey, Put, Requirement,
    Revocation, ServerSecret, UsageDelta, Verifier,
};
use apikey_sqlx::{PostgresStore, SqliteStore, StoreOptions, id_to_sql};
use apikey_testkit::WriteExt;
use criterion::Criterion;

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

/// Issues `real` verifiable keys and fills the table up to `total` rows
/// with one bulk statement (copies of one row under fresh ids).
async fn seed<S: KeyStoreWrite>(
    store: &S,
    bulk: impl AsyncFnOnce(i64, i64),
    total: i64,
) -> (Vec<ApiKey>, Vec<apikey::KeyId>) {
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let mut keys = Vec::new();
    for _ in 0..100 {
        let (k, r) = v
            .issue(NewKey::new("sk_live_").owner("bench"), now)
            .unwrap();
        store.insert(r).await.unwrap();
        keys.push(k);
    }
    let template = id_to_sql(keys[0].id());
    bulk(template, total - 100).await;
    // Filler ids: template + 1 .. template + n (wrapping is not hit in practice).
    let filler = (1..=(total - 100).min(10_000))
        .map(|n| apikey_sqlx::id_from_sql(template.wrapping_add(n)))
        .collect();
    (keys, filler)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

async fn figures<S>(name: &str, store: Arc<S>, keys: &[ApiKey], filler: &[apikey::KeyId])
where
    S: KeyStoreWrite + apikey::UsageStore + 'static,
{
    let auth = Arc::new(Authenticator::read_only(verifier(), Arc::clone(&store)));
    let secrets: Arc<Vec<String>> =
        Arc::new(keys.iter().map(|k| k.expose_secret().to_owned()).collect());
    for s in secrets.iter().take(20) {
        auth.authenticate(s, &Requirement::none(), None)
            .await
            .unwrap();
    }
    let lat = latencies(&auth, &secrets, 5000).await;
    let one = 5000.0 / lat.iter().sum::<Duration>().as_secs_f64();
    let t = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let (auth, secrets) = (Arc::clone(&auth), Arc::clone(&secrets));
            tokio::spawn(async move {
                for i in 0..1000 {
                    auth.authenticate(
                        &secrets[(i + w) % secrets.len()],
                        &Requirement::none(),
                        None,
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sixteen = 16_000.0 / t.elapsed().as_secs_f64();
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let mut made = Vec::new();
    let t = Instant::now();
    for _ in 0..200 {
        let (_, r) = v
            .issue(NewKey::new("sk_live_").owner("bench-create"), now)
            .unwrap();
        store.insert(r.clone()).await.unwrap();
        made.push(r);
    }
    let creates = 200.0 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for r in &made {
        let mut x = r.clone();
        x.status = KeyStatus::Revoked;
        x.revocation = Some(Revocation {
            at: now,
            reason: "bench".into(),
        });
        let revoke = Changes {
            puts: vec![Put::update(x, r.revision)],
            ..Changes::new()
        };
        store.commit(&revoke).await.unwrap();
    }
    let revokes = 200.0 / t.elapsed().as_secs_f64();
    let batch: Vec<UsageDelta> = filler
        .iter()
        .map(|id| UsageDelta::new(*id, now.utc_date(), 3, now))
        .collect();
    let t = Instant::now();
    store
        .record_usage(&apikey::UsageBatch::new(batch.clone()))
        .await
        .unwrap();
    let flush = t.elapsed();
    println!(
        "FIGURES {name}: verify p50 {:.1} us, p99 {:.1} us; {:.0} verifications/s (1 task), {:.0}/s (16 tasks); \
         {creates:.0} creates/s, {revokes:.0} revokes/s; usage flush of {} keys {:.1} ms",
        pct(&lat, 0.50).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6,
        one,
        sixteen,
        batch.len(),
        flush.as_secs_f64() * 1e3
    );
}

/// The latencies of `n` verifications through `auth`, cycling over
/// `secrets`, sorted.
async fn latencies<S: apikey::KeyStore, C: apikey::Clock>(
    auth: &Authenticator<S, C>,
    secrets: &[String],
    n: usize,
) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        auth.authenticate(&secrets[i % secrets.len()], &Requirement::none(), None)
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// p50 of `n` verifications through `auth`.
async fn p50<S: apikey::KeyStore, C: apikey::Clock>(
    auth: &Authenticator<S, C>,
    secrets: &[String],
    n: usize,
) -> Duration {
    pct(&latencies(auth, secrets, n).await, 0.50)
}

/// Uncached verification p50 through the store's own pool (issue 23: no
/// ping before each acquire; only a connection idle for over a second is
/// pinged) against a pool over the same database with sqlx's default ping
/// before every acquire (`test_before_acquire`), and the same keys through a
/// `CachedStore` and a `MemoryStore` (the durable default at memory speed).
/// Alternated in 5 rounds of 2,000 calls, one task; ratios within each round.
async fn ping_and_cache<S, T>(name: &str, store: Arc<S>, pinged: Arc<T>, keys: &[ApiKey])
where
    S: KeyStoreWrite + 'static,
    T: KeyStoreWrite + 'static,
{
    let secrets: Vec<String> = keys.iter().map(|k| k.expose_secret().to_owned()).collect();
    let memory = apikey::MemoryStore::new();
    for k in keys {
        memory
            .insert_sync(store.get(k.id()).await.unwrap().unwrap())
            .unwrap();
    }
    let default = Authenticator::read_only(verifier(), store.clone());
    let with_ping = Authenticator::read_only(verifier(), pinged);
    let cached = Authenticator::read_only(verifier(), apikey::CachedStore::new(store));
    let memory = Authenticator::read_only(verifier(), memory);
    for round in 1..=5 {
        let a = p50(&with_ping, &secrets, 2_000).await;
        let b = p50(&default, &secrets, 2_000).await;
        let c = p50(&cached, &secrets, 2_000).await;
        let m = p50(&memory, &secrets, 2_000).await;
        println!(
            "PING {name} round {round}: uncached p50 {:.1} us pinging every acquire, {:.1} us with the \
             store's pool ({:.2}x); CachedStore p50 {:.2} us, MemoryStore {:.2} us ({:.2}x)",
            a.as_secs_f64() * 1e6,
            b.as_secs_f64() * 1e6,
            b.as_secs_f64() / a.as_secs_f64(),
            c.as_secs_f64() * 1e6,
            m.as_secs_f64() * 1e6,
            c.as_secs_f64() / m.as_secs_f64(),
        );
    }
}

fn bench_verify<S: KeyStoreWrite + 'static>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: Arc<S>,
    key: &ApiKey,
) {
    let auth = Authenticator::read_only(verifier(), store);
    let secret = key.expose_secret().to_owned();
    c.bench_function(&format!("verify/{name}"), |b| {
        b.to_async(rt).iter(|| async {
            auth.authenticate(&secret, &Requirement::none(), None)
                .await
                .unwrap()
        })
    });
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for total in [1_000i64, 100_000] {
        let dir = common::temp_dir("bench");
        let (store, keys, filler) = rt.block_on(async {
            let store = SqliteStore::open(dir.join("keys.db")).await.unwrap();
            let pool = store.pool().clone();
            let (keys, filler) = seed(
                &store,
                async |template, n| {
                    sqlx::query(
                        "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?2) \
                         INSERT INTO apikey_keys SELECT id + n, prefix, environment, owner || n, name, description, \
                         secret_version, digest, scopes, created_at, expires_at, not_before, status, revoked_at, \
                         revocation_reason, last_used_at, metadata, rotated_from, rotated_to, revision, ip_allowlist, \
                         NULL, NULL, NULL, NULL, NULL, NULL \
                         FROM apikey_keys, seq WHERE id = ?1",
                    )
                    .bind(template)
                    .bind(n)
                    .execute(&pool)
                    .await
                    .unwrap();
                },
                total,
            )
            .await;
            (Arc::new(store), keys, filler)
        });
        let name = format!("sqlite/{total}");
        rt.block_on(async {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .test_before_acquire(true)
                .connect_with(apikey_sqlx::sqlite_options(dir.join("keys.db")))
                .await
                .unwrap();
            let pinged = Arc::new(SqliteStore::from_pool(pool));
            ping_and_cache(&name, Arc::clone(&store), pinged, &keys).await;
        });
        if std::env::var_os("STORES_PING_ONLY").is_some() {
            continue;
        }
        rt.block_on(figures(&name, Arc::clone(&store), &keys, &filler));
        bench_verify(&mut c, &rt, &name, store, &keys[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let Some(cluster) = common::Cluster::start(true).ok() else {
        println!("PostgreSQL benchmarks skipped: install the `postgresql` package");
        return;
    };
    for total in [1_000i64, 100_000] {
        let schema = common::unique("bench");
        let (store, keys, filler) = rt.block_on(async {
            let options = StoreOptions::default().schema(&schema);
            let store = PostgresStore::connect_with(&cluster.url(), options).await.unwrap();
            let pool = store.pool().clone();
            let table = format!("{schema}.apikey_keys");
            let (keys, filler) = seed(
                &store,
                async |template, n| {
                    let sql = format!(
                        "INSERT INTO {table} SELECT id + n, prefix, environment, owner || n, name, description, \
                         secret_version, digest, scopes, created_at, expires_at, not_before, status, revoked_at, \
                         revocation_reason, last_used_at, metadata, rotated_from, rotated_to, revision, ip_allowlist, \
                         NULL, NULL, NULL, NULL, NULL, NULL \
                         FROM {table}, generate_series(1, $2::int8) AS n WHERE id = $1"
                    );
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(template)
                        .bind(n)
                        .execute(&pool)
                        .await
                        .unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
                        .execute(&pool)
                        .await
                        .unwrap();
                },
                total,
            )
            .await;
            (Arc::new(store), keys, filler)
        });
        let name = format!("postgres/{total}");
        rt.block_on(async {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .test_before_acquire(true)
                .connect(&cluster.url())
                .await
                .unwrap();
            let options = StoreOptions::default().schema(&schema);
            let pinged = Arc::new(PostgresStore::from_pool_with(pool, options).unwrap());
            ping_and_cache(&name, Arc::clone(&store), pinged, &keys).await;
        });
        if std::env::var_os("STORES_PING_ONLY").is_some() {
            continue;
        }
        rt.block_on(figures(&name, Arc::clone(&store), &keys, &filler));
        bench_verify(&mut c, &rt, &name, store, &keys[0]);
    }
    c.final_summary();
}
