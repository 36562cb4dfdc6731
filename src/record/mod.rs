//! The record vocabulary: what a store holds and the verifier reads. The
//! full [`KeyRecord`] and the compact [`KeyView`], the [`NewKey`] request
//! and the [`KeyRecordBuilder`], the permission grammar ([`Scope`],
//! [`ScopeSet`], [`Requirement`]), IP ranges ([`IpNet`]) and the reserved
//! metadata entries the record reads ([`KeyRecord::PARENT`](crate::KeyRecord::PARENT)).
//!
//! This folder is the floor under [`store`](crate::store),
//! [`verify`](crate::verify) and everything above them: it imports only
//! errors, keys and the clock.

mod builder;
mod ipnet;
mod scope;
mod stored;

pub use builder::KeyRecordBuilder;
pub use ipnet::IpNet;
pub(crate) use ipnet::ip_allowed;
pub use scope::{Requirement, Scope, ScopeSet};
#[cfg(test)]
pub(crate) use stored::Extra;
pub(crate) use stored::{HAS_PARENT, LastUse, Owner, auto_renews_in, limits_account_in};
pub use stored::{KeyRecord, KeyStatus, KeyView, LegacyInfo, NewKey, Revocation, UsageCounters};
