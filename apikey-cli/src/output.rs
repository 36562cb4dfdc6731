//! What the command prints: human tables by default, JSON with `--json`.
//!
//! The JSON field names are this command's contract (listed in the README)
//! and are spelled here, not derived from the library's types, so a
//! library rename never changes a script's input. No output ever holds a
//! digest; only `keys create`, `keys rotate` and `bootstrap-admin` print a
//! full key, once.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use apikey::{KeyState, KeySummary};
use serde::Serialize;

/// Set when a write to stdout failed (a closed pipe: `apikey ... | head`).
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout. Never panics (unlike `println!` on a closed
/// pipe): a failure is remembered for [`stdout_failed`].
pub fn out(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .is_err()
    {
        STDOUT_FAILED.store(true, Ordering::Relaxed);
    }
}

/// Writes one line to stderr, ignoring a closed stderr.
pub fn err(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Whether stdout is `/dev/null` (a closed stdout is reopened there when
/// the process starts): what is printed there is discarded.
#[cfg(unix)]
pub fn stdout_discards() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return false;
    };
    match (
        std::fs::File::from(fd).metadata(),
        std::fs::metadata("/dev/null"),
    ) {
        (Ok(out), Ok(null)) => out.dev() == null.dev() && out.ino() == null.ino(),
        _ => false,
    }
}

/// Elsewhere: never known to discard.
#[cfg(not(unix))]
pub fn stdout_discards() -> bool {
    false
}

/// Flushes stdout; whether any output was lost.
pub fn stdout_failed() -> bool {
    if std::io::stdout().flush().is_err() {
        STDOUT_FAILED.store(true, Ordering::Relaxed);
    }
    STDOUT_FAILED.load(Ordering::Relaxed)
}

/// `println!` that never panics (see [`out`]).
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::out(format_args!($($t)*)) };
}

/// `eprintln!` that never panics (see [`err`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => { $crate::output::err(format_args!($($t)*)) };
}

/// A key as the command shows it.
#[derive(Debug, Serialize)]
pub struct KeyOut {
    /// Public id (11 base62 characters).
    pub id: String,
    /// `sk_live_aBcDe...`: the prefix and the start of the id.
    pub display: String,
    /// Owner.
    pub owner: Option<String>,
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// `live` or `test`.
    pub environment: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Stored status: `active`, `disabled`, `revoked`.
    pub status: String,
    /// Effective state now: `active`, `rotation_grace`, `disabled`,
    /// `revoked`, `expired`, `not_yet_valid`.
    pub state: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, as of the last usage flush.
    pub last_used_at: Option<String>,
    /// The client address of the last use, when known.
    pub last_used_ip: Option<String>,
    /// The method and path of the last use, when it came through the web edge.
    pub last_used_route: Option<String>,
    /// RFC 3339 (exclusive).
    pub expires_at: Option<String>,
    /// RFC 3339.
    pub not_before: Option<String>,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
    /// The revocation reason.
    pub revoked_reason: Option<String>,
    /// Metadata.
    pub metadata: BTreeMap<String, String>,
    /// IP allowlist (CIDR; empty: anywhere).
    pub ip_allowlist: Vec<String>,
    /// The key this one replaced.
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    pub rotated_to: Option<String>,
    /// Successful verifications today (UTC).
    pub requests_today: u64,
    /// Successful verifications this month (UTC).
    pub requests_this_month: u64,
    /// Imported from another system.
    pub legacy: bool,
}

fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::Active => "active",
        KeyState::RotationGrace => "rotation_grace",
        KeyState::Disabled => "disabled",
        KeyState::Revoked => "revoked",
        KeyState::Expired => "expired",
        KeyState::NotYetValid => "not_yet_valid",
        _ => "unknown",
    }
}

/// The lowercase serde name of a library enum (`Environment`, `KeyStatus`).
fn serde_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

impl From<&KeySummary> for KeyOut {
    fn from(s: &KeySummary) -> Self {
        Self {
            id: s.id.to_string(),
            display: s.display.clone(),
            owner: s.owner.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            environment: serde_name(&s.environment),
            scopes: s.scopes.clone(),
            status: serde_name(&s.status),
            state: state_name(s.state).into(),
            created_at: s.created_at.to_string(),
            last_used_at: s.last_used_at.as_ref().map(ToString::to_string),
            last_used_ip: s.last_used_ip.as_ref().map(ToString::to_string),
            last_used_route: s.last_used_route.clone(),
            expires_at: s.expires_at.as_ref().map(ToString::to_string),
            not_before: s.not_before.as_ref().map(ToString::to_string),
            revoked_at: s.revocation.as_ref().map(|r| r.at.to_string()),
            revoked_reason: s.revocation.as_ref().map(|r| r.reason.clone()),
            metadata: s.metadata.clone(),
            ip_allowlist: s.ip_allowlist.iter().map(ToString::to_string).collect(),
            rotated_from: s.rotated_from.map(|id| id.to_string()),
            rotated_to: s.rotated_to.map(|id| id.to_string()),
            requests_today: s.requests_today,
            requests_this_month: s.requests_this_month,
            legacy: s.legacy,
        }
    }
}

/// Prints `value` as one line of JSON on stdout.
pub fn json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => out(format_args!("{text}")),
        Err(e) => err(format_args!("error: cannot write JSON: {e}")),
    }
}

/// Prints a table: a header and rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out(format_args!("{}", text.trim_end()));
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

/// The date part of an RFC 3339 time, for tables.
fn day(v: Option<&String>) -> String {
    v.map_or_else(|| "-".into(), |t| t.get(..10).unwrap_or(t).to_owned())
}

/// The key listing table.
pub fn key_table(keys: &[KeyOut]) {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.display.clone(),
                or_dash(k.owner.as_deref()).to_owned(),
                or_dash(Some(&k.name)).to_owned(),
                k.state.clone(),
                if k.scopes.is_empty() {
                    "-".into()
                } else {
                    k.scopes.join(",")
                },
                day(k.expires_at.as_ref()),
                day(k.last_used_at.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KEY",
            "OWNER",
            "NAME",
            "STATE",
            "SCOPES",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

/// One key, field by field.
pub fn key_details(k: &KeyOut) {
    let opt = |v: &Option<String>| or_dash(v.as_deref()).to_owned();
    let mut rows = vec![
        ("id", k.id.clone()),
        ("key", k.display.clone()),
        ("owner", opt(&k.owner)),
        ("name", or_dash(Some(&k.name)).to_owned()),
        ("description", opt(&k.description)),
        ("environment", k.environment.clone()),
        ("scopes", k.scopes.join(", ")),
        ("status", k.status.clone()),
        ("state", k.state.clone()),
        ("created", k.created_at.clone()),
        ("last used", opt(&k.last_used_at)),
        ("last used from", opt(&k.last_used_ip)),
        ("last used route", opt(&k.last_used_route)),
        ("expires", opt(&k.expires_at)),
        ("not before", opt(&k.not_before)),
    ];
    if k.revoked_at.is_some() {
        rows.push(("revoked", opt(&k.revoked_at)));
        rows.push(("revoked reason", opt(&k.revoked_reason)));
    }
    rows.extend([
        ("rotated from", opt(&k.rotated_from)),
        ("rotated to", opt(&k.rotated_to)),
        ("requests today", k.requests_today.to_string()),
        ("requests this month", k.requests_this_month.to_string()),
        ("legacy", k.legacy.to_string()),
    ]);
    if !k.ip_allowlist.is_empty() {
        rows.push(("ip allowlist", k.ip_allowlist.join(", ")));
    }
    // The crate's own entries under their meaning; the caller's as
    // metadata (`--json` keeps the map as stored).
    for (name, value) in &k.metadata {
        let label = match name.as_str() {
            apikey::KeyRecord::PARENT => "derived from",
            apikey::KeyRecord::LIMITS_OF => "spends from",
            apikey::KeyRecord::AUTO_RENEW => "auto-renew",
            apikey::KeyRecord::EXPIRY_NOTIFIED => "expiry notice for",
            apikey::KeyRecord::PENDING_APPROVAL => "pending approval",
            "apikey.allowed_origins" => "allowed origins",
            _ => {
                rows.push(("metadata", format!("{name}={value}")));
                continue;
            }
        };
        rows.push((label, value.clone()));
    }
    for (name, value) in rows {
        out(format_args!("{name:<20}{value}"));
    }
}
