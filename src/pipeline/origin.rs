//! A publishable key's origin allowlist: the metadata entry that holds it,
//! its validation when a key is made or changed, and the check of a
//! request's `Origin` / `Referer` that the pipeline runs after the secret
//! matched.

use crate::error::{Error, Result};
use crate::record::KeyView;

/// The metadata entry holding a publishable key's allowed origins,
/// separated by commas or spaces (`https://shop.example, https://www.shop.example`).
pub const ALLOWED_ORIGINS: &str = "apikey.allowed_origins";

/// The origins in an [`ALLOWED_ORIGINS`] value.
pub(crate) fn origins(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ']).filter(|o| !o.is_empty())
}

/// `scheme://host[:port]` of an `http`/`https` URL, lowercased; `None`
/// for anything else (including the opaque origin `null`).
pub(crate) fn origin_of_url(url: &str) -> Option<String> {
    url_parts(url).and_then(|(scheme, host)| origin_of_url_parts(scheme, host))
}

/// `scheme://host[:port]`, lowercased, in one allocation.
pub(crate) fn origin_of_url_parts(scheme: &str, host: &str) -> Option<String> {
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
    pub(crate) fn of<I, N, V>(headers: I) -> Self
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
pub(crate) fn check_view(view: &KeyView, origin: &RequestOrigin<'_>) -> Result<()> {
    if !view.is_publishable()
        || origin.allowed_by(view.metadata().get(ALLOWED_ORIGINS).map(String::as_str))
    {
        Ok(())
    } else {
        Err(Error::OriginNotAllowed)
    }
}

/// `(scheme, host[:port])` of an `http`/`https` URL; `None` for anything
/// else (including the opaque origin `null`).
pub(crate) fn url_parts(url: &str) -> Option<(&str, &str)> {
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
