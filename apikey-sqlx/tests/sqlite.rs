//! `SqliteStore` against the conformance suite, plus the SQLite-specific
//! checks (file durability settings, migrations, bad rows, id order).

#![allow(clippy::unwrap_used)]

use apikey_sqlx::{SqliteStore, StoreOptions};
use apikey_testkit::{WriteExt, conformance};

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "apikey-sqlx-{name}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.db")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    let store = SqliteStore::memory().await.unwrap();
    conformance::run_all(&store).await;
    conformance::run_rules(std::sync::Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_passes_the_suite() {
    let path = temp_db("suite");
    let store = SqliteStore::open(&path).await.unwrap();
    conformance::run_all(&store).await;
    // Twice over one database: the suite tolerates other data.
    conformance::run_all(&store).await;
    let prefixed = SqliteStore::open_with(&path, StoreOptions::default().table_prefix("t2_"))
        .await
        .unwrap();
    conformance::run_all(&prefixed).await;
    // The manager's rules over the file store (concurrent creates included).
    conformance::run_rules(std::sync::Arc::new(store)).await;
}

mod common;

use std::time::{Duration, Instant};

use apikey::{
    Authenticator, KeyId, KeyQuery, KeyStore, KeyStoreQuery, Keyring, NewKey, Requirement,
    ServerSecret, StoreErrorKind, UsageDelta, Verifier,
};
use apikey::{FlushId, FlushOutcome, UsageBatch, UsageStore};
use apikey_sqlx::MigrateError;
use common::crash;

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

/// Not a test on its own: the crash child, run by `crash_durability`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(path) = std::env::var(crash::CHILD_ENV) else {
        return;
    };
    let owner = std::env::var(crash::OWNER_ENV).unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    crash::child_loop(&store, &owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_durability() {
    let path = temp_db("crash");
    let owner = conformance::unique_owner();
    let mut acks = crash::Acks::default();
    let started = Instant::now();
    for _ in 0..50 {
        let (p, o) = (path.to_str().unwrap().to_owned(), owner.clone());
        acks = tokio::task::spawn_blocking(move || {
            crash::run_and_kill("crash_child", &p, &o, &mut acks);
            acks
        })
        .await
        .unwrap();
        // Opens cleanly (migrate included), everything acknowledged is there.
        let store = SqliteStore::open(&path).await.unwrap();
        crash::check(&store, &owner, &acks).await;
        store.pool().close().await;
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(acks.created.len() >= 50 && !acks.rotated.is_empty() && !acks.revoked.is_empty());
    eprintln!(
        "crash_durability: 50 kills in {:?}; {} creates, {} rotations, {} revokes acknowledged",
        started.elapsed(),
        acks.created.len(),
        acks.rotated.len(),
        acks.revoked.len()
    );
}

#[tokio::test]
async fn bad_rows_are_invalid_record_never_valid() {
    let store = SqliteStore::memory().await.unwrap();
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    for (what, sql) in [
        (
            "digest length",
            "UPDATE apikey_keys SET digest = x'0011' WHERE id = ?1",
        ),
        (
            "status",
            "UPDATE apikey_keys SET status = 'sleeping' WHERE id = ?1",
        ),
        (
            "scope",
            "UPDATE apikey_keys SET scopes = '[\"Not A Scope\"]' WHERE id = ?1",
        ),
        (
            "scopes json",
            "UPDATE apikey_keys SET scopes = 'read' WHERE id = ?1",
        ),
        (
            "created_at",
            "UPDATE apikey_keys SET created_at = 9223372036854775807 WHERE id = ?1",
        ),
        (
            "type",
            "UPDATE apikey_keys SET secret_version = 999 WHERE id = ?1",
        ),
    ] {
        let (key, record) = v.issue(NewKey::new("sk_live_").owner("o"), now).unwrap();
        store.insert(record.clone()).await.unwrap();
        sqlx::query(sql)
            .bind(apikey_sqlx::id_to_sql(record.id))
            .execute(store.pool())
            .await
            .unwrap();
        let err = store.fetch(record.id).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{what}");
        let source = std::error::Error::source(&err).unwrap();
        let inner = source.downcast_ref::<apikey::Error>().unwrap();
        assert_eq!(inner.code().as_str(), "INVALID_RECORD", "{what}");
        assert!(!format!("{err} {source}").contains(key.expose_secret()));
        assert_eq!(
            store.get(record.id).await.unwrap_err().kind(),
            StoreErrorKind::Corrupt
        );
        assert!(store.list(&KeyQuery::owner("o")).await.is_err(), "{what}");
        let auth = Authenticator::new(v.clone(), store.clone());
        let e = auth
            .authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap_err();
        assert!(e.http_status() >= 500, "{what}: {e:?}");
        sqlx::query("DELETE FROM apikey_keys WHERE id = ?1")
            .bind(apikey_sqlx::id_to_sql(record.id))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn ids_at_and_above_2_pow_63_list_in_id_order() {
    let store = SqliteStore::memory().await.unwrap();
    let owner = conformance::unique_owner();
    let ids = [5u64, (1 << 63) - 1, 1 << 63, (1 << 63) + 7, u64::MAX];
    for id in ids.iter().rev() {
        let mut r = conformance::sample_record(Some(&owner));
        r.id = KeyId::from_u64(*id);
        r.expires_at = Some(conformance::suite_now());
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
    let t = conformance::suite_now();
    let expiring: Vec<u64> = store
        .list(&KeyQuery::expiring(
            Some(&owner),
            t..t + std::time::Duration::from_secs(1),
        ))
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.id.as_u64())
        .collect();
    assert_eq!(expiring, ids);
}

#[tokio::test]
async fn migrations_are_versioned_locked_and_refuse_a_newer_schema() {
    let path = temp_db("migrate");
    let store = SqliteStore::open(&path).await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    // The application's own sqlx migrations table is never touched.
    let ours: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(ours, 0);
    // Two opens racing: both succeed, one migration.
    let other = temp_db("migrate-race");
    let (a, b) = tokio::join!(SqliteStore::open(&other), SqliteStore::open(&other));
    a.unwrap();
    let b = b.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM apikey_schema_version")
        .fetch_one(b.pool())
        .await
        .unwrap();
    assert_eq!(versions, SqliteStore::SCHEMA_VERSION); // each version applied once
    // A newer release migrated: refused, typed, nothing changed.
    sqlx::query("INSERT INTO apikey_schema_version (version, applied_at) VALUES (99, 0)")
        .execute(store.pool())
        .await
        .unwrap();
    match SqliteStore::open(&path).await {
        Err(MigrateError::SchemaTooNew {
            found: 99,
            supported: 3,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    // Prefixes are identifiers only.
    for bad in ["x; DROP TABLE apikey_keys; --", "Upper_", "9lives_", "a-b"] {
        let r = SqliteStore::open_with(&path, StoreOptions::default().table_prefix(bad)).await;
        assert!(matches!(r, Err(MigrateError::InvalidName(_))), "{bad}");
    }
}

/// A timeout past what the pool and PostgreSQL take (`Duration::MAX`
/// panicked inside the pool's connect) is taken as the longest one.
#[tokio::test]
async fn a_huge_timeout_opens_and_serves() {
    let path = temp_db("huge_timeout");
    let store = SqliteStore::open_with(
        &path,
        StoreOptions::default().timeout(std::time::Duration::MAX),
    )
    .await
    .unwrap();
    let r = conformance::sample_record(None);
    store.insert(r.clone()).await.unwrap();
    let view = apikey::KeyStore::fetch(&store, r.id).await.unwrap();
    assert_eq!(view.map(|v| v.id()), Some(r.id));
}

#[tokio::test]
async fn usage_with_a_flush_id_is_exactly_once() {
    let store = SqliteStore::memory().await.unwrap();
    let r = conformance::sample_record(None);
    store.insert(r.clone()).await.unwrap();
    let now = conformance::suite_now();
    let deltas = vec![UsageDelta::new(r.id, now.utc_date(), 3, now)];
    let batch = |id| UsageBatch {
        id: FlushId::from_u128(id),
        deltas: deltas.clone(),
    };
    assert_eq!(
        store.record_usage(&batch(42)).await.unwrap(),
        FlushOutcome::Applied
    );
    assert_eq!(
        store.record_usage(&batch(42)).await.unwrap(),
        FlushOutcome::AlreadyApplied
    ); // replay
    assert_eq!(
        store.record_usage(&batch(43)).await.unwrap(),
        FlushOutcome::Applied
    );
    let day = now.utc_date();
    let usage = store.usage(r.id, day..day.next_day().unwrap()).await;
    assert_eq!(usage.unwrap(), [(day, 6)]);
}

#[tokio::test]
async fn usage_flush_of_many_keys_spans_chunks() {
    let store = SqliteStore::memory().await.unwrap();
    let now = conformance::suite_now();
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for i in 0..2500u64 {
        let r = conformance::sample_record(None);
        ids.push(r.id);
        store.insert(r.clone()).await.unwrap();
        batch.push(UsageDelta::new(r.id, now.utc_date(), i % 7 + 1, now));
    }
    store.record_usage(&UsageBatch::new(batch)).await.unwrap();
    for (i, id) in ids.iter().enumerate().step_by(97) {
        let r = store.get(*id).await.unwrap().unwrap();
        let day = now.utc_date();
        let usage = store.usage(*id, day..day.next_day().unwrap()).await;
        assert_eq!(usage.unwrap(), [(day, i as u64 % 7 + 1)]);
        assert_eq!(r.last_used_at, Some(now));
    }
}

#[tokio::test]
async fn a_call_past_the_timeout_is_a_timeout_not_a_hang() {
    // One connection, held by an open transaction: the next call waits for
    // the pool and gives up after the configured timeout.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().in_memory(true))
        .await
        .unwrap();
    let store = SqliteStore::from_pool_with(
        pool.clone(),
        StoreOptions::default().timeout(Duration::from_millis(200)),
    )
    .unwrap();
    store.migrate().await.unwrap();
    let _held = pool.acquire().await.unwrap();
    let t = Instant::now();
    let err = store.fetch(KeyId::from_u64(1)).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Timeout);
    assert!(t.elapsed() < Duration::from_secs(2));
}

/// Items 1 and 12 of the second review, on SQLite: a time the store cannot
/// represent (an integer past year 9999 or at the ends of `i64`, a usage
/// day past 9999) and any other bad row read as `INVALID_RECORD` (500) on
/// every path, verification and management reads alike; never a panic,
/// never `STORE_UNAVAILABLE`, and a listing with the bad row fails rather
/// than leave it out.
#[tokio::test]
async fn out_of_range_times_and_bad_rows_are_invalid_record_on_every_path() {
    use apikey::KeyManager;
    let store = SqliteStore::memory().await.unwrap();
    let m = KeyManager::new(verifier(), store.clone()).with_max_keys_per_owner(5);
    let year_10000 = "253402300800000000";
    let mut cases = Vec::new();
    for col in ["expires_at", "not_before", "last_used_at", "created_at"] {
        for v in [year_10000, "9223372036854775807", "-9223372036854775808"] {
            cases.push(format!("{col} = {v}"));
        }
    }
    for v in [year_10000, "9223372036854775807", "-9223372036854775808"] {
        cases.push(format!(
            "revoked_at = {v}, revocation_reason = 'r', status = 'revoked'"
        ));
    }
    cases.push("status = 'sleeping'".to_owned());
    for set in cases {
        let (owner, good, key, bad) = common::badrow::two_keys(&m).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE apikey_keys SET {set} WHERE id = ?1"
        )))
        .bind(apikey_sqlx::id_to_sql(bad))
        .execute(store.pool())
        .await
        .unwrap();
        let listed = !(set.starts_with("expires_at") || set.contains("'revoked'"));
        let keys = (owner.as_str(), good, &key, bad);
        common::badrow::invalid_record_on_every_path(&m, keys, listed, &set).await;
    }
}

/// Item 3 of the second review on a real SQLite file: a create or rotation
/// whose first write is dropped at a tiny deadline (SQLite finishes a
/// COMMIT whose caller went away) answers its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_commit_never_loses_a_create_or_rotation() {
    let store = SqliteStore::open(temp_db("deadline")).await.unwrap();
    let cut = common::deadline::creates_and_rotations_answer_their_result(store, 40).await;
    assert!(cut > 0, "no write was cut: the test did not test");
    eprintln!("a_deadline_during_commit_never_loses_a_create_or_rotation: {cut} of 80 writes cut");
}

/// A database failure while migrating is `MigrateError::Database`: a store
/// error (no sqlx type in the public variant) whose source is the
/// database's own error.
#[tokio::test]
async fn migrate_failure_keeps_the_database_error_as_source() {
    let dir = common::temp_dir("notadb");
    let path = dir.join("keys.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    match SqliteStore::open(&path).await {
        Err(MigrateError::Database(e)) => {
            assert_eq!(e.kind(), StoreErrorKind::Unavailable);
            let source = std::error::Error::source(&e).expect("the database error");
            assert!(!source.to_string().is_empty());
        }
        other => panic!("expected MigrateError::Database, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A usage row SQLite holds and the store cannot read (a day that is not
/// a date, past 9999, or a negative count) reads as `Corrupt`, never a
/// panic and never a number; text that sorts after every date is never
/// read.
#[tokio::test]
async fn bad_usage_rows_are_corrupt_never_a_panic() {
    let store = SqliteStore::memory().await.unwrap();
    let r = conformance::sample_record(None);
    store.insert(r.clone()).await.unwrap();
    let id = apikey_sqlx::id_to_sql(r.id);
    let everything = time::Date::MIN..time::Date::MAX;
    for (day, count, corrupt) in [
        ("2026-13-45", 1, true),
        ("10000-01-01", 1, true),
        ("infinity", 1, false),
        ("2026-03-01", -4, true),
    ] {
        sqlx::query("INSERT INTO apikey_usage_days (key_id, day, count) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(day)
            .bind(count)
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
        sqlx::query("DELETE FROM apikey_usage_days WHERE key_id = ?1")
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
    }
}

/// Migrations 2 and 3 on SQLite: a database at version 1 with keys and
/// usage counters (set back from version 3 as version 1 left it: the three
/// counter columns, no owner or usage-day tables, no last-use address or
/// route) migrates to per-day usage rows without losing a count or a
/// record, and then keeps the last use's address and route.
#[tokio::test]
async fn migration_2_moves_usage_counters_and_loses_nothing() {
    let path = temp_db("migrate2");
    let store = SqliteStore::open(&path).await.unwrap();
    let records = common::migration::seed(&store).await;
    for s in [
        "DROP TABLE apikey_owners",
        "DROP TABLE apikey_usage_days",
        "ALTER TABLE apikey_keys ADD COLUMN usage_day TEXT",
        "ALTER TABLE apikey_keys ADD COLUMN usage_day_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE apikey_keys ADD COLUMN usage_month_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE apikey_keys DROP COLUMN last_used_ip",
        "ALTER TABLE apikey_keys DROP COLUMN last_used_route",
        "DELETE FROM apikey_schema_version WHERE version >= 2",
    ] {
        sqlx::query(s).execute(store.pool()).await.unwrap();
    }
    for (r, (day, day_count, month_count)) in records.iter().zip(common::migration::COUNTERS) {
        sqlx::query(
            "UPDATE apikey_keys SET usage_day = ?2, usage_day_count = ?3, usage_month_count = ?4 \
             WHERE id = ?1",
        )
        .bind(apikey_sqlx::id_to_sql(r.id))
        .bind(day)
        .bind(day_count)
        .bind(month_count)
        .execute(store.pool())
        .await
        .unwrap();
    }
    store.pool().close().await;
    let again = SqliteStore::open(&path).await.unwrap();
    common::migration::check(&again, &records).await;
    let version: i64 = sqlx::query_scalar("SELECT max(version) FROM apikey_schema_version")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(SqliteStore::SCHEMA_VERSION, 3);
    common::migration::last_use_is_kept(&again, &records[0]).await;
}
