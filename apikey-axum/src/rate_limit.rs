//! `GET /v1/rate-limit` (seed 001): the caller key's rate-limit window,
//! `{"limit", "remaining", "reset", "reset_at"}` with the `X-RateLimit-*`
//! headers, behind the app's own [`Gate`].

use std::sync::Arc;

use apikey::limits::Limits;
use apikey::web::{Admitted, ApiKeyLayer, Gate, Route};
use apikey::{Clock, KeyStore};
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

#[derive(Serialize)]
struct RateLimitBody {
    limit: Option<u32>,
    remaining: Option<u32>,
    reset: Option<i64>,
    reset_at: Option<String>,
}

async fn rate_limit(admitted: Admitted) -> Response {
    let body = match &admitted.rate_limit {
        Some(info) => {
            let reset = info.reset_at_unix(admitted.now.as_unix_secs());
            RateLimitBody {
                limit: Some(info.limit),
                remaining: Some(info.remaining),
                reset: Some(reset),
                reset_at: apikey::Timestamp::from_unix_secs(reset)
                    .ok()
                    .map(|t| t.to_string()),
            }
        }
        // No window enforced for this key.
        None => RateLimitBody {
            limit: None,
            remaining: None,
            reset: None,
            reset_at: None,
        },
    };
    let mut r = (
        StatusCode::OK,
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /v1/rate-limit` guarded by `gate` for any valid key, at no credit
/// cost; the request itself is counted by the key's rate limit, and the
/// layer adds `X-RateLimit-Limit`, `-Remaining` and `-Reset`. `limit`,
/// `remaining`, `reset` and `reset_at` are `null` when no window applies to
/// the key.
pub fn rate_limit_router<S, C, L>(gate: Arc<Gate<S, C, L>>) -> Router
where
    S: KeyStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
{
    Router::new().route(
        "/v1/rate-limit",
        get(rate_limit).route_layer(ApiKeyLayer::new(gate, Route::any_key().unmetered())),
    )
}
