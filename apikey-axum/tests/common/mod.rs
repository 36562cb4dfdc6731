//! The harness: the management router with a guarded route on a loopback
//! port, and a plain HTTP/1.1 client over TCP.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use apikey::Timestamp;
use apikey::limits::{MemoryLimits, Quota};
use apikey::web::{ApiKeyLayer, Gate, QuotaTable, Route};
use apikey::*;
use apikey_axum::{
    ApiError, CallRecord, Caller, KeyCaller, ManageApi, ManageConfig, ResolveCaller,
    rate_limit_router,
};
use apikey_testkit::netstore::NetStore;
use axum::Router;
use axum::routing::get;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const T0: Timestamp = match apikey::Timestamp::checked_from_unix_micros(1_772_366_400_000_000) {
    Some(t) => t,
    None => apikey::Timestamp::MIN,
};

/// The store: shaped like a networked database, and able to fail on demand.
pub type Store = Arc<NetStore>;
pub type Manager = KeyManager<Store, ManualClock, Arc<MemoryLimits<ManualClock>>>;

/// Test callers: `x-test-user: alice` is a signed-in user (its CSRF header
/// is added by the client), `x-test-admin: admin` the admin of alice and
/// bob; otherwise a management key (`keys:manage`).
pub struct TestCallers {
    pub keys: KeyCaller<Store, ManualClock, Arc<MemoryLimits<ManualClock>>>,
}

impl ResolveCaller for TestCallers {
    async fn resolve(&self, parts: &http::request::Parts) -> Result<Caller, ApiError> {
        let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
        if let Some(user) = header("x-test-user") {
            // A user on a plan without API access (seed 000).
            if user.starts_with("free_") {
                return Ok(Caller::user(user).needs_upgrade(
                    "API keys come with the Professional and Premium plans: upgrade to create one.",
                ));
            }
            return Ok(Caller::user(user));
        }
        // The browser's session: `Cookie: session=<user>`, or
        // `session=admin:<user>` for an admin of alice's and bob's account.
        if let Some(user) =
            header("cookie").and_then(|c| c.split("; ").find_map(|kv| kv.strip_prefix("session=")))
        {
            if let Some(admin) = user.strip_prefix("admin:") {
                return Ok(Caller::user(admin).admin_of(["alice", "bob"]));
            }
            return Ok(Caller::user(user));
        }
        if let Some(admin) = header("x-test-admin") {
            return Ok(Caller::user(admin).admin_of(["alice", "bob"]));
        }
        self.keys.resolve(parts).await
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub store: Store,
    pub manager: Arc<Manager>,
    pub clock: ManualClock,
    pub audit: Arc<MemoryAuditSink>,
    pub calls: Arc<Mutex<Vec<CallRecord>>>,
}

pub fn config() -> ManageConfig {
    ManageConfig::new("sk_live_")
        .prefix(Environment::Test, "sk_test_")
        .title("Example keys")
        .scope("tasks:read", "View tasks")
        .scope("tasks:write", "Create and update tasks")
        .scope("keys:manage", "Manage API keys")
        .plan("free")
        .plan("professional")
        .credit_api("rest")
        .credit_api("batch")
}

pub async fn start() -> Server {
    start_with(config()).await
}

pub async fn start_with(config: ManageConfig) -> Server {
    start_custom(config, |m| m, true).await
}

/// [`start_with`], with `adjust` applied to the manager, and the harness's
/// `ClientIp` layer only when `client_ip_layer` (without it, handlers see
/// only axum's `ConnectInfo<SocketAddr>`).
pub async fn start_custom(
    config: ManageConfig,
    adjust: impl FnOnce(Manager) -> Manager,
    client_ip_layer: bool,
) -> Server {
    let clock = ManualClock::new(T0);
    let verifier =
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[4; 32]).unwrap()).unwrap());
    let audit = Arc::new(MemoryAuditSink::new());
    let store = NetStore::new(std::time::Duration::ZERO);
    let manager = Arc::new(adjust(
        KeyManager::with_clock(verifier, Arc::clone(&store), clock.clone())
            .with_limits(Arc::new(MemoryLimits::with_clock(clock.clone())))
            .with_max_keys_per_owner(3)
            .with_audit_sink(Arc::clone(&audit)),
    ));
    let gate = Arc::new(
        Gate::from_manager(&manager)
            .with_credits("rest")
            .with_quotas(
                QuotaTable::fixed(Quota::unlimited().per_minute(100).per_hour(1_000))
                    .plan("tiny", Quota::unlimited().per_minute(1)),
            ),
    );
    let keys = KeyCaller::new(Arc::clone(&gate), Arc::clone(&manager), "keys:manage").unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&calls);
    let app = Router::new()
        .merge(
            ManageApi::new(Arc::clone(&manager), TestCallers { keys }, config)
                .with_call_log(move |c| log.lock().unwrap().push(c.clone()))
                .router_with_credits(),
        )
        .merge(rate_limit_router(Arc::clone(&gate)))
        .route(
            "/v1/tasks",
            get(|| async { "tasks" }).route_layer(ApiKeyLayer::new(
                Arc::clone(&gate),
                Route::new(Requirement::scope("tasks:read").unwrap()).cost(0),
            )),
        );
    let app = if client_ip_layer {
        app.layer(axum::middleware::from_fn(client_ip))
    } else {
        app
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    Server {
        addr,
        store,
        manager,
        clock,
        audit,
        calls,
    }
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    pub fn field(&self) -> String {
        self.json()["error"]["details"]["field"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Who calls.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// A session user (sends the CSRF header, same origin).
    User(&'a str),
    /// A session user, raw: no CSRF header.
    UserNoCsrf(&'a str),
    /// The account admin.
    Admin,
    /// An API key (Bearer).
    Key(&'a str),
    /// Nobody.
    Anonymous,
}

pub async fn call(
    addr: SocketAddr,
    who: As<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    call_with(addr, who, method, path, body, &[]).await
}

pub async fn call_with(
    addr: SocketAddr,
    who: As<'_>,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    match who {
        As::User(u) => {
            head += &format!("x-test-user: {u}\r\nx-apikey-csrf: 1\r\nOrigin: http://{addr}\r\n")
        }
        As::UserNoCsrf(u) => head += &format!("x-test-user: {u}\r\n"),
        As::Admin => head += "x-test-admin: admin\r\nx-apikey-csrf: 1\r\n",
        As::Key(k) => head += &format!("Authorization: Bearer {k}\r\n"),
        As::Anonymous => {}
    }
    for (n, v) in extra {
        head += &format!("{n}: {v}\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PATCH" | "PUT") {
        head += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head += "\r\n";
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Creates a key as `who`; panics unless 201.
pub async fn create(addr: SocketAddr, who: As<'_>, body: &str) -> Value {
    let a = call(addr, who, "POST", "/v1/api-keys", Some(body)).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.json()
}

/// Issues a management key for `owner` directly through the manager.
pub async fn management_key(server: &Server, owner: &str, new: NewKey) -> ApiKey {
    let (key, _) = server
        .manager
        .create(new.owner(owner), &Actor::system())
        .await
        .unwrap();
    key
}

/// The peer address as the layer's `ClientIp`.
async fn client_ip(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(apikey::web::ClientIp(peer.ip()));
    next.run(req).await
}
