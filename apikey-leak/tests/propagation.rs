//! Revocation reaches every instance: two instances (two pools, two
//! `CachedStore`s, two `KeyManager`s) on one real PostgreSQL, B subscribed
//! to a `PgChangeFeed`. A fake GitHub posts leaks to A's partner endpoint;
//! the delay from the POST arriving on A until B refuses the key is
//! measured over 120 reports (p50, p99 and max printed, not asserted
//! beyond a generous sanity bound). B's cache keeps keys for a minute, so
//! only the feed can make it refuse the key sooner.
//!
//! Run: `cargo test -p apikey-leak --test propagation -- --nocapture`.
//! Without PostgreSQL the test prints that it was skipped; with `CI=true`
//! it fails instead.

#![allow(clippy::unwrap_used)]

#[path = "../../apikey-sqlx/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apikey::{Actor, CachedStore, ChangeFeed, KeyManager, NewKey, Requirement};
use apikey_leak::{GithubEndpoint, LeakResponder};
use apikey_sqlx::{PgChangeFeed, PostgresStore, StoreOptions};
use support::{FakeGithub, alert};

const MAX_AGE: Duration = Duration::from_secs(60);
const REPORTS: usize = 120;

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.50), at(0.99), v[v.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_posted_on_a_stops_the_key_on_b_through_the_change_feed() {
    let test = "a_leak_posted_on_a_stops_the_key_on_b_through_the_change_feed";
    let Some(url) = common::shared(test) else {
        return;
    };
    let options = StoreOptions::default().schema(common::unique("leak"));
    let a = PostgresStore::connect_with(&url, options.clone())
        .await
        .unwrap();
    let b = PostgresStore::connect_with(&url, options).await.unwrap();
    let feed = PgChangeFeed::listen(&b).await.unwrap();
    let b = Arc::new(CachedStore::new(b).with_max_age(MAX_AGE));
    feed.subscribe(b.clone());
    let verifier = support::verifier();
    let manager_a = Arc::new(KeyManager::new(
        verifier.clone(),
        CachedStore::new(a).with_max_age(MAX_AGE),
    ));
    let manager_b = KeyManager::new(verifier, b);
    let github = FakeGithub::new(3);
    let endpoint = GithubEndpoint::new(
        Arc::new(LeakResponder::new(manager_a.clone())),
        github.keys(),
    );

    let mut delays = Vec::with_capacity(REPORTS);
    let mut handling = Vec::with_capacity(REPORTS);
    let mut after = Vec::with_capacity(REPORTS);
    for i in 0..REPORTS {
        let (key, _) = manager_a
            .create(
                NewKey::new("sk_live_").owner(format!("team{}", i % 5)),
                &Actor::system(),
            )
            .await
            .unwrap();
        // B has the key cached as active.
        for _ in 0..2 {
            manager_b
                .authenticate(key.expose_secret(), &Requirement::none(), None)
                .await
                .unwrap();
        }
        let body = alert(&[key.expose_secret()]);
        let signature = github.sign(body.as_bytes());
        let arrived = Instant::now();
        let report = endpoint
            .handle(Some(&github.key_id), Some(&signature), body.as_bytes())
            .await
            .unwrap();
        let handled = arrived.elapsed();
        assert_eq!(report.summary.changed, 1);
        let a_err = manager_a
            .authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .unwrap_err();
        assert_eq!(a_err.code(), "REVOKED_API_KEY", "A refuses at once");
        let delay = loop {
            match manager_b
                .authenticate(key.expose_secret(), &Requirement::none(), None)
                .await
            {
                Err(e) if e.code() == "REVOKED_API_KEY" => break arrived.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("B: unexpected {e:?}"),
            }
            assert!(
                arrived.elapsed() < Duration::from_secs(20),
                "B still accepts the key 20 s after the report (sanity bound)"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        delays.push(delay);
        handling.push(handled);
        after.push(delay.saturating_sub(handled));
    }
    let (p50, p99, max) = percentiles(delays);
    let (h50, h99, _) = percentiles(handling);
    let (f50, f99, _) = percentiles(after);
    println!(
        "leak report on A until B refuses the key, {REPORTS} reports over one PostgreSQL: \
         p50 {p50:?}, p99 {p99:?}, max {max:?}; of which handling on A (signature, lookup, revoke) \
         p50 {h50:?}, p99 {h99:?}, and the feed until B refuses p50 {f50:?}, p99 {f99:?} \
         (cache max age {MAX_AGE:?}, feed reconnects: {})",
        feed.reconnects()
    );
}
