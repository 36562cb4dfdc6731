//! The OpenAPI 3.1 document of the router, embedded and served at
//! `GET /v1/openapi.json`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};

/// The OpenAPI 3.1 document (JSON) of every route in [`crate::ROUTES`].
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(crate) async fn document() -> Response {
    let mut r = OPENAPI_JSON.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
