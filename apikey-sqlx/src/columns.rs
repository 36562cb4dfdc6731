//! The key table's columns, in one order shared by both backends: the
//! SELECT list, the INSERT list, the UPDATE list and the bound values.

use apikey::KeyRecord;
use apikey::Timestamp;

use crate::codec::{
    id_to_sql, ip_strings, metadata_json, revision_to_sql, scope_strings, status_str,
};

/// Every column of the key table, in `Row` order.
pub(crate) const COLUMNS: [&str; 27] = [
    "id",
    "prefix",
    "environment",
    "owner",
    "name",
    "description",
    "secret_version",
    "digest",
    "scopes",
    "created_at",
    "expires_at",
    "not_before",
    "status",
    "revoked_at",
    "revocation_reason",
    "last_used_at",
    "metadata",
    "rotated_from",
    "rotated_to",
    "revision",
    "ip_allowlist",
    "legacy_prefix",
    "legacy_index",
    "legacy_index_version",
    "legacy_upgraded",
    "last_used_ip",
    "last_used_route",
];

/// Columns a replacing write leaves alone: the key, the revision (set by
/// the statement) and the last use (owned by the usage flush).
pub(crate) fn replaced(col: &str) -> bool {
    !matches!(
        col,
        "id" | "revision" | "last_used_at" | "last_used_ip" | "last_used_route"
    )
}

/// One bound value, typed so each backend binds it natively.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    Int(Option<i64>),
    Small(Option<i16>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Bool(Option<bool>),
    Time(Option<Timestamp>),
    Date(Option<time::Date>),
    /// JSON object text (SQLite `TEXT`, PostgreSQL `jsonb`).
    Json(String),
    /// A list of strings (SQLite: JSON array text; PostgreSQL `text[]`).
    List(Vec<String>),
}

/// The values of `r`, in [`COLUMNS`] order.
pub(crate) fn values(r: &KeyRecord) -> Vec<(&'static str, Val)> {
    let legacy = r.legacy.as_ref();
    let v = vec![
        Val::Int(Some(id_to_sql(r.id))),
        Val::Text(Some(r.prefix.as_str().to_owned())),
        Val::Text(Some(r.environment.as_str().to_owned())),
        Val::Text(r.owner.clone()),
        Val::Text(Some(r.name.clone())),
        Val::Text(r.description.clone()),
        Val::Small(Some(i16::from(r.secret_version))),
        Val::Bytes(Some(r.digest.as_bytes().to_vec())),
        Val::List(scope_strings(r)),
        Val::Time(Some(r.created_at)),
        Val::Time(r.expires_at),
        Val::Time(r.not_before),
        Val::Text(Some(status_str(r.status).to_owned())),
        Val::Time(r.revocation.as_ref().map(|v| v.at)),
        Val::Text(r.revocation.as_ref().map(|v| v.reason.clone())),
        Val::Time(r.last_used_at),
        Val::Json(metadata_json(&r.metadata)),
        Val::Int(r.rotated_from.map(id_to_sql)),
        Val::Int(r.rotated_to.map(id_to_sql)),
        Val::Int(Some(revision_to_sql(r.revision))),
        Val::List(ip_strings(r)),
        Val::Text(legacy.map(|l| l.prefix.clone())),
        Val::Bytes(legacy.map(|l| l.index.as_bytes().to_vec())),
        Val::Small(legacy.map(|l| i16::from(l.index_version))),
        Val::Bool(legacy.map(|l| l.upgraded)),
        Val::Text(r.last_used_ip.map(|ip| ip.to_string())),
        Val::Text(r.last_used_route.clone()),
    ];
    COLUMNS.iter().copied().zip(v).collect()
}
