//! Crash durability: a child process (this test binary, re-run with
//! `APIKEY_SQLX_CRASH_CHILD` set) loops creates, rotations and revokes,
//! printing each acknowledged write; the parent kills it with SIGKILL at
//! random points and checks the store after each kill.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use apikey::{Changes, KeyId, KeyQuery, KeyStatus, KeyStoreWrite, Put, Revocation};
use apikey_testkit::conformance::{sample_record, suite_now};

/// The environment variable naming the store the child writes to.
pub const CHILD_ENV: &str = "APIKEY_SQLX_CRASH_CHILD";
/// The owner every child writes as.
pub const OWNER_ENV: &str = "APIKEY_SQLX_CRASH_OWNER";

/// The child's loop: bounded (2,000 writes), prints `ACK ...` after each
/// write returned.
pub async fn child_loop<S: KeyStoreWrite>(store: &S, owner: &str) {
    let mut live: Vec<KeyId> = Vec::new();
    for i in 0..2000u32 {
        match (i % 3, live.last().copied()) {
            (1, Some(id)) => {
                let Ok(Some(pred)) = store.get(id).await else {
                    continue;
                };
                if pred.status == KeyStatus::Revoked || pred.rotated_to.is_some() {
                    live.pop();
                    continue;
                }
                let mut succ = sample_record(Some(owner));
                succ.rotated_from = Some(pred.id);
                let mut p = pred.clone();
                p.rotated_to = Some(succ.id);
                p.expires_at = Some(suite_now() + std::time::Duration::from_secs(3_600));
                // One commit: the predecessor and its successor.
                let mut rotation = Changes::new();
                rotation.puts.push(Put::update(p, pred.revision));
                rotation.puts.push(Put::insert(succ.clone()));
                store.commit(&rotation).await.unwrap();
                println!("ACK rotate {} {}", pred.id.as_u64(), succ.id.as_u64());
                live.pop();
                live.push(succ.id);
            }
            (2, Some(id)) if live.len() > 1 => {
                let Ok(Some(r)) = store.get(id).await else {
                    continue;
                };
                let mut revoked = r.clone();
                revoked.status = KeyStatus::Revoked;
                revoked.revocation = Some(Revocation {
                    at: suite_now(),
                    reason: "crash test".into(),
                });
                let mut revoke = Changes::new();
                revoke.puts.push(Put::update(revoked, r.revision));
                store.commit(&revoke).await.unwrap();
                println!("ACK revoke {}", id.as_u64());
                live.pop();
            }
            _ => {
                let r = sample_record(Some(owner));
                let mut create = Changes::new();
                create.puts.push(Put::insert(r.clone()));
                store.commit(&create).await.unwrap();
                println!("ACK create {}", r.id.as_u64());
                live.push(r.id);
            }
        }
    }
}

/// Acknowledged writes seen so far.
#[derive(Debug, Default)]
pub struct Acks {
    pub created: Vec<u64>,
    pub rotated: Vec<(u64, u64)>,
    pub revoked: Vec<u64>,
}

impl Acks {
    fn take(&mut self, line: &str) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| parts.get(i).and_then(|s| s.parse::<u64>().ok());
        match (parts.get(1).copied(), n(2), n(3)) {
            (Some("create"), Some(a), _) => self.created.push(a),
            (Some("rotate"), Some(a), Some(b)) => self.rotated.push((a, b)),
            (Some("revoke"), Some(a), _) => self.revoked.push(a),
            _ => {}
        }
    }
}

fn rand_below(n: u64) -> u64 {
    super::rand_u64() % n.max(1)
}

/// Runs the child once, kills it with SIGKILL at a random point after its
/// first acknowledged write, and adds the writes it acknowledged to `acks`.
pub fn run_and_kill(test: &str, target: &str, owner: &str, acks: &mut Acks) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, target)
        .env(OWNER_ENV, owner)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ACK ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first acknowledged write (bounded wait), then a random moment.
    let first = rx.recv_timeout(Duration::from_secs(20)).ok();
    assert!(
        first.is_some(),
        "the crash child acknowledged nothing in 20 s"
    );
    std::thread::sleep(Duration::from_millis(rand_below(40)));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let _ = reader.join();
    for line in first.into_iter().chain(rx.try_iter()) {
        acks.take(&line);
    }
}

/// Every acknowledged write is present and no rotation is half applied.
pub async fn check<S: KeyStoreWrite>(store: &S, owner: &str, acks: &Acks) {
    let records = super::list_all(store, KeyQuery::owner(owner)).await;
    let by_id: std::collections::HashMap<u64, &apikey::KeyRecord> =
        records.iter().map(|r| (r.id.as_u64(), r)).collect();
    for id in &acks.created {
        assert!(by_id.contains_key(id), "an acknowledged create is missing");
    }
    for (p, s) in &acks.rotated {
        let (pr, sr) = (by_id[p], by_id.get(s).expect("acknowledged successor"));
        assert_eq!(pr.rotated_to.map(KeyId::as_u64), Some(*s));
        assert_eq!(sr.rotated_from.map(KeyId::as_u64), Some(*p));
    }
    for id in &acks.revoked {
        assert_eq!(
            by_id[id].status,
            KeyStatus::Revoked,
            "an acknowledged revoke is missing"
        );
    }
    // No compound write half applied, acknowledged or not.
    for r in &records {
        if let Some(s) = r.rotated_to {
            let succ = by_id
                .get(&s.as_u64())
                .expect("a rotation without its successor");
            assert_eq!(succ.rotated_from, Some(r.id), "rotation pair inconsistent");
        }
        if let Some(p) = r.rotated_from {
            let pred = by_id
                .get(&p.as_u64())
                .expect("a successor without its predecessor");
            assert_eq!(pred.rotated_to, Some(r.id), "rotation pair inconsistent");
        }
    }
}
