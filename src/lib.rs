#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod audit;
mod authenticator;
mod base62;
mod clock;
pub mod credits;
mod digest;
mod error;
pub mod extract;
pub mod fuzzing;
pub mod gate;
mod ipnet;
mod key;
pub mod manager;
mod prefix;
pub mod ratelimit;
mod record;
pub mod response;
mod scope;
mod secret;
pub mod store;
mod sync;
pub mod usage;
mod verifier;

#[cfg(feature = "tracing")]
pub use audit::TracingSink;
pub use audit::{Actor, AuditEvent, AuditKind, AuditSink, MemoryAuditSink, NoAudit};
#[cfg(feature = "axum")]
pub mod middleware;

pub use authenticator::Authenticator;
pub use clock::{Clock, MAX_TIME, MIN_TIME, ManualClock, SystemClock, check_time, in_time_range};
pub use digest::KeyDigest;
pub use error::{Error, MalformedReason, Result, StoreError, StoreErrorKind};
pub use ipnet::{IpNet, ip_allowed};
pub use key::{ApiKey, BODY_LEN, KeyId, MAX_KEY_LEN, MIN_KEY_LEN, ParsedKey, key_display_form};
pub use manager::{
    DEFAULT_MAX_GRACE, ImportKey, KeyManager, KeyState, KeySummary, KeyUpdate, Rotation,
};
pub use prefix::{Environment, Environments, MAX_PREFIX_LEN, Prefix, PrefixEntry, PrefixRegistry};
pub use record::{
    KeyRecord, KeyStatus, KeyView, LegacyInfo, NewKey, Revocation, SCHEMA_VERSION, UsageCounters,
};
pub use scope::{MAX_SCOPE_LEN, MAX_SCOPES_PER_KEY, MAX_SEGMENTS, Requirement, Scope, ScopeSet};
pub use secret::{Keyring, MIN_SECRET_LEN, ServerSecret};
pub use store::{
    KeyStore, KeyStoreLifecycle, KeyStoreQuery, KeyStoreWrite, LimitedInsert, LimitedUpdate,
    MemoryStore, UsageDelta,
};
pub use usage::UsageRecorder;
pub use verifier::{VerifiedKey, Verifier};
