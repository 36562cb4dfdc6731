//! The management REST API (apikey-axum's router, credits routes included)
//! with hostile query strings, path ids and JSON bodies: never a panic,
//! never a 5xx over a store that cannot fail, every refusal is the JSON
//! error shape, and no response carries the secret of a key other than the
//! one the response itself mints.
//!
//! Input: up to 4 requests separated by `0xff` (never in UTF-8 text).
//! Each request: a byte for the method (`& 7 % 5`) and the caller (`>> 3 % 5`:
//! user, account admin, bounded key caller, user needing an upgrade, no
//! caller), a byte for the route (`& 15 % 12`) and the key it names (`>> 4 % 4`:
//! alice's, bob's, the last one minted, junk), then the query string up to
//! the first `\n` (bytes a URI cannot hold are percent-encoded), then the
//! body.
#![no_main]

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use apikey::limits::MemoryLimits;
use apikey::{
    Actor, Environment, KeyManager, Keyring, ManualClock, MemoryStore, NewKey, ScopeSet,
    ServerSecret, Timestamp, Verifier,
};
use apikey_axum::{ApiError, Bounds, Caller, ManageApi, ManageConfig, ResolveCaller, Via};
use libfuzzer_sys::fuzz_target;
use tower_service::Service;

/// 2026-03-01T12:00:00Z.
const T0: Timestamp = match Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => Timestamp::MIN,
};

struct Callers;

impl ResolveCaller for Callers {
    async fn resolve(&self, parts: &http::request::Parts) -> Result<Caller, ApiError> {
        let who = parts
            .headers
            .get("x-fuzz-caller")
            .and_then(|v| v.to_str().ok());
        match who {
            Some("user") => Ok(Caller::user("alice")),
            Some("admin") => Ok(Caller::user("admin").admin_of(["alice", "bob"])),
            Some("key") => Ok(Caller::user("alice")
                .via(Via::ApiKey)
                .actor_id("key:fuzz")
                .with_bounds(Bounds {
                    scopes: ScopeSet::parse(["tasks:read", "keys:manage"]).ok(),
                    environments: Some(vec![Environment::Live]),
                    expires_at: Some(T0 + std::time::Duration::from_secs(90 * 86_400)),
                    ip_allowlist: "10.0.0.0/8".parse().ok().into_iter().collect(),
                })),
            Some("free") => Ok(Caller::user("alice").needs_upgrade("upgrade")),
            _ => Err(ApiError::code_only(apikey::ErrorCode::MissingApiKey)),
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

/// `REST_API_TRACE=1`: print each request and answer (for triage).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("REST_API_TRACE").is_some())
}

fn block_on<F: Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

const ROUTES: [(&str, &str); 12] = [
    ("/v1/api-keys", ""),
    ("/v1/api-keys/", ""),
    ("/v1/api-keys/", "/disable"),
    ("/v1/api-keys/", "/enable"),
    ("/v1/api-keys/", "/rotate"),
    ("/v1/api-keys/", "/derive"),
    ("/v1/credits/alice/rest", ""),
    ("/v1/credits/bob/batch", ""),
    ("/v1/credits/alice/nope", ""),
    ("/v1/credits/", "/rest"),
    ("/v1/openapi.json", ""),
    ("/keys", ""),
];

const METHODS: [http::Method; 5] = [
    http::Method::GET,
    http::Method::POST,
    http::Method::PATCH,
    http::Method::DELETE,
    http::Method::PUT,
];

const CALLERS: [&str; 5] = ["user", "admin", "key", "free", ""];

/// Percent-encodes what a URI query cannot hold, so the request reaches
/// the handler (`%` itself is kept: bad escapes are part of the input).
fn query_text(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && !b"\"#<>\\^`{|}".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let clock = ManualClock::new(T0);
    let Ok(secret) = ServerSecret::from_bytes(&[9; 32]) else {
        return;
    };
    let Ok(ring) = Keyring::new(1, secret) else {
        return;
    };
    let manager = Arc::new(
        KeyManager::with_clock(Verifier::new(ring), MemoryStore::new(), clock.clone())
            .with_limits(Arc::new(MemoryLimits::with_clock(clock.clone())))
            .with_max_keys_per_owner(4),
    );
    let config = ManageConfig::new("sk_live_")
        .prefix(Environment::Test, "sk_test_")
        .scope("tasks:read", "View tasks")
        .scope("tasks:write", "Change tasks")
        .scope("keys:manage", "Manage keys")
        .plan("free")
        .plan("pro")
        .credit_api("rest")
        .credit_api("batch")
        .max_body(4096);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&calls);
    let mut app = ManageApi::new(Arc::clone(&manager), Callers, config)
        .with_call_log(move |c| {
            if let Ok(mut l) = log.lock() {
                l.push(c.clone());
            }
        })
        .router_with_credits();

    // Two keys minted outside the API: alice's (live) and bob's (test).
    let admin = Actor::new("setup");
    let mut minted: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    for (owner, prefix, scopes) in [
        ("alice", "sk_live_", &["tasks:read"][..]),
        ("bob", "sk_test_", &["tasks:read", "tasks:write"][..]),
    ] {
        let new = NewKey::new(prefix)
            .owner(owner)
            .name("setup")
            .scopes(scopes.iter().copied());
        match block_on(manager.create(new, &admin)) {
            Ok((key, summary)) => {
                ids.push(summary.id.to_string());
                minted.push(key.expose_secret().to_owned());
            }
            Err(e) => panic!("setup key: {e}"),
        }
    }

    for chunk in data.split(|&b| b == 0xff).take(4) {
        let (b0, b1, rest) = match chunk {
            [a, b, rest @ ..] => (*a, *b, rest),
            [a] => (*a, 0, &[][..]),
            [] => (0, 0, &[][..]),
        };
        let method = METHODS[usize::from((b0 & 7) % 5)].clone();
        let caller = CALLERS[usize::from((b0 >> 3) % 5)];
        let (base, action) = ROUTES[usize::from((b1 & 15) % 12)];
        let (query, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let mut path = base.to_owned();
        if base.ends_with('/') {
            match (b1 >> 4) % 4 {
                0 => path.push_str(&ids[0]),
                1 => path.push_str(&ids[1]),
                2 => path.push_str(ids.last().map_or("", String::as_str)),
                _ => path.push_str(&query_text(query)),
            }
            path.push_str(action);
        }
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query_text(query));
        }
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(&path)
            .header("host", "keys.example")
            .header("content-type", "application/json");
        if !caller.is_empty() {
            req = req.header("x-fuzz-caller", caller);
        }
        if caller != "key" {
            req = req.header(apikey_axum::CSRF_HEADER, "1");
        }
        let Ok(req) = req.body(axum::body::Body::from(body.to_vec())) else {
            continue;
        };
        let response = match block_on(app.call(req)) {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = response.status();
        let json_type = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = match block_on(axum::body::to_bytes(response.into_body(), 1 << 22)) {
            Ok(b) => b,
            Err(e) => panic!("response body: {e}"),
        };
        let text = String::from_utf8_lossy(&bytes);
        if trace() {
            eprintln!("{method} {path} as {caller:?}: {status} {text}");
        }
        assert!(
            !status.is_server_error(),
            "{status} for {method} {path} as {caller:?}: {text}"
        );
        // No response repeats a secret minted before it.
        for key in &minted {
            assert!(
                !text.contains(key.as_str()),
                "{method} {path} echoed an earlier key's secret: {text}"
            );
        }
        if status.is_client_error() && json_type {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
            assert_eq!(value["success"], serde_json::json!(false), "{text}");
            let code = value["error"]["code"].as_str().unwrap_or("");
            assert!(
                !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "error without a code: {text}"
            );
        }
        if status.is_success() && json_type {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
            if let (Some(key), Some(id)) = (value["key"].as_str(), value["id"].as_str()) {
                assert_eq!(status, http::StatusCode::CREATED, "{text}");
                match manager.verifier().parse(key) {
                    Ok(parsed) => assert_eq!(parsed.id().to_string(), id),
                    Err(e) => panic!("minted key does not parse ({e}): {text}"),
                }
                ids.push(id.to_owned());
                minted.push(key.to_owned());
            }
        }
    }
    // The call log names a key only by a well-formed id.
    if let Ok(calls) = calls.lock() {
        for c in calls.iter() {
            if let Some(id) = &c.key_id {
                assert!(id.parse::<apikey::KeyId>().is_ok(), "logged {id:?}");
            }
        }
    }
});
