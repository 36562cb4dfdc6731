#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod authenticator;
mod base62;
mod clock;
pub mod credits;
mod digest;
pub mod fuzzing;
mod error;
pub mod extract;
pub mod gate;
mod key;
mod prefix;
pub mod ratelimit;
mod record;
pub mod response;
mod scope;
mod secret;
pub mod store;
mod sync;
mod verifier;

#[cfg(feature = "axum")]
pub mod middleware;

pub use authenticator::Authenticator;
pub use clock::{Clock, ManualClock, SystemClock};
pub use digest::KeyDigest;
pub use error::{Error, MalformedReason, Result, StoreError, StoreErrorKind};
pub use key::{key_display_form, ApiKey, KeyId, ParsedKey, BODY_LEN, MAX_KEY_LEN, MIN_KEY_LEN};
pub use prefix::{Environment, Environments, Prefix, PrefixEntry, PrefixRegistry, MAX_PREFIX_LEN};
pub use record::{KeyRecord, KeyStatus, KeyView, NewKey, Revocation, SCHEMA_VERSION};
pub use scope::{Requirement, Scope, ScopeSet};
pub use secret::{Keyring, ServerSecret, MIN_SECRET_LEN};
pub use store::{KeyStore, KeyStoreWrite, MemoryStore};
pub use verifier::{VerifiedKey, Verifier};
