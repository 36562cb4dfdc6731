//! Documents that are not API reference: the key format specification, the benchmark figures, the
//! security policy and the architecture. Each page is a file of the repository, included here so that its
//! links work on docs.rs.

#[doc = include_str!("../docs/key-format.md")]
pub mod key_format {}

#[doc = include_str!("../docs/benchmarks.md")]
pub mod benchmarks {}

#[doc = include_str!("../SECURITY.md")]
pub mod security {}

#[doc = include_str!("../ARCHITECTURE.md")]
pub mod architecture {}
