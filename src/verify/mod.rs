//! Verification: the pure, synchronous [`Verifier`] and the async
//! [`Authenticator`] pipeline around a store, with the rules they check
//! (scopes, IP allowlists).

pub mod authenticator;
pub mod derived;
pub mod ipnet;
pub mod legacy;
pub mod policy;
pub mod scope;
pub mod verifier;

pub use authenticator::{Authenticator, DEFAULT_USAGE_FLUSH_INTERVAL};
pub use derived::{MAX_DERIVATION_DEPTH, PARENT};
pub use ipnet::{IpNet, ip_allowed};
pub use legacy::{MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN};
pub use policy::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget};
pub use scope::{MAX_SCOPE_LEN, MAX_SCOPES_PER_KEY, MAX_SEGMENTS, Requirement, Scope, ScopeSet};
pub use verifier::{VerifiedKey, Verifier};
