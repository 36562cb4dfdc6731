#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// One folder per concept; see ARCHITECTURE.md.
mod clock;
mod error;
pub mod key;
pub mod limits;
pub mod manage;
pub mod store;
mod sync;
pub mod verify;
pub mod web;

// Crate-internal short paths to the modules inside the folders.
pub(crate) use key::{base62, digest, prefix, secret};

pub(crate) use manage::{audit, usage};
pub(crate) use store::record;
pub(crate) use verify::{authenticator, ipnet, scope, verifier};
#[cfg(feature = "axum")]
pub(crate) use web::gate;
pub(crate) use web::{extract, response};

#[doc(hidden)]
pub mod __private;
pub mod _documentation;

#[cfg(feature = "tracing")]
pub use manage::TracingSink;
pub use manage::{Actor, AuditEvent, AuditKind, AuditSink, MemoryAuditSink, NoAudit};

pub use clock::{
    Clock, MAX_TIME, MIN_TIME, ManualClock, SystemClock, Timestamp, check_time, in_time_range,
};
pub use error::{Challenge, Error, ErrorCode, MalformedReason, Result, StoreError, StoreErrorKind};
pub use key::{
    ApiKey, BODY_LEN, Environment, Environments, KeyDigest, KeyId, KeyRng, Keyring, MAX_KEY_LEN,
    MAX_PREFIX_LEN, MIN_KEY_LEN, MIN_SECRET_LEN, OsRng, ParsedKey, Prefix, PrefixEntry,
    PrefixRegistry, RESEED_EVERY, ServerSecret, key_display_form,
};
pub use manage::{
    AUTO_RENEW, DEFAULT_DERIVATION_LIMITS, DEFAULT_MAX_GRACE, Derivation, EXPIRY_NOTIFIED,
    ExpiryNotice, ExpiryNotifier, Finding, HygieneOptions, HygieneReport, ImportKey, KeyHygiene,
    KeyManager, KeyState, KeySummary, KeyUpdate, PENDING_APPROVAL, Rotation, SweepOptions,
    SweepReport, UsageRecorder,
};
/// The `rand_core` whose [`CryptoRng`](rand_core::CryptoRng)
/// [`Verifier::issue_with_rng`] takes (0.10, the RustCrypto digest 0.11
/// release line's), so callers can name the same version.
pub use rand_core;
pub use store::{
    CachedStore, ChangeFeed, FlushId, FlushOutcome, Invalidate, Invalidation, KeyRecord,
    KeyRecordBuilder, KeyStatus, KeyStore, KeyStoreLifecycle, KeyStoreQuery, KeyStoreWrite,
    KeyView, LegacyInfo, LimitedInsert, LimitedUpdate, MemoryStore, NewKey, Revocation,
    SCHEMA_VERSION, UsageBatch, UsageCounters, UsageDelta, UsageStore,
};
pub use verify::{
    Authenticator, IpNet, KeyPolicies, KeyPolicy, MAX_DERIVATION_DEPTH, MAX_SCOPE_LEN,
    MAX_SCOPES_PER_KEY, MAX_SEGMENTS, PARENT, PolicyRule, PolicyTarget, Requirement, Scope,
    ScopeSet, VerifiedKey, Verifier, ip_allowed,
};
