//! Issue, store, verify and manage API keys: Stripe-style typed keys (`sk_live_…`, `sk_test_…`, `kwi_sk_…` or
//! your own prefix) drawn from a CSPRNG and shown once, stored only as a keyed HMAC-SHA256 digest, verified in
//! constant time on an allocation-free hot path, behind a pluggable async store.
//!
//! # A first look
//!
//! ```
//! use apikey::{Authenticator, Keyring, MemoryStore, NewKey, Requirement, ServerSecret, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), apikey::Error> {
//! // Load the server secret from your secret manager (`ServerSecret::from_base64`).
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::generate())?);
//! let store = MemoryStore::new();
//!
//! // Issue: the key is returned once; the record (digest only) is stored.
//! let (key, record) = verifier.issue(
//!     NewKey::new("kwi_sk_").owner("user_42").name("CI").scopes(["tasks:read"]),
//!     apikey::Clock::now(&apikey::SystemClock),
//! )?;
//! store.insert_sync(record)?;
//!
//! // Verify on every request.
//! let auth = Authenticator::new(verifier, store);
//! let who = auth.authenticate(key.expose_secret(), &Requirement::scope("tasks:read")?, None).await?;
//! assert_eq!(who.owner(), Some("user_42"));
//! # Ok(()) }
//! ```
//!
//! # The types
//!
//! | type | what it is |
//! |---|---|
//! | [`Verifier`] | The pure, synchronous core: server secrets, prefixes and policy; `issue`, `parse`, `verify`. No I/O, no clock. |
//! | [`Authenticator`] | The one async pipeline: parse → throttle → store fetch → verify → usage → audit, with an injectable [`Clock`]. |
//! | [`ApiKey`] | The full key, returned once. Prints as `kwi_sk_aBcDe...`; read with `expose_secret()`; zeroized on drop. |
//! | [`KeyRecord`] / [`KeyView`] | What is stored (serde, no secret) / the compact shared form the hot path reads. |
//! | [`KeyStore`] and its siblings | Pluggable async storage; [`MemoryStore`] is the default, [`CachedStore`] a cache in front of any store. |
//! | [`Scope`] / [`ScopeSet`] / [`Requirement`] | Permission grammar and checks. |
//! | [`ServerSecret`] / [`Keyring`] | Versioned server secrets (peppers), rotatable. |
//! | [`KeyManager`] | The management side: create, list, update, disable, revoke, rotate, limits, usage, audit. |
//! | [`web::Gate`] | The web edge: header extraction, authentication, rate limits and credits ([`limits`]), JSON errors; a tower layer and axum extractors with the feature `axum`. |
//! | [`Error`] | One error enum; [`Error::code`] is a stable machine code with its HTTP status. |
//!
//! # Companion crates
//!
//! `apikey-sqlx` (SQLite and PostgreSQL stores and the PostgreSQL change feed), `apikey-redis` (limits shared by
//! every instance), `apikey-axum` (the management REST API and the self-service keys page), `apikey-cli` (the
//! `apikey` command), `apikey-testkit` (the store conformance suite and fuzz oracles).
//!
//! # Documents
//!
//! - [The key format](_documentation::key_format): the specification and the scanner regular expression.
//! - [Benchmarks](_documentation::benchmarks): every figure with its command and target.
//! - [Policy, renewal, derived and publishable keys](_documentation::policy).
//! - [Monitoring](_documentation::monitoring) and [metrics](_documentation::metrics): seed 001's alerts, every metric.
//! - [Errors](_documentation::errors): every stable code and its HTTP status.
//! - [Security](_documentation::security): threat model, evidence, reporting a vulnerability.
//! - [Architecture](_documentation::architecture): the pipeline and one paragraph per folder.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | `Extractor::extract_header_map`, `ErrorResponse::into_http` (dependency: `http`) |
//! | `axum` | `web::ApiKeyLayer`, the `VerifiedKey` / `Admitted` extractors, `ClientIp` (implies `http`; axum-core, tower, tokio's timer; no server stack) |
//! | `tracing` | `TracingSink`: audit events as `tracing` events |
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// One folder per concept; see ARCHITECTURE.md.
mod clock;
mod environment;
mod error;
pub mod key;
pub mod limits;
pub mod manage;
mod metrics;
pub mod pipeline;
pub mod record;
pub mod store;
mod sync;
mod timestamp;
mod trace;
pub mod verify;
pub mod web;

#[doc(hidden)]
pub mod __private;

// The README's examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub mod _documentation;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Challenge, Error, ErrorCode, MalformedReason, Result, StoreError, StoreErrorKind};
pub use key::{
    ApiKey, Environment, Environments, KeyDigest, KeyId, KeyRng, Keyring, OsRng, ParsedKey, Prefix,
    PrefixEntry, PrefixRegistry, ServerSecret,
};
pub use manage::{
    Derivation, ExpiryNotice, ExpiryNotifier, Finding, HygieneOptions, HygieneReport, ImportKey,
    KeyHygiene, KeyManager, KeyState, KeySummary, KeyUpdate, Rotation, SweepOptions, SweepReport,
};
#[cfg(feature = "tracing")]
pub use pipeline::TracingSink;
pub use pipeline::{
    Actor, AuditEvent, AuditKind, AuditSink, Authenticator, MemoryAuditSink, NoAudit, UsageRecorder,
};
/// The `rand_core` whose [`CryptoRng`](rand_core::CryptoRng)
/// [`Verifier::issue_with_rng`] takes (0.10, the RustCrypto digest 0.11
/// release line's), so callers can name the same version.
pub use rand_core;
pub use record::{
    IpNet, KeyRecord, KeyRecordBuilder, KeyStatus, KeyView, LegacyInfo, NewKey, Requirement,
    Revocation, Scope, ScopeSet, UsageCounters,
};
pub use store::{
    CachedStore, ChangeFeed, Changes, Cursor, Delete, FlushId, FlushOutcome, Invalidate,
    Invalidation, KeyFilter, KeyQuery, KeyStore, KeyStoreQuery, KeyStoreWrite, Listing,
    MemoryStore, OwnerGuard, Put, UsageBatch, UsageDelta, UsageStore,
};
pub use timestamp::{Timestamp, TimestampError};
pub use verify::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget, VerifiedKey, Verifier};
