//! Parsing and checking request parts: JSON bodies, text fields, times, scopes, allowlists, query strings and path ids.

use super::*;
use apikey::ScopeSet;

pub(super) fn parse_json<T: DeserializeOwned + Default>(
    bytes: &[u8],
    empty_ok: bool,
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return Ok(T::default());
        }
        return Err(ApiError::field("body", "a JSON object is required"));
    }
    parse_body(bytes)
}

pub(crate) fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            // Broken JSON has no field to blame (its path reads `?`).
            return ApiError::field("body", "the body is not valid JSON");
        }
        let inner = e.inner().to_string();
        // `unknown field `x`, expected ...`: name the unknown field itself.
        let field = inner
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
            .or_else(|| {
                inner
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| match e.path().to_string() {
                p if p == "." => "body".to_owned(),
                p => p,
            });
        let field = shown_name(field);
        let message = if inner.starts_with("unknown field") {
            format!("unknown field `{field}`")
        } else if inner.starts_with("missing field") {
            format!("`{field}` is required")
        } else {
            format!("`{field}` has the wrong type")
        };
        ApiError::field(field, message)
    })?;
    // Nothing but whitespace may follow the object.
    de.end()
        .map_err(|_| ApiError::field("body", "the body must be one JSON object"))?;
    Ok(value)
}

/// A name or description: not blank (names), not too long, no control
/// characters, no markup.
pub(super) fn check_text(
    field: &str,
    text: &str,
    max: usize,
    blank_ok: bool,
) -> Result<(), ApiError> {
    if !blank_ok && text.trim().is_empty() {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if text.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not contain control characters"),
        ));
    }
    // Bidirectional formatting characters reorder what a reader sees (a
    // name that displays as "prod-ci" while its text differs).
    if text.chars().any(is_bidi_control) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not contain bidirectional formatting characters"),
        ));
    }
    if text.contains(['<', '>']) {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not contain markup (< or >)"),
        ));
    }
    Ok(())
}

/// The Unicode bidirectional formatting characters (UAX #9: marks,
/// embeddings, overrides and isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

pub(super) fn parse_time(field: &str, text: &str, now: Timestamp) -> Result<Timestamp, ApiError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            ApiError::field(
                field,
                format!("`{field}` must be an RFC 3339 time such as 2026-10-14T00:00:00Z"),
            )
        })?;
    let t = Timestamp::from_datetime(t)
        .map_err(|_| ApiError::field(field, format!("`{field}` is out of the supported range")))?;
    if t <= now {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be in the future"),
        ));
    }
    Ok(t)
}

/// The permissions of a request, each one the service offers and the
/// caller holds. A caller without scope bounds holds what the service
/// offers: with no catalog ([`ManageConfig::scope`]) that is nothing, so it
/// gives no permission (an unbounded session would otherwise mint any
/// scope, `admin:*` included). `narrowing` (a derived key, which the
/// manager keeps within its parent) skips that refusal only.
pub(super) fn parse_scopes(
    list: &[String],
    config: &ManageConfig,
    bounds: &Bounds,
    narrowing: bool,
) -> Result<Vec<String>, ApiError> {
    if list.len() > ScopeSet::MAX_SCOPES {
        return Err(ApiError::invalid_scope(format!(
            "at most {} permissions",
            ScopeSet::MAX_SCOPES
        )));
    }
    if !list.is_empty() && config.scopes.is_empty() && bounds.scopes.is_none() && !narrowing {
        return Err(ApiError::escalation(
            "permissions",
            "this service declares no permissions, so a caller without scope bounds cannot give any",
        ));
    }
    for text in list {
        let scope = Scope::parse(text)
            .map_err(|_| ApiError::invalid_scope("a permission is not a valid scope"))?;
        if !config.scopes.is_empty() && !config.scopes.iter().any(|s| s.name == *text) {
            return Err(ApiError::invalid_scope(
                "a permission is not one this service offers",
            ));
        }
        if !bounds.grants_scope(&scope) {
            return Err(ApiError::escalation(
                "permissions",
                "a key cannot be given a permission its creator does not hold",
            ));
        }
    }
    Ok(list.to_vec())
}

pub(super) fn parse_allowlist(list: &[String], bounds: &Bounds) -> Result<Vec<IpNet>, ApiError> {
    if list.len() > MAX_ALLOWLIST {
        return Err(ApiError::field(
            "ip_allowlist",
            format!("at most {MAX_ALLOWLIST} address ranges"),
        ));
    }
    let nets = list
        .iter()
        .map(|s| {
            s.parse::<IpNet>().or_else(|_| {
                s.parse::<IpAddr>().map_err(|_| ()).and_then(|ip| {
                    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).map_err(|_| ())
                })
            })
        })
        .collect::<Result<Vec<_>, ()>>()
        .map_err(|()| {
            ApiError::field(
                "ip_allowlist",
                "`ip_allowlist` entries must be addresses or CIDR ranges (203.0.113.0/24)",
            )
        })?;
    if !bounds.covers_allowlist(&nets) {
        return Err(ApiError::escalation(
            "ip_allowlist",
            "a key cannot be usable from addresses its creator may not use",
        ));
    }
    Ok(nets)
}

/// The expiry a new or changed key gets: at most the caller's own.
pub(super) fn bounded_expiry(
    asked: Option<Timestamp>,
    bounds: &Bounds,
    default_to_bound: bool,
) -> Result<Option<Timestamp>, ApiError> {
    match (asked, bounds.expires_at) {
        (Some(a), Some(b)) if a > b => Err(ApiError::escalation(
            "expires_at",
            "a key cannot outlive the key that creates or changes it",
        )),
        (None, Some(b)) if default_to_bound => Ok(Some(b)),
        (None, Some(_)) => Err(ApiError::escalation(
            "expires_at",
            "a key cannot outlive the key that creates or changes it",
        )),
        (a, _) => Ok(a),
    }
}

/// Auto-renewal on a key: it needs an expiry to renew, and a caller that
/// has an expiry itself may not give it (each renewal would carry the key
/// past the caller's own bound).
pub(super) fn auto_renew_allowed(bounds: &Bounds, has_expiry: bool) -> Result<(), ApiError> {
    if bounds.expires_at.is_some() {
        return Err(ApiError::escalation(
            "auto_renew",
            "a caller with an expiry cannot make a key renew itself past it",
        ));
    }
    if !has_expiry {
        return Err(ApiError::field(
            "auto_renew",
            "`auto_renew` needs an expiry (`expires_at`)",
        ));
    }
    Ok(())
}

pub(super) fn environment_named(text: &str) -> Option<Environment> {
    match text {
        "live" => Some(Environment::Live),
        "test" => Some(Environment::Test),
        _ => None,
    }
}

/// The key as a whole is within the caller's bounds: its scopes,
/// environment, expiry (an auto-renewing key counts as one without expiry)
/// and IP allowlist (rotation hands the caller a working
/// copy of it; enabling or changing it must not hand out more than the
/// caller holds).
pub(super) fn within_bounds(s: &KeySummary, bounds: &Bounds) -> Result<(), ApiError> {
    for text in &s.scopes {
        let scope = Scope::parse(text).map_err(|_| ApiError::not_found())?;
        if !bounds.grants_scope(&scope) {
            return Err(ApiError::escalation(
                "permissions",
                "this key holds a permission the caller does not hold",
            ));
        }
    }
    if !bounds.allows_environment(s.environment) {
        return Err(ApiError::escalation(
            "environment",
            "this key is of an environment the caller may not issue in",
        ));
    }
    if !bounds.covers_allowlist(&s.ip_allowlist) {
        return Err(ApiError::escalation(
            "ip_allowlist",
            "this key is usable from addresses the caller may not use",
        ));
    }
    // An auto-renewing key outlives a bounded caller as a key without
    // expiry does: the sweep carries it past the bound (rotating it would
    // hand the caller a fresh secret of a key that renews itself).
    if let Some(bound) = bounds.expires_at
        && (s.auto_renews() || s.expires_at.is_none_or(|e| e > bound))
    {
        return Err(ApiError::escalation(
            "expires_at",
            "this key outlives the key that manages it",
        ));
    }
    Ok(())
}

/// A JSON answer; `secret`: it holds a full key (`Cache-Control: no-store`
/// is on every answer anyway, and the caller must not cache it).
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_string(value).unwrap_or_default();
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A name the caller sent, as an error repeats it: a short word of
/// letters, digits and `_-.[]` as is, anything else (a key pasted in
/// the wrong place, an address, markup) as `(not shown)`, so a secret is
/// never echoed into a response or the host's logs.
fn shown_name(name: String) -> String {
    const MAX: usize = 40;
    if !name.is_empty()
        && name.len() <= MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'))
    {
        name
    } else {
        "(not shown)".to_owned()
    }
}

/// `name=value&...`, percent-decoded; unknown names refused.
pub(super) fn query_pairs(
    parts: &Parts,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for pair in parts.uri.query().unwrap_or("").split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).ok_or_else(|| ApiError::field("query", "bad encoding"))?;
        if !allowed.contains(&name.as_str()) {
            let name = shown_name(name);
            return Err(ApiError::field(
                name.clone(),
                format!("unknown query parameter `{name}`"),
            ));
        }
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::field(name.clone(), "bad percent-encoding"))?;
        out.push((name, value));
    }
    Ok(out)
}

pub(super) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits exactly (`from_str_radix` alone would
                // also take a sign: `%+5`).
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The path's key id for the call log: only a well-formed key id, never
/// whatever else was put in its place (a whole key, by mistake).
pub(super) fn loggable_id(uri: &http::Uri) -> Option<String> {
    let id = path_id(uri);
    id.parse::<KeyId>().is_ok().then_some(id)
}

pub(super) fn path_id(uri: &http::Uri) -> String {
    // `/.../api-keys/{id}[/action]`: the segment after `api-keys`.
    let mut segs = uri.path().split('/');
    segs.by_ref().find(|s| *s == "api-keys");
    segs.next().unwrap_or("").to_owned()
}
