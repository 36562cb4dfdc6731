//! The durable default at the web edge: the same 12-byte handler bare and
//! behind `ApiKeyLayer` over `MemoryStore`, over `CachedStore<SqliteStore>`
//! (the example server's setup) and over `SqliteStore` uncached, on
//! loopback, one server worker per route, routes alternated round by round
//! (`benches/support/load.rs` of the root crate: wrk when installed, else
//! a Rust client; server CPU per request from the server thread's
//! schedstat).
//!
//! ```text
//! cargo bench -p apikey-sqlx --features sqlite --bench web_edge_sqlite
//! ```
//!
//! The store holds 1,000 keys; every request presents the same one.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use apikey::web::{ApiKeyLayer, Gate, Route};
use apikey::{Authenticator, CachedStore, Keyring, MemoryStore, NewKey, ServerSecret, Verifier};
use apikey_sqlx::SqliteStore;
use axum::Router;
use axum::routing::get;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../benches/support/load.rs"]
mod load;

async fn hello() -> &'static str {
    "hello, world"
}

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

fn guarded<S: apikey::KeyStore + Send + Sync + 'static>(store: S) -> Router {
    // No usage: the rows compare the verification path (as benches/web_edge.rs).
    let gate = Arc::new(Gate::new(Authenticator::read_only(verifier(), store)));
    Router::new()
        .route(
            "/",
            get(hello).route_layer(ApiKeyLayer::new(gate, Route::any_key())),
        )
        .with_state(())
}

fn main() {
    let dir = common::temp_dir("web-edge");
    let db = dir.join("keys.db");
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let records: Vec<_> = (0..1_000)
        .map(|_| {
            v.issue(NewKey::new("sk_live_").owner("bench"), now)
                .unwrap()
        })
        .collect();
    let key = records[0].0.expose_secret().to_owned();
    let records: Vec<_> = records.into_iter().map(|(_, r)| r).collect();
    // Filled once, on a runtime of its own; each server opens its own pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = SqliteStore::open(&db).await.unwrap();
            for r in &records {
                apikey_testkit::WriteExt::insert(&store, r.clone())
                    .await
                    .unwrap();
            }
        });
    let memory = MemoryStore::new();
    for r in &records {
        memory.insert_sync(r.clone()).unwrap();
    }
    let bare = load::Server::start(Router::new().route("/", get(hello)).with_state(()));
    let mem = load::Server::start(guarded(memory));
    let db2 = db.clone();
    let cached = load::Server::start_with(move || async move {
        guarded(CachedStore::new(SqliteStore::open(&db2).await.unwrap()))
    });
    let uncached =
        load::Server::start_with(
            move || async move { guarded(SqliteStore::open(&db).await.unwrap()) },
        );
    load::run(
        &[
            ("bare axum (no auth)", &bare),
            ("ApiKeyLayer over MemoryStore", &mem),
            ("ApiKeyLayer over CachedStore<SqliteStore>", &cached),
            ("ApiKeyLayer over SqliteStore (uncached)", &uncached),
        ],
        &key,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
