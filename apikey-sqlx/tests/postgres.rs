//! `PostgresStore` against a real PostgreSQL: the conformance suite, per
//! test in its own schema of a throwaway cluster (see `common`).

#![allow(clippy::unwrap_used)]

mod common;

use apikey_sqlx::{PostgresStore, StoreOptions};
use apikey_testkit::conformance;

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
}
