//! Shared by `benches/verify.rs` and `examples/callgrind_driver.rs`: the
//! naive baseline of issue 5, exactly as it was measured, and two harness
//! helpers. One definition, so the criterion denominator and the callgrind
//! `naive` class are the same code.
#![allow(dead_code)]

use std::task::{Context, Poll, Waker};

use apikey::Clock;
use apikey::Timestamp;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The baseline's record: digest, two scopes, optional expiry.
pub struct Record {
    pub hash: [u8; 32],
    pub scopes: Vec<String>,
    pub expires: Option<i64>,
}

/// HMAC-SHA256 of the secret text from a cloned pre-keyed state.
pub fn naive_hash(mac: &Hmac<Sha256>, secret: &str) -> [u8; 32] {
    let mut m = mac.clone();
    m.update(secret.as_bytes());
    m.finalize().into_bytes().into()
}

/// A record for `secret` with the baseline's two scopes and a far expiry.
pub fn naive_record(mac: &Hmac<Sha256>, secret: &str) -> Record {
    Record {
        hash: naive_hash(mac, secret),
        scopes: vec!["tasks:read".to_owned(), "projects:write".to_owned()],
        expires: Some(i64::MAX / 2),
    }
}

/// The naive verify of `sk_live_<id>_<secret>`: `strip_prefix`,
/// `split_once('_')`, a map lookup by `lookup` (String or u64 ids), HMAC,
/// `subtle` slice `ct_eq`, expiry.
#[inline(always)]
pub fn naive_verify<'m>(
    lookup: impl FnOnce(&str) -> Option<&'m Record>,
    mac: &Hmac<Sha256>,
    key: &str,
    now: i64,
) -> Result<&'m Record, ()> {
    let rest = key.strip_prefix("sk_live_").ok_or(())?;
    let (id, secret) = rest.split_once('_').ok_or(())?;
    let record = lookup(id).ok_or(())?;
    let hash = naive_hash(mac, secret);
    if !bool::from(hash.as_slice().ct_eq(record.hash.as_slice())) {
        return Err(());
    }
    if record.expires.is_some_and(|e| now >= e) {
        return Err(());
    }
    Ok(record)
}

/// A clock that always reads the same instant (isolates the async overhead
/// from clock reads).
#[derive(Clone, Copy)]
pub struct FixedClock {
    at: Timestamp,
}

impl FixedClock {
    pub fn new(at: Timestamp) -> Self {
        Self { at }
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.at
    }
}

/// Polls a future that is ready at once (MemoryStore's are).
pub fn poll_ready<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
