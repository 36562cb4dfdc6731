//! The JSON shapes of the management API: request bodies (unknown fields
//! refused) and the views of a key (never its secret, except in
//! [`CreatedKey`]).

use apikey::{ApiKey, KeySummary};
use serde::{Deserialize, Deserializer, Serialize};

/// `POST /v1/api-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub ip_allowlist: Vec<String>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub auto_renew: bool,
}

/// `PATCH /v1/api-keys/{id}`: absent fields are left as they are; `null`
/// clears the description and makes the key never expire.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "some")]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub auto_renew: Option<bool>,
}

/// `POST /v1/api-keys/{id}/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateRequest {
    #[serde(default)]
    pub grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST /v1/api-keys/{id}/derive`: absent fields are the parent's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeriveRequest {
    pub name: String,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub ip_allowlist: Option<Vec<String>>,
    /// A credit budget carved from the parent key's balance
    /// ([`apikey::KeyManager::derive_with_credits`]); only on
    /// `ManageApi::router_with_credits`.
    #[serde(default)]
    pub credits: Option<u64>,
}

/// A present field (even `null`) is `Some`.
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A key in a listing: display prefix only.
#[derive(Debug, Serialize)]
pub(crate) struct KeyItem {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub owner: Option<String>,
    pub environment: &'static str,
    pub permissions: Vec<String>,
    pub status: String,
    /// Disabled until an account admin enables it
    /// ([`apikey::KeyRecord::PENDING_APPROVAL`]).
    pub pending: bool,
    pub created_at: String,
    pub last_used: Option<String>,
    /// The client address of the last use, when known.
    pub last_used_ip: Option<String>,
    /// The method and path of the last use, when it came through the web edge.
    pub last_used_route: Option<String>,
    pub expires_at: Option<String>,
    /// Renewed by the expiry sweep before it expires
    /// ([`apikey::KeyRecord::AUTO_RENEW`]).
    pub auto_renew: bool,
    /// When a revoked key was revoked, and why (`parent key revoked`, a
    /// leak report's source, an admin's reason).
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
}

impl KeyItem {
    pub fn new(s: &KeySummary) -> Self {
        Self {
            id: s.id.to_string(),
            name: s.name.clone(),
            prefix: s.display.clone(),
            owner: s.owner.clone(),
            environment: s.environment.as_str(),
            permissions: s.scopes.clone(),
            status: state_name(s),
            pending: s.metadata.contains_key(apikey::KeyRecord::PENDING_APPROVAL),
            created_at: s.created_at.to_string(),
            last_used: s.last_used_at.as_ref().map(ToString::to_string),
            last_used_ip: s.last_used_ip.as_ref().map(ToString::to_string),
            last_used_route: s.last_used_route.clone(),
            expires_at: s.expires_at.as_ref().map(ToString::to_string),
            auto_renew: s.auto_renews(),
            revoked_at: s.revocation.as_ref().map(|r| r.at.to_string()),
            revocation_reason: s.revocation.as_ref().map(|r| r.reason.clone()),
        }
    }
}

/// `active`, `rotation_grace`, `disabled`, `revoked`, `expired`,
/// `not_yet_valid`.
pub(crate) fn state_name(s: &KeySummary) -> String {
    serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Usage counts (seed 001's key details).
#[derive(Debug, Serialize)]
pub(crate) struct Usage {
    pub requests_today: u64,
    pub requests_this_month: u64,
}

/// `GET /v1/api-keys/{id}` and the answer of every change.
#[derive(Debug, Serialize)]
pub(crate) struct KeyDetails {
    #[serde(flatten)]
    pub item: KeyItem,
    pub description: Option<String>,
    pub ip_allowlist: Vec<String>,
    pub plan: Option<String>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    pub usage: Usage,
}

impl KeyDetails {
    pub fn new(s: &KeySummary) -> Self {
        Self {
            item: KeyItem::new(s),
            description: s.description.clone(),
            ip_allowlist: s.ip_allowlist.iter().map(ToString::to_string).collect(),
            plan: s.metadata.get(crate::PLAN_KEY).cloned(),
            rotated_from: s.rotated_from.map(|id| id.to_string()),
            rotated_to: s.rotated_to.map(|id| id.to_string()),
            usage: Usage {
                requests_today: s.requests_today,
                requests_this_month: s.requests_this_month,
            },
        }
    }
}

/// The `201` of a create or a rotation: the only answers that carry the
/// full key. Its `Debug` never shows the key.
#[derive(Serialize)]
pub(crate) struct CreatedKey {
    #[serde(flatten)]
    pub details: KeyDetails,
    pub key: String,
    /// Rotation only: the key replaced, and when it stops working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_ends_at: Option<String>,
}

impl CreatedKey {
    pub fn new(key: &ApiKey, s: &KeySummary) -> Self {
        Self {
            details: KeyDetails::new(s),
            key: key.expose_secret().to_owned(),
            replaces: None,
            grace_ends_at: None,
        }
    }

    pub fn rotation(mut self, old: &KeySummary) -> Self {
        self.replaces = Some(old.id.to_string());
        self.grace_ends_at = old.expires_at.as_ref().map(ToString::to_string);
        self
    }
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("details", &self.details)
            .field("key", &"[REDACTED]")
            .field("replaces", &self.replaces)
            .field("grace_ends_at", &self.grace_ends_at)
            .finish()
    }
}

/// `GET /v1/api-keys`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyList {
    pub data: Vec<KeyItem>,
    pub has_more: bool,
    pub next_cursor: Option<String>,
    /// Whether the caller may approve (enable) keys pending approval: an
    /// account admin.
    pub may_approve: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use apikey::{Keyring, NewKey, ServerSecret, Timestamp, Verifier};

    #[test]
    fn a_created_key_never_shows_its_secret_in_debug() {
        let verifier = Verifier::new(
            Keyring::new(
                1,
                ServerSecret::from_bytes(&[9; 32]).unwrap_or_else(|e| panic!("{e}")),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let (key, record) = verifier
            .issue(NewKey::new("sk_live_").owner("alice"), Timestamp::MIN)
            .unwrap_or_else(|e| panic!("{e}"));
        let created = CreatedKey::new(&key, &KeySummary::from_record(&record, Timestamp::MIN));
        let shown = format!("{created:?}");
        let secret = key.expose_secret();
        let body = &secret[secret.len() - 32..];
        assert!(
            !body
                .as_bytes()
                .windows(8)
                .any(|w| shown.as_bytes().windows(8).any(|s| s == w)),
            "Debug shows the key: {shown}"
        );
        assert!(shown.contains("[REDACTED]"));
    }
}
