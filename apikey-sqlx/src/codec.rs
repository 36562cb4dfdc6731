//! Column encodings shared by both stores: ids, times, enums, and the
//! checked assembly of a [`KeyRecord`] from a row.

use std::collections::BTreeMap;

use apikey::Timestamp;
use apikey::{
    Environment, Error, IpNet, KeyDigest, KeyId, KeyRecord, KeyStatus, LegacyInfo, Prefix,
    Revocation, ScopeSet, StoreError, StoreErrorKind,
};

/// The order-preserving `i64` of a key id: the sign bit flipped, so ids at
/// or above 2^63 sort after smaller ones (a plain cast would put them first).
///
/// ```
/// use apikey::KeyId;
/// use apikey_sqlx::{id_from_sql, id_to_sql};
/// assert!(id_to_sql(KeyId::from_u64(1 << 63)) > id_to_sql(KeyId::from_u64(5)));
/// assert_eq!(id_from_sql(id_to_sql(KeyId::from_u64(u64::MAX))), KeyId::from_u64(u64::MAX));
/// ```
pub fn id_to_sql(id: KeyId) -> i64 {
    (id.as_u64() ^ (1 << 63)) as i64
}

/// The key id of a column value written by [`id_to_sql`].
pub fn id_from_sql(v: i64) -> KeyId {
    KeyId::from_u64((v as u64) ^ (1 << 63))
}

pub(crate) fn status_str(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Active => "active",
        KeyStatus::Disabled => "disabled",
        KeyStatus::Revoked => "revoked",
    }
}

/// A `u64` counter as a non-negative `i64` (saturating at `i64::MAX`).
pub(crate) fn count_to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A revision as `i64` (bit cast: exact for every `u64`).
pub(crate) fn revision_to_sql(v: u64) -> i64 {
    v as i64
}

/// A corrupt-row error naming the broken field (never a value: digests and
/// indexes are not shown).
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Corrupt,
        Error::InvalidRecord(format!("stored row: {what}")),
    )
}

/// The columns of one stored key, decoded to plain values by a backend.
/// [`Row::into_record`] checks every field.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub id: i64,
    pub prefix: String,
    pub environment: String,
    pub owner: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub secret_version: i64,
    pub digest: Vec<u8>,
    pub scopes: Vec<String>,
    pub created_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub not_before: Option<Timestamp>,
    pub status: String,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<String>,
    pub last_used_at: Option<Timestamp>,
    pub metadata: String,
    pub rotated_from: Option<i64>,
    pub rotated_to: Option<i64>,
    pub revision: i64,
    pub ip_allowlist: Vec<String>,
    pub legacy_prefix: Option<String>,
    pub legacy_index: Option<Vec<u8>>,
    pub legacy_index_version: Option<i64>,
    pub legacy_upgraded: Option<bool>,
    pub last_used_ip: Option<String>,
    pub last_used_route: Option<String>,
}

fn digest(bytes: &[u8], what: &str) -> Result<KeyDigest, StoreError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt(&format!("{what} must be 32 bytes")))?;
    Ok(KeyDigest::from_bytes(arr))
}

fn small(v: i64, what: &str) -> Result<u8, StoreError> {
    u8::try_from(v).map_err(|_| corrupt(&format!("{what} out of range")))
}

impl Row {
    /// The record this row holds, or a `Corrupt` error naming the first
    /// field that is not a valid value.
    pub fn into_record(self) -> Result<KeyRecord, StoreError> {
        let environment = match self.environment.as_str() {
            "live" => Environment::Live,
            "test" => Environment::Test,
            _ => return Err(corrupt("unknown environment")),
        };
        let status = match self.status.as_str() {
            "active" => KeyStatus::Active,
            "disabled" => KeyStatus::Disabled,
            "revoked" => KeyStatus::Revoked,
            _ => return Err(corrupt("unknown status")),
        };
        let revocation = match (self.revoked_at, self.revocation_reason) {
            (Some(at), Some(reason)) => Some(Revocation { at, reason }),
            (None, None) => None,
            _ => return Err(corrupt("revocation half set")),
        };
        let metadata = serde_json::from_str::<BTreeMap<String, String>>(&self.metadata)
            .map_err(|_| corrupt("metadata is not a JSON object of strings"))?;
        let ip_allowlist = self
            .ip_allowlist
            .iter()
            .map(|s| s.parse::<IpNet>())
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("ip_allowlist"))?;
        let legacy = match (
            self.legacy_prefix,
            self.legacy_index,
            self.legacy_index_version,
            self.legacy_upgraded,
        ) {
            (None, None, None, None) => None,
            (Some(prefix), Some(index), Some(version), Some(upgraded)) => Some(LegacyInfo::new(
                prefix,
                digest(&index, "legacy_index")?,
                small(version, "legacy_index_version")?,
                upgraded,
            )),
            _ => return Err(corrupt("legacy columns half set")),
        };
        KeyRecord::builder(
            id_from_sql(self.id),
            Prefix::new(&self.prefix).map_err(|_| corrupt("prefix"))?,
            environment,
            small(self.secret_version, "secret_version")?,
            digest(&self.digest, "digest")?,
            self.created_at.ok_or_else(|| corrupt("created_at"))?,
        )
        .owner(self.owner)
        .name(self.name)
        .description(self.description)
        .scopes(ScopeSet::parse(&self.scopes).map_err(|_| corrupt("scope"))?)
        .expires_at(self.expires_at)
        .not_before(self.not_before)
        .status(status)
        .revocation(revocation)
        .last_used_at(self.last_used_at)
        // Shown, never checked: a value another tool wrote that is not an
        // address reads as unknown rather than making the key unreadable.
        .last_used_ip(self.last_used_ip.and_then(|ip| ip.parse().ok()))
        .last_used_route(self.last_used_route)
        .metadata(metadata)
        .rotated_from(self.rotated_from.map(id_from_sql))
        .rotated_to(self.rotated_to.map(id_from_sql))
        .revision(self.revision as u64)
        .ip_allowlist(ip_allowlist)
        .legacy(legacy)
        .build()
        .map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Corrupt,
                Error::InvalidRecord(format!("stored row: {e}")),
            )
        })
    }
}

/// JSON text of the metadata map.
pub(crate) fn metadata_json(m: &BTreeMap<String, String>) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned())
}

/// JSON text of a list of strings.
#[cfg(feature = "sqlite")]
pub(crate) fn list_json<I: IntoIterator<Item = String>>(items: I) -> String {
    serde_json::to_string(&items.into_iter().collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

/// The scopes of a record as strings.
pub(crate) fn scope_strings(r: &KeyRecord) -> Vec<String> {
    r.scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

/// The IP allowlist of a record as strings.
pub(crate) fn ip_strings(r: &KeyRecord) -> Vec<String> {
    r.ip_allowlist.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn id_encoding_preserves_order() {
        let ids = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, u64::MAX];
        for w in ids.windows(2) {
            let (a, b) = (KeyId::from_u64(w[0]), KeyId::from_u64(w[1]));
            assert!(id_to_sql(a) < id_to_sql(b), "{w:?}");
            assert_eq!(id_from_sql(id_to_sql(a)), a);
        }
    }
}
