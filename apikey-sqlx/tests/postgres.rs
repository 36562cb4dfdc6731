//! `PostgresStore` against a real PostgreSQL: the conformance suite, per
//! test in its own schema of a throwaway cluster (see `common`).

#![allow(clippy::unwrap_used)]

mod common;

use apikey_sqlx::{PostgresStore, StoreOptions};
use apikey_testkit::{WriteExt, conformance};

async fn store(test: &str) -> Option<PostgresStore> {
    let url = common::shared(test)?;
    let options = StoreOptions::default().schema(common::unique(test));
    Some(PostgresStore::connect_with(&url, options).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_suite() {
    let Some(store) = store("postgres_store_passes_the_suite").await else {
        return;
    };
    conformance::run_all(&store).await;
    conformance::run_all(&store).await;
    conformance::run_rules(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_with_a_table_prefix_passes_the_suite() {
    let test = "postgres_store_with_a_table_prefix_passes_the_suite";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().table_prefix("acme_");
    let store = PostgresStore::connect_with(&url, options.clone().schema(common::unique("p")))
        .await
        .unwrap();
    conformance::run_all(&store).await;
    conformance::run_rules(Arc::new(store)).await;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use apikey::{
    Actor, ApiKey, Authenticator, Error, KeyId, KeyManager, KeyQuery, KeyStore, KeyStoreQuery,
    KeyStoreWrite, Keyring, NewKey, Requirement, ServerSecret, StoreErrorKind, UsageDelta,
    Verifier,
};
use apikey::{FlushId, FlushOutcome, UsageBatch, UsageStore};
use apikey_sqlx::MigrateError;
use common::crash;

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

/// A migrated store at `url` holding one fresh key, with its verifier.
async fn store_with_a_key(url: &str, options: StoreOptions) -> (PostgresStore, Verifier, ApiKey) {
    let store = PostgresStore::connect_with(url, options).await.unwrap();
    let v = verifier();
    let (key, record) = v
        .issue(
            NewKey::new("sk_live_"),
            apikey::Clock::now(&apikey::SystemClock),
        )
        .unwrap();
    store.insert(record).await.unwrap();
    (store, v, key)
}

/// Not a test on its own: the crash child, run by `crash_durability_killing_the_client`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(target) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let owner = std::env::var(crash::OWNER_ENV).unwrap();
    let (url, schema) = target.split_once('|').unwrap();
    let store = PostgresStore::connect_with(url, StoreOptions::default().schema(schema))
        .await
        .unwrap();
    crash::child_loop(&store, &owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_durability_killing_the_client() {
    let test = "crash_durability_killing_the_client";
    let Some(url) = common::shared(test) else {
        return;
    };
    let schema = common::unique("crash");
    let options = StoreOptions::default().schema(&schema);
    PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let owner = conformance::unique_owner();
    let target = format!("{url}|{schema}");
    let mut acks = crash::Acks::default();
    let started = Instant::now();
    for _ in 0..50 {
        let (t, o) = (target.clone(), owner.clone());
        acks = tokio::task::spawn_blocking(move || {
            crash::run_and_kill("crash_child", &t, &o, &mut acks);
            acks
        })
        .await
        .unwrap();
        let store = PostgresStore::connect_with(&url, options.clone())
            .await
            .unwrap();
        crash::check(&store, &owner, &acks).await;
        store.pool().close().await;
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(acks.created.len() >= 50 && !acks.rotated.is_empty() && !acks.revoked.is_empty());
    eprintln!(
        "{test}: 50 kills in {:?}; {} creates, {} rotations, {} revokes acknowledged",
        started.elapsed(),
        acks.created.len(),
        acks.rotated.len(),
        acks.revoked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_answers_503_then_recovers() {
    let test = "server_restart_answers_503_then_recovers";
    let Some(cluster) = common::owned(test) else {
        return;
    };
    let limit = Duration::from_millis(500);
    let (store, v, key) =
        store_with_a_key(&cluster.url(), StoreOptions::default().timeout(limit)).await;
    let auth = Arc::new(Authenticator::new(v, store.clone()));
    let key = Arc::new(key.expose_secret().to_owned());
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (auth, key, done) = (auth.clone(), key.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            // (start, end, outcome code or "OK"); bounded.
            let mut seen = Vec::new();
            for _ in 0..20_000 {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let s = t0.elapsed();
                let r = auth.authenticate(&key, &Requirement::none(), None).await;
                let code = match &r {
                    Ok(_) => "OK",
                    Err(e) => e.code().as_str(),
                };
                seen.push((s, t0.elapsed(), code));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    common::sleep_ms(300).await;
    let c = &cluster;
    let down = tokio::task::block_in_place(|| {
        c.stop();
        t0.elapsed()
    });
    common::sleep_ms(2000).await;
    let up = t0.elapsed();
    tokio::task::block_in_place(|| c.restart().unwrap());
    // Recovers by itself: a success within 10 s, then only successes.
    let mut recovered = None;
    for _ in 0..200 {
        if auth
            .authenticate(&key, &Requirement::none(), None)
            .await
            .is_ok()
        {
            recovered = Some(t0.elapsed());
            break;
        }
        common::sleep_ms(50).await;
    }
    let recovered = recovered.expect("verification did not recover within 10 s");
    common::sleep_ms(300).await;
    done.store(true, Ordering::Relaxed);
    let mut outage = 0;
    let mut last_ok = Duration::ZERO;
    for t in tasks {
        for (s, e, code) in t.await.unwrap() {
            assert!(
                code == "OK" || code == "STORE_UNAVAILABLE",
                "an answer other than valid or 503 during a restart: {code}"
            );
            assert!(
                e - s < limit + Duration::from_millis(500),
                "a wait of {:?}",
                e - s
            );
            if s > down && e < up {
                assert_eq!(code, "STORE_UNAVAILABLE", "the server was down");
                outage += 1;
            }
            if code == "OK" {
                last_ok = last_ok.max(s);
            }
        }
    }
    // Each answer waits for the pool to give up connecting (the timeout).
    assert!(outage >= 8, "too few answers during the outage: {outage}");
    assert!(last_ok > recovered, "the workers did not recover");
    // No leak, no deadlock: within the pool's bound, and a burst completes.
    assert!(store.pool().size() <= 10);
    let burst = (0..50).map(|_| {
        let (auth, key) = (auth.clone(), key.clone());
        tokio::spawn(async move {
            auth.authenticate(&key, &Requirement::none(), None)
                .await
                .is_ok()
        })
    });
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        let mut n = 0;
        for t in burst {
            n += usize::from(t.await.unwrap());
        }
        n
    })
    .await
    .expect("the pool deadlocked");
    assert_eq!(ok, 50);
    assert!(store.pool().size() <= 10);
    eprintln!(
        "{test}: down {down:?}..{up:?}, {outage} answers during the outage all 503, recovered at {recovered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limits_revocations_and_usage() {
    let test = "two_instances_share_limits_revocations_and_usage";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique("two"));
    let a = PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, options).await.unwrap();
    let (ma, mb) = (
        Arc::new(KeyManager::new(verifier(), a.clone()).with_max_keys_per_owner(3)),
        Arc::new(KeyManager::new(verifier(), b.clone()).with_max_keys_per_owner(3)),
    );
    // Owner limit 3 under 50 concurrent creates over both instances.
    let owner = conformance::unique_owner();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            m.create(NewKey::new("sk_live_").owner(owner), &Actor::system())
                .await
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((key, _)) => keys.push(key),
            Err(Error::KeyLimitReached { limit: 3 }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(keys.len(), 3);
    assert_eq!(
        a.list(&KeyQuery::owner(&owner))
            .await
            .unwrap()
            .records
            .len(),
        3
    );

    // Revoked on A: refused by B at its next verification.
    let auth_b = Authenticator::new(verifier(), b.clone());
    let k = &keys[0];
    auth_b
        .authenticate(k.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    ma.revoke(k.id(), "leaked", &Actor::system()).await.unwrap();
    let e = auth_b
        .authenticate(k.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "REVOKED_API_KEY");

    // Usage flushed by both, concurrently, over the same keys: exact sum.
    let mut ids = Vec::new();
    for _ in 0..100 {
        let r = conformance::sample_record(None);
        ids.push(r.id);
        a.insert(r).await.unwrap();
    }
    let now = conformance::suite_now();
    let mut tasks = Vec::new();
    for f in 0..20u64 {
        let store = if f % 2 == 0 { a.clone() } else { b.clone() };
        let batch: Vec<UsageDelta> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| UsageDelta::new(*id, now.utc_date(), (i as u64 + f) % 5 + 1, now))
            .collect();
        tasks.push(tokio::spawn(async move {
            store.record_usage(&UsageBatch::new(batch)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let expected: u64 = (0..20u64).map(|f| (i as u64 + f) % 5 + 1).sum();
        let day = now.utc_date();
        let month = day.replace_day(1).unwrap()..day.next_day().unwrap();
        assert_eq!(b.usage(*id, month).await.unwrap(), [(day, expected)]);
        assert_eq!(b.get(*id).await.unwrap().unwrap().last_used_at, Some(now));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_invalid_record_never_valid() {
    let Some(url) = common::shared("bad_rows") else {
        return;
    };
    let schema = common::unique("bad_rows");
    let store = PostgresStore::connect_with(&url, StoreOptions::default().schema(&schema))
        .await
        .unwrap();
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let table = "apikey_keys";
    for (what, set) in [
        ("digest length", "digest = '\\x0011'::bytea"),
        ("status", "status = 'sleeping'"),
        ("scope", "scopes = ARRAY['Not A Scope']"),
        ("metadata", "metadata = '[1, 2]'::jsonb"),
        ("environment", "environment = 'staging'"),
        ("revocation", "revoked_at = now()"),
    ] {
        let (key, record) = v.issue(NewKey::new("sk_live_").owner("o"), now).unwrap();
        store.insert(record.clone()).await.unwrap();
        let sql = format!("UPDATE {schema}.{table} SET {set} WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(apikey_sqlx::id_to_sql(record.id))
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.fetch(record.id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{what}");
        let inner = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<apikey::Error>())
            .unwrap();
        assert_eq!(inner.code().as_str(), "INVALID_RECORD", "{what}");
        let auth = Authenticator::new(v.clone(), store.clone());
        let e = auth
            .authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap_err();
        assert!(e.http_status() >= 500, "{what}: {e:?}");
        assert!(!format!("{e} {err}").contains(key.expose_secret()));
        // Not through the store: it refuses to read the row.
        let sql = format!("DELETE FROM {schema}.{table} WHERE id = $1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(apikey_sqlx::id_to_sql(record.id))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_locked_versioned_and_refuse_a_newer_schema() {
    let test = "pg_migrations";
    let Some(url) = common::shared(test) else {
        return;
    };
    let schema = common::unique("mig");
    let options = StoreOptions::default().schema(&schema);
    // Instances starting together: one migration, no error.
    let (x, y, z) = tokio::join!(
        PostgresStore::connect_with(&url, options.clone()),
        PostgresStore::connect_with(&url, options.clone()),
        PostgresStore::connect_with(&url, options.clone()),
    );
    let (x, _, _) = (x.unwrap(), y.unwrap(), z.unwrap());
    let sql = format!("SELECT count(*) FROM {schema}.apikey_schema_version");
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(x.pool())
        .await
        .unwrap();
    assert_eq!(n, PostgresStore::SCHEMA_VERSION); // each version applied once
    let sql = format!("INSERT INTO {schema}.apikey_schema_version (version) VALUES (7)");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(x.pool())
        .await
        .unwrap();
    match PostgresStore::connect_with(&url, options).await {
        Err(MigrateError::SchemaTooNew {
            found: 7,
            supported: 3,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    for bad in ["public; DROP TABLE x", "Caps", "", "pg_catalog"] {
        let r = PostgresStore::connect_with(&url, StoreOptions::default().schema(bad)).await;
        assert!(matches!(r, Err(MigrateError::InvalidName(_))), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_ids_order_flush_ids_and_statement_count() {
    let Some(store) = store("ids").await else {
        return;
    };
    let owner = conformance::unique_owner();
    let ids = [5u64, (1 << 63) - 1, 1 << 63, u64::MAX];
    for id in ids.iter().rev() {
        let mut r = conformance::sample_record(Some(&owner));
        r.id = KeyId::from_u64(*id);
        store.insert(r).await.unwrap();
    }
    let listed: Vec<u64> = store
        .list(&KeyQuery::owner(&owner))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id.as_u64())
        .collect();
    assert_eq!(listed, ids);
    let now = conformance::suite_now();
    let deltas: Vec<UsageDelta> = ids
        .iter()
        .map(|id| UsageDelta::new(KeyId::from_u64(*id), now.utc_date(), 2, now))
        .collect();
    let batch = UsageBatch {
        id: FlushId::from_u128(7),
        deltas,
    };
    assert_eq!(
        store.record_usage(&batch).await.unwrap(),
        FlushOutcome::Applied
    );
    assert_eq!(
        store.record_usage(&batch).await.unwrap(),
        FlushOutcome::AlreadyApplied
    );
    let day = now.utc_date();
    let usage = store.usage(KeyId::from_u64(u64::MAX), day..day.next_day().unwrap());
    assert_eq!(usage.await.unwrap(), [(day, 2)]);
    let t = now - std::time::Duration::from_secs(86_400);
    let expiring = store.list(&KeyQuery::expiring(None, t..t)).await.unwrap();
    assert_eq!(expiring.records.len(), 0);
}

/// Item 1 of the second review: every time PostgreSQL accepts and `time`
/// cannot hold (`'infinity'`, `'-infinity'`, years past 9999), in every
/// time column, reads as `Corrupt` / `INVALID_RECORD` on every path that
/// decodes the row (fetch, verification, get, listings, expiring, the
/// revision check of a commit, bulk revocation): never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_postgres_allows_and_time_cannot_hold_are_invalid_record_never_a_panic() {
    use apikey::{Changes, Put, Revocation};
    let Some(url) = common::shared("pg_infinity") else {
        return;
    };
    let schema = common::unique("inf");
    let store = PostgresStore::connect_with(&url, StoreOptions::default().schema(&schema))
        .await
        .unwrap();
    let m = KeyManager::new(verifier(), store.clone()).with_max_keys_per_owner(5);
    let mut cases = Vec::new();
    let stamps = [
        "'infinity'",
        "'-infinity'",
        "'10000-01-01 00:00:00+00'",
        "'100000-06-01 00:00:00+00'",
    ];
    for col in ["expires_at", "not_before", "last_used_at", "created_at"] {
        for v in stamps {
            cases.push((col, format!("{col} = {v}::timestamptz")));
        }
    }
    for v in stamps {
        cases.push((
            "revoked_at",
            format!("revoked_at = {v}::timestamptz, revocation_reason = 'r', status = 'revoked'"),
        ));
    }
    for (col, set) in cases {
        let (owner, good, key, bad) = common::badrow::two_keys(&m).await;
        let before = store.get(bad).await.unwrap().unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {schema}.apikey_keys SET {set} WHERE id = $1"
        )))
        .bind(apikey_sqlx::id_to_sql(bad))
        .execute(store.pool())
        .await
        .unwrap();
        let listed = !matches!(col, "expires_at" | "revoked_at");
        let keys = (owner.as_str(), good, &key, bad);
        common::badrow::invalid_record_on_every_path(&m, keys, listed, &set).await;
        if col == "expires_at" {
            // The owner-limit check reads the stored expiry; writing the
            // valid record back repairs the row.
            let stale = Changes {
                puts: vec![Put::update(before.clone(), before.revision + 1)],
                ..Changes::new()
            };
            let r = store.commit(&stale).await;
            assert!(
                matches!(r, Err(ref e) if e.kind() == StoreErrorKind::Conflict),
                "{set}: {r:?}"
            );
            let repair = Changes {
                puts: vec![Put::update(before.clone(), before.revision)],
                ..Changes::new()
            };
            store.commit(&repair).await.unwrap();
        }
        // Bulk revocation reads the revoked rows' creation times.
        let revocation = Revocation {
            at: apikey::Clock::now(&apikey::SystemClock),
            reason: "test".into(),
        };
        let ids = store
            .revoke_where(&KeyQuery::owner(&owner), &revocation)
            .await
            .unwrap();
        assert!(ids.contains(&good), "{set}");
    }
}

/// Item 4 of the second review: table sets with different prefixes
/// migrated together into one schema that does not exist yet all start
/// (`CREATE SCHEMA IF NOT EXISTS` races on the catalog's unique index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_many_prefixes_into_one_new_schema_all_succeed() {
    let Some(url) = common::shared("pg_concurrent_schema") else {
        return;
    };
    let schema = common::unique("shared");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move {
                let options = StoreOptions::default()
                    .schema(schema)
                    .table_prefix(format!("p{i}_"));
                PostgresStore::connect_with(&url, options).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let store = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("prefix p{i}_: {e:?}"));
        assert!(store.get(KeyId::from_u64(1)).await.unwrap().is_none());
        store.pool().close().await;
    }
}

/// Two stores over one table set of a new schema: one naming the schema,
/// one reaching it through the connection's `search_path`.
async fn two_spellings(test: &str) -> Option<(PostgresStore, PostgresStore)> {
    let url = common::shared(test)?;
    let schema = common::unique("spell");
    let a = PostgresStore::connect_with(&url, StoreOptions::default().schema(&schema))
        .await
        .unwrap();
    let b = via_search_path(&url, &schema).await;
    Some((a, b))
}

/// A store reaching `schema` through the connection's `search_path`, not
/// by naming it.
async fn via_search_path(url: &str, schema: &str) -> PostgresStore {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema)]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .unwrap();
    let store = PostgresStore::from_pool_with(pool, StoreOptions::default()).unwrap();
    store.migrate().await.unwrap();
    store
}

/// Item 8 of the second review: an instance naming the schema and one
/// reaching the same tables through `search_path` share the change
/// channel: a revocation on one reaches the other's feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_schema_and_search_path_share_the_change_feed() {
    use apikey::{CachedStore, ChangeFeed, KeyStatus};
    use apikey_sqlx::PgChangeFeed;
    let Some((a, b)) = two_spellings("pg_spellings_feed").await else {
        return;
    };
    assert_eq!(a.channel().await.unwrap(), b.channel().await.unwrap());
    let feed = PgChangeFeed::listen(&b).await.unwrap();
    // A maximum age far past the test: only the feed can refresh B.
    let cached = Arc::new(CachedStore::new(b.clone()).with_max_age(Duration::from_secs(3600)));
    feed.subscribe(cached.clone());
    let ma = KeyManager::new(verifier(), a.clone());
    let (_, s) = ma
        .create(NewKey::new("sk_live_"), &Actor::system())
        .await
        .unwrap();
    let status = |c: Arc<CachedStore<PostgresStore>>| async move {
        c.fetch(s.id).await.unwrap().unwrap().status()
    };
    assert_eq!(status(cached.clone()).await, KeyStatus::Active);
    ma.revoke(s.id, "leaked", &Actor::system()).await.unwrap();
    let mut seen = false;
    for _ in 0..500 {
        if status(cached.clone()).await == KeyStatus::Revoked {
            seen = true;
            break;
        }
        common::sleep_ms(20).await;
    }
    assert!(seen, "B's cache never heard of A's revocation");
}

/// Item 8 of the second review: the owner limit holds between an instance
/// naming the schema and one reaching it through `search_path` (they take
/// the same advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_schema_and_search_path_share_the_owner_limit() {
    let Some((a, b)) = two_spellings("pg_spellings_limit").await else {
        return;
    };
    let ma = Arc::new(KeyManager::new(verifier(), a.clone()).with_max_keys_per_owner(1));
    let mb = Arc::new(KeyManager::new(verifier(), b).with_max_keys_per_owner(1));
    let owners: Vec<String> = (0..20).map(|_| conformance::unique_owner()).collect();
    let mut tasks = Vec::new();
    for owner in &owners {
        for i in 0..4 {
            let m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
            let owner = owner.clone();
            tasks.push(tokio::spawn(async move {
                m.create(NewKey::new("sk_live_").owner(owner), &Actor::system())
                    .await
            }));
        }
    }
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) | Err(Error::KeyLimitReached { limit: 1 }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    for owner in &owners {
        let listed = a.list(&KeyQuery::owner(owner)).await.unwrap().records;
        assert_eq!(listed.len(), 1, "{owner}");
    }
}

/// Item 3 of the second review on a real PostgreSQL: a create or rotation
/// whose first write is dropped at a tiny deadline (PostgreSQL finishes a
/// COMMIT it received) answers its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_commit_never_loses_a_create_or_rotation() {
    let Some(store) = store("deadline").await else {
        return;
    };
    let cut = common::deadline::creates_and_rotations_answer_their_result(store, 40).await;
    assert!(cut > 0, "no write was cut: the test did not test");
    eprintln!("a_deadline_during_commit_never_loses_a_create_or_rotation: {cut} of 80 writes cut");
}

/// What sqlx's connection ping before every acquire (`test_before_acquire`,
/// sqlx's default; the pools this crate opens ping only connections that
/// sat idle) buys verification, with a backend killed under an idle
/// pooled connection (`pg_terminate_backend`), pools of one connection so
/// the dead one is the one handed out: with the ping, the next
/// verification gets a fresh connection and succeeds; without it, it may
/// get the dead one and answer 503 `STORE_UNAVAILABLE` (never valid, never
/// invalid), and the verification after that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_503_at_most_once_then_recovers() {
    let test = "a_killed_backend_is_503_at_most_once_then_recovers";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique(test));
    let (_store, v, key) = store_with_a_key(&url, options.clone()).await;
    let killer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    for ping in [true, false] {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(ping)
            .connect(&url)
            .await
            .unwrap();
        let auth = Authenticator::new(
            v.clone(),
            PostgresStore::from_pool_with(pool.clone(), options.clone()).unwrap(),
        );
        let any = Requirement::none();
        let verify = || auth.authenticate(key.expose_secret(), &any, None);
        verify().await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&killer)
            .await
            .unwrap();
        assert!(killed, "ping {ping}: backend {pid} not terminated");
        common::sleep_ms(100).await;
        match verify().await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code().as_str(), "STORE_UNAVAILABLE", "ping {ping}: {e}");
                assert!(
                    !ping,
                    "with the ping a dead connection is replaced before use: {e}"
                );
            }
        }
        verify()
            .await
            .unwrap_or_else(|e| panic!("ping {ping}: the next verification must recover: {e}"));
    }
}

/// The pool `connect_with` opens no longer pings every connection before
/// use (issue 23: a second round trip per verification); it pings only one
/// that sat idle for over a second. With every backend of the pool killed
/// (`pg_terminate_backend`): after an idle second, verification succeeds at
/// once; right after the kill, each dead connection fails at most one
/// verification with 503 `STORE_UNAVAILABLE` (never valid, never invalid)
/// and is dropped. (sqlx's connection notices a socket the server closed by
/// itself, so this passes without the idle ping too; the ping is for a peer
/// that vanished without closing, which loopback cannot stage.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backends_without_the_per_call_ping() {
    let test = "killed_backends_without_the_per_call_ping";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique(test));
    let (store, v, key) = store_with_a_key(&url, options).await;
    let killer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let auth = Authenticator::read_only(v, store.clone());
    let any = Requirement::none();
    let verify = || auth.authenticate(key.expose_secret(), &any, None);
    // Kills the backend of every connection the pool holds (all taken at
    // once, so each pid is seen), and answers how many.
    let kill_all = || async {
        let mut held = Vec::new();
        for _ in 0..store.pool().size() {
            held.push(store.pool().acquire().await.unwrap());
        }
        let mut pids = Vec::new();
        for c in &mut held {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            pids.push(pid);
        }
        drop(held);
        for pid in &pids {
            let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&killer)
                .await
                .unwrap();
            assert!(killed, "backend {pid} not terminated");
        }
        pids.len()
    };
    verify().await.unwrap();
    // Idle for longer than a second: pinged, replaced, verified.
    let n = kill_all().await;
    assert!(n >= 1);
    common::sleep_ms(1_500).await;
    for _ in 0..3 {
        verify()
            .await
            .expect("a dead connection idle for over a second is replaced before use");
    }
    // Killed while just used: at most one 503 per dead connection, then
    // verified.
    let n = kill_all().await;
    let mut unavailable = 0;
    let mut recovered = false;
    for _ in 0..=n {
        match verify().await {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.code().as_str(), "STORE_UNAVAILABLE", "{e}");
                unavailable += 1;
            }
        }
        // sqlx tests a released connection in the background.
        common::sleep_ms(50).await;
    }
    assert!(
        recovered,
        "{n} dead connections, {unavailable} answers of 503 and no recovery"
    );
    eprintln!(
        "{test}: {n} connections killed while in use, {unavailable} verifications answered 503"
    );
}

/// A usage row PostgreSQL accepts and `time` cannot hold (a day at
/// infinity, past 9999) is never read (no window `time` can spell holds
/// it) and never panics; a negative count reads as `Corrupt`, never a
/// number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_rows_are_corrupt_never_a_panic() {
    let Some(url) = common::shared("badusage") else {
        return;
    };
    let schema = common::unique("badusage");
    let options = StoreOptions::default().schema(&schema);
    let store = PostgresStore::connect_with(&url, options).await.unwrap();
    let r = conformance::sample_record(None);
    store.insert(r.clone()).await.unwrap();
    let id = apikey_sqlx::id_to_sql(r.id);
    let everything = time::Date::MIN..time::Date::MAX;
    let table = format!("{schema}.apikey_usage_days");
    for (day, count, corrupt) in [
        ("'infinity'", "1", false),
        ("'-infinity'", "1", false),
        ("'10000-01-01'", "1", false),
        ("'2026-03-01'", "-4", true),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (key_id, day, count) VALUES ($1, {day}::date, {count})"
        )))
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
        match store.usage(r.id, everything.clone()).await {
            Err(e) => assert!(
                corrupt && e.kind() == StoreErrorKind::Corrupt,
                "{day}: {e:?}"
            ),
            Ok(rows) => assert!(!corrupt && rows.is_empty(), "{day} {count}: {rows:?}"),
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE key_id = $1"
        )))
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    }
}

/// Migrations 2 and 3 on PostgreSQL: a database at version 1 with keys and
/// usage counters (set back from version 3 as version 1 left it: the three
/// counter columns, no owner or usage-day tables, no last-use address or
/// route) migrates to per-day usage rows without losing a count or a
/// record, and then keeps the last use's address and route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_2_moves_usage_counters_and_loses_nothing() {
    let Some(url) = common::shared("migrate2") else {
        return;
    };
    let schema = common::unique("migrate2");
    let options = StoreOptions::default().schema(&schema);
    let store = PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let records = common::migration::seed(&store).await;
    for s in [
        format!("DROP TABLE {schema}.apikey_owners"),
        format!("DROP TABLE {schema}.apikey_usage_days"),
        format!(
            "ALTER TABLE {schema}.apikey_keys ADD COLUMN usage_day date, \
             ADD COLUMN usage_day_count bigint NOT NULL DEFAULT 0, \
             ADD COLUMN usage_month_count bigint NOT NULL DEFAULT 0"
        ),
        format!(
            "ALTER TABLE {schema}.apikey_keys DROP COLUMN last_used_ip, DROP COLUMN last_used_route"
        ),
        format!("DELETE FROM {schema}.apikey_schema_version WHERE version >= 2"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(s))
            .execute(store.pool())
            .await
            .unwrap();
    }
    for (r, (day, day_count, month_count)) in records.iter().zip(common::migration::COUNTERS) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {schema}.apikey_keys SET usage_day = $2::text::date, usage_day_count = $3, \
             usage_month_count = $4 WHERE id = $1"
        )))
        .bind(apikey_sqlx::id_to_sql(r.id))
        .bind(day)
        .bind(day_count)
        .bind(month_count)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let again = PostgresStore::connect_with(&url, options).await.unwrap();
    common::migration::check(&again, &records).await;
    let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}.apikey_schema_version"
    )))
    .fetch_one(again.pool())
    .await
    .unwrap();
    assert_eq!(version, 3);
    assert_eq!(PostgresStore::SCHEMA_VERSION, 3);
    common::migration::last_use_is_kept(&again, &records[0]).await;
}
