//! Full verification against a MemoryStore holding arbitrary records:
//! only byte-identical issued keys verify.
#![no_main]

use std::sync::OnceLock;

use apikey_testkit::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).verify(data);
});
