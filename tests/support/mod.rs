//! Test support: a network-like store and manager fixtures.
#![allow(dead_code)]

pub use apikey_testkit::netstore;

use std::sync::Arc;

use apikey::Timestamp;
use apikey::{
    KeyManager, KeyStoreWrite, Keyring, ManualClock, MemoryAuditSink, MemoryStore, ServerSecret,
    UsageStore, Verifier,
};

pub const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

pub fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[42; 32]).unwrap()).unwrap())
}

pub struct Fixture<S: KeyStoreWrite + UsageStore> {
    pub manager: KeyManager<S, ManualClock>,
    pub clock: ManualClock,
    pub audit: Arc<MemoryAuditSink>,
}

pub fn fixture_with<S: KeyStoreWrite + UsageStore + 'static>(
    verifier: Verifier,
    store: S,
) -> Fixture<S> {
    let clock = ManualClock::new(T0);
    let audit = Arc::new(MemoryAuditSink::new());
    let manager =
        KeyManager::with_clock(verifier, store, clock.clone()).with_audit_sink(audit.clone());
    Fixture {
        manager,
        clock,
        audit,
    }
}

pub fn fixture() -> Fixture<Arc<MemoryStore>> {
    fixture_with(verifier(), Arc::new(MemoryStore::new()))
}
