//! What callers hand the manager: [`KeyUpdate`], [`Rotation`] and
//! [`ImportKey`].

use std::collections::BTreeMap;
use std::fmt;

use std::time::Duration;

use crate::Timestamp;
use zeroize::Zeroizing;

use crate::record::IpNet;
use crate::record::NewKey;

/// A partial update (PATCH semantics): only the fields set are changed.
///
/// ```
/// use apikey::KeyUpdate;
/// let patch = KeyUpdate::new().name("CI (rotated)").scopes(["tasks:read"]).expires_at(None);
/// # let _ = patch;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct KeyUpdate {
    /// New name.
    pub name: Option<String>,
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New scopes (validated).
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)`: never expires). Must be in the future.
    pub expires_at: Option<Option<Timestamp>>,
    /// New metadata (replaces the whole map).
    pub metadata: Option<BTreeMap<String, String>>,
    /// Single metadata entries to set (`Some`) or remove (`None`), applied
    /// to the record as it is when the update is written (after
    /// [`metadata`](Self::metadata), if both are given): other entries,
    /// whoever changed them meanwhile, are kept.
    pub metadata_entries: BTreeMap<String, Option<String>>,
    /// New IP allowlist (empty: anywhere).
    pub ip_allowlist: Option<Vec<IpNet>>,
}

impl KeyUpdate {
    /// An update that changes nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sets or clears the description.
    pub fn description(mut self, description: Option<String>) -> Self {
        self.description = Some(description);
        self
    }
    /// Replaces the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }
    /// Sets (extends or shortens) or clears the expiry.
    pub fn expires_at(mut self, at: Option<Timestamp>) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Replaces the metadata.
    pub fn metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = Some(metadata);
        self
    }
    /// Sets (`Some`) or removes (`None`) one metadata entry, leaving the
    /// others as they are at the time of the write (unlike
    /// [`metadata`](Self::metadata), which replaces the map read earlier).
    ///
    /// ```
    /// use apikey::{KeyRecord, KeyUpdate};
    /// let on = KeyUpdate::new().metadata_entry(KeyRecord::AUTO_RENEW, Some("true".into()));
    /// # let _ = on;
    /// ```
    pub fn metadata_entry(mut self, key: impl Into<String>, value: Option<String>) -> Self {
        self.metadata_entries.insert(key.into(), value);
        self
    }
    /// Replaces the IP allowlist.
    pub fn ip_allowlist(mut self, list: Vec<IpNet>) -> Self {
        self.ip_allowlist = Some(list);
        self
    }
}

/// How to rotate a key.
///
/// ```
/// use apikey::Rotation;
/// let r = Rotation::with_grace(std::time::Duration::from_secs(24 * 3_600));
/// # let _ = r;
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Rotation {
    /// How long the old key keeps working (zero: it stops now). Never
    /// extends past the old key's own expiry.
    pub grace: Duration,
    /// Expiry of the new key. `None` (the default): the old key's
    /// lifetime (from its `not_before`, or its creation, to its expiry)
    /// again, counted from the rotation and within the issuance policy's
    /// maximum; no expiry when the old key has none.
    pub expires_at: Option<Timestamp>,
    /// The latest expiry the new key may get, whatever the old key's
    /// lifetime or [`expires_at`](Self::expires_at) says (a bounded caller's
    /// own expiry); a key without expiry then gets this one.
    pub no_later_than: Option<Timestamp>,
}

impl Rotation {
    /// The default of
    /// [`KeyManager::with_max_grace`](crate::KeyManager::with_max_grace): 7
    /// days.
    pub const DEFAULT_MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

    /// A rotation whose old key works for `grace` more.
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            grace,
            expires_at: None,
            no_later_than: None,
        }
    }

    /// Caps the new key's expiry at `at` (see [`no_later_than`](Self#structfield.no_later_than)).
    pub fn no_later_than(mut self, at: Timestamp) -> Self {
        self.no_later_than = Some(at);
        self
    }

    /// Sets the new key's expiry.
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = Some(at);
        self
    }
}

pub(super) enum LegacySecret {
    Plaintext(Zeroizing<String>),
    Sha256 {
        prefix: String,
        digest: Zeroizing<[u8; 32]>,
    },
}

/// A key from another system to import (see [`KeyManager::import`](crate::KeyManager::import)).
///
/// ```
/// use apikey::ImportKey;
/// let plain = ImportKey::plaintext("oldco_3f9a8b7c6d5e4f30").owner("user_1").scopes(["read"]);
/// let hashed = ImportKey::sha256("oldco_", [0u8; 32]).owner("user_2");
/// assert!(!format!("{plain:?}").contains("3f9a8b"));
/// # let _ = hashed;
/// ```
pub struct ImportKey {
    pub(super) secret: LegacySecret,
    pub(super) new: NewKey,
}

impl fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let form = match &self.secret {
            LegacySecret::Plaintext(_) => "plaintext",
            LegacySecret::Sha256 { .. } => "sha256",
        };
        f.debug_struct("ImportKey")
            .field("form", &form)
            .field("owner", &self.new.owner)
            .field("name", &self.new.name)
            .finish_non_exhaustive()
    }
}

impl ImportKey {
    /// A legacy key given in full. It must start with a declared legacy
    /// prefix ([`KeyManager::with_legacy_prefix`](crate::KeyManager::with_legacy_prefix)).
    pub fn plaintext(key: impl Into<String>) -> Self {
        Self {
            secret: LegacySecret::Plaintext(Zeroizing::new(key.into())),
            new: NewKey::default(),
        }
    }

    /// A legacy key known only by the SHA-256 digest of its full text, under
    /// the declared legacy prefix `prefix`.
    pub fn sha256(prefix: impl Into<String>, digest: [u8; 32]) -> Self {
        Self {
            secret: LegacySecret::Sha256 {
                prefix: prefix.into(),
                digest: Zeroizing::new(digest),
            },
            new: NewKey::default(),
        }
    }

    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.new = self.new.owner(owner);
        self
    }
    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.new = self.new.name(name);
        self
    }
    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.new = self.new.description(description);
        self
    }
    /// Sets the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.new = self.new.scopes(scopes);
        self
    }
    /// Sets the expiry.
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.new = self.new.expires_at(at);
        self
    }
    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.new = self.new.metadata(key, value);
        self
    }
    /// Adds an IP allowlist range.
    pub fn allow_ip(mut self, net: IpNet) -> Self {
        self.new = self.new.allow_ip(net);
        self
    }
}
