//! Shared by `benches/web_edge.rs` (the loopback load run), `benches/layer.rs`
//! (criterion) and `examples/callgrind_driver.rs` (instruction counts): one
//! trivial handler, bare and behind `ApiKeyLayer`, over 1,000 keys issued
//! from a fixed seed. One definition, so the three measure the same routes.
#![allow(dead_code)]

use std::sync::Arc;

use apikey::Timestamp;
use apikey::limits::{MemoryLimits, Quota};
use apikey::web::{ApiKeyLayer, Gate, QuotaTable, Route};
use apikey::{
    Authenticator, Clock, Keyring, MemoryStore, NewKey, ServerSecret, UsageRecorder, Verifier,
};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::Request;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The handler: 12 bytes, no extractor, identical on every route.
pub async fn hello() -> &'static str {
    "hello, world"
}

/// The routes measured, in the order they are alternated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No layer.
    Bare,
    /// `ApiKeyLayer` over `MemoryStore`: no limits, no usage recording.
    Memory,
    /// `ApiKeyLayer` over `MemoryStore` with `MemoryLimits` (one quota of
    /// both windows, never reached) and usage recording.
    LimitsUsage,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Bare, Mode::Memory, Mode::LimitsUsage];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare axum (no auth)",
            Mode::Memory => "ApiKeyLayer over MemoryStore",
            Mode::LimitsUsage => "ApiKeyLayer, MemoryLimits + usage",
        }
    }
}

/// A quota of both windows that a benchmark never exhausts.
pub const WIDE: Quota = Quota::new(Some(u32::MAX), Some(u32::MAX));

/// 1,000 keys (fixed seed) in a `MemoryStore`, and their texts.
pub fn keys(now: Timestamp) -> (Verifier, MemoryStore, Vec<String>) {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7u8; 32]).unwrap()).unwrap());
    let store = MemoryStore::new();
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let mut texts = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let (key, record) = verifier
            .issue_with_rng(NewKey::new("sk_live_").owner("org_bench"), now, &mut rng)
            .unwrap();
        store.insert_sync(record).unwrap();
        texts.push(key.expose_secret().to_owned());
    }
    (verifier, store, texts)
}

/// The router of one mode, over `store`, reading `clock`.
pub fn router<C: Clock + Clone + 'static>(
    mode: Mode,
    verifier: &Verifier,
    store: &Arc<MemoryStore>,
    clock: C,
) -> Router {
    // No usage unless the mode says so (`LimitsUsage`).
    let auth =
        Authenticator::read_only_with_clock(verifier.clone(), Arc::clone(store), clock.clone());
    let route = get(hello);
    let route = match mode {
        Mode::Bare => route,
        Mode::Memory => route.route_layer(ApiKeyLayer::new(
            Arc::new(Gate::new(auth)),
            Route::any_key(),
        )),
        Mode::LimitsUsage => {
            let auth = auth.with_usage(Arc::new(UsageRecorder::new(
                std::time::Duration::from_secs(3_600),
            )));
            let gate = Gate::new(auth)
                .with_limits(MemoryLimits::with_clock(clock))
                .with_quotas(QuotaTable::fixed(WIDE));
            route.route_layer(ApiKeyLayer::new(Arc::new(gate), Route::any_key()))
        }
    };
    // `with_state` turns the handlers into routes once, as `axum::serve`
    // does (`Router::call` on a stateless router would redo it per call).
    Router::new().route("/", route).with_state(())
}

/// The request every mode is sent: `GET /` with an `X-API-Key` header and
/// the headers a typical client sends.
pub fn request(key: &str) -> Request<Body> {
    Request::builder()
        .uri("/")
        .header("host", "127.0.0.1")
        .header("user-agent", "web-edge-bench")
        .header("accept", "*/*")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}
