//! Limits: per-key rate limits (GCRA), credits, and the failure throttle.

pub mod credits;
pub mod ratelimit;
