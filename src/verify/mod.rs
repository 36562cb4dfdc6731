//! Verification: the pure, synchronous [`Verifier`] and the rules it
//! checks (issuance policies, derived keys, imported legacy keys). The
//! async [`Authenticator`](crate::pipeline::Authenticator) around a store
//! is in [`pipeline`](crate::pipeline).

mod derived;
mod legacy;
mod policy;
mod verifier;

pub(crate) use derived::MAX_DERIVATION_DEPTH;
pub(crate) use derived::{Bounds, check_ancestors, parent_of_record, parent_of_view};
pub(crate) use legacy::{
    Legacy, LegacyPrefix, Upgrader, matches as legacy_matches, sha as legacy_sha,
    upgraded as legacy_upgraded,
};
pub use legacy::{MAX_LEGACY_KEY_LEN, MAX_LEGACY_PREFIX_LEN};
pub use policy::{KeyPolicies, KeyPolicy, PolicyRule, PolicyTarget};
pub(crate) use verifier::Failure;
pub use verifier::{VerifiedKey, Verifier};
