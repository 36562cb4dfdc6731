#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod authenticator;
mod base62;
mod clock;
mod digest;
mod error;
pub mod fuzzing;
mod key;
mod prefix;
mod record;
mod scope;
mod secret;
pub mod store;
mod sync;
mod verifier;

pub use authenticator::Authenticator;
pub use clock::{Clock, ManualClock, SystemClock};
pub use digest::KeyDigest;
pub use error::{Error, MalformedReason, Result, StoreError, StoreErrorKind};
pub use key::{ApiKey, BODY_LEN, KeyId, MAX_KEY_LEN, MIN_KEY_LEN, ParsedKey, key_display_form};
pub use prefix::{Environment, Environments, MAX_PREFIX_LEN, Prefix, PrefixEntry, PrefixRegistry};
pub use record::{KeyRecord, KeyStatus, KeyView, NewKey, Revocation, SCHEMA_VERSION};
pub use scope::{Requirement, Scope, ScopeSet};
pub use secret::{Keyring, MIN_SECRET_LEN, ServerSecret};
pub use store::{KeyStore, KeyStoreWrite, MemoryStore};
pub use verifier::{VerifiedKey, Verifier};
