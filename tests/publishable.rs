//! Issue 20, item 4: publishable keys over real HTTP: the origin
//! allowlist (Origin, Referer as fallback), CORS preflight, public scopes
//! only.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::Reply;

use std::net::SocketAddr;
use std::sync::Arc;

use apikey::web::publishable::{ALLOWED_ORIGINS, check_origin, preflight};
use apikey::web::{Decision, Gate, Route};
use apikey::*;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

type M = KeyManager<MemoryStore, ManualClock>;

fn manager() -> M {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[21; 32]).unwrap()).unwrap())
            .with_prefix("pk_live_", Environment::Live)
            .unwrap();
    KeyManager::with_clock(
        verifier,
        MemoryStore::new(),
        ManualClock::new("2026-03-01T12:00:00Z".parse::<Timestamp>().unwrap()),
    )
    .with_public_scopes(["search:query"])
    .unwrap()
}

struct App {
    gate: Gate<Arc<MemoryStore>, ManualClock>,
    route: Route,
}

fn with_headers(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
) -> Response {
    let mut r = (status, body).into_response();
    for (n, v) in headers {
        r.headers_mut().insert(n, v.parse().unwrap());
    }
    r
}

/// The route a web page calls: preflight, gate, origin check.
async fn search(State(app): State<Arc<App>>, method: Method, headers: HeaderMap) -> Response {
    if let Some(h) = preflight(method.as_str(), headers.iter(), "x-api-key") {
        return with_headers(StatusCode::NO_CONTENT, h, String::new());
    }
    match app.gate.check(headers.iter(), None, None, &app.route).await {
        Decision::Admitted(ok) => match check_origin(&ok.key, headers.iter()) {
            Ok(cors) => with_headers(StatusCode::OK, cors, format!("hello {}", ok.key.id())),
            Err(e) => with_headers(
                StatusCode::from_u16(e.http_status()).unwrap(),
                Vec::new(),
                e.code().as_str().to_owned(),
            ),
        },
        Decision::Rejected(r) => with_headers(
            StatusCode::from_u16(r.error.http_status()).unwrap(),
            Vec::new(),
            r.error.code().as_str().to_owned(),
        ),
        Decision::NotOurs => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn serve(m: &M) -> SocketAddr {
    let app = Arc::new(App {
        gate: Gate::from_manager(m),
        route: Route::new(Requirement::scope("search:query").unwrap()),
    });
    let router = Router::new()
        .route("/v1/query", any(search))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn request(addr: SocketAddr, method: &str, headers: &[(&str, &str)]) -> Reply {
    http_support::request(addr, method, "/v1/query", headers).await
}

/// 204 with the CORS headers a preflight from `https://shop.example` for
/// `POST` with `x-api-key, content-type` needs.
fn assert_preflight_answer(r: &Reply) {
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    let allowed = r.header("access-control-allow-headers").unwrap();
    assert!(
        allowed.contains("x-api-key") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("vary").unwrap().contains("Origin"));
}

async fn publishable(m: &M) -> ApiKey {
    let (key, s) = m
        .create(
            NewKey::new("pk_live_").scopes(["search:query"]).metadata(
                ALLOWED_ORIGINS,
                "https://shop.example, https://www.shop.example",
            ),
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    assert!(m.record(s.id).await.unwrap().is_publishable());
    key
}

#[tokio::test]
async fn publishable_key_from_an_allowed_origin_is_admitted_with_cors_headers() {
    let m = manager();
    let key = publishable(&m).await;
    let addr = serve(&m).await;
    let r = request(
        addr,
        "POST",
        &[
            ("X-API-Key", key.expose_secret()),
            ("Origin", "https://shop.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Referer as the fallback when there is no Origin.
    let r = request(
        addr,
        "GET",
        &[
            ("X-API-Key", key.expose_secret()),
            ("Referer", "https://www.shop.example/search?q=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn publishable_key_from_a_wrong_origin_is_403() {
    let m = manager();
    let key = publishable(&m).await;
    let addr = serve(&m).await;
    for origin in [
        "https://evil.example",
        "http://shop.example",
        "https://shop.example.evil.example",
        "null",
    ] {
        let r = request(
            addr,
            "POST",
            &[("X-API-Key", key.expose_secret()), ("Origin", origin)],
        )
        .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, "ORIGIN_NOT_ALLOWED"),
            "{origin}"
        );
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
    // An allowed Referer does not rescue a wrong Origin.
    let r = request(
        addr,
        "POST",
        &[
            ("X-API-Key", key.expose_secret()),
            ("Origin", "https://evil.example"),
            ("Referer", "https://shop.example/"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn publishable_key_with_no_origin_is_403() {
    let m = manager();
    let key = publishable(&m).await;
    let addr = serve(&m).await;
    let r = request(addr, "GET", &[("X-API-Key", key.expose_secret())]).await;
    assert_eq!((r.status, r.body.as_str()), (403, "ORIGIN_NOT_ALLOWED"));
    // A secret key is not subject to origins.
    let (sk, _) = m
        .create(
            NewKey::new("sk_live_").scopes(["search:query"]),
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    let r = request(addr, "GET", &[("X-API-Key", sk.expose_secret())]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn cors_preflight_is_204_with_the_right_headers() {
    let m = manager();
    let addr = serve(&m).await;
    let r = request(
        addr,
        "OPTIONS",
        &[
            ("Origin", "https://shop.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-api-key, content-type"),
        ],
    )
    .await;
    assert_preflight_answer(&r);
    // An OPTIONS without the preflight headers is not a preflight.
    let r = request(addr, "OPTIONS", &[("Origin", "https://shop.example")]).await;
    assert_eq!((r.status, r.body.as_str()), (401, "MISSING_API_KEY"));
}

#[tokio::test]
async fn non_public_scope_is_refused_at_creation() {
    let m = manager();
    let admin = Actor::new("admin");
    let err = m
        .create(
            NewKey::new("pk_live_")
                .scopes(["corpus:admin"])
                .metadata(ALLOWED_ORIGINS, "https://shop.example"),
            &admin,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    // No origin allowlist: refused too.
    for origins in [
        None,
        Some(""),
        Some("shop.example"),
        Some("https://shop.example/path"),
    ] {
        let mut new = NewKey::new("pk_live_").scopes(["search:query"]);
        if let Some(o) = origins {
            new = new.metadata(ALLOWED_ORIGINS, o);
        }
        let err = m.create(new, &admin).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{origins:?}");
    }
    // Without public scopes declared, no publishable key can be made.
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[21; 32]).unwrap()).unwrap())
            .with_prefix("pk_live_", Environment::Live)
            .unwrap();
    let bare = KeyManager::new(verifier, MemoryStore::new());
    let err = bare
        .create(
            NewKey::new("pk_live_").metadata(ALLOWED_ORIGINS, "https://shop.example"),
            &admin,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_STATE");
    // An update cannot widen it either.
    let key = publishable(&m).await;
    let id = m.verifier().parse(key.expose_secret()).unwrap().id();
    let err = m
        .update(id, KeyUpdate::new().scopes(["corpus:admin"]), &admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
    let err = m
        .update(id, KeyUpdate::new().metadata(Default::default()), &admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_REQUEST");
}

#[tokio::test]
async fn publishable_key_beyond_narrowed_public_scopes_is_refused_at_verification() {
    let m = manager();
    let (key, _) = m
        .create(
            NewKey::new("pk_live_")
                .scopes(["search:query"])
                .metadata(ALLOWED_ORIGINS, "https://shop.example"),
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    m.authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap();
    // The service stops offering `search:query` publicly: the key is
    // refused, not revoked.
    let narrowed = KeyManager::with_clock(
        m.verifier().clone(),
        Arc::clone(m.authenticator().store()),
        m.clock().clone(),
    )
    .with_public_scopes(["search:suggest"])
    .unwrap();
    let err = narrowed
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "POLICY_VIOLATION");
}

// ----- issue 20 item 4 through the axum layer: the gate checks origins -----

/// The `pk` plan allows 2 requests a minute; the default quota is
/// unlimited.
const PK_PLAN: apikey::limits::Quota = apikey::limits::Quota::new(Some(2), Some(100));

/// `/v1/search` behind `ApiKeyLayer` (mounted with `.layer`, so `OPTIONS`
/// reaches it), over the manager's pipeline with in-memory limits.
async fn serve_layer(m: &M) -> SocketAddr {
    use apikey::limits::MemoryLimits;
    use apikey::web::{ApiKeyLayer, QuotaTable};
    let gate = Arc::new(
        Gate::from_manager(m)
            .with_limits(MemoryLimits::with_clock(m.clock().clone()))
            .with_quotas(QuotaTable::fixed(apikey::limits::Quota::unlimited()).plan("pk", PK_PLAN)),
    );
    let route = Route::new(Requirement::scope("search:query").unwrap());
    let router = Router::new()
        .route(
            "/v1/search",
            any(|key: VerifiedKey| async move { format!("hello {}", key.id()) })
                .layer(ApiKeyLayer::new(gate, route)),
        )
        .route(
            "/v1/admin",
            any(|| async { "admin" }).layer(ApiKeyLayer::new(
                Arc::new(Gate::from_manager(m)),
                Route::new(Requirement::scope("corpus:admin").unwrap()),
            )),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn code_of(r: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_layer_admits_a_publishable_key_from_an_allowed_origin_with_cors_headers() {
    let m = manager();
    let key = publishable(&m).await;
    let addr = serve_layer(&m).await;
    let r = http_support::request(
        addr,
        "POST",
        "/v1/search",
        &[
            ("X-API-Key", key.expose_secret()),
            ("Origin", "https://Shop.Example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("hello "), "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Referer as the fallback when there is no Origin.
    let r = http_support::request(
        addr,
        "GET",
        "/v1/search",
        &[
            ("X-API-Key", key.expose_secret()),
            ("Referer", "https://www.shop.example/search?q=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://www.shop.example")
    );
}

#[tokio::test]
async fn the_layer_refuses_a_publishable_key_from_a_wrong_or_missing_origin() {
    let m = manager();
    let key = publishable(&m).await;
    let addr = serve_layer(&m).await;
    let k = key.expose_secret();
    for headers in [
        vec![("X-API-Key", k), ("Origin", "https://evil.example")],
        vec![("X-API-Key", k), ("Origin", "http://shop.example")],
        vec![
            ("X-API-Key", k),
            ("Origin", "https://shop.example.evil.example"),
        ],
        vec![("X-API-Key", k), ("Origin", "null")],
        vec![("X-API-Key", k), ("Referer", "https://evil.example/")],
        vec![
            ("X-API-Key", k),
            ("Origin", "https://evil.example"),
            ("Referer", "https://shop.example/"),
        ],
        vec![("X-API-Key", k)],
    ] {
        let r = http_support::request(addr, "GET", "/v1/search", &headers).await;
        assert_eq!(
            (r.status, code_of(&r).as_str()),
            (403, "ORIGIN_NOT_ALLOWED"),
            "{headers:?}"
        );
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
}

/// A refused origin is a failure of an authenticated key against the
/// request: charged to the key's own plan (2 a minute here, the default
/// being unlimited), then 429 once it runs out.
#[tokio::test]
async fn origin_failures_of_a_publishable_key_are_charged_to_its_plan() {
    let m = manager();
    let (key, _) = m
        .create(
            NewKey::new("pk_live_")
                .scopes(["search:query"])
                .metadata(ALLOWED_ORIGINS, "https://shop.example")
                .metadata("plan", "pk"),
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    let addr = serve_layer(&m).await;
    let wrong = [
        ("X-API-Key", key.expose_secret()),
        ("Origin", "https://evil.example"),
    ];
    for _ in 0..2 {
        let r = http_support::request(addr, "GET", "/v1/search", &wrong).await;
        assert_eq!(
            (r.status, code_of(&r).as_str()),
            (403, "ORIGIN_NOT_ALLOWED")
        );
    }
    let r = http_support::request(addr, "GET", "/v1/search", &wrong).await;
    assert_eq!(
        (r.status, code_of(&r).as_str()),
        (429, "RATE_LIMITED"),
        "{}",
        r.body
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    // The plan is spent for the right origin too.
    let right = [
        ("X-API-Key", key.expose_secret()),
        ("Origin", "https://shop.example"),
    ];
    let r = http_support::request(addr, "GET", "/v1/search", &right).await;
    assert_eq!((r.status, code_of(&r).as_str()), (429, "RATE_LIMITED"));
}

#[tokio::test]
async fn the_layer_answers_a_cors_preflight_with_204() {
    let m = manager();
    let addr = serve_layer(&m).await;
    let r = http_support::request(
        addr,
        "OPTIONS",
        "/v1/search",
        &[
            ("Origin", "https://shop.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-api-key, content-type"),
        ],
    )
    .await;
    assert_preflight_answer(&r);
    // An OPTIONS without the preflight headers is not a preflight: it
    // needs a key like any request.
    let r = http_support::request(
        addr,
        "OPTIONS",
        "/v1/search",
        &[("Origin", "https://shop.example")],
    )
    .await;
    assert_eq!((r.status, code_of(&r).as_str()), (401, "MISSING_API_KEY"));
}

/// Secret keys are not subject to origins and get no CORS headers; a gate
/// whose prefixes include no publishable one answers no preflight.
#[tokio::test]
async fn secret_keys_and_services_without_publishable_keys_are_unchanged() {
    let m = manager();
    let (sk, _) = m
        .create(
            NewKey::new("sk_live_").scopes(["search:query"]),
            &Actor::new("admin"),
        )
        .await
        .unwrap();
    let addr = serve_layer(&m).await;
    let r = http_support::request(
        addr,
        "GET",
        "/v1/search",
        &[
            ("X-API-Key", sk.expose_secret()),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("access-control-allow-origin"), None);

    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[21; 32]).unwrap()).unwrap());
    let secret_only = KeyManager::new(verifier, MemoryStore::new());
    let gate = Gate::from_manager(&secret_only);
    let preflight = [
        ("Origin", "https://shop.example"),
        ("Access-Control-Request-Method", "POST"),
    ];
    assert!(gate.preflight("OPTIONS", preflight).is_none());
    assert!(
        Gate::from_manager(&m)
            .preflight("OPTIONS", preflight)
            .is_some()
    );
}

/// The audit sampler counts refused origins under their own reason (one
/// reason enum: no second table to forget a variant in).
#[tokio::test]
async fn refused_origins_are_counted_by_the_audit_sampler() {
    let audit = Arc::new(MemoryAuditSink::new());
    let m = manager().with_audit_sink(Arc::clone(&audit));
    let key = publishable(&m).await;
    let gate = Gate::from_manager(&m);
    let route = Route::new(Requirement::scope("search:query").unwrap());
    let d = gate
        .check(
            [
                ("x-api-key", key.expose_secret()),
                ("origin", "https://evil.example"),
            ],
            None,
            None,
            &route,
        )
        .await;
    let Decision::Rejected(r) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.error.code(), "ORIGIN_NOT_ALLOWED");
    let sampled: Vec<(&str, u64)> = audit
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            AuditKind::RejectionsSampled { counts } => Some(counts.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sampled, [("origin_not_allowed", 1)]);
}
