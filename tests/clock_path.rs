//! The verify path's clock: read only for keys with a validity window, and
//! then once.

#![allow(clippy::unwrap_used)]

use apikey_testkit::VerifyExt;
use std::sync::atomic::{AtomicU32, Ordering};

use apikey::Timestamp;
use apikey::*;
use std::time::Duration;

/// A clock at a fixed time that counts its readings.
struct CountingClock {
    at: Timestamp,
    reads: AtomicU32,
}

impl Clock for CountingClock {
    fn now(&self) -> Timestamp {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.at
    }
}

fn setup() -> (Verifier, MemoryStore) {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4u8; 32]).unwrap()).unwrap());
    (verifier, MemoryStore::new())
}

const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_780_272_000_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

#[test]
fn keys_without_a_window_never_read_the_clock() {
    let (v, store) = setup();
    let (key, record) = v.issue(NewKey::new("sk_live_"), T0).unwrap();
    store.insert_sync(record).unwrap();
    let clock = CountingClock {
        at: T0,
        reads: AtomicU32::new(0),
    };
    let ok = v.verify_with(
        key.expose_secret(),
        |id| store.fetch_sync(id),
        &clock,
        &Requirement::none(),
    );
    assert!(ok.is_ok());
    assert_eq!(clock.reads.load(Ordering::Relaxed), 0);
    // A wrong secret and a forged key do not read it either.
    let mut bad = key.expose_secret().as_bytes().to_vec();
    bad[30] = if bad[30] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    assert!(
        v.verify_with(
            &bad,
            |id| store.fetch_sync(id),
            &clock,
            &Requirement::none()
        )
        .is_err()
    );
    assert_eq!(clock.reads.load(Ordering::Relaxed), 0);
}

#[test]
fn keys_with_a_window_read_it_once_and_honour_it() {
    let (v, store) = setup();
    let (key, record) = v
        .issue(
            NewKey::new("sk_live_")
                .not_before(T0 + Duration::from_secs(3_600))
                .expires_at(T0 + Duration::from_secs(86_400)),
            T0,
        )
        .unwrap();
    store.insert_sync(record).unwrap();
    let check = |at: Timestamp| {
        let clock = CountingClock {
            at,
            reads: AtomicU32::new(0),
        };
        let r = v.verify_with(
            key.expose_secret(),
            |id| store.fetch_sync(id),
            &clock,
            &Requirement::none(),
        );
        assert_eq!(clock.reads.load(Ordering::Relaxed), 1);
        r.map(|_| ()).map_err(|e| e.code().as_str())
    };
    assert_eq!(check(T0), Err("NOT_YET_VALID"));
    assert_eq!(check(T0 + Duration::from_secs(2 * 3_600)), Ok(()));
    assert_eq!(
        check(T0 + Duration::from_secs(86_400)),
        Err("EXPIRED_API_KEY")
    );
    // A clock at the ends of the range (where `SystemClock` saturates).
    assert_eq!(check(Timestamp::MAX), Err("EXPIRED_API_KEY"));
    assert_eq!(check(Timestamp::MIN), Err("NOT_YET_VALID"));
}

#[test]
fn the_system_clock_reading_is_at_or_after_the_real_time() {
    // Never behind the precise clock read just before it (the property that
    // keeps expiry fail-closed). A coarse clock (the last timer tick) breaks
    // it in a VM whose tick is late: 0.2's first cut did, by 7 µs, in CI.
    for _ in 0..1000 {
        let before = Timestamp::from_datetime(time::OffsetDateTime::now_utc()).unwrap();
        let read = SystemClock.now();
        assert!(
            read >= before,
            "{} < {}",
            read.as_unix_micros(),
            before.as_unix_micros()
        );
        // And not far ahead of it: within a second.
        assert!(read.as_unix_micros() - before.as_unix_micros() < 1_000_000);
    }
}

#[test]
fn the_authenticator_uses_the_same_path() {
    let (v, store) = setup();
    let (key, record) = v
        .issue(
            NewKey::new("sk_live_").expires_at(T0 + Duration::from_secs(86_400)),
            T0,
        )
        .unwrap();
    store.insert_sync(record).unwrap();
    let auth = Authenticator::with_clock(
        v,
        store,
        ManualClock::new(T0 + Duration::from_secs(2 * 86_400)),
    );
    let err =
        futures_lite_block_on(auth.authenticate(key.expose_secret(), &Requirement::none(), None))
            .unwrap_err();
    assert_eq!(err.code(), "EXPIRED_API_KEY");
}

/// Polls a future that is ready at once (`MemoryStore`'s are).
fn futures_lite_block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
