use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::Timestamp;

use super::stored::{KeyRecord, KeyStatus, LegacyInfo, Revocation};
use crate::error::Result;
use crate::key::KeyDigest;
use crate::key::KeyId;
use crate::key::{Environment, Prefix};
use crate::record::IpNet;
use crate::record::ScopeSet;

/// Builds a [`KeyRecord`] from its columns. Every field of the record has a
/// setter; [`build`](Self::build) checks the record's invariants
/// ([`KeyRecord::validate`]).
///
/// The required parts are the arguments of [`KeyRecord::builder`]; every
/// other field defaults as a freshly issued key has it: no owner, empty
/// name, no description, no scopes, no validity bounds, active, not
/// revoked, never used, no metadata, no rotation links, revision 0, no IP
/// allowlist, zero usage, not imported.
///
/// ```
/// use apikey::{Environment, KeyDigest, KeyId, KeyRecord, KeyStatus, Prefix, ScopeSet};
/// use time::macros::datetime;
///
/// // For example from a database row:
/// let record = KeyRecord::builder(
///     KeyId::from_u64(42),
///     Prefix::new("sk_live_")?,
///     Environment::Live,
///     1,
///     KeyDigest::from_bytes([7; 32]),
///     "2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap(),
/// )
/// .owner(Some("user_42".into()))
/// .name("CI")
/// .scopes(ScopeSet::parse(["tasks:read"])?)
/// .expires_at(Some("2027-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap()))
/// .revision(3)
/// .build()?;
/// assert_eq!(record.status, KeyStatus::Active);
/// assert_eq!(record.owner.as_deref(), Some("user_42"));
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "call `build` to get the record"]
pub struct KeyRecordBuilder {
    record: KeyRecord,
}

impl KeyRecord {
    /// A builder for a record with the given required fields; see
    /// [`KeyRecordBuilder`].
    pub fn builder(
        id: KeyId,
        prefix: Prefix,
        environment: Environment,
        secret_version: u8,
        digest: KeyDigest,
        created_at: Timestamp,
    ) -> KeyRecordBuilder {
        KeyRecordBuilder {
            record: KeyRecord {
                schema_version: KeyRecord::SCHEMA_VERSION,
                id,
                prefix,
                environment,
                owner: None,
                name: String::new(),
                description: None,
                secret_version,
                digest,
                scopes: ScopeSet::default(),
                created_at,
                expires_at: None,
                not_before: None,
                status: KeyStatus::Active,
                revocation: None,
                last_used_at: None,
                last_used_ip: None,
                last_used_route: None,
                metadata: BTreeMap::new(),
                rotated_from: None,
                rotated_to: None,
                revision: 0,
                ip_allowlist: Vec::new(),
                legacy: None,
            },
        }
    }

    /// A builder starting from this record's fields (to change a few).
    pub fn to_builder(&self) -> KeyRecordBuilder {
        KeyRecordBuilder {
            record: self.clone(),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.record.$name = $name;
            self
        }
    )*};
}

impl KeyRecordBuilder {
    setters! {
        /// The public key id.
        id: KeyId,
        /// The key's prefix.
        prefix: Prefix,
        /// The key's environment.
        environment: Environment,
        /// The server secret version the digest was made under.
        secret_version: u8,
        /// The keyed digest.
        digest: KeyDigest,
        /// When the key was made.
        created_at: Timestamp,
        /// Owning user or organisation (`None`: machine-to-machine).
        owner: Option<String>,
        /// Description.
        description: Option<String>,
        /// Granted scopes.
        scopes: ScopeSet,
        /// Exclusive end of validity (`None`: never expires).
        expires_at: Option<Timestamp>,
        /// Inclusive start of validity (`None`: at once).
        not_before: Option<Timestamp>,
        /// Active, disabled or revoked (a revoked record needs a
        /// [`revocation`](Self::revocation)).
        status: KeyStatus,
        /// Why and when the key was revoked.
        revocation: Option<Revocation>,
        /// The last successful verification.
        last_used_at: Option<Timestamp>,
        /// The client address of the last successful verification.
        last_used_ip: Option<IpAddr>,
        /// The route of the last successful verification (method and path).
        last_used_route: Option<String>,
        /// Free-form string metadata.
        metadata: BTreeMap<String, String>,
        /// The key this one replaced by rotation.
        rotated_from: Option<KeyId>,
        /// The key that replaced this one by rotation.
        rotated_to: Option<KeyId>,
        /// The stored revision.
        revision: u64,
        /// Addresses the key may be used from (empty: anywhere).
        ip_allowlist: Vec<IpNet>,
        /// Import information of a legacy key.
        legacy: Option<LegacyInfo>,
    }

    /// Human-readable name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.record.name = name.into();
        self
    }

    /// The record layout version (defaults to [`KeyRecord::SCHEMA_VERSION`]; `build`
    /// refuses others).
    pub fn schema_version(mut self, version: u32) -> Self {
        self.record.schema_version = version;
        self
    }

    /// The record, once its invariants hold.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`](crate::Error::InvalidRecord) naming the broken
    /// invariant (as [`KeyRecord::validate`]).
    pub fn build(self) -> Result<KeyRecord> {
        self.record.validate()?;
        Ok(self.record)
    }

    /// The record as set, without checking its invariants: for tests and
    /// fuzzers that must hand a store a broken record (stores and the
    /// verifier refuse it where it matters). Prefer [`build`](Self::build).
    pub fn build_unvalidated(self) -> KeyRecord {
        self.record
    }
}
