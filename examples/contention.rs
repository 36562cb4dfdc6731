//! Contention on one owner: 16 tasks create keys concurrently for the same
//! owner through one `KeyManager` with an owner limit (every create is
//! planned on the owner's count, from the manager's cache or from the
//! owner's listing, and committed with the owner guard), and
//! the run reports keys per second and how many commits the store refused
//! as conflicts (each one a re-planned create).
//!
//! ```text
//! cargo run --release --example contention -- [memory|net] [keys per task] [latency µs] [instances] [limit|nolimit]
//! ```
//!
//! `instances` (default 1) builds that many managers over the one store,
//! the tasks spread over them: several service instances on one database,
//! whose plans meet only at the store's owner guard. `nolimit` builds the
//! managers without an owner limit: creates are then plain inserts.
//!
//! `memory` is the `MemoryStore`; `net` is the testkit's `NetStore` (a
//! simulated round trip per call, transactions holding a lock across
//! yields, like a database). A SQL store runs the same loop by building the
//! manager over it (see `run`).

use std::sync::Arc;
use std::time::Instant;

use apikey::{
    Actor, KeyManager, KeyStoreWrite, Keyring, MemoryStore, NewKey, ServerSecret, UsageStore,
    Verifier,
};
use apikey_testkit::CountingStore;

const TASKS: usize = 16;

/// Runs `TASKS` tasks of `per_task` creates each on one owner over
/// `store`; prints keys/s and conflicts.
async fn run<S: KeyStoreWrite + UsageStore + 'static>(
    label: &str,
    store: S,
    per_task: usize,
    instances: usize,
    limit: bool,
) {
    let store = Arc::new(CountingStore::new(store));
    let verifier = Verifier::new(
        Keyring::new(1, ServerSecret::from_bytes(&[3; 32]).expect("32 bytes")).expect("keyring"),
    );
    let managers: Vec<_> = (0..instances.max(1))
        .map(|_| {
            let m = KeyManager::new(verifier.clone(), Arc::clone(&store));
            Arc::new(if limit {
                m.with_max_keys_per_owner(u32::MAX)
            } else {
                m
            })
        })
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let manager = Arc::clone(&managers[i % managers.len()]);
            tokio::spawn(async move {
                let admin = Actor::new("bench");
                let mut failed = 0u64;
                for _ in 0..per_task {
                    if manager
                        .create(NewKey::new("sk_live_").owner("org_1"), &admin)
                        .await
                        .is_err()
                    {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    let made = (TASKS * per_task) as u64 - failed;
    let (commits, conflicts) = (store.commits(), store.conflicts());
    println!(
        "{label}, {} instance(s), {}: {TASKS} tasks x {per_task} creates on one owner: {made} keys in {secs:.3} s = {:.0} keys/s; \
         {commits} commits, {conflicts} conflicts ({:.2} per key), {failed} failed",
        managers.len(),
        if limit { "owner limit" } else { "no limit" },
        made as f64 / secs,
        conflicts as f64 / made.max(1) as f64,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("memory", String::as_str);
    let per_task: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let latency: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    let instances: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(1);
    let limit = args.get(5).is_none_or(|a| a != "nolimit");
    match which {
        "net" => {
            let store =
                apikey_testkit::netstore::NetStore::new(std::time::Duration::from_micros(latency));
            let label = format!("NetStore ({latency} µs round trip)");
            run(&label, store, per_task, instances, limit).await;
        }
        _ => {
            run(
                "MemoryStore",
                MemoryStore::new(),
                per_task,
                instances,
                limit,
            )
            .await
        }
    }
}
