use serde::Serialize;
use std::time::Duration;

use crate::Timestamp;

use crate::key::KeyId;
use crate::record::{KeyRecord, KeyStatus};
use crate::verify::KeyPolicies;

/// What the report looks for. Every field says its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HygieneOptions {
    /// A key unused for this long (or never used, once this old) is
    /// reported. Defaults to 90 days.
    pub unused_for: Duration,
    /// A key expiring within this is reported. Defaults to 30 days.
    pub expiring_within: Duration,
}

impl Default for HygieneOptions {
    fn default() -> Self {
        Self {
            unused_for: Duration::from_secs(90 * 86_400),
            expiring_within: Duration::from_secs(30 * 86_400),
        }
    }
}

impl HygieneOptions {
    /// Sets [`unused_for`](Self::unused_for).
    pub fn unused_for(mut self, d: Duration) -> Self {
        self.unused_for = d;
        self
    }
    /// Sets [`expiring_within`](Self::expiring_within).
    pub fn expiring_within(mut self, d: Duration) -> Self {
        self.expiring_within = d;
        self
    }
}

/// One thing a review would flag about a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// The key never expires.
    NoExpiry,
    /// Not used since `last_used_at`, longer than the option's period.
    Unused {
        /// Last use (as of the last usage flush).
        last_used_at: Timestamp,
    },
    /// Never used, and older than the option's period.
    NeverUsed,
    /// A scope ends in `*`.
    WildcardScope,
    /// No IP allowlist: usable from anywhere.
    NoIpAllowlist,
    /// Expires within the option's window.
    ExpiringSoon {
        /// When.
        expires_at: Timestamp,
    },
    /// Breaks an issuance policy in force (refused at verification).
    NonCompliant {
        /// The rule broken.
        rule: &'static str,
    },
}

/// The findings for one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyHygiene {
    /// The key.
    pub id: KeyId,
    /// Its display form (`sk_live_aBcDe...`).
    pub display: String,
    /// Its owner.
    pub owner: Option<String>,
    /// What was found, in the order of [`Finding`]'s variants.
    pub findings: Vec<Finding>,
}

/// The key hygiene report: what a security review flags, per key.
///
/// [`KeyManager::hygiene`](crate::KeyManager::hygiene) reports over one
/// owner's keys; [`HygieneReport::of_records`] over any records (an export,
/// or a store scan of your own). Revoked and expired keys are left out:
/// they no longer work.
///
/// ```
/// use apikey::{HygieneOptions, HygieneReport, Finding, KeyPolicies, Keyring, NewKey, ServerSecret, Verifier};
/// use time::macros::datetime;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32])?)?);
/// let now = "2026-06-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap();
/// let made = "2026-01-01T00:00:00Z".parse::<apikey::Timestamp>().unwrap();
/// let (_key, record) = verifier.issue(NewKey::new("sk_live_").scopes(["*"]), made)?;
/// let report = HygieneReport::of_records([&record], &KeyPolicies::new(), now, &HygieneOptions::default());
/// let findings = &report.keys[0].findings;
/// assert!(findings.contains(&Finding::NoExpiry));
/// assert!(findings.contains(&Finding::WildcardScope));
/// assert!(findings.contains(&Finding::NeverUsed));
/// # Ok::<(), apikey::Error>(())
/// ```
///
/// Findings per key, for keys that still work (not revoked, not expired),
/// oldest first as given; keys with no finding are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HygieneReport {
    /// The keys with at least one finding.
    pub keys: Vec<KeyHygiene>,
    /// How many keys were looked at.
    pub examined: usize,
}

impl HygieneReport {
    /// The report over `records` at `now` under `policies`.
    pub fn of_records<'a>(
        records: impl IntoIterator<Item = &'a KeyRecord>,
        policies: &KeyPolicies,
        now: Timestamp,
        options: &HygieneOptions,
    ) -> Self {
        let mut report = Self::default();
        for r in records {
            if r.status == KeyStatus::Revoked || r.expires_at.is_some_and(|e| e <= now) {
                continue;
            }
            report.examined += 1;
            let mut findings = Vec::new();
            if r.expires_at.is_none() {
                findings.push(Finding::NoExpiry);
            }
            let stale = now.saturating_sub(options.unused_for);
            match r.last_used_at {
                Some(t) if t < stale => findings.push(Finding::Unused { last_used_at: t }),
                None if r.created_at < stale => findings.push(Finding::NeverUsed),
                _ => {}
            }
            if r.scopes.iter().any(crate::Scope::is_wildcard) {
                findings.push(Finding::WildcardScope);
            }
            if r.ip_allowlist.is_empty() {
                findings.push(Finding::NoIpAllowlist);
            }
            if let Some(e) = r.expires_at
                && e < now.saturating_add(options.expiring_within)
            {
                findings.push(Finding::ExpiringSoon { expires_at: e });
            }
            if let Err(crate::Error::PolicyViolation { rule }) = policies.check(r, now) {
                findings.push(Finding::NonCompliant { rule });
            }
            if !findings.is_empty() {
                report.keys.push(KeyHygiene {
                    id: r.id,
                    display: r.display_form(),
                    owner: r.owner.clone(),
                    findings,
                });
            }
        }
        report
    }
}
