//! Record deserialization: a record that deserializes re-serializes to a
//! fixpoint and verifies the same as the original.
#![no_main]

use std::sync::OnceLock;

use apikey_testkit::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).record_json(data);
});
