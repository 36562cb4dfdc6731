//! `SqliteStore` against the conformance suite, plus the SQLite-specific
//! checks (file durability settings, migrations, bad rows, id order).

#![allow(clippy::unwrap_used)]

use apikey_testkit::conformance;
use apikey_sqlx::{SqliteStore, StoreOptions};

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
}
