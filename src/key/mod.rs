//! The key format: typed prefixes, the base62 body, server secrets and the
//! keyed digest that is all a store ever holds.
//!
//! | file | concept |
//! |---|---|
//! | `format.rs` | the key text: generate, parse, compose ([`ApiKey`], [`ParsedKey`], [`KeyId`]) |
//! | `prefix.rs` | typed prefixes and environments ([`Prefix`], [`PrefixRegistry`]) |
//! | `base62.rs` | the body's alphabet |
//! | `secret.rs` | versioned server secrets and the keys derived from them ([`Keyring`]) |
//! | `digest.rs` | the stored digest, compared in constant time ([`KeyDigest`]) |

pub(crate) mod base62;
pub mod digest;
pub mod format;
pub mod prefix;
pub mod secret;

pub use digest::KeyDigest;
pub use format::{ApiKey, BODY_LEN, KeyId, MAX_KEY_LEN, MIN_KEY_LEN, ParsedKey, key_display_form};
pub use prefix::{Environment, Environments, MAX_PREFIX_LEN, Prefix, PrefixEntry, PrefixRegistry};
pub use secret::{Keyring, MIN_SECRET_LEN, ServerSecret};

// Crate-internal items of the key text, at their old short path.
#[allow(unused_imports)]
pub(crate) use format::*;
