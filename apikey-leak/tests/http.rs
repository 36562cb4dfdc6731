//! Both endpoints through their axum routers, as a server sees requests.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use apikey::KeyStatus;
use apikey::limits::{MemoryLimits, Quota};
use apikey::web::ClientIp;
use apikey_leak::{ACCEPTED_BODY, GithubEndpoint, PublicRevoke};
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use support::{FakeGithub, World, alert};
use tower::ServiceExt;

async fn send(app: axum::Router, request: Request<Body>) -> (StatusCode, String, Option<String>) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap(), retry)
}

fn github_request(github: &FakeGithub, body: &str) -> Request<Body> {
    Request::post("/leaks/github")
        .header("Github-Public-Key-Identifier", &github.key_id)
        .header("Github-Public-Key-Signature", github.sign(body.as_bytes()))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_fake_github_posts_a_leak_and_the_key_stops_working() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    let endpoint = Arc::new(GithubEndpoint::new(
        Arc::new(world.responder()),
        github.keys(),
    ));
    let app = apikey_leak::axum::github_router("/leaks/github", endpoint);
    let body = alert(&[key.expose_secret()]);
    let (status, text, _) = send(app.clone(), github_request(&github, &body)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let feedback: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    let err = world
        .manager
        .authenticate(key.expose_secret(), &apikey::Requirement::none(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "REVOKED_API_KEY");
    // Tampered: 401, JSON error.
    let mut request = github_request(&github, &body);
    *request.body_mut() = Body::from(alert(&["other"]));
    let (status, text, _) = send(app.clone(), request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains("BAD_SIGNATURE"), "{text}");
}

#[tokio::test]
async fn an_oversized_alert_is_a_413_without_reading_it_whole() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let endpoint =
        Arc::new(GithubEndpoint::new(Arc::new(world.responder()), github.keys()).with_max_body(64));
    let app = apikey_leak::axum::github_router("/leaks/github", endpoint);
    let body = alert(&["x"; 10]);
    let (status, text, _) = send(app, github_request(&github, &body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
}

#[tokio::test]
async fn the_public_router_reads_the_client_address_and_throttles_it() {
    let world = World::new();
    let key = world.key("sk_live_", "acme").await;
    let endpoint = Arc::new(
        PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new())
            .with_quota(Quota::unlimited().per_minute(1)),
    );
    let app = apikey_leak::axum::public_revoke_router("/keys/revoke", endpoint);
    let request = |from: &str, tokens: &[&str]| {
        let mut r = Request::post("/keys/revoke")
            .body(Body::from(
                serde_json::json!({ "tokens": tokens }).to_string(),
            ))
            .unwrap();
        r.extensions_mut().insert(ClientIp(from.parse().unwrap()));
        r
    };
    let (status, text, _) = send(app.clone(), request("192.0.2.1", &[key.expose_secret()])).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::ACCEPTED, ACCEPTED_BODY)
    );
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        KeyStatus::Revoked
    );
    let (status, _, retry) = send(app.clone(), request("192.0.2.1", &["x"])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry.is_some());
    let (status, text, _) = send(app, request("192.0.2.2", &["junk"])).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::ACCEPTED, ACCEPTED_BODY)
    );
    let events = world.events("revocation_requested");
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn an_oversized_public_request_is_a_413_after_the_throttle() {
    let world = World::new();
    let endpoint = Arc::new(
        PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new())
            .with_quota(Quota::unlimited().per_minute(1))
            .with_max_body(32),
    );
    let app = apikey_leak::axum::public_revoke_router("/keys/revoke", endpoint);
    let request = || {
        let mut r = Request::post("/keys/revoke")
            .body(Body::from(format!(
                r#"{{"tokens":["{}"]}}"#,
                "x".repeat(64)
            )))
            .unwrap();
        r.extensions_mut()
            .insert(ClientIp("192.0.2.9".parse().unwrap()));
        r
    };
    let (status, text, _) = send(app.clone(), request()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let (status, _, _) = send(app, request()).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the throttle counted it"
    );
}

/// A host serving with `into_make_service_with_connect_info` sets only
/// `ConnectInfo<SocketAddr>`: each client still gets its own budget, so one
/// client cannot use up everyone's.
#[tokio::test]
async fn connect_info_gives_each_client_its_own_budget() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    let world = World::new();
    let endpoint = Arc::new(
        PublicRevoke::new(Arc::new(world.responder()), MemoryLimits::new())
            .with_quota(Quota::unlimited().per_minute(1)),
    );
    let app = apikey_leak::axum::public_revoke_router("/keys/revoke", endpoint);
    let request = |from: &str| {
        let mut r = Request::post("/keys/revoke")
            .body(Body::from(r#"{"tokens":["junk"]}"#))
            .unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(from.parse::<SocketAddr>().unwrap()));
        r
    };
    let (status, _, _) = send(app.clone(), request("192.0.2.1:5000")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = send(app.clone(), request("192.0.2.1:5001")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = send(app, request("192.0.2.2:5000")).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "another client, its own budget"
    );
    let events = world.events("revocation_requested");
    assert_eq!(
        events
            .iter()
            .filter_map(|e| match &e.kind {
                apikey::AuditKind::RevocationRequested { reporter, .. } => *reporter,
                _ => None,
            })
            .count(),
        2
    );
}

/// Bad-signature alerts from one address are refused with 429 once the
/// address has failed `max_failures` times, before the body is read (an
/// oversized body gets 429, not 413); other addresses, and GitHub's good
/// alerts, are not affected.
#[tokio::test]
async fn bad_signature_floods_are_throttled_per_address() {
    use apikey::limits::FailureThrottleConfig;
    let world = World::new();
    let github = FakeGithub::new(3);
    let forger = FakeGithub::new(9);
    let endpoint = Arc::new(
        GithubEndpoint::new(Arc::new(world.responder()), github.keys())
            .with_max_body(4096)
            .with_failure_throttle(FailureThrottleConfig {
                max_failures: 3,
                ..FailureThrottleConfig::default()
            }),
    );
    let app = apikey_leak::axum::github_router("/leaks/github", endpoint);
    let from = |mut r: Request<Body>, ip: &str| {
        r.extensions_mut().insert(ClientIp(ip.parse().unwrap()));
        r
    };
    let body = alert(&["x"]);
    // A forged signature under GitHub's identifier.
    let forged = || {
        Request::post("/leaks/github")
            .header("Github-Public-Key-Identifier", &github.key_id)
            .header("Github-Public-Key-Signature", forger.sign(body.as_bytes()))
            .body(Body::from(body.clone()))
            .unwrap()
    };
    for _ in 0..3 {
        let (status, text, _) = send(app.clone(), from(forged(), "198.51.100.7")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    }
    let (status, text, retry) = send(app.clone(), from(forged(), "198.51.100.7")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    assert!(retry.is_some());
    // Refused before the body is read: an oversized one is not a 413.
    let huge = alert(&["y"; 1000]);
    let (status, _, _) = send(
        app.clone(),
        from(github_request(&github, &huge), "198.51.100.7"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Another address, and GitHub's genuine alerts, go through.
    let (status, text, _) = send(
        app.clone(),
        from(github_request(&github, &body), "192.0.2.50"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for _ in 0..5 {
        let (status, text, _) = send(
            app.clone(),
            from(github_request(&github, &body), "192.0.2.51"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
}
