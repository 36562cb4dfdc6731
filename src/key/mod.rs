//! The key format: typed prefixes, the base62 body, server secrets and the
//! keyed digest that is all a store ever holds.
//!
//! | file | concept |
//! |---|---|
//! | `format.rs` | the key text: generate, parse, compose ([`ApiKey`], [`ParsedKey`], [`KeyId`]) |
//! | `prefix.rs` | typed prefixes and environments ([`Prefix`], [`PrefixRegistry`]) |
//! | `base62.rs` | the body's alphabet |
//! | `secret.rs` | versioned server secrets and the keys derived from them ([`Keyring`]) |
//! | `rng.rs` | randomness for new keys ([`KeyRng`], [`OsRng`]) |
//! | `digest.rs` | the stored digest, compared in constant time ([`KeyDigest`]) |

mod base62;
mod digest;
mod format;
mod prefix;
mod rng;
mod secret;

pub use crate::environment::{Environment, Environments};
pub use digest::KeyDigest;
pub use format::{ApiKey, KeyId, ParsedKey};
pub use prefix::{Prefix, PrefixEntry, PrefixRegistry};
pub use rng::{KeyRng, OsRng};
pub use secret::{Keyring, ServerSecret};

// Crate-internal items of the key text, at their old short path.
#[allow(unused_imports)]
pub(crate) use format::*;
pub(crate) use prefix::is_publishable;
pub(crate) use secret::MAX_VERSION;
