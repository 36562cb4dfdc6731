//! Stored records: the full [`KeyRecord`] and the compact [`KeyView`] that
//! the verify hot path reads.
//!
//! A record never holds a key's secret: only its keyed [`KeyDigest`]. Records
//! serialize with serde (times in RFC 3339, the digest in base64, a
//! `schema_version` field) so applications can keep them in their own
//! database for years and read them back.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::digest::KeyDigest;
use crate::error::{Error, Result};
use crate::key::{KeyId, key_display_form};
use crate::prefix::{Environment, Prefix};
use crate::scope::ScopeSet;

/// The record layout version written by this crate.
pub const SCHEMA_VERSION: u32 = 1;

/// Whether a key may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable (subject to its validity window).
    Active,
    /// Switched off; can be enabled again.
    Disabled,
    /// Revoked for good.
    Revoked,
}

/// Why and when a key was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The reason the caller gave.
    pub reason: String,
}

/// Everything stored about one key. No secret is in it.
///
/// Build one with [`Verifier::issue`](crate::Verifier::issue); read and
/// write it with serde:
///
/// ```
/// # use apikey::{Keyring, ServerSecret, Verifier, NewKey, KeyRecord};
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_live_").name("CI"), time::OffsetDateTime::UNIX_EPOCH)?;
/// let json = serde_json::to_string(&record).expect("serializes");
/// assert!(json.contains("\"schema_version\":1"));
/// assert!(json.contains("\"created_at\":\"1970-01-01T00:00:00Z\""));
/// let back: KeyRecord = serde_json::from_str(&json).expect("reads back");
/// assert_eq!(back, record);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Layout version; this crate writes [`SCHEMA_VERSION`] and refuses others.
    #[serde(deserialize_with = "schema_version")]
    pub schema_version: u32,
    /// Public key id.
    pub id: KeyId,
    /// The key's prefix.
    pub prefix: Prefix,
    /// The key's environment (follows from the prefix at issue time).
    pub environment: Environment,
    /// Owning user or organisation; `None` for machine-to-machine keys.
    #[serde(default)]
    pub owner: Option<String>,
    /// Human-readable name ("Python scripts").
    #[serde(default)]
    pub name: String,
    /// Longer description.
    #[serde(default)]
    pub description: Option<String>,
    /// Server secret version the digest was made under.
    pub secret_version: u8,
    /// Keyed digest of the key.
    pub digest: KeyDigest,
    /// Granted scopes.
    #[serde(default)]
    pub scopes: ScopeSet,
    /// When the key was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the key stops being valid (exclusive); `None`: never.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// When the key starts being valid (inclusive); `None`: at once.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// Active, disabled or revoked.
    pub status: KeyStatus,
    /// Set when revoked.
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// Last successful verification (updated in batches, see the lifecycle docs).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// Free-form string metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The key this one replaced by rotation.
    #[serde(default)]
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one by rotation.
    #[serde(default)]
    pub rotated_to: Option<KeyId>,
}

fn schema_version<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == SCHEMA_VERSION {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format_args!(
            "unsupported key record schema_version {v} (this crate reads {SCHEMA_VERSION})"
        )))
    }
}

impl KeyRecord {
    /// The display form of the key (`kwi_sk_aBcDe...`).
    pub fn display_form(&self) -> String {
        key_display_form(self.prefix.as_str(), self.id)
    }

    /// Whether the key is usable at `now` by status and validity window
    /// (not counting leeway).
    pub fn is_usable_at(&self, now: OffsetDateTime) -> bool {
        self.status == KeyStatus::Active
            && self.not_before.is_none_or(|nb| nb <= now)
            && self.expires_at.is_none_or(|exp| now < exp)
    }

    /// Checks the record's own invariants (used when records come from
    /// outside: deserialized or inserted by a custom store).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] naming the broken invariant.
    pub fn validate(&self) -> Result<()> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::InvalidRecord("unsupported schema_version".into()));
        }
        if let (Some(nb), Some(exp)) = (self.not_before, self.expires_at)
            && exp <= nb
        {
            return Err(Error::InvalidRecord(
                "expires_at must be after not_before".into(),
            ));
        }
        if (self.status == KeyStatus::Revoked) != self.revocation.is_some() {
            return Err(Error::InvalidRecord(
                "a revoked key, and only a revoked key, has a revocation".into(),
            ));
        }
        if self.secret_version == 0 || self.secret_version > crate::secret::MAX_VERSION {
            return Err(Error::InvalidRecord("secret_version out of range".into()));
        }
        Ok(())
    }
}

/// Nanoseconds since the Unix epoch, saturated to `i64` (years 1678-2262;
/// later expiries mean "never" in practice, earlier not-befores "always").
#[inline]
pub(crate) fn unix_nanos(t: OffsetDateTime) -> i64 {
    let n = t.unix_timestamp_nanos();
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The compact, shared form of a record that verification reads.
///
/// Stores hand the verifier an `Arc<KeyView>`: no clone of names,
/// descriptions or other cold fields on the hot path.
///
/// ```
/// # use apikey::{Keyring, ServerSecret, Verifier, NewKey, KeyView};
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_test_"), time::OffsetDateTime::UNIX_EPOCH)?;
/// let view = KeyView::from_record(&record);
/// assert_eq!(view.id(), record.id);
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    pub(crate) id: KeyId,
    pub(crate) digest: KeyDigest,
    pub(crate) secret_version: u8,
    pub(crate) status: KeyStatus,
    pub(crate) environment: Environment,
    /// Inclusive start, Unix nanos; `i64::MIN` when unset.
    pub(crate) not_before: i64,
    /// Exclusive end, Unix nanos; `i64::MAX` when unset.
    pub(crate) expires_at: i64,
    pub(crate) owner: Option<Arc<str>>,
    pub(crate) scopes: ScopeSet,
    pub(crate) metadata: Option<Arc<BTreeMap<String, String>>>,
}

impl KeyView {
    /// The hot-path view of `record`.
    pub fn from_record(record: &KeyRecord) -> Self {
        Self::from_record_with(record, record.owner.as_deref().map(Arc::from))
    }

    /// Like [`from_record`](Self::from_record) with an owner string the
    /// store already shares (interned), to save memory.
    pub fn from_record_with(record: &KeyRecord, owner: Option<Arc<str>>) -> Self {
        Self {
            id: record.id,
            digest: record.digest,
            secret_version: record.secret_version,
            status: record.status,
            environment: record.environment,
            not_before: record.not_before.map_or(i64::MIN, unix_nanos),
            expires_at: record.expires_at.map_or(i64::MAX, unix_nanos),
            owner,
            scopes: record.scopes.clone(),
            metadata: if record.metadata.is_empty() {
                None
            } else {
                Some(Arc::new(record.metadata.clone()))
            },
        }
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The status.
    pub fn status(&self) -> KeyStatus {
        self.status
    }

    /// The environment.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The owner.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// The metadata (empty when none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.as_deref().unwrap_or(&EMPTY)
    }

    /// Expiry, if any.
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        from_nanos(self.expires_at, i64::MAX)
    }

    /// Not-before, if any.
    pub fn not_before(&self) -> Option<OffsetDateTime> {
        from_nanos(self.not_before, i64::MIN)
    }
}

fn from_nanos(n: i64, unset: i64) -> Option<OffsetDateTime> {
    if n == unset {
        None
    } else {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).ok()
    }
}

/// What to issue: prefix, owner, name, scopes, validity and metadata.
///
/// ```
/// use apikey::NewKey;
/// let new = NewKey::new("kwi_sk_")
///     .owner("user_42")
///     .name("Python scripts")
///     .scopes(["tasks:read", "projects:*"])
///     .metadata("team", "seo");
/// # let _ = new;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct NewKey {
    /// Prefix (must be registered with the verifier).
    pub prefix: String,
    /// Owner; `None` for machine-to-machine keys.
    pub owner: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Scopes, validated at issue time.
    pub scopes: Vec<String>,
    /// Expiry (exclusive).
    pub expires_at: Option<OffsetDateTime>,
    /// Start of validity (inclusive).
    pub not_before: Option<OffsetDateTime>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
}

impl NewKey {
    /// A key with `prefix` and nothing else set.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ..Self::default()
        }
    }
    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }
    /// Sets the scopes (validated when the key is issued).
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the expiry.
    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets the start of validity.
    pub fn not_before(mut self, at: OffsetDateTime) -> Self {
        self.not_before = Some(at);
        self
    }
    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}
