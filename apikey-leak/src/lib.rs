//! Leaked-key response for [`apikey`]: when one of your keys turns up in
//! public, revoke it before anyone uses it.
//!
//! * [`GithubEndpoint`]: GitHub's secret-scanning partner endpoint. It
//!   bounds the body, checks GitHub's ECDSA P-256 signature over the raw
//!   bytes with the key named in the request (keys from a [`KeySource`],
//!   cached by a [`KeyCache`]), then hands the matches to a
//!   [`LeakResponder`].
//! * [`PublicRevoke`]: a public endpoint where anyone may post up to 1,000
//!   tokens to have them revoked: unauthenticated, throttled per client
//!   address, and always the same answer whatever the tokens were.
//! * [`LeakResponder`]: checks every token offline first (junk and forged
//!   tokens make no store call, except tokens under a legacy prefix declared
//!   on the manager: one legacy-index lookup),
//!   then the secret of tag-valid ones, applies the [`LeakPolicy`] (revoke,
//!   disable or notify only; publishable keys, public by design, are never
//!   revoked), emits a `leak_reported` audit event and
//!   calls a [`LeakNotifier`]. Idempotent: a retried batch changes nothing
//!   twice.
//!
//! Revocations go through the [`KeyManager`](apikey::KeyManager) and its
//! store, so with a `CachedStore` over a shared database and a change feed
//! (apikey-sqlx's `PgChangeFeed`) they reach every instance.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use apikey::{Keyring, KeyManager, MemoryAuditSink, MemoryStore, NewKey, Actor, ServerSecret, Verifier};
//! use apikey_leak::{LeakResponder, PublicRevoke};
//!
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()));
//! let (key, _) = manager.create(NewKey::new("sk_live_"), &Actor::system()).await?;
//!
//! let responder = Arc::new(LeakResponder::new(manager.clone()));
//! let public = PublicRevoke::new(responder, apikey::limits::MemoryLimits::new());
//! let body = format!(r#"{{"tokens":["{}","not-a-key"]}}"#, key.expose_secret());
//! let answer = public.handle(Some("192.0.2.7".parse()?), body.as_bytes()).await;
//! assert_eq!(answer.status(), 202);
//! assert_eq!(manager.get(key.id()).await?.status, apikey::KeyStatus::Revoked);
//! # Ok(()) }
//! ```
//!
//! Features: `axum` (routers for both endpoints), `fetch`
//! ([`GithubKeySource`]: GitHub's published keys over HTTPS). The
//! enrolment kit (regular expressions, type names, a test key, what to
//! host) is `docs/leak-response.md` in the repository; scanner rules for
//! gitleaks and detect-secrets are in `scanners/`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
pub mod axum;
mod error;
#[cfg(feature = "fetch")]
mod fetch;
mod github;
mod keys;
mod policy;
mod public;
mod report;
mod signature;

pub use error::{KeySourceError, LeakError};
#[cfg(feature = "fetch")]
pub use fetch::{GITHUB_KEYS_URL, GithubKeySource};
pub use github::{DEFAULT_MAX_BODY, DEFAULT_MAX_MATCHES, GITHUB_ACTOR, GithubEndpoint};
pub use keys::{DEFAULT_REFETCH_INTERVAL, KeyCache, KeySource};
pub use policy::{LeakAction, LeakPolicy};
pub use public::{
    ACCEPTED_BODY, DEFAULT_PUBLIC_MAX_BODY, DEFAULT_PUBLIC_QUOTA, MAX_PUBLIC_TOKENS, PUBLIC_ACTOR,
    PublicAnswer, PublicRevoke,
};
pub use report::{
    DEFAULT_DEDUPE_CAPACITY, Feedback, Label, LeakNotice, LeakNotifier, LeakResponder, MAX_URL_LEN,
    NoNotify, Outcome, Report, Summary, token_hash,
};
pub use signature::{KEY_ID_HEADER, MAX_KEY_ID_LEN, PublicKeySet, SIGNATURE_HEADER};
