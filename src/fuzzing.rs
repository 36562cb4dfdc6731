//! Fuzz-harness bodies, shared by the `fuzz/` targets and the property tests.
//!
//! Each function takes arbitrary bytes, drives the public API, and panics
//! only when an oracle is violated (a bug), never because the input is bad.
//! They are public so that your own fuzzing harnesses can reuse them.

use crate::verifier::Verifier;

/// Key parsing: never panics; whatever parses re-composes to the identical
/// text (parse then format round-trips, one canonical spelling).
///
/// # Panics
/// When the round-trip oracle fails.
///
/// ```
/// # use apikey::*;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
/// apikey::fuzzing::parse_key(&verifier, b"sk_live_garbage\0\xff");
/// # Ok::<(), apikey::Error>(())
/// ```
pub fn parse_key(verifier: &Verifier, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(parsed) = verifier.parse(&text) {
        let back = verifier.compose(&parsed);
        assert_eq!(
            back.as_deref().map(String::as_str),
            Some(&*text),
            "a parsed key must re-compose to the same text"
        );
    }
}
