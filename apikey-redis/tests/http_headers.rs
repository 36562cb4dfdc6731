//! `X-RateLimit-*` and `Retry-After` over real HTTP: Redis limits give the
//! same headers as the in-memory ones.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{CreditAccount, CreditBalances, Limits, MemoryLimits, Quota};
use apikey::web::{ApiKeyLayer, Gate, QuotaTable, Route};
use apikey::{
    ApiKey, Authenticator, Keyring, ManualClock, MemoryStore, NewKey, ServerSecret, VerifiedKey,
    Verifier,
};
use axum::Router;
use axum::routing::get;
use support::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T0: apikey::Timestamp =
    match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
        Some(t) => t,
        None => apikey::Timestamp::MIN,
    };

async fn ok(key: VerifiedKey) -> String {
    key.id().to_string()
}

async fn serve<L: Limits + 'static>(
    store: Arc<MemoryStore>,
    clock: ManualClock,
    limits: L,
) -> SocketAddr {
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32]).unwrap()).unwrap());
    let gate = Arc::new(
        Gate::new(Authenticator::with_clock(verifier, store, clock))
            .with_limits(limits)
            .with_quotas(QuotaTable::fixed(
                Quota::unlimited().per_minute(3).per_hour(5),
            ))
            .with_credits("rest"),
    );
    let app = Router::new()
        .route(
            "/r",
            get(ok).route_layer(ApiKeyLayer::new(Arc::clone(&gate), Route::any_key())),
        )
        .route(
            "/costly",
            get(ok).route_layer(ApiKeyLayer::new(gate, Route::any_key().cost(4))),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Status and the limit headers of one request.
async fn fetch(addr: SocketAddr, path: &str, key: &ApiKey) -> Vec<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-API-Key: {}\r\n\r\n",
        key.expose_secret()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut out: Vec<String> = head
        .lines()
        .filter(|l| {
            l.starts_with("http/") || l.starts_with("x-ratelimit-") || l.starts_with("retry-after")
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_http_are_the_same_as_in_memory() {
    let Some(server) = RedisServer::start("http") else {
        return;
    };
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32]).unwrap()).unwrap());
    let store = Arc::new(MemoryStore::new());
    let (key, record) = verifier
        .issue(NewKey::new("sk_live_").owner("org_1"), T0)
        .unwrap();
    store.insert_sync(record.clone()).unwrap();
    let id = record.id.as_u64();

    let (cm, cr) = (ManualClock::new(T0), ManualClock::new(T0));
    let memory = MemoryLimits::with_clock(cm.clone());
    let redis = server.limits_on("http", &cr);
    let owner = CreditAccount::Owner {
        owner: "org_1",
        api: "rest",
    };
    for acct in [CreditAccount::Key(id), owner] {
        memory.set_credits(acct, 9, None).await.unwrap();
        redis.set_credits(acct, 9, None).await.unwrap();
    }
    let a = serve(Arc::clone(&store), cm.clone(), memory).await;
    let b = serve(Arc::clone(&store), cr.clone(), redis).await;

    let steps: [(&str, u64); 9] = [
        ("/r", 0),
        ("/r", 0),
        ("/costly", 0),
        ("/r", 0),       // 429 RATE_LIMITED (minute burst of 3 spent)
        ("/r", 7),       // 7 s later: retry_after was 20 s, still 429
        ("/r", 13),      // admitted
        ("/costly", 40), // credits short: 429 USAGE_EXCEEDED, no Retry-After
        ("/r", 60),
        ("/r", 0), // the hour window (5) refuses
    ];
    let mut statuses = Vec::new();
    for (path, wait) in steps {
        for c in [&cm, &cr] {
            c.advance(std::time::Duration::from_secs(wait));
        }
        let x = fetch(a, path, &key).await;
        let y = fetch(b, path, &key).await;
        assert_eq!(x, y, "{path} after {wait} s");
        statuses.push(x[0].clone());
    }
    assert!(statuses.iter().any(|s| s.contains(" 429")), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| s.contains(" 200")).count() >= 4,
        "{statuses:?}"
    );
    let _ = Duration::ZERO;
}
