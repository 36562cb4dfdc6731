//! The web edge with shared limits: the same 12-byte handler bare, behind
//! `ApiKeyLayer` over `MemoryStore` (no limits), and behind `ApiKeyLayer`
//! with `RedisLimits` (one quota of both windows, never reached: one
//! Redis round trip per request), on loopback, one server worker per
//! route, routes alternated round by round (`benches/support/load.rs` of
//! the root crate: wrk when installed, else a Rust client; server CPU per
//! request from the server thread's schedstat; the Redis server's own CPU
//! is not counted).
//!
//! ```text
//! cargo bench -p apikey-redis --bench web_edge_redis
//! ```
//!
//! Needs `redis-server` on `PATH` (the bench starts its own on a free
//! port, as the tests do); without it the bench prints `SKIPPED` and
//! exits (with `CI=true` it fails).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../benches/support/load.rs"]
mod load;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{Limits, Quota};
use apikey::web::{ApiKeyLayer, Gate, QuotaTable, Route};
use apikey::{Authenticator, Keyring, MemoryStore, NewKey, ServerSecret, Verifier};
use axum::Router;
use axum::routing::get;

async fn hello() -> &'static str {
    "hello, world"
}

/// A quota of both windows that the run never exhausts.
const WIDE: Quota = Quota::new(Some(u32::MAX), Some(u32::MAX));

fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32]).unwrap()).unwrap())
}

/// The handler behind `gate`'s layer. No usage on any route: the rows
/// compare the verification and the admission (as benches/web_edge.rs).
fn guarded<L: Limits + 'static>(gate: Gate<Arc<MemoryStore>, apikey::SystemClock, L>) -> Router {
    Router::new()
        .route(
            "/",
            get(hello).route_layer(ApiKeyLayer::new(Arc::new(gate), Route::any_key())),
        )
        .with_state(())
}

fn main() {
    let Some(server) = support::RedisServer::start("web_edge_redis") else {
        return;
    };
    let v = verifier();
    let now = apikey::Clock::now(&apikey::SystemClock);
    let store = Arc::new(MemoryStore::new());
    let mut key = String::new();
    for i in 0..1_000 {
        let (k, record) = v
            .issue(NewKey::new("sk_live_").owner("bench"), now)
            .unwrap();
        store.insert_sync(record).unwrap();
        if i == 0 {
            key = k.expose_secret().to_owned();
        }
    }
    let bare = load::Server::start(Router::new().route("/", get(hello)).with_state(()));
    let mem = load::Server::start(guarded(Gate::new(Authenticator::read_only(
        verifier(),
        Arc::clone(&store),
    ))));
    let builder = server.builder("web_edge").timeout(Duration::from_secs(1));
    let redis_store = Arc::clone(&store);
    // The Redis client belongs to the server's runtime.
    let redis = load::Server::start_with(move || async move {
        let limits = builder.build().expect("redis client");
        let gate = Gate::new(Authenticator::read_only(verifier(), redis_store))
            .with_limits(limits)
            .with_quotas(QuotaTable::fixed(WIDE));
        guarded(gate)
    });
    load::run(
        &[
            ("bare axum (no auth)", &bare),
            ("ApiKeyLayer over MemoryStore", &mem),
            ("ApiKeyLayer, RedisLimits", &redis),
        ],
        &key,
    );
    drop(server);
}
