//! [`KeyCaller`]: a [`ResolveCaller`] for seed 001's
//! `Authorization: Bearer EXISTING_API_KEY`: an API key holding a
//! management scope.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use apikey::limits::Limits;
use apikey::web::{ClientIp, Decision, Extracted, Gate, Route};
use apikey::{Clock, Error, KeyManager, KeyStoreWrite, Requirement, Result, UsageStore};
#[cfg(feature = "connect-info")]
use axum::extract::ConnectInfo;
use http::Extensions;
use http::request::Parts;

use crate::caller::{Caller, ResolveCaller};
use crate::error::ApiError;

/// Resolves the caller from an API key presented in the request
/// (`Authorization: Bearer` or `X-API-Key`), through `gate` (so the
/// failure throttle, rate limits and audit apply) with a required
/// management scope. The caller manages the key's owner's keys, bounded by
/// what the key holds ([`Caller::from_key`]).
///
/// ```
/// use std::sync::Arc;
/// use apikey::*;
/// use apikey::web::Gate;
/// use apikey_axum::KeyCaller;
/// let verifier = Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?);
/// let manager = Arc::new(KeyManager::new(verifier, MemoryStore::new()));
/// let gate = Arc::new(Gate::from_manager(&manager));
/// let resolver = KeyCaller::new(gate, Arc::clone(&manager), "keys:manage")?;
/// # let _ = resolver;
/// # Ok::<(), apikey::Error>(())
/// ```
#[derive(Debug)]
pub struct KeyCaller<S, C, L> {
    gate: Arc<Gate<Arc<S>, C, L>>,
    manager: Arc<KeyManager<S, C, L>>,
    route: Route,
    /// `POST /v1/api-keys`: a new key has a limits account of its own, so
    /// an exhausted key may not create one (it would spend afresh); the
    /// balances are checked, nothing is spent.
    create_route: Route,
}

impl<S, C, L> KeyCaller<S, C, L>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
{
    /// Keys must hold `scope` to manage keys.
    ///
    /// # Errors
    /// [`Error::InvalidScope`] when `scope` is not a valid scope.
    pub fn new(
        gate: Arc<Gate<Arc<S>, C, L>>,
        manager: Arc<KeyManager<S, C, L>>,
        scope: &str,
    ) -> Result<Self> {
        let requirement = Requirement::scope(scope)?;
        Ok(Self {
            gate,
            manager,
            route: Route::new(requirement.clone()).unmetered(),
            create_route: Route::new(requirement).cost(0),
        })
    }

    /// Whether the request presents an API key at all (so a host can fall
    /// back to its session otherwise).
    pub fn presents_key(&self, parts: &Parts) -> bool {
        parts.headers.contains_key(http::header::AUTHORIZATION)
            || parts
                .headers
                .contains_key(self.gate.extractor().header_name())
    }
}

impl<S, C, L> ResolveCaller for KeyCaller<S, C, L>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
{
    async fn resolve(&self, parts: &Parts) -> Result<Caller, ApiError> {
        let client = client_ip(&parts.extensions);
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        // Managing keys is unmetered (revoking a leaked key never waits
        // for a refill), creating one is not: see `create_route`.
        let creates = parts.method == http::Method::POST && parts.uri.path().ends_with("/api-keys");
        let route = if creates {
            &self.create_route
        } else {
            &self.route
        };
        // The route goes with the key, so its last use names this call
        // (as the layer does on every other route).
        let decision = match self.gate.extract(headers, parts.uri.query(), client, route) {
            Ok(Extracted::Key(key)) => {
                let key = key.on_route(parts.method.as_str(), parts.uri.path());
                self.gate.admit(key, client, route).await
            }
            Ok(Extracted::NotOurs) => Decision::NotOurs,
            Err(rejection) => Decision::Rejected(rejection),
        };
        let key = match decision {
            Decision::Admitted(ok) => ok.key,
            Decision::NotOurs => return Err(Error::MissingApiKey.into()),
            Decision::Rejected(no) => {
                let response = no.to_response();
                return Err(ApiError::from(no.error).with_headers_of(&response));
            }
        };
        let summary = self.manager.get(key.id()).await?;
        Caller::from_key(&summary).ok_or_else(|| Error::InvalidApiKey.into())
    }
}

/// The client address of a request, from its extensions: a [`ClientIp`]
/// (set by the host from a trusted proxy's header, or from the peer), else
/// (feature `connect-info`, on by default) axum's `ConnectInfo<SocketAddr>`
/// (set by `into_make_service_with_connect_info::<SocketAddr>()`), else a
/// plain `SocketAddr`. `None` when none is set: the failure throttle then
/// has no address to count against, and a key with an IP allowlist is
/// refused.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// let mut ext = http::Extensions::new();
/// assert_eq!(apikey_axum::client_ip(&ext), None);
/// ext.insert("192.0.2.1:4000".parse::<SocketAddr>().unwrap());
/// assert_eq!(apikey_axum::client_ip(&ext), Some("192.0.2.1".parse::<IpAddr>().unwrap()));
/// ext.insert(apikey::web::ClientIp("198.51.100.9".parse().unwrap()));
/// assert_eq!(apikey_axum::client_ip(&ext), Some("198.51.100.9".parse::<IpAddr>().unwrap()));
/// ```
pub fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| connect_info(extensions))
        .or_else(|| extensions.get::<SocketAddr>().map(SocketAddr::ip))
}

/// The peer address axum's `into_make_service_with_connect_info` records.
#[cfg(feature = "connect-info")]
fn connect_info(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Without the `connect-info` feature, axum's `ConnectInfo` is not read.
#[cfg(not(feature = "connect-info"))]
fn connect_info(_: &Extensions) -> Option<IpAddr> {
    None
}
