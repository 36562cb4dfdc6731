//! Documents that are not API reference: the key format specification, the benchmark figures, policy
//! and renewal, monitoring and metrics, the error codes, the security policy and the architecture. Each page is a file of the repository, included here so that its
//! links work on docs.rs.

#[doc = include_str!("../docs/key-format.md")]
pub mod key_format {}

#[doc = include_str!("../docs/benchmarks.md")]
pub mod benchmarks {}

#[doc = include_str!("../docs/policy.md")]
pub mod policy {}

#[doc = include_str!("../docs/monitoring.md")]
pub mod monitoring {}

#[doc = include_str!("../docs/metrics.md")]
pub mod metrics {}

#[doc = include_str!("../docs/errors.md")]
pub mod errors {}

#[doc = include_str!("../SECURITY.md")]
pub mod security {}

#[doc = include_str!("../ARCHITECTURE.md")]
pub mod architecture {}
