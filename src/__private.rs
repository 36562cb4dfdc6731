//! Crate internals for `apikey-testkit` (fuzz oracles that build keys byte
//! by byte). Not part of the public API: no stability promise.

/// Characters of the version field.
pub const VERSION_LEN: usize = crate::key::VERSION_LEN;
/// Characters of the id field.
pub const ID_LEN: usize = crate::key::ID_LEN;
/// Characters of the secret field.
pub const SECRET_LEN: usize = crate::key::SECRET_LEN;

/// Overwrites the last six characters of `text` (a whole key) with the
/// checksum of the characters before them.
pub fn write_checksum(text: &mut [u8]) {
    crate::key::write_checksum(text);
}

/// Re-creates the key text from a parsed key (the `parse_key` oracle's
/// round trip).
pub fn compose(
    verifier: &crate::Verifier,
    parsed: &crate::ParsedKey<'_>,
) -> Option<zeroize::Zeroizing<String>> {
    verifier.compose(parsed)
}
