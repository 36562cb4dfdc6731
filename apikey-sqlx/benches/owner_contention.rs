//! Contention on one owner: 16 tasks create keys for the same owner at once
//! through `KeyManager` over a `PostgresStore` (a throwaway cluster, as the
//! tests start), with an owner limit, so every create reads and guards the
//! owner's count. Prints keys per second and how many commits the store
//! refused as conflicting (each one a retry by the manager).
//!
//! `cargo bench -p apikey-sqlx --features postgres --bench owner_contention`
//! (`CONTENTION_KEYS` per task, default 50; `CONTENTION_ROUNDS`, default 3;
//! `CONTENTION_INSTANCES`, default 1: that many managers over the one
//! database, the tasks spread over them, like service instances whose plans
//! meet only at the store's owner guard).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use apikey::{Actor, KeyManager, Keyring, NewKey, ServerSecret, Verifier};
use apikey_sqlx::{PostgresStore, StoreOptions};
use apikey_testkit::CountingStore;

const TASKS: usize = 16;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let per_task = env("CONTENTION_KEYS", 50);
    let rounds = env("CONTENTION_ROUNDS", 3);
    let instances = env("CONTENTION_INSTANCES", 1).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = match common::Cluster::start(true) {
        Ok(c) => c,
        Err(why) => {
            common::unavailable("owner_contention", &why);
            return;
        }
    };
    rt.block_on(async {
        for round in 1..=rounds {
            let schema = common::unique("contention");
            let options = StoreOptions::default().schema(&schema);
            let store = PostgresStore::connect_with(&cluster.url(), options)
                .await
                .unwrap();
            let limit = u32::try_from(TASKS * per_task).unwrap();
            let store = Arc::new(CountingStore::new(store));
            let managers: Vec<_> = (0..instances)
                .map(|_| {
                    let secret = ServerSecret::from_bytes(&[7; 32]).unwrap();
                    let verifier = Verifier::new(Keyring::new(1, secret).unwrap());
                    Arc::new(
                        KeyManager::new(verifier, Arc::clone(&store))
                            .with_max_keys_per_owner(limit),
                    )
                })
                .collect();
            let start = Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let keys = Arc::clone(&managers[t % instances]);
                    tokio::spawn(async move {
                        let actor = Actor::new(format!("task_{t}"));
                        let mut failed = Vec::new();
                        for _ in 0..per_task {
                            let new = NewKey::new("sk_live_").owner("org_contended").name("c");
                            if let Err(e) = keys.create(new, &actor).await {
                                failed.push(e.to_string());
                            }
                        }
                        failed
                    })
                })
                .collect();
            let mut failed = Vec::new();
            for t in tasks {
                failed.extend(t.await.unwrap());
            }
            let elapsed = start.elapsed();
            let lists = store.lists();
            let made = managers[0].list("org_contended").await.unwrap().len();
            assert_eq!(made + failed.len(), TASKS * per_task);
            if let Some(e) = failed.first() {
                println!("{} creates failed, the first with: {e}", failed.len());
            }
            println!(
                "owner_contention round {round}: {TASKS} tasks on {instances} manager(s) x {per_task} creates on one owner: \
                 {made} keys in {elapsed:.2?} = {:.0} keys/s; {} commits, {} refused as conflicts; {lists} listing pages read; {} failed",
                made as f64 / elapsed.as_secs_f64(),
                store.commits(),
                store.conflicts(),
                failed.len(),
            );
        }
    });
    cluster.stop();
}
