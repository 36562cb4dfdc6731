//! Scope grammar: parse/Display round-trip, reference grammar, grants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    apikey_testkit::fuzzing::scope_grammar(data);
});
