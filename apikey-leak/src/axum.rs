//! axum routers for both endpoints (feature `axum`).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use apikey::{Keyring, KeyManager, MemoryStore, ServerSecret, Verifier};
//! # use apikey_leak::{GithubEndpoint, LeakResponder, PublicKeySet, PublicRevoke};
//! # fn demo(keys: PublicKeySet) -> Result<(), apikey::Error> {
//! let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
//! let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()));
//! let responder = Arc::new(LeakResponder::new(manager));
//! let github = Arc::new(GithubEndpoint::new(responder.clone(), keys));
//! let public = Arc::new(PublicRevoke::new(responder, apikey::limits::MemoryLimits::new()));
//! let app: axum::Router = apikey_leak::axum::github_router("/leaks/github", github)
//!     .merge(apikey_leak::axum::public_revoke_router("/keys/revoke", public));
//! # let _ = app; Ok(()) }
//! ```
//!
//! The public endpoint reads the client address from an
//! [`apikey::web::ClientIp`] request extension, else a `SocketAddr`
//! extension, as the crate's key layer does; set one from axum's
//! `ConnectInfo` or a trusted proxy's header.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use apikey::limits::Limits;
use apikey::web::ClientIp;
use apikey::{Clock, KeyStoreWrite, UsageStore};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;

use crate::error::LeakError;
use crate::github::GithubEndpoint;
use crate::keys::KeySource;
use crate::public::PublicRevoke;
use crate::signature::{KEY_ID_HEADER, SIGNATURE_HEADER};

/// A router with `POST path` serving GitHub's alerts.
pub fn github_router<S, K, C, L>(path: &str, endpoint: Arc<GithubEndpoint<S, K, C, L>>) -> Router
where
    S: KeyStoreWrite + UsageStore + 'static,
    K: KeySource + 'static,
    C: Clock + 'static,
    L: Limits + 'static,
{
    Router::new().route(
        path,
        post(move |request: Request| {
            let endpoint = endpoint.clone();
            async move { github_response(&endpoint, request).await }
        }),
    )
}

/// A router with `POST path` serving public revocation requests.
pub fn public_revoke_router<S, Lim, C, L>(
    path: &str,
    endpoint: Arc<PublicRevoke<S, Lim, C, L>>,
) -> Router
where
    S: KeyStoreWrite + UsageStore + 'static,
    Lim: Limits + 'static,
    C: Clock + 'static,
    L: Limits + 'static,
{
    Router::new().route(
        path,
        post(move |request: Request| {
            let endpoint = endpoint.clone();
            async move { public_revoke_response(&endpoint, request).await }
        }),
    )
}

/// Handles one GitHub alert: reads at most the endpoint's body bound (a
/// larger body is refused without being read whole), then
/// [`GithubEndpoint::handle`].
pub async fn github_response<S, K, C, L>(
    endpoint: &GithubEndpoint<S, K, C, L>,
    request: Request,
) -> Response
where
    S: KeyStoreWrite + UsageStore,
    K: KeySource,
    C: Clock,
    L: Limits,
{
    let (parts, body) = request.into_parts();
    let limit = endpoint.max_body();
    let body = match to_bytes(body, limit).await {
        Ok(body) => body,
        Err(e) => return error_response(&body_error(e, limit)),
    };
    let key_id = header_str(&parts.headers, KEY_ID_HEADER);
    let signature = header_str(&parts.headers, SIGNATURE_HEADER);
    match endpoint.handle(key_id, signature, &body).await {
        Ok(report) => json(StatusCode::OK, report.feedback_json()),
        Err(e) => error_response(&e),
    }
}

/// Handles one public revocation request: [`PublicRevoke::handle`] with
/// the client address from the request's extensions.
pub async fn public_revoke_response<S, Lim, C, L>(
    endpoint: &PublicRevoke<S, Lim, C, L>,
    request: Request,
) -> Response
where
    S: KeyStoreWrite + UsageStore,
    Lim: Limits,
    C: Clock,
    L: Limits,
{
    let (parts, body) = request.into_parts();
    let client: Option<IpAddr> = parts
        .extensions
        .get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| parts.extensions.get::<SocketAddr>().map(SocketAddr::ip));
    let limit = endpoint.max_body();
    let answer = match to_bytes(body, limit).await {
        Ok(body) => endpoint.answer(client, Some(&body)).await,
        Err(e) => match body_error(e, limit) {
            LeakError::BodyTooLarge { .. } => endpoint.answer(client, None).await,
            broken => crate::public::PublicAnswer::refused(broken),
        },
    };
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::ACCEPTED);
    let mut response = json(status, answer.body().to_owned());
    if let Some(wait) = answer.retry_after()
        && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Over the bound (413), or a body that could not be read (400).
fn body_error(error: axum::Error, limit: usize) -> LeakError {
    let inner = error.into_inner();
    if inner.is::<http_body_util::LengthLimitError>() {
        LeakError::BodyTooLarge { limit }
    } else {
        LeakError::MalformedBody("a readable request body".to_owned())
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn error_response(error: &LeakError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, error.to_json())
}

fn json(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
