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
//! # let now = apikey::Timestamp::MIN;
//! let pre = preflight("OPTIONS", [("Origin", "https://shop.example"), ("Access-Control-Request-Method", "POST")], "x-api-key");
//! assert!(pre.is_some_and(|h| h.iter().any(|(n, v)| *n == "access-control-allow-origin" && v == "https://shop.example")));
//!
//! let (key, record) = verifier.issue(
//!     NewKey::new("pk_live_").scopes(["search:query"]).metadata(ALLOWED_ORIGINS, "https://shop.example"),
//!     now,
//! )?;
//! let parsed = verifier.parse(key.expose_secret())?;
//! let ok = verifier.verify(&parsed, Some(std::sync::Arc::new(KeyView::from_record(&record))), &now, &Requirement::none(), None)?;
//! assert!(check_origin(&ok, [("Origin", "https://shop.example")]).is_ok());
//! assert_eq!(check_origin(&ok, [("Origin", "https://evil.example")]).unwrap_err().code(), "ORIGIN_NOT_ALLOWED");
//! assert_eq!(check_origin(&ok, [("Referer", "https://shop.example/cart?x=1")]).map(|h| h.len()).ok(), Some(2));
//! assert!(check_origin(&ok, std::iter::empty::<(&str, &str)>()).is_err());
//! # Ok::<(), Error>(())
//! ```

use crate::error::{Error, Result};
pub use crate::pipeline::origin::{ALLOWED_ORIGINS, validate_origins};
use crate::pipeline::{RequestOrigin, check_view, origin_of_url};
use crate::verify::VerifiedKey;

/// Headers to add to a response.
pub type CorsHeaders = Vec<(&'static str, String)>;

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
