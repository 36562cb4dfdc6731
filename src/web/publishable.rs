//! Publishable keys at the web edge: the origin allowlist and CORS.
//!
//! A publishable key ([`Prefix::is_publishable`](crate::Prefix::is_publishable),
//! `pk_live_` / `pk_test_`) is embedded in a web page, so anyone can read
//! it. What keeps it useful only to its site:
//!
//! * it holds only the scopes the service marks public
//!   ([`KeyManager::with_public_scopes`](crate::KeyManager::with_public_scopes),
//!   checked at creation and at every verification);
//! * it carries an origin allowlist ([`ALLOWED_ORIGINS`] in its metadata,
//!   required at creation), and [`check_origin`] refuses a request whose
//!   `Origin` (or, without one, the origin of its `Referer`) is not on it,
//!   or that has neither (`ORIGIN_NOT_ALLOWED`, 403);
//! * a leak responder leaves it alone (`is_publishable()` on the record or
//!   view).
//!
//! Browsers send a CORS preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) without credentials, so the preflight
//! cannot know which key follows: [`preflight`] answers it (204) for any
//! origin, and the request itself is checked against the key's list.
//!
//! The [`Gate`](crate::web::Gate) does both: it reads `Origin` and
//! `Referer` in the pass that finds the key, refuses a publishable key
//! from another origin with 403 `ORIGIN_NOT_ALLOWED` (charged to the key's
//! plan like a scope failure, and counted by the audit sampler), puts the
//! CORS headers into [`Admitted::headers`](crate::web::Admitted::headers),
//! and answers preflights with [`Gate::preflight`](crate::web::Gate::preflight)
//! when one of its prefixes is publishable; the axum layer writes all of
//! it. The functions below are for servers that verify outside the gate:
//!
//! ```
//! use apikey::web::publishable::{check_origin, preflight, ALLOWED_ORIGINS};
//! use apikey::*;
//! # let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[8; 32])?)?)
//! #     .with_prefix("pk_live_", Environment::Live)?;
//! # let now = time::OffsetDateTime::UNIX_EPOCH;
//! let pre = preflight("OPTIONS", [("Origin", "https://shop.example"), ("Access-Control-Request-Method", "POST")], "x-api-key");
//! assert!(pre.is_some_and(|h| h.iter().any(|(n, v)| *n == "access-control-allow-origin" && v == "https://shop.example")));
//!
//! let (key, record) = verifier.issue(
//!     NewKey::new("pk_live_").scopes(["search:query"]).metadata(ALLOWED_ORIGINS, "https://shop.example"),
//!     now,
//! )?;
//! let ok = verifier.verify_with(key.expose_secret(), |_| Ok(Some(std::sync::Arc::new(KeyView::from_record(&record)))), now, &Requirement::none())?;
//! assert!(check_origin(&ok, [("Origin", "https://shop.example")]).is_ok());
//! assert_eq!(check_origin(&ok, [("Origin", "https://evil.example")]).unwrap_err().code(), "ORIGIN_NOT_ALLOWED");
//! assert_eq!(check_origin(&ok, [("Referer", "https://shop.example/cart?x=1")]).map(|h| h.len()).ok(), Some(2));
//! assert!(check_origin(&ok, std::iter::empty::<(&str, &str)>()).is_err());
//! # Ok::<(), Error>(())
//! ```

use crate::error::{Error, Result};
use crate::verify::VerifiedKey;

/// The metadata entry holding a publishable key's allowed origins,
/// separated by commas or spaces (`https://shop.example, https://www.shop.example`).
pub const ALLOWED_ORIGINS: &str = "apikey.allowed_origins";

/// Headers to add to a response.
pub type CorsHeaders = Vec<(&'static str, String)>;

/// The origins in an [`ALLOWED_ORIGINS`] value.
fn origins(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ']).filter(|o| !o.is_empty())
}

/// `scheme://host[:port]` of an `http`/`https` URL, lowercased; `None`
/// for anything else (including the opaque origin `null`).
fn origin_of_url(url: &str) -> Option<String> {
    url_parts(url).and_then(|(scheme, host)| origin_of_url_parts(scheme, host))
}

/// `scheme://host[:port]`, lowercased, in one allocation.
fn origin_of_url_parts(scheme: &str, host: &str) -> Option<String> {
    let mut origin = format!("{scheme}://{host}");
    origin.make_ascii_lowercase();
    Some(origin)
}

/// Checks the origin list of a publishable key's metadata.
///
/// # Errors
/// [`Error::InvalidInput`] when it is missing, empty, or holds something
/// that is not an `http(s)://host[:port]` origin.
pub fn validate_origins(list: Option<&str>) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidInput(format!(
            "a publishable key needs `{ALLOWED_ORIGINS}`: {why}"
        )))
    };
    let Some(list) = list else {
        return bad("missing");
    };
    let mut any = false;
    for o in origins(list) {
        any = true;
        if origin_of_url(o).as_deref() != Some(o.to_ascii_lowercase().as_str()) {
            return bad("each entry is an origin such as https://shop.example (no path)");
        }
    }
    if !any {
        return bad("empty");
    }
    Ok(())
}

/// The request's `Origin` and `Referer` header values as sent, gathered by
/// the [`Extractor`](crate::web::Extractor) in the same pass that finds the
/// key, so the gate checks a publishable key's origin without reading the
/// headers again.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestOrigin<'a> {
    origin: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    /// Extraction from a header map: the two are looked up there when
    /// needed (for a publishable key only).
    #[cfg(feature = "http")]
    map: Option<&'a http::HeaderMap>,
}

impl std::fmt::Debug for RequestOrigin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestOrigin")
            .field("origin", &self.origin.is_some())
            .field("referer", &self.referer.is_some())
            .finish()
    }
}

impl<'a> RequestOrigin<'a> {
    /// Reads `Origin` and `Referer` from `headers`.
    fn of<I, N, V>(headers: I) -> Self
    where
        I: IntoIterator<Item = (N, &'a V)>,
        N: AsRef<[u8]>,
        V: AsRef<[u8]> + ?Sized + 'a,
    {
        let mut found = Self::default();
        for (name, value) in headers {
            found.see(name.as_ref(), value.as_ref());
        }
        found
    }

    /// `Origin` and `Referer` of `map`, looked up when needed.
    #[cfg(feature = "http")]
    #[inline]
    pub(crate) fn in_map(map: &'a http::HeaderMap) -> Self {
        Self {
            map: Some(map),
            ..Self::default()
        }
    }

    /// Keeps `value` when `name` is `Origin` or `Referer`.
    #[inline]
    pub(crate) fn see(&mut self, name: &[u8], value: &'a [u8]) {
        if name.len() == 6 && name.eq_ignore_ascii_case(b"origin") {
            self.origin = Some(value);
        } else if name.len() == 7 && name.eq_ignore_ascii_case(b"referer") {
            self.referer = Some(value);
        }
    }

    /// `(scheme, host[:port])` of the request's origin: `Origin`, else the
    /// origin of `Referer`; `None` when neither is an `http(s)` URL.
    fn parts(&self) -> Option<(&'a str, &'a str)> {
        let (origin, referer) = self.values();
        let text = |v: &'a [u8]| std::str::from_utf8(v).ok().map(str::trim);
        match origin {
            Some(o) => text(o).and_then(url_parts),
            None => referer.and_then(text).and_then(url_parts),
        }
    }

    /// The `Origin` and `Referer` values (the last of each, as the scan
    /// keeps them).
    fn values(&self) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        #[cfg(feature = "http")]
        if let Some(map) = self.map {
            let last = |name| {
                map.get_all(name)
                    .iter()
                    .next_back()
                    .map(http::HeaderValue::as_bytes)
            };
            return (last(http::header::ORIGIN), last(http::header::REFERER));
        }
        (self.origin, self.referer)
    }

    /// Whether the request's origin is on `list` (an [`ALLOWED_ORIGINS`]
    /// value). No allocation.
    pub(crate) fn allowed_by(&self, list: Option<&str>) -> bool {
        let (Some((scheme, host)), Some(list)) = (self.parts(), list) else {
            return false;
        };
        origins(list).any(|o| {
            let o = o.as_bytes();
            o.len() == scheme.len() + 3 + host.len()
                && o[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                && &o[scheme.len()..scheme.len() + 3] == b"://"
                && o[scheme.len() + 3..].eq_ignore_ascii_case(host.as_bytes())
        })
    }

    /// The origin to echo in `Access-Control-Allow-Origin` (lowercased).
    pub(crate) fn to_header(self) -> Option<String> {
        self.parts()
            .and_then(|(scheme, host)| origin_of_url_parts(scheme, host))
    }
}

/// Whether `view`, a record whose secret matched, may be used by a request
/// from `origin`: always for a key that is not publishable; for a
/// publishable key only with an origin on its [`ALLOWED_ORIGINS`].
///
/// # Errors
/// [`Error::OriginNotAllowed`] otherwise.
#[inline]
pub(crate) fn check_view(view: &crate::store::KeyView, origin: &RequestOrigin<'_>) -> Result<()> {
    if !view.is_publishable()
        || origin.allowed_by(view.metadata().get(ALLOWED_ORIGINS).map(String::as_str))
    {
        Ok(())
    } else {
        Err(Error::OriginNotAllowed)
    }
}

/// Checks a verified key against the request's origin: for a publishable
/// key, the `Origin` header (or the origin of `Referer` when there is no
/// `Origin`) must be on its [`ALLOWED_ORIGINS`]; the answer is the CORS
/// headers for the response (`Access-Control-Allow-Origin` with that
/// origin, `Vary: Origin`). Other keys pass with no headers.
///
/// The [`Gate`](crate::web::Gate) (and so the axum layer) runs this check
/// itself; call it when verifying outside the gate (the blocking path).
///
/// # Errors
/// [`Error::OriginNotAllowed`] (403) for a publishable key with no origin
/// on the request, an origin not on its list, or no list.
pub fn check_origin<'h, I, N, V>(key: &VerifiedKey, headers: I) -> Result<CorsHeaders>
where
    I: IntoIterator<Item = (N, &'h V)>,
    N: AsRef<[u8]>,
    V: AsRef<[u8]> + ?Sized + 'h,
{
    if !key.view().is_publishable() {
        return Ok(Vec::new());
    }
    let origin = RequestOrigin::of(headers);
    check_view(key.view(), &origin)?;
    Ok(cors_headers(
        origin.to_header().ok_or(Error::OriginNotAllowed)?,
    ))
}

/// The CORS headers of an admitted request from `origin`.
pub(crate) fn cors_headers(origin: String) -> CorsHeaders {
    vec![
        ("access-control-allow-origin", origin),
        ("vary", "Origin".to_owned()),
    ]
}

/// `(scheme, host[:port])` of an `http`/`https` URL; `None` for anything
/// else (including the opaque origin `null`).
fn url_parts(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some((scheme, host))
}

/// The answer to a CORS preflight, or `None` when the request is not one
/// (`method` is not `OPTIONS`, or `Origin` or
/// `Access-Control-Request-Method` is missing). Answer it with status 204
/// and these headers: the origin echoed, the requested method, the headers
/// a key travels in (`authorization`, `content-type` and `key_header`),
/// a max-age of 600 seconds, and `Vary`.
pub fn preflight<'h, I, N, V>(method: &str, headers: I, key_header: &str) -> Option<CorsHeaders>
where
    I: IntoIterator<Item = (N, &'h V)>,
    N: AsRef<[u8]>,
    V: AsRef<[u8]> + ?Sized + 'h,
{
    if !method.eq_ignore_ascii_case("OPTIONS") {
        return None;
    }
    let mut origin = None;
    let mut requested = None;
    for (name, value) in headers {
        let name = name.as_ref();
        let Ok(value) = std::str::from_utf8(value.as_ref()) else {
            continue;
        };
        if name.eq_ignore_ascii_case(b"origin") {
            origin = origin_of_url(value.trim());
        } else if name.eq_ignore_ascii_case(b"access-control-request-method") {
            let m = value.trim();
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) {
                requested = Some(m.to_ascii_uppercase());
            }
        }
    }
    let (origin, method) = (origin?, requested?);
    Some(vec![
        ("access-control-allow-origin", origin),
        ("access-control-allow-methods", method),
        (
            "access-control-allow-headers",
            format!(
                "authorization, content-type, {}",
                key_header.to_ascii_lowercase()
            ),
        ),
        ("access-control-max-age", "600".to_owned()),
        (
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_owned(),
        ),
    ])
}
