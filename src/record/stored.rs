use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, OnceLock};

use crate::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::key::KeyDigest;
use crate::key::{Environment, Prefix};
use crate::key::{KeyId, key_display_form};
use crate::record::IpNet;
use crate::record::ScopeSet;

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
    pub at: Timestamp,
    /// The reason the caller gave.
    pub reason: String,
}

/// Stored records: the full [`KeyRecord`] and the compact [`KeyView`] that
/// the verify hot path reads.
///
/// A record never holds a key's secret: only its keyed [`KeyDigest`]. Records
/// serialize with serde (times in RFC 3339, the digest in base64, a
/// `schema_version` field) so applications can keep them in their own
/// database for years and read them back.
///
/// Everything stored about one key. No secret is in it.
///
/// Build one with [`Verifier::issue`](crate::Verifier::issue); read and
/// write it with serde:
///
/// ```
/// # use apikey::{Keyring, ServerSecret, Verifier, NewKey, KeyRecord};
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_live_").name("CI"), apikey::Timestamp::MIN)?;
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
    /// Layout version; this crate writes [`KeyRecord::SCHEMA_VERSION`] and refuses others.
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
    pub created_at: Timestamp,
    /// When the key stops being valid (exclusive); `None`: never.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// When the key starts being valid (inclusive); `None`: at once.
    #[serde(default)]
    pub not_before: Option<Timestamp>,
    /// Active, disabled or revoked.
    pub status: KeyStatus,
    /// Set when revoked.
    #[serde(default)]
    pub revocation: Option<Revocation>,
    /// Last successful verification (updated in batches, see the lifecycle docs).
    #[serde(default)]
    pub last_used_at: Option<Timestamp>,
    /// The client address of the last successful verification, when the
    /// verification knew it (flushed with usage, like `last_used_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ip: Option<IpAddr>,
    /// The route of the last successful verification, when it came through
    /// the web edge (flushed with usage, like `last_used_at`): method and
    /// path in a normal form that holds no key: no query, and every path
    /// segment that is not a short word (a number, a key, anything over 24
    /// characters) as `*` (`"GET /v1/items/*"`; a short id with a letter,
    /// such as a key id, is kept); ASCII, at most 200 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_route: Option<String>,
    /// Free-form string metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The key this one replaced by rotation.
    #[serde(default)]
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one by rotation.
    #[serde(default)]
    pub rotated_to: Option<KeyId>,
    /// Counts changes to the record. Stores set it on every write except
    /// usage flushes (see [`KeyStoreWrite::commit`](crate::store::KeyStoreWrite::commit)),
    /// which compares it.
    #[serde(default)]
    pub revision: u64,
    /// Addresses the key may be used from; empty: anywhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<IpNet>,
    /// Set for keys imported from another system (see [`KeyManager::import`](crate::KeyManager::import)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyInfo>,
}

/// Usage totals of one key, derived by the crate from the additive per-day
/// rows of [`UsageStore::usage`](crate::UsageStore::usage): no store holds
/// month-rollover logic.
///
/// ```
/// use apikey::UsageCounters;
/// use time::macros::date;
/// let rows = [(date!(2026-02-27), 9), (date!(2026-03-30), 5), (date!(2026-03-31), 2)];
/// let u = UsageCounters::from_days(date!(2026-03-31), &rows);
/// assert_eq!((u.today, u.this_month), (2, 7));
/// assert_eq!(UsageCounters::window(date!(2026-03-31)), date!(2026-03-01)..date!(2026-04-01));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsageCounters {
    /// Successful verifications on the UTC day `today`.
    pub today: u64,
    /// Successful verifications in the month of `today`, up to and with it.
    pub this_month: u64,
}

impl UsageCounters {
    /// The days to read for `today`'s totals: the first of its month up to
    /// and including `today`.
    pub fn window(today: time::Date) -> std::ops::Range<time::Date> {
        let first = today.replace_day(1).unwrap_or(today);
        first..today.next_day().unwrap_or(today)
    }

    /// The totals of `rows` (`(day, count)`, any order, any days) as of the
    /// UTC day `today`: days after `today` are not counted.
    pub fn from_days(today: time::Date, rows: &[(time::Date, u64)]) -> Self {
        let month = Self::window(today);
        let mut u = Self::default();
        for &(day, n) in rows {
            if day == today {
                u.today = u.today.saturating_add(n);
            }
            if day >= month.start && day <= today {
                u.this_month = u.this_month.saturating_add(n);
            }
        }
        u
    }
}

/// How an imported legacy key is found and checked.
///
/// The key is found through `index`: HMAC-SHA256, under a key derived from
/// server secret version `index_version`, of the SHA-256 digest of the whole
/// legacy key text. Until the key's first successful verification,
/// `upgraded` is false and the index is the only check; from then on the
/// record's `digest` holds the keyed digest of the whole key under the
/// current secret version and is compared too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LegacyInfo {
    /// The legacy prefix the key was imported under (public).
    pub prefix: String,
    /// Keyed hash of the key's SHA-256 digest; stores index it.
    pub index: KeyDigest,
    /// Server secret version the index key came from.
    pub index_version: u8,
    /// Whether `digest` holds the current keyed digest of the key.
    #[serde(default)]
    pub upgraded: bool,
}

impl LegacyInfo {
    /// Index information for a legacy key.
    pub fn new(
        prefix: impl Into<String>,
        index: KeyDigest,
        index_version: u8,
        upgraded: bool,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            index,
            index_version,
            upgraded,
        }
    }
}

fn schema_version<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == KeyRecord::SCHEMA_VERSION {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format_args!(
            "unsupported key record schema_version {v} (this crate reads {})",
            KeyRecord::SCHEMA_VERSION
        )))
    }
}

impl KeyRecord {
    /// Takes `stored`'s last use (`last_used_at`, `last_used_ip`,
    /// `last_used_route`): what a replacing write keeps, since the usage
    /// flush owns those fields ([`KeyStoreWrite::commit`](crate::store::KeyStoreWrite::commit)).
    pub fn keep_last_use(&mut self, stored: &KeyRecord) {
        self.last_used_at = stored.last_used_at;
        self.last_used_ip = stored.last_used_ip;
        self.last_used_route.clone_from(&stored.last_used_route);
    }

    /// The record layout version written by this crate.
    pub const SCHEMA_VERSION: u32 = 1;

    /// Reserved metadata entry: a derived key's parent id. Only
    /// [`KeyManager::derive`](crate::KeyManager::derive) sets it; a child
    /// never verifies once its parent is revoked, disabled, expired or
    /// deleted (chains up to [`Derivation::MAX_DEPTH`](crate::Derivation::MAX_DEPTH)).
    pub const PARENT: &'static str = "apikey.parent";

    /// Reserved metadata entry: the id of the key whose rate-limit windows
    /// and key credit balance this key uses (its limits account, see
    /// [`limits_account`](Self::limits_account)). Only the crate sets it:
    /// [`KeyManager::rotate`](crate::KeyManager::rotate) gives the
    /// successor its predecessor's account (both keys spend one balance
    /// through the grace period, and the successor keeps it after), and
    /// [`KeyManager::derive`](crate::KeyManager::derive) gives a child
    /// without a budget of its own its parent's. A caller's metadata may
    /// not carry it.
    pub const LIMITS_OF: &'static str = "apikey.limits_of";

    /// Reserved metadata entry (`"true"`) that marks a key for auto-renewal
    /// by [`KeyManager::sweep_once`](crate::KeyManager::sweep_once).
    pub const AUTO_RENEW: &'static str = "apikey.auto_renew";

    /// Reserved metadata entry the sweep writes: the expiry (RFC 3339) an
    /// expiry notice was sent for.
    pub const EXPIRY_NOTIFIED: &'static str = "apikey.expiry_notified";

    /// Reserved metadata entry (`"true"`) on a key born disabled because a
    /// [`KeyPolicy`](crate::KeyPolicy) requires approval;
    /// [`KeyManager::enable`](crate::KeyManager::enable) removes it.
    pub const PENDING_APPROVAL: &'static str = "apikey.pending_approval";

    /// The key whose rate-limit windows and key credit balance
    /// ([`CreditAccount::Key`](crate::limits::CreditAccount::Key)) this key
    /// uses: its own id, or the one its [`LIMITS_OF`](Self::LIMITS_OF)
    /// entry names (a rotated key's successor, a derived key without a
    /// budget). `None` when that entry is unreadable: the gate then refuses
    /// the key's requests (503), never admits them unmetered.
    ///
    /// ```
    /// use apikey::{KeyRecord, Keyring, NewKey, ServerSecret, Timestamp, Verifier};
    /// let v = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[1; 32])?)?);
    /// let (_, record) = v.issue(NewKey::new("sk_live_"), Timestamp::from_unix_secs(1_767_225_600)?)?;
    /// assert_eq!(record.limits_account(), Some(record.id));
    /// # Ok::<(), apikey::Error>(())
    /// ```
    pub fn limits_account(&self) -> Option<KeyId> {
        limits_account_in(self.id, &self.metadata)
    }

    /// Whether the key is marked for auto-renewal ([`AUTO_RENEW`](Self::AUTO_RENEW)
    /// is `"true"`).
    pub fn auto_renews(&self) -> bool {
        auto_renews_in(&self.metadata)
    }

    /// [`limits_account`](Self::limits_account) for the manager, which
    /// copies it into a new key: an unreadable entry is
    /// [`Error::InvalidRecord`].
    pub(crate) fn readable_limits_account(&self) -> Result<KeyId> {
        self.limits_account()
            .ok_or_else(|| Error::InvalidRecord("unreadable limits account".into()))
    }

    /// The display form of the key (`kwi_sk_aBcDe...`). Imported legacy
    /// keys show their legacy prefix and `...` only (their text has no id).
    pub fn display_form(&self) -> String {
        match &self.legacy {
            Some(l) => format!("{}...", l.prefix),
            None => key_display_form(self.prefix.as_str(), self.id),
        }
    }

    /// Whether this is a publishable key ([`Prefix::is_publishable`]): public
    /// by design, so never auto-revoked by a leak report.
    pub fn is_publishable(&self) -> bool {
        self.prefix.is_publishable()
    }

    /// Whether the record counts toward its owner's limit of active keys at
    /// `now`: not revoked, not expired, and not in a rotation grace period
    /// (`rotated_to` unset). Disabled keys count.
    ///
    /// The one statement of the rule: [`KeyManager`](crate::KeyManager)
    /// plans the owner limit with it; no store evaluates it.
    pub fn counts_toward_limit(&self, now: Timestamp) -> bool {
        self.status != KeyStatus::Revoked
            && self.expires_at.is_none_or(|exp| now < exp)
            && self.rotated_to.is_none()
    }

    /// Whether the key is usable at `now` by status and validity window
    /// (not counting leeway).
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.status == KeyStatus::Active
            && self.not_before.is_none_or(|nb| nb <= now)
            && self.expires_at.is_none_or(|exp| now < exp)
    }

    /// Checks the record's own invariants (used when records come from
    /// outside: deserialized or inserted by a custom store). Times need no
    /// check: a [`Timestamp`] is always in the supported range.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] naming the broken invariant.
    pub fn validate(&self) -> Result<()> {
        if self.schema_version != KeyRecord::SCHEMA_VERSION {
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
        if self.secret_version == 0 || self.secret_version > crate::key::MAX_VERSION {
            return Err(Error::InvalidRecord("secret_version out of range".into()));
        }
        if let Some(l) = &self.legacy
            && (l.index_version == 0 || l.index_version > crate::key::MAX_VERSION)
        {
            return Err(Error::InvalidRecord(
                "legacy index_version out of range".into(),
            ));
        }
        Ok(())
    }
}

/// The compact, shared form of a record that verification reads.
///
/// Stores hand the verifier an `Arc<KeyView>`: no clone of names,
/// descriptions or other cold fields on the hot path. A view also carries
/// everything else of its record (rarely set fields in one boxed side
/// struct), so a store can keep views only and rebuild the exact record.
///
/// ```
/// # use apikey::{Keyring, ServerSecret, Verifier, NewKey, KeyView};
/// # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[9; 32])?)?);
/// let (_key, record) = verifier.issue(NewKey::new("sk_test_"), apikey::Timestamp::MIN)?;
/// let view = KeyView::from_record(&record);
/// assert_eq!(view.id(), record.id);
/// # Ok::<(), apikey::Error>(())
/// ```
// Field order is the memory order (`repr(C)`): what `verify` reads first,
// next to the `Arc` counts a fetch touches. 104 bytes with an owner id of
// up to 22 bytes inline, so an `Arc<KeyView>` is a 120-byte allocation (a
// 128-byte malloc chunk) and a key costs no separate owner allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct KeyView {
    pub(crate) digest: KeyDigest,
    pub(crate) id: KeyId,
    /// Exclusive end, Unix microseconds; `i64::MAX` when unset (above
    /// every [`Timestamp`], so "never" compares as later than any `now`).
    pub(crate) expires_at: i64,
    pub(crate) scopes: Arc<ScopeSet>,
    pub(crate) secret_version: u8,
    pub(crate) status: KeyStatus,
    pub(crate) environment: Environment,
    /// [`HAS_NOT_BEFORE`] and [`HAS_IP_ALLOWLIST`]: whether verification
    /// must look into the cold fields.
    pub(crate) flags: u8,
    /// Index + 1 into the process-wide prefix table; 0: the prefix is in
    /// the cold fields.
    pub(crate) prefix: u8,
    /// Revision, usage and rarely set fields; `None` while all are at their
    /// defaults.
    pub(crate) extra: Option<Box<Extra>>,
    /// Creation time.
    pub(crate) created_at: Timestamp,
    pub(crate) owner: Option<Owner>,
}

/// Longest owner id a view keeps inline.
pub(crate) const INLINE_OWNER: usize = 22;

/// An owner id as a view keeps it: up to [`INLINE_OWNER`] bytes inline (no
/// allocation; user ids such as `user_12345678` fit), longer ones in a
/// shared `Arc<str>` (a store interns those). Which form follows from the
/// length alone, so equal owners have equal forms.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Length and bytes (valid UTF-8, zero after the length).
    Inline(u8, [u8; INLINE_OWNER]),
    Shared(Arc<str>),
}

impl Owner {
    /// `owner` in its form: inline when it fits, else a new `Arc`.
    pub(crate) fn new(owner: &str) -> Self {
        Self::inline(owner).unwrap_or_else(|| Self::Shared(Arc::from(owner)))
    }

    /// `owner` inline, when it fits.
    pub(crate) fn inline(owner: &str) -> Option<Self> {
        let b = owner.as_bytes();
        (b.len() <= INLINE_OWNER).then(|| {
            let mut bytes = [0u8; INLINE_OWNER];
            bytes[..b.len()].copy_from_slice(b);
            Self::Inline(b.len() as u8, bytes)
        })
    }

    /// The id.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` of this length: always valid.
            Self::Inline(len, bytes) => {
                std::str::from_utf8(&bytes[..usize::from(*len).min(INLINE_OWNER)]).unwrap_or("")
            }
            Self::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for Owner {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `KeyView::flags`: a not-before is set.
pub(crate) const HAS_NOT_BEFORE: u8 = 1;
/// `KeyView::flags`: an IP allowlist is set.
pub(crate) const HAS_IP_ALLOWLIST: u8 = 2;
/// `KeyView::flags`: a derived key (its metadata names a parent).
pub(crate) const HAS_PARENT: u8 = 4;
/// The limits account of key `id` with `metadata`: its own id, or the one
/// [`KeyRecord::LIMITS_OF`] names (`None`: unreadable). The one reading of
/// the entry, for records and views alike.
/// [`KeyRecord::auto_renews`], on any metadata map (a record's, a
/// summary's).
pub(crate) fn auto_renews_in(metadata: &BTreeMap<String, String>) -> bool {
    metadata
        .get(KeyRecord::AUTO_RENEW)
        .is_some_and(|v| v == "true")
}

/// [`KeyRecord::limits_account`], on any metadata map (a record's, a
/// view's, a summary's).
pub(crate) fn limits_account_in(id: KeyId, metadata: &BTreeMap<String, String>) -> Option<KeyId> {
    match metadata.get(KeyRecord::LIMITS_OF) {
        None => Some(id),
        Some(text) => text.parse().ok(),
    }
}

/// `KeyView::flags`: the key uses another key's limits account
/// ([`KeyRecord::LIMITS_OF`]).
pub(crate) const HAS_LIMITS_OF: u8 = 8;

/// Fields of a record that change with writes and usage flushes, and the
/// rarely set ones (boxed again, so a used key costs 56 bytes here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    pub(crate) revision: u64,
    pub(crate) last_used_at: Option<Timestamp>,
    /// Where the last use came from, when known (boxed: most views of a
    /// used key pay 8 bytes for it).
    pub(crate) last_use: Option<Box<LastUse>>,
    pub(crate) cold: Option<Box<ColdFields>>,
}

/// The address and route of a record's last use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LastUse {
    pub(crate) ip: Option<IpAddr>,
    pub(crate) route: Option<Box<str>>,
}

impl LastUse {
    /// `None` when neither is known.
    pub(crate) fn of(ip: Option<IpAddr>, route: Option<&str>) -> Option<Box<Self>> {
        (ip.is_some() || route.is_some()).then(|| {
            Box::new(Self {
                ip,
                route: route.map(Box::from),
            })
        })
    }
}

/// Rarely set fields of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ColdFields {
    /// Inclusive start.
    pub(crate) not_before: Option<Timestamp>,
    pub(crate) ip_allowlist: Option<Arc<[IpNet]>>,
    pub(crate) metadata: Option<Arc<BTreeMap<String, String>>>,
    pub(crate) name: Box<str>,
    pub(crate) description: Option<Box<str>>,
    pub(crate) revocation: Option<Box<Revocation>>,
    pub(crate) rotated_from: Option<KeyId>,
    pub(crate) rotated_to: Option<KeyId>,
    pub(crate) legacy: Option<Box<LegacyInfo>>,
    /// The prefix, when the process-wide prefix table is full.
    pub(crate) prefix: Option<Box<Prefix>>,
}

/// Process-wide table of the prefixes views refer to by index. Prefixes
/// are few (a registry holds at most 64); past 255 distinct ones a view
/// keeps its prefix in its cold fields.
static PREFIX_TABLE: [OnceLock<Prefix>; 255] = [const { OnceLock::new() }; 255];

static UNKNOWN_PREFIX: LazyLock<Prefix> = LazyLock::new(Prefix::unknown);

/// The table slot (index + 1) of `prefix`, adding it; 0 when the table is full.
fn prefix_slot(prefix: &Prefix) -> u8 {
    for (i, cell) in PREFIX_TABLE.iter().enumerate() {
        let held = match cell.get() {
            Some(p) => p,
            // A racing writer may win this cell; then compare with its value.
            None => {
                let _ = cell.set(prefix.clone());
                match cell.get() {
                    Some(p) => p,
                    None => continue,
                }
            }
        };
        if held == prefix {
            return u8::try_from(i + 1).unwrap_or(0);
        }
    }
    0
}

impl KeyView {
    /// The hot-path view of `record`.
    pub fn from_record(record: &KeyRecord) -> Self {
        Self::build(
            record,
            record.owner.as_deref().map(Owner::new),
            Arc::new(record.scopes.clone()),
        )
    }

    /// Like [`from_record`](Self::from_record) with the owner given
    /// separately: an owner id of up to 22 bytes is kept inline in the view,
    /// a longer one shares `owner`'s allocation ([`MemoryStore`](crate::MemoryStore)
    /// interns long owner ids and scope sets itself).
    pub fn from_record_with(record: &KeyRecord, owner: Option<Arc<str>>) -> Self {
        Self::build(
            record,
            owner.map(|o| Owner::inline(&o).unwrap_or(Owner::Shared(o))),
            Arc::new(record.scopes.clone()),
        )
    }

    /// The view of `record` with the owner and scope set a store shares
    /// between views (interned); `owner` and `scopes` must equal the
    /// record's.
    pub(crate) fn build(record: &KeyRecord, owner: Option<Owner>, scopes: Arc<ScopeSet>) -> Self {
        let prefix = prefix_slot(&record.prefix);
        let cold = ColdFields {
            not_before: record.not_before,
            ip_allowlist: if record.ip_allowlist.is_empty() {
                None
            } else {
                Some(record.ip_allowlist.as_slice().into())
            },
            metadata: if record.metadata.is_empty() {
                None
            } else {
                Some(Arc::new(record.metadata.clone()))
            },
            name: record.name.as_str().into(),
            description: record.description.as_deref().map(Box::from),
            revocation: record.revocation.clone().map(Box::new),
            rotated_from: record.rotated_from,
            rotated_to: record.rotated_to,
            legacy: record.legacy.clone().map(Box::new),
            prefix: (prefix == 0).then(|| Box::new(record.prefix.clone())),
        };
        let mut flags = 0;
        if cold.not_before.is_some() {
            flags |= HAS_NOT_BEFORE;
        }
        if cold.ip_allowlist.is_some() {
            flags |= HAS_IP_ALLOWLIST;
        }
        if record.metadata.contains_key(KeyRecord::PARENT) {
            flags |= HAS_PARENT;
        }
        if record.metadata.contains_key(KeyRecord::LIMITS_OF) {
            flags |= HAS_LIMITS_OF;
        }
        let extra = Extra {
            revision: record.revision,
            last_used_at: record.last_used_at,
            last_use: LastUse::of(record.last_used_ip, record.last_used_route.as_deref()),
            cold: (cold != ColdFields::default()).then(|| Box::new(cold)),
        };
        Self {
            digest: record.digest,
            id: record.id,
            expires_at: record
                .expires_at
                .map_or(i64::MAX, Timestamp::as_unix_micros),
            scopes,
            flags,
            secret_version: record.secret_version,
            status: record.status,
            environment: record.environment,
            prefix,
            owner,
            created_at: record.created_at,
            extra: (extra != Extra::default()).then(|| Box::new(extra)),
        }
    }

    /// The record this view was built from, exactly.
    pub(crate) fn to_record(&self) -> KeyRecord {
        let cold = self.cold();
        let mut record = KeyRecord {
            schema_version: KeyRecord::SCHEMA_VERSION,
            id: self.id,
            prefix: self.prefix().clone(),
            environment: self.environment,
            owner: self.owner().map(str::to_owned),
            name: cold.map(|c| String::from(&*c.name)).unwrap_or_default(),
            description: cold.and_then(|c| c.description.as_deref().map(str::to_owned)),
            secret_version: self.secret_version,
            digest: self.digest,
            scopes: (*self.scopes).clone(),
            created_at: self.created_at,
            expires_at: self.expires_at(),
            not_before: self.not_before(),
            status: self.status,
            revocation: cold.and_then(|c| c.revocation.as_deref().cloned()),
            last_used_at: None,
            last_used_ip: None,
            last_used_route: None,
            metadata: self.metadata().clone(),
            rotated_from: cold.and_then(|c| c.rotated_from),
            rotated_to: self.rotated_to(),
            revision: self.revision(),
            ip_allowlist: self.ip_allowlist().to_vec(),
            legacy: cold.and_then(|c| c.legacy.as_deref().cloned()),
        };
        self.last_use_into(&mut record);
        record
    }

    /// Sets `record`'s last use (time, address, route) to this view's: what
    /// a replacing write keeps, since the usage flush owns those fields.
    pub(crate) fn last_use_into(&self, record: &mut KeyRecord) {
        let state = self.extra.as_deref();
        let from = state.and_then(|s| s.last_use.as_deref());
        record.last_used_at = state.and_then(|s| s.last_used_at);
        record.last_used_ip = from.and_then(|f| f.ip);
        record.last_used_route = from.and_then(|f| f.route.as_deref().map(str::to_owned));
    }

    /// The rarely set fields.
    pub(crate) fn cold(&self) -> Option<&ColdFields> {
        self.extra.as_deref().and_then(|e| e.cold.as_deref())
    }

    /// Whether the record has an expiry or a not-before (verification
    /// reads the clock only then).
    #[inline]
    pub(crate) fn has_validity_window(&self) -> bool {
        self.expires_at != i64::MAX || self.flags & HAS_NOT_BEFORE != 0
    }

    /// Inclusive start of validity, Unix microseconds; `i64::MIN` when
    /// unset.
    #[inline]
    pub(crate) fn not_before_micros(&self) -> i64 {
        if self.flags & HAS_NOT_BEFORE == 0 {
            return i64::MIN;
        }
        self.cold()
            .and_then(|c| c.not_before)
            .map_or(i64::MIN, Timestamp::as_unix_micros)
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &Prefix {
        let from_table = self
            .prefix
            .checked_sub(1)
            .and_then(|i| PREFIX_TABLE.get(usize::from(i)))
            .and_then(OnceLock::get);
        match from_table {
            Some(p) => p,
            None => match self.cold().and_then(|c| c.prefix.as_deref()) {
                Some(p) => p,
                // Unreachable: `build` gives every view a table slot or a
                // prefix in its cold fields.
                None => &UNKNOWN_PREFIX,
            },
        }
    }
    /// The record's revision.
    pub(crate) fn revision(&self) -> u64 {
        self.extra.as_deref().map_or(0, |s| s.revision)
    }

    /// The successor by rotation.
    pub(crate) fn rotated_to(&self) -> Option<KeyId> {
        self.cold().and_then(|c| c.rotated_to)
    }

    /// The legacy index, for imported keys.
    pub(crate) fn legacy(&self) -> Option<&LegacyInfo> {
        self.cold().and_then(|c| c.legacy.as_deref())
    }

    /// The IP allowlist (empty: any address).
    pub fn ip_allowlist(&self) -> &[IpNet] {
        self.cold()
            .and_then(|c| c.ip_allowlist.as_deref())
            .unwrap_or(&[])
    }

    /// Whether a request from `ip` may use the key: `true` when its IP
    /// allowlist is empty (one branch), else only for an `ip` inside one of
    /// its ranges (never for an unknown address).
    ///
    /// ```
    /// use apikey::{KeyView, NewKey, Keyring, ServerSecret, Verifier};
    /// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
    /// let now = apikey::Timestamp::MIN + std::time::Duration::from_secs(20_000 * 86_400);
    /// let (_, open) = verifier.issue(NewKey::new("sk_live_"), now)?;
    /// assert!(KeyView::from_record(&open).allows_ip(None));
    /// let (_, fenced) = verifier.issue(NewKey::new("sk_live_").allow_ip("10.0.0.0/8".parse()?), now)?;
    /// let view = KeyView::from_record(&fenced);
    /// assert!(view.allows_ip(Some("10.1.2.3".parse().unwrap())));
    /// assert!(!view.allows_ip(Some("11.1.2.3".parse().unwrap())));
    /// assert!(!view.allows_ip(None));
    /// # Ok::<(), apikey::Error>(())
    /// ```
    #[inline]
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        if self.flags & HAS_IP_ALLOWLIST == 0 {
            return true;
        }
        match self.cold().and_then(|c| c.ip_allowlist.as_deref()) {
            None => true,
            Some(list) => crate::record::ip_allowed(list, ip),
        }
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Whether this is a publishable key ([`Prefix::is_publishable`]).
    pub fn is_publishable(&self) -> bool {
        self.prefix().is_publishable()
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
        self.owner.as_ref().map(Owner::as_str)
    }

    /// The granted scopes.
    pub fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }

    /// The key whose rate-limit windows and key credit balance this key
    /// uses, as [`KeyRecord::limits_account`] says (`None`: unreadable).
    pub fn limits_account(&self) -> Option<KeyId> {
        if self.flags & HAS_LIMITS_OF == 0 {
            return Some(self.id);
        }
        limits_account_in(self.id, self.metadata())
    }

    /// The metadata (empty when none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.cold()
            .and_then(|c| c.metadata.as_deref())
            .unwrap_or(&EMPTY)
    }

    /// Expiry, if any.
    pub fn expires_at(&self) -> Option<Timestamp> {
        // The "never" sentinel, `i64::MAX`, is no timestamp.
        Timestamp::from_unix_micros(self.expires_at).ok()
    }

    /// Not-before, if any.
    pub fn not_before(&self) -> Option<Timestamp> {
        self.cold().and_then(|c| c.not_before)
    }

    /// Creation time.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
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
    pub expires_at: Option<Timestamp>,
    /// Start of validity (inclusive).
    pub not_before: Option<Timestamp>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// Addresses the key may be used from; empty: anywhere.
    pub ip_allowlist: Vec<IpNet>,
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
    pub fn expires_at(mut self, at: Timestamp) -> Self {
        self.expires_at = Some(at);
        self
    }
    /// Sets the start of validity.
    pub fn not_before(mut self, at: Timestamp) -> Self {
        self.not_before = Some(at);
        self
    }
    /// Adds one metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Adds a range to the key's IP allowlist (`"10.0.0.0/8".parse()?`).
    pub fn allow_ip(mut self, net: IpNet) -> Self {
        self.ip_allowlist.push(net);
        self
    }
}
