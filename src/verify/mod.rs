//! Verification: the pure, synchronous [`Verifier`] and the async
//! [`Authenticator`] pipeline around a store, with the rules they check
//! (scopes, IP allowlists).

mod authenticator;
mod derived;
mod ipnet;
mod legacy;
mod policy;
mod scope;
mod verifier;

pub(crate) use authenticator::Auditor;
pub use authenticator::{Authenticator, DEFAULT_USAGE_FLUSH_INTERVAL};
pub(crate) use derived::{Bounds, parent_of_record};
pub use derived::{MAX_DERIVATION_DEPTH, PARENT};
pub use ipnet::{IpNet, ip_allowed};
pub use legacy::{MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN};
pub use policy::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget};
pub use scope::{MAX_SCOPE_LEN, MAX_SCOPES_PER_KEY, MAX_SEGMENTS, Requirement, Scope, ScopeSet};
pub(crate) use verifier::Failure;
pub use verifier::{VerifiedKey, Verifier};
