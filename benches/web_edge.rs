//! The web edge as users run it: an axum server on loopback, one tokio
//! worker, the same 12-byte handler bare and behind `ApiKeyLayer`, driven by
//! a load generator on another thread. Reports requests/s and the server
//! thread's CPU time per request (from `/proc/thread-self/schedstat`,
//! nanoseconds on the CPU), modes alternated within one run, and each
//! layered route's ratio to the bare route of the same round.
//!
//! ```text
//! cargo bench --features axum --bench web_edge
//! WEB_EDGE_ROUNDS=3 WEB_EDGE_SECS=3 WEB_EDGE_CONNS=32 WEB_EDGE_CLIENT=wrk|rust cargo bench ...
//! ```
//!
//! The load generator is `wrk` when installed (one thread, `WEB_EDGE_CONNS`
//! connections), else a Rust client in this binary (keep-alive HTTP/1.1,
//! one request in flight per connection, on a current-thread runtime).
//! Server CPU per request does not depend on which generator drives it;
//! requests/s does when the generator is the bottleneck, which the report
//! says (client CPU per request, Rust client only).
//!
//! The layered routes over `CachedStore<SqliteStore>` live in
//! `apikey-sqlx/benches/web_edge_sqlite.rs`, the one over `RedisLimits` in
//! `apikey-redis/benches/web_edge_redis.rs`, so the root crate builds no
//! database driver.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

#[path = "support/load.rs"]
mod load;
#[path = "support/web.rs"]
mod web;
use web::Mode;

fn main() {
    let now = apikey::Clock::now(&apikey::SystemClock);
    let (verifier, store, keys) = web::keys(now);
    let store = Arc::new(store);
    let servers: Vec<(Mode, load::Server)> = Mode::ALL
        .iter()
        .map(|&mode| {
            let router = web::router(mode, &verifier, &store, apikey::SystemClock);
            (mode, load::Server::start(router))
        })
        .collect();
    let rows: Vec<(&str, &load::Server)> = servers.iter().map(|(m, s)| (m.name(), s)).collect();
    load::run(&rows, &keys[0]);
}
