//! The key-management surface of [`apikey`] on axum: the seed-001
//! `/v1/api-keys` REST API with its authorization rules, a self-service keys
//! page, `GET /v1/rate-limit`, and an OpenAPI 3.1 document, as one
//! [`Router`](axum::Router) a service mounts.
//!
//! * [`ManageApi`] builds the router over a [`KeyManager`](apikey::KeyManager)
//!   and a host-supplied [`ResolveCaller`]: the library never logs users in.
//!   The caller is a signed-in user of the app ([`Caller::user`], an account
//!   admin with [`Caller::admin_of`]) or a management-scoped API key
//!   ([`KeyCaller`]).
//! * Rules: a caller sees only the keys of owners it may manage, and a key
//!   caller only those of its own environment (any other key id is 404,
//!   never 403); a key it creates, changes, rotates or derives never holds
//!   more than the caller, and a key caller changes (enables, disables,
//!   rotates, derives from, revokes, deletes) only keys within its own
//!   bounds ([`Bounds`]: scopes, environment, expiry, IP allowlist; 403
//!   `INSUFFICIENT_SCOPE` naming the field); only an account admin enables
//!   (approves) a key pending approval; the owner limit
//!   is the manager's (409 `KEY_LIMIT_REACHED`); every call is logged with
//!   its actor ([`ManageApi::with_call_log`]) and every change audited by the
//!   manager's sink. The full key appears only in the `201` of a create, a
//!   rotation and a derivation (`POST /v1/api-keys/{id}/derive`: a child key
//!   that only narrows its parent, see `KeyManager::derive`), with
//!   `Cache-Control: no-store`.
//! * Seed 002's credit limits per user per API:
//!   [`ManageApi::router_with_credits`] adds `GET`/`PUT
//!   /v1/credits/{owner}/{api}` (setting them is for account admins only).
//! * Bad input is 400 `INVALID_REQUEST` (or `INVALID_SCOPE`) naming the
//!   field in `details.field`; unknown fields are refused; bodies are
//!   bounded ([`ManageConfig::max_body`]).
//! * The page (`GET /keys`) is one HTML file, one script and one style
//!   sheet, embedded in this crate and served with a strict Content
//!   Security Policy (`script-src 'self'`, no inline script). From a cookie
//!   session, state-changing calls must carry the [`CSRF_HEADER`] and a
//!   same-origin `Origin` (see [`ManageConfig::allow_origin`]).
//!
//! Why a crate of its own: the router needs axum's routing (the core's
//! `axum` feature depends on axum-core only), and the page, the document and
//! the browser test's WebDriver client stay out of the core's dependency
//! set.
#![forbid(unsafe_code)]

mod api;
mod caller;
mod config;
mod credits;
mod error;
mod key_caller;
mod openapi;
mod page;
mod rate_limit;
mod wire;

pub use api::{
    CallRecord, MAX_ALLOWLIST, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_PAGE, ManageApi, ROUTES,
};
pub use caller::{Bounds, Caller, ResolveCaller, Via};
pub use config::{CSRF_HEADER, ManageConfig, ScopeInfo};
pub use error::ApiError;
pub use key_caller::{KeyCaller, client_ip};
pub use openapi::OPENAPI_JSON;
pub use rate_limit::rate_limit_router;

/// The metadata entry holding a key's plan (read by
/// [`QuotaTable`](apikey::web::QuotaTable)'s default).
pub const PLAN_KEY: &str = "plan";
