//! Timing evidence: a dudect-style statistical test of the public verify
//! path (`Verifier::verify_with` over a `MemoryStore`). Not part of CI —
//! timing on a shared machine is noisy. Run it on a quiet machine:
//!
//! ```sh
//! cargo run --release --example timing
//! cargo run --release --example timing -- --continuous secret_first_vs_last   # Ctrl-C to stop
//! ```
//!
//! Each bench compares two classes of inputs that must take the same time;
//! dudect reports Welch's |t| over cropped percentiles: below 4.5 no leak
//! was found, above 10 is a leak. Every sample uses a freshly allocated
//! copy of its input (reusing one buffer per class produces false alarms).
//!
//! * `secret_first_vs_last`: a wrong secret that differs from the right one
//!   in its first vs its last character (valid checksum and tag, known id).
//! * `tag_first_vs_last`: a forged tag wrong in its first vs its last
//!   character (valid checksum). A leaking tag comparison would let an
//!   attacker forge tags one character at a time.
//! * `control_same_inputs`: an A/A control, both classes from one pool of
//!   inputs; its |t| shows the machine's noise floor.
//! * `unknown_id_vs_wrong_secret`: documented without a pass bar. The two
//!   differ by the store lookup (a miss vs a hit); the tag is what keeps
//!   attackers from choosing ids.
//!
//! Right vs wrong secret differs by design (success does more work) and is
//! not a test.

use apikey_testkit::VerifyExt;
use std::sync::Arc;

use apikey::Timestamp;
use apikey::{Keyring, MemoryStore, NewKey, Requirement, ServerSecret, Verifier};
use dudect_bencher::rand::RngExt;
use dudect_bencher::{BenchRng, Class, CtRunner, ctbench_main};
use rand_core::{TryCryptoRng, TryRng};

/// Samples per bench run (both classes together).
const SAMPLES: usize = 1_000_000;
/// Distinct inputs per class; each sample copies one of them afresh.
const VARIANTS: usize = 61;
const NOW: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_767_225_600_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An RNG that makes `issue_with_rng` produce a chosen id and secret:
/// `next_u64` is the id, `fill_bytes` yields the 32 secret digits (all
/// below 62, so the generator accepts each one as is).
struct Scripted {
    id: u64,
    digits: [u8; 32],
}

impl TryRng for Scripted {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.id as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.id)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for (i, d) in dest.iter_mut().enumerate() {
            *d = self.digits[i % 32];
        }
        Ok(())
    }
}

impl TryCryptoRng for Scripted {}

struct Fixture {
    verifier: Verifier,
    store: MemoryStore,
    requirement: Requirement,
}

fn fixture() -> Fixture {
    let secret = ServerSecret::from_bytes(&[0x5a; 32]).expect("32 bytes");
    Fixture {
        verifier: Verifier::new(Keyring::new(1, secret).expect("keyring")),
        store: MemoryStore::new(),
        requirement: Requirement::none(),
    }
}

/// Issues the key with `id` and `digits`; stores its record when `store`.
fn key(f: &Fixture, id: u64, digits: [u8; 32], store: bool) -> String {
    let mut rng = Scripted { id, digits };
    let (key, record) = f
        .verifier
        .issue_with_rng(NewKey::new("sk_live_"), NOW, &mut rng)
        .expect("issues");
    if store {
        f.store.insert_sync(record).expect("insert");
    }
    key.expose_secret().to_owned()
}

fn right_digits() -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, x) in d.iter_mut().enumerate() {
        *x = ((i * 17 + 5) % 62) as u8;
    }
    d
}

/// Replaces the character at `pos` by each other base62 character in
/// turn and fixes the checksum, keeping the tag as it is (so it is wrong).
fn forged_tags(right: &str, pos: usize) -> Vec<String> {
    let mut out = Vec::new();
    for &c in ALPHABET.iter().filter(|&&c| c != right.as_bytes()[pos]) {
        let mut b = right.as_bytes().to_vec();
        b[pos] = c;
        fix_checksum(&mut b);
        out.push(String::from_utf8(b).expect("ascii"));
    }
    out
}

fn fix_checksum(key: &mut [u8]) {
    let split = key.len() - 6;
    let mut crc = u128::from(crc32fast::hash(&key[..split]));
    for slot in key[split..].iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
}

/// Runs `SAMPLES` verifications, each of a fresh copy of a random input of
/// a random class, and checks every one is rejected as `INVALID_API_KEY`.
fn run(runner: &mut CtRunner, rng: &mut BenchRng, f: &Fixture, left: &[String], right: &[String]) {
    for s in left.iter().chain(right) {
        let r = f
            .verifier
            .verify_with(s, |id| f.store.fetch_sync(id), NOW, &f.requirement);
        assert_eq!(
            r.expect_err("must be rejected").code(),
            "INVALID_API_KEY",
            "{s}"
        );
    }
    let mut classes = Vec::with_capacity(SAMPLES);
    let mut inputs = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let (class, pool) = if rng.random::<bool>() {
            (Class::Left, left)
        } else {
            (Class::Right, right)
        };
        let i = rng.random_range(0..pool.len());
        classes.push(class);
        // A fresh allocation per sample.
        inputs.push(Arc::<str>::from(pool[i].as_str()));
    }
    for (class, input) in classes.into_iter().zip(inputs) {
        runner.run_one(class, || {
            f.verifier
                .verify_with(&input, |id| f.store.fetch_sync(id), NOW, &f.requirement)
                .is_ok()
        });
    }
}

/// Wrong secret, first vs last character differing from the right one.
fn secret_first_vs_last(runner: &mut CtRunner, rng: &mut BenchRng) {
    let f = fixture();
    let id = 0x0123_4567_89ab_cdef;
    let right = right_digits();
    key(&f, id, right, true);
    let variants = |pos: usize| -> Vec<String> {
        (1..=VARIANTS as u8)
            .map(|k| {
                let mut d = right;
                d[pos] = (d[pos] + k) % 62;
                key(&f, id, d, false)
            })
            .collect()
    };
    let (first, last) = (variants(0), variants(31));
    run(runner, rng, &f, &first, &last);
}

/// Forged tag, first vs last tag character wrong (checksum valid).
fn tag_first_vs_last(runner: &mut CtRunner, rng: &mut BenchRng) {
    let f = fixture();
    let right = key(&f, 0x0123_4567_89ab_cdef, right_digits(), true);
    let tag_start = "sk_live_".len() + 1 + 11 + 32;
    let first = forged_tags(&right, tag_start);
    let last = forged_tags(&right, tag_start + 7);
    run(runner, rng, &f, &first, &last);
}

/// Control (A/A): both classes drawn from the same inputs. Shows the noise
/// floor of the machine: its |t| should stay below 4.5 as well.
fn control_same_inputs(runner: &mut CtRunner, rng: &mut BenchRng) {
    let f = fixture();
    let id = 0x0123_4567_89ab_cdef;
    let right = right_digits();
    key(&f, id, right, true);
    let pool: Vec<String> = (1..=VARIANTS as u8)
        .map(|k| {
            let mut d = right;
            d[0] = (d[0] + k) % 62;
            key(&f, id, d, false)
        })
        .collect();
    run(runner, rng, &f, &pool, &pool);
}

/// Unknown id vs wrong secret (documented, no pass bar).
fn unknown_id_vs_wrong_secret(runner: &mut CtRunner, rng: &mut BenchRng) {
    let f = fixture();
    let id = 0x0123_4567_89ab_cdef;
    let right = right_digits();
    key(&f, id, right, true);
    // Fill the store so the miss and the hit walk a realistic table.
    for i in 0..10_000u64 {
        key(&f, i.wrapping_mul(0x9E37_79B9_7F4A_7C15), right, true);
    }
    let unknown: Vec<String> = (0..VARIANTS as u64)
        .map(|k| key(&f, id ^ (k + 1) << 20, right, false))
        .collect();
    let wrong: Vec<String> = (1..=VARIANTS as u8)
        .map(|k| {
            let mut d = right;
            d[7] = (d[7] + k) % 62;
            key(&f, id, d, false)
        })
        .collect();
    run(runner, rng, &f, &unknown, &wrong);
}

ctbench_main!(
    control_same_inputs,
    secret_first_vs_last,
    tag_first_vs_last,
    unknown_id_vs_wrong_secret
);
