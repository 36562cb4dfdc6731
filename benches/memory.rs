//! Memory of `MemoryStore` at 1,000,000 keys, measured as process RSS.
//!
//! `cargo bench --bench memory` loads 1,000,000 records (13-byte owner id shared by ten keys, two
//! scopes, expiry; no name, no metadata) through the public insert API and
//! prints the steady-state bytes per key (VmRSS after loading minus VmRSS
//! before) and the peak while loading (VmHWM minus VmRSS before). Records
//! are generated one at a time and moved into the store, so nothing but the
//! store holds them.
//!
//! `cargo bench --bench memory -- one-owner` gives every key its own owner
//! (13-byte ids such as `user_12345678`), the common case of many users
//! with one to three keys each.
//!
//! `cargo bench --bench memory -- naive` and `-- naive-u64` measure the
//! naive `HashMap<String, Record>` / `HashMap<u64, Record>` of issue 5 the
//! same way, to check the denominators (~363 and ~136 bytes per key there).
//! `-- --keys N` changes the count. Linux only (reads /proc/self/status).

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;

use apikey::Timestamp;
use apikey::{Keyring, MemoryStore, NewKey, ServerSecret, Verifier};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// Reads a `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

fn report(what: &str, n: u64, before: u64) {
    let after = status_bytes("VmRSS");
    let peak = status_bytes("VmHWM");
    println!(
        "{what}: {n} keys; steady RSS {:.1} MiB = {:.1} bytes/key; peak while loading {:.1} MiB = {:.1} bytes/key",
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / n as f64,
        (peak - before) as f64 / 1048576.0,
        (peak - before) as f64 / n as f64,
    );
}

#[allow(dead_code)]
struct Record {
    hash: [u8; 32],
    scopes: Vec<String>,
    expires: Option<i64>,
}

fn naive_record(rng: &mut ChaCha20Rng) -> Record {
    let mut hash = [0u8; 32];
    rng.fill_bytes(&mut hash);
    Record {
        hash,
        scopes: vec!["tasks:read".to_owned(), "projects:write".to_owned()],
        expires: Some(1_800_000_000),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .iter()
        .position(|a| a == "--keys")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let mode = if args.iter().any(|a| a == "naive") {
        "naive"
    } else if args.iter().any(|a| a == "one-owner") {
        "one-owner"
    } else if args.iter().any(|a| a == "naive-u64") {
        "naive-u64"
    } else {
        "memory-store"
    };
    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap());
    let now = Timestamp::from_unix_secs(1_795_564_800).unwrap();
    let expires = now + std::time::Duration::from_secs(365 * 86_400);
    // Warm up the allocator and the code paths before the baseline reading.
    let _ = verifier
        .issue_with_rng(NewKey::new("sk_live_"), now, &mut rng)
        .unwrap();
    let before = status_bytes("VmRSS");
    match mode {
        "naive" => {
            let mut map = HashMap::new();
            for i in 0..n {
                map.insert(format!("{:08}", i), naive_record(&mut rng));
            }
            report("naive HashMap<String, Record>", n, before);
            std::hint::black_box(&map);
        }
        "naive-u64" => {
            let mut map = HashMap::new();
            for i in 0..n {
                map.insert(i, naive_record(&mut rng));
            }
            report("naive HashMap<u64, Record>", n, before);
            std::hint::black_box(&map);
        }
        _ => {
            // `user_` and eight digits: 13-byte owner ids.
            let one_owner = mode == "one-owner";
            let store = MemoryStore::new();
            for i in 0..n {
                let owner = if one_owner {
                    format!("user_{:08}", i)
                } else {
                    format!("user_{:08}", i % 100_000)
                };
                let (_key, record) = verifier
                    .issue_with_rng(
                        NewKey::new("sk_live_")
                            .owner(owner)
                            .scopes(["tasks:read", "projects:*"])
                            .expires_at(expires),
                        now,
                        &mut rng,
                    )
                    .unwrap();
                store.insert_sync(record).unwrap();
            }
            report(
                if one_owner {
                    "MemoryStore (one owner per key, two scopes, expiry)"
                } else {
                    "MemoryStore (owner shared by 10 keys, two scopes, expiry)"
                },
                n,
                before,
            );
            println!(
                "size_of: KeyRecord {} B, KeyView {} B (plus 16 B of Arc counts), ScopeSet {} B, Scope {} B",
                std::mem::size_of::<apikey::KeyRecord>(),
                std::mem::size_of::<apikey::KeyView>(),
                std::mem::size_of::<apikey::ScopeSet>(),
                std::mem::size_of::<apikey::Scope>(),
            );
            std::hint::black_box(&store);
        }
    }
}
