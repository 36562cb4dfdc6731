//! Loom model: revoking, disabling or deleting a key races verification
//! and a usage flush (the store side of `UsageRecorder::flush`,
//! `record_usage_sync`).
//!
//! Runs the real `MemoryStore` code with its locks swapped for loom's
//! (`src/sync.rs`), exploring every interleaving:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test --release --test loom
//! ```
//!
//! Property: every verification that *starts after* the write returned
//! (observed through a SeqCst flag the writer sets after the call) fails
//! with the new state's error; one that started before may see either
//! state, never a mix (a torn or half-updated record). A usage flush racing
//! a conditional revoke (`update_if_sync`, what `KeyManager` uses) or a bulk
//! revoke (`revoke_owner_sync`) neither undoes the revoke nor loses the
//! counts.
#![cfg(loom)]

use apikey::{
    Changes, Error, KeyQuery, KeyRecord, KeyStatus, Keyring, MemoryStore, NewKey, Put, Requirement,
    Revocation, ServerSecret, UsageBatch, UsageDelta, Verifier,
};
use apikey_testkit::VerifyExt;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

const NOW: apikey::Timestamp =
    match apikey::Timestamp::checked_from_unix_micros(1_767_225_600_000_000) {
        Some(t) => t,
        None => apikey::Timestamp::MIN,
    };

#[derive(Clone, Copy, Debug)]
enum Write {
    Revoke,
    /// Read, modify, commit at the read revision (as `KeyManager`).
    RevokeIf,
    /// A page of the bulk revocation of an owner (`revoke_where`'s default).
    RevokeOwner,
    Disable,
    Delete,
}

fn fixture() -> (Verifier, String, KeyRecord) {
    let secret = ServerSecret::from_bytes(&[7; 32]).expect("32 bytes");
    let verifier = Verifier::new(Keyring::new(1, secret).expect("keyring"));
    let (key, record) = verifier
        .issue(NewKey::new("sk_live_").owner("org"), NOW)
        .expect("issues");
    (verifier, key.expose_secret().to_owned(), record)
}

fn code(r: &Result<apikey::VerifiedKey, Error>) -> &'static str {
    match r {
        Ok(_) => "OK",
        Err(e) => e.code().as_str(),
    }
}

fn model(write: Write, readers: usize, flush: bool) {
    let (verifier, text, record) = fixture();
    let after_code = match write {
        Write::Revoke | Write::RevokeIf | Write::RevokeOwner => "REVOKED_API_KEY",
        Write::Disable => "DISABLED_API_KEY",
        Write::Delete => "INVALID_API_KEY",
    };
    let mut builder = loom::model::Builder::new();
    if readers + usize::from(flush) > 1 {
        // Three threads: bound preemptions so the search ends in seconds.
        builder.preemption_bound = Some(3);
    }
    builder.check(move || {
        let store = Arc::new(MemoryStore::new());
        store.insert_sync(record.clone()).expect("insert");
        let done = Arc::new(AtomicBool::new(false));

        let writer = {
            let (store, done, record) = (Arc::clone(&store), Arc::clone(&done), record.clone());
            thread::spawn(move || {
                match write {
                    Write::Revoke => {
                        let mut r = record;
                        r.status = KeyStatus::Revoked;
                        r.revocation = Some(Revocation {
                            at: NOW,
                            reason: "leaked".into(),
                        });
                        store.update_sync(r).expect("update");
                    }
                    Write::RevokeIf => {
                        let mut r = store.get_sync(record.id).expect("present");
                        let rev = r.revision;
                        r.status = KeyStatus::Revoked;
                        r.revocation = Some(Revocation {
                            at: NOW,
                            reason: "leaked".into(),
                        });
                        let mut c = Changes::new();
                        c.puts.push(Put::update(r, rev));
                        store
                            .commit_sync(&c)
                            .expect("a usage flush does not conflict");
                    }
                    Write::RevokeOwner => {
                        // The default `revoke_where` page: a listing, then one
                        // commit at the listed revisions.
                        let listing = store.list_sync(&KeyQuery::owner("org"));
                        let mut c = Changes::new();
                        for mut r in listing.records {
                            let rev = r.revision;
                            r.status = KeyStatus::Revoked;
                            r.revocation = Some(Revocation {
                                at: NOW,
                                reason: "offboarded".into(),
                            });
                            c.puts.push(Put::update(r, rev));
                        }
                        assert_eq!(c.puts.len(), 1);
                        store
                            .commit_sync(&c)
                            .expect("a usage flush does not conflict");
                    }
                    Write::Disable => {
                        let mut r = record;
                        r.status = KeyStatus::Disabled;
                        store.update_sync(r).expect("update");
                    }
                    Write::Delete => assert!(store.delete_sync(record.id)),
                }
                done.store(true, Ordering::SeqCst);
            })
        };

        let flusher = flush.then(|| {
            let (store, id) = (Arc::clone(&store), record.id);
            thread::spawn(move || {
                store.record_usage_sync(&UsageBatch::new(vec![UsageDelta::new(
                    id,
                    NOW.utc_date(),
                    1,
                    NOW,
                )]));
            })
        });

        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let (store, done) = (Arc::clone(&store), Arc::clone(&done));
                let (verifier, text) = (verifier.clone(), text.clone());
                thread::spawn(move || {
                    let started_after = done.load(Ordering::SeqCst);
                    let r = verifier.verify_with(
                        &text,
                        |id| store.fetch_sync(id),
                        NOW,
                        &Requirement::none(),
                    );
                    let c = code(&r);
                    if started_after {
                        assert_eq!(
                            c, after_code,
                            "a verification that started after the write saw the old state"
                        );
                    } else {
                        assert!(c == "OK" || c == after_code, "torn state: {c}");
                    }
                })
            })
            .collect();

        writer.join().expect("writer");
        for h in handles {
            h.join().expect("reader");
        }
        if let Some(f) = flusher {
            f.join().expect("flusher");
            if !matches!(write, Write::Delete) {
                let r = store.get_sync(record.id).expect("present");
                let day = NOW.utc_date();
                assert_eq!(
                    store.usage_sync(record.id, day..day.next_day().expect("a day")),
                    vec![(day, 1)],
                    "a usage flush was lost"
                );
                assert_eq!(r.last_used_at, Some(NOW));
            }
        }
        let r = verifier.verify_with(&text, |id| store.fetch_sync(id), NOW, &Requirement::none());
        assert_eq!(code(&r), after_code);
    });
}

#[test]
fn revoke_races_verification() {
    model(Write::Revoke, 1, false);
}

#[test]
fn disable_races_verification() {
    model(Write::Disable, 1, false);
}

#[test]
fn delete_races_verification() {
    model(Write::Delete, 1, false);
}

#[test]
fn revoke_races_two_verifications() {
    model(Write::Revoke, 2, false);
}

#[test]
fn conditional_revoke_races_verification_and_usage_flush() {
    model(Write::RevokeIf, 1, true);
}

#[test]
fn owner_revoke_races_verification_and_usage_flush() {
    model(Write::RevokeOwner, 1, true);
}

#[test]
fn delete_races_verification_and_usage_flush() {
    model(Write::Delete, 1, true);
}

// A plain `update_sync` racing a flush keeps the flushed `last_used_at`: a
// put writes every field but that one (see the store conformance suite).
