//! Shared by the end-to-end HTTP tests: an axum server on 127.0.0.1, a minimal
//! HTTP/1.1 client, and gates over one `ManualClock`.
// Each test file uses a part of it.
#![allow(dead_code, unused_imports)]

pub use std::net::SocketAddr;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use apikey::Timestamp;
pub use apikey::limits::{CreditAccount, FailureThrottleConfig, MemoryLimits, Quota};
pub use apikey::web::ApiKeyLayer;
pub use apikey::web::{Admitted, ForeignCredentials, Gate, QuotaTable, Route};
pub use apikey::*;
pub use axum::Router;
pub use axum::routing::get;
pub use serde_json::Value;
pub use time::macros::datetime;
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

/// The clock, and a handle advancing it in `std::time::Duration` steps.
pub type Clocks = (ManualClock, Adv);
pub type TestGate<S> = Gate<S, ManualClock, MemoryLimits<ManualClock>>;

#[derive(Clone)]
pub struct Adv(pub ManualClock);

impl Adv {
    pub fn advance(&self, d: Duration) {
        self.0.advance(d);
    }
}

pub const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);

pub fn verifier() -> Verifier {
    Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[3; 32]).unwrap()).unwrap())
}

pub fn clocks() -> Clocks {
    let c = ManualClock::new(T0);
    (c.clone(), Adv(c))
}

pub fn gate<S: KeyStore>(store: S, clocks: &Clocks) -> TestGate<S> {
    gate_with(store, clocks, MemoryLimits::with_clock(clocks.0.clone()))
}

pub fn gate_with<S: KeyStore>(
    store: S,
    clocks: &Clocks,
    limits: MemoryLimits<ManualClock>,
) -> TestGate<S> {
    Gate::new(Authenticator::read_only_with_clock(
        verifier(),
        store,
        clocks.0.clone(),
    ))
    .with_limits(limits)
    .with_quotas(QuotaTable::fixed(PROFESSIONAL).plan("tiny", Quota::new(Some(2), Some(100))))
}

pub fn issue(store: &MemoryStore, new: NewKey) -> (ApiKey, KeyRecord) {
    let (key, record) = verifier().issue(new, T0).unwrap();
    store.insert_sync(record.clone()).unwrap();
    (key, record)
}

pub async fn whoami(key: VerifiedKey, admitted: Admitted) -> String {
    format!(
        "{} {} {}",
        key.id(),
        admitted.scheme,
        key.owner().unwrap_or("-")
    )
}

pub async fn maybe(key: Option<VerifiedKey>) -> String {
    match key {
        Some(k) => format!("key {}", k.id()),
        None => "anonymous".to_owned(),
    }
}

/// Routes: `/read` needs `tasks:read`, `/write` needs `tasks:write`,
/// `/open` accepts foreign credentials (JWTs) too (`PassThrough`),
/// `/guarded` needs `tasks:read` and its handler never looks at the key,
/// `/items/{id}` needs `tasks:read`.
pub fn router<S: KeyStore + Send + Sync + 'static>(gate: Arc<TestGate<S>>) -> Router {
    let layer = |route: Route| ApiKeyLayer::new(Arc::clone(&gate), route);
    Router::new()
        .route(
            "/read",
            get(whoami).route_layer(layer(Route::new(Requirement::scope("tasks:read").unwrap()))),
        )
        .route(
            "/write",
            get(whoami).route_layer(layer(Route::new(
                Requirement::scope("tasks:write").unwrap(),
            ))),
        )
        .route(
            "/open",
            get(maybe).route_layer(layer(
                Route::any_key().with_foreign_credentials(ForeignCredentials::PassThrough),
            )),
        )
        .route(
            "/items/{id}",
            get(whoami).route_layer(layer(Route::new(Requirement::scope("tasks:read").unwrap()))),
        )
        // A handler that does not ask for the key: only the layer guards it.
        .route(
            "/guarded",
            get(|| async { "secret data" })
                .route_layer(layer(Route::new(Requirement::scope("tasks:read").unwrap()))),
        )
}

/// The client address from the connection, for the layer (which reads a
/// `ClientIp` extension: it does not depend on axum's server).
pub async fn client_ip(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(apikey::web::ClientIp(peer.ip()));
    next.run(req).await
}

pub async fn serve(router: Router) -> SocketAddr {
    let router = router.layer(axum::middleware::from_fn(client_ip));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Checks the error envelope and returns `details`.
    pub fn error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["success"], Value::Bool(false), "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v["error"]["details"].is_object(), "{v}");
        v["error"]["details"].clone()
    }
}

/// A minimal HTTP/1.1 client: one `GET` per connection.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers).await
}

/// A minimal HTTP/1.1 client: one request (`method`, no body) per connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn x_api_key(key: &ApiKey) -> [(&str, &str); 1] {
    [("X-API-Key", key.expose_secret())]
}

pub struct Fixture {
    pub addr: SocketAddr,
    pub store: Arc<MemoryStore>,
    pub clocks: Clocks,
}

pub async fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let gate = Arc::new(gate(Arc::clone(&store), &clocks));
    let addr = serve(router(gate)).await;
    Fixture {
        addr,
        store,
        clocks,
    }
}

pub fn reader() -> NewKey {
    NewKey::new("sk_live_")
        .owner("org_1")
        .scopes(["tasks:read"])
}
