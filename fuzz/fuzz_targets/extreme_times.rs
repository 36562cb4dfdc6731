//! The key manager and verifier at the edges of time: never a panic;
//! `INVALID_REQUEST` exactly for times outside the supported range, the
//! answer the record calls for inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    apikey_testkit::fuzzing::extreme_times(data);
});
