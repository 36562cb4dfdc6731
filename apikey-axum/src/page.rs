//! The self-service keys page: one HTML file, one script, one style sheet,
//! embedded (no build step, no CDN), served under a strict Content Security
//! Policy.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, header};
use serde::Serialize;

use crate::config::{CSRF_HEADER, ManageConfig, ScopeInfo};

const HTML: &str = include_str!("page/keys.html");
const JS: &str = include_str!("page/keys.js");
const CSS: &str = include_str!("page/keys.css");

/// The page's policy: its own script and styles only, calls to its own
/// origin only, no framing, no plugins, no inline script.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

#[derive(Serialize)]
struct PageConfig<'a> {
    title: &'a str,
    scopes: &'a [ScopeInfo],
    prefixes: Vec<(&'static str, &'a str)>,
    csrf_header: &'static str,
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn asset(body: String, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn router(config: &ManageConfig) -> Router {
    let html = HTML.replace("{{title}}", &html_escape(&config.title));
    let page_config = serde_json::to_string(&PageConfig {
        title: &config.title,
        scopes: &config.scopes,
        prefixes: config
            .prefixes
            .iter()
            .map(|(e, p)| (e.as_str(), p.as_str()))
            .collect(),
        csrf_header: CSRF_HEADER,
    })
    .unwrap_or_default();
    Router::new()
        .route(
            "/keys",
            get(move || {
                let html = html.clone();
                async move { asset(html, "text/html; charset=utf-8") }
            }),
        )
        .route(
            "/keys/config.json",
            get(move || {
                let c = page_config.clone();
                async move { asset(c, "application/json") }
            }),
        )
        .route(
            "/keys/keys.js",
            get(|| async { asset(JS.to_owned(), "text/javascript; charset=utf-8") }),
        )
        .route(
            "/keys/keys.css",
            get(|| async { asset(CSS.to_owned(), "text/css; charset=utf-8") }),
        )
}
