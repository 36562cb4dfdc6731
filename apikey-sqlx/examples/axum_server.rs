//! A small API guarded by apikey: routes needing different scopes, rate
//! limits per plan, credits per key and per owner, brute-force throttling.
//!
//! ```text
//! cargo run -p apikey-sqlx --example axum_server --features sqlite,postgres,metrics
//! curl -i -H "X-API-Key: <reader key printed at start-up>" http://127.0.0.1:3000/v1/tasks
//! ```
//!
//! It also mounts the key-management surface of `apikey-axum`: the
//! `/v1/api-keys` REST API, `GET /v1/rate-limit`, `GET /v1/openapi.json`
//! and the self-service keys page at `/keys`. Open the one-time sign-in
//! link printed at start-up (a stand-in for the app's own login: it sets a
//! session cookie for the demo user `org_demo`), create a key on the page,
//! and use it with `curl` against `/v1/tasks`.
//!
//! Operations: the gate raises the seed-001 monitoring events (a key used
//! from a new network, failure bursts, rate-limit hits, exhausted credits,
//! unusual traffic) to standard error, and `GET /metrics` renders the
//! `apikey.*` metrics as Prometheus text (from the process's recorder; the
//! exporter runs no listener of its own). Usage (`last_used`) reaches the
//! store every 10 seconds (`APIKEY_FLUSH_MS` sets another period).
//!
//! Keys persist: they live in a SQLite file (`$APIKEY_DATA_DIR/keys.db`,
//! default `./apikey-data`), or in PostgreSQL when `DATABASE_URL` names one
//! (`postgres://...`). Either way verifications read through a
//! [`CachedStore`]: with SQLite, this process's writes invalidate it at
//! once and another process writing the same file is seen within the
//! cache's maximum age (1 s); with PostgreSQL, every instance's writes
//! arrive through LISTEN/NOTIFY, the maximum age bounding a lost
//! notification. The first run issues two keys and prints them once;
//! later runs find them and issue none, so keys keep working across
//! restarts.
//!
//! The server secret (keyring version 1) comes from `APIKEY_SECRET_V1`
//! (base64, at least 32 bytes). Without it, a SQLite run generates one once
//! into `server-secret-v1` next to the database, with mode 0600. Every
//! instance of a service must share one keyring, so with PostgreSQL (many
//! instances) the secret must come from the environment or your secret
//! manager: the example refuses to generate one then. Set `PORT` to listen
//! elsewhere (`0`: any free port).
//!
//! Limits: rate limits, credits and the failure throttle live in this
//! process's memory unless `REDIS_URL` names a Redis (`redis://...`), where
//! every instance shares them (apikey-redis). With several instances and
//! no Redis, each instance keeps its own windows and balances: a plan's
//! limit is per instance, and a derived key's credit budget holds only on
//! the instance that set it. The example warns about this at start-up.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{
    CreditAccount, CreditBalances, FailureThrottleConfig, Limits, MemoryLimits, Quota, Refill,
};
use apikey::web::ApiKeyLayer;
use apikey::web::{Admitted, Gate, QuotaTable, Route};

/// The product plans: 100 requests a minute and 1,000 an hour on Free,
/// 500 and 10,000 on Professional. Plans are the application's, not the
/// library's.
const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);
const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);
use apikey::pipeline::{Monitor, MonitorConfig};
use apikey::{
    Actor, KeyDigest, KeyManager, KeyStoreWrite, Keyring, NewKey, Requirement, ServerSecret,
    SystemClock, UsageStore, VerifiedKey, Verifier,
};
use apikey::{AuditEvent, AuditSink};
use apikey::{CachedStore, ChangeFeed};
use apikey_axum::{ApiError, Caller, KeyCaller, ManageApi, ManageConfig, ResolveCaller};
use apikey_sqlx::{PgChangeFeed, PostgresStore, SqliteStore};
use axum::Router;
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusBuilder;

/// A JSON answer: `Content-Type: application/json` and the body.
type Json = ([(axum::http::header::HeaderName, &'static str); 1], String);

fn json(body: String) -> Json {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn list_tasks(key: VerifiedKey) -> Json {
    json(format!(
        "{{\"tasks\":[],\"owner\":{}}}\n",
        serde_json::Value::from(key.owner().unwrap_or(""))
    ))
}

async fn create_task(admitted: Admitted) -> Json {
    // Warn clients still on a deprecated scheme (as the Keyword Insights docs do).
    if admitted.scheme == apikey::web::Scheme::Bearer {
        eprintln!(
            "key {} uses the Bearer scheme; X-API-Key is recommended",
            admitted.key.id()
        );
    }
    let left = admitted.credits.and_then(|c| c.owner_remaining);
    json(format!(
        "{{\"created\":true,\"owner_credits_left\":{}}}\n",
        left.map_or("null".into(), |n| n.to_string())
    ))
}

/// The server secret: `APIKEY_SECRET_V1`, or (SQLite only) a file made
/// once with mode 0600.
fn server_secret(dir: &Path, shared_db: bool) -> Result<ServerSecret, Box<dyn std::error::Error>> {
    if let Ok(text) = std::env::var("APIKEY_SECRET_V1") {
        return Ok(ServerSecret::from_base64(&text)?);
    }
    if shared_db {
        return Err(
            "DATABASE_URL is set: every instance must share one keyring, so set \
             APIKEY_SECRET_V1 (base64 of 32+ random bytes, from your secret manager)"
                .into(),
        );
    }
    let path = dir.join("server-secret-v1");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(ServerSecret::from_base64(&text)?);
    }
    let secret = ServerSecret::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    use base64ct::Encoding;
    writeln!(
        file,
        "{}",
        base64ct::Base64::encode_string(secret.expose_secret())
    )?;
    file.sync_all()?;
    println!(
        "generated a server secret into {} (mode 0600)",
        path.display()
    );
    Ok(secret)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir =
        PathBuf::from(std::env::var("APIKEY_DATA_DIR").unwrap_or_else(|_| "apikey-data".into()));
    std::fs::create_dir_all(&dir)?;
    // The directory holds a server secret: never let `git add .` take it.
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, "*\n")?;
    }
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            let secret = server_secret(&dir, true)?;
            // Verifications hit an in-process cache; every instance's
            // writes reach it through LISTEN/NOTIFY, and no entry lives
            // longer than the maximum age (1 s) if notifications fail.
            let pg = PostgresStore::connect(&url).await?;
            let feed = PgChangeFeed::listen(&pg).await?;
            let cache = Arc::new(CachedStore::new(pg));
            feed.subscribe(cache.clone());
            println!("keys in PostgreSQL, cached (maximum age 1 s, LISTEN/NOTIFY invalidation)");
            let served = limited(cache, secret, true).await;
            drop(feed);
            served
        }
        _ => {
            let secret = server_secret(&dir, false)?;
            let db = dir.join("keys.db");
            // Verifications hit an in-process cache in front of the file
            // (a SQLite read per request costs more than the rest of the
            // request). This process's writes (revoke, disable, rotate,
            // delete, through the key manager below) invalidate it before
            // they return; a write by another process on the same file is
            // seen within the maximum age (1 s).
            println!(
                "keys in {}, cached (this process's writes invalidate at once; \
                 other processes' writes to the file within 1 s)",
                db.display()
            );
            let cache = Arc::new(CachedStore::new(SqliteStore::open(&db).await?));
            limited(cache, secret, false).await
        }
    }
}

/// Rate limits, credits and the failure throttle: in Redis when `REDIS_URL`
/// is set, shared by every instance (what a service with several instances
/// needs: otherwise each instance keeps its own windows and balances, and a
/// derived key's credit budget holds only on the instance that set it);
/// else in this process's memory.
async fn limited<S>(
    store: S,
    secret: ServerSecret,
    shared_db: bool,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: KeyStoreWrite + UsageStore + Clone + 'static,
{
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let limits = apikey_redis::RedisLimits::builder(url)
                .prefix("apikey-example:")
                .failure_throttle(FailureThrottleConfig::default())
                .build()?;
            println!(
                "limits in Redis: rate limits, credits and the failure throttle shared by every instance"
            );
            serve(store, secret, limits).await
        }
        Err(_) => {
            if shared_db {
                eprintln!(
                    "warning: limits are in this process's memory: with several instances, each keeps \
                     its own rate limits and credit balances; set REDIS_URL to share them"
                );
            }
            let limits =
                MemoryLimits::new().with_failure_throttle(FailureThrottleConfig::default());
            serve(store, secret, limits).await
        }
    }
}

async fn serve<S, L>(
    store: S,
    secret: ServerSecret,
    limits: L,
) -> Result<(), Box<dyn std::error::Error>>
where
    S: KeyStoreWrite + UsageStore + Clone + 'static,
    L: Limits + CreditBalances + 'static,
{
    let verifier = Verifier::new(Keyring::new(1, secret)?);

    // Credits: the owner may create 100 tasks an hour on this API (set
    // once: a restart, or another instance, finds the balance in place).
    let demo = CreditAccount::Owner {
        owner: "org_demo",
        api: "tasks",
    };
    if limits.credits(demo).await?.is_none() {
        limits
            .set_credits(demo, 100, Refill::every(100, Duration::from_secs(3600)))
            .await?;
    }

    // Metrics: one recorder for the process, rendered on `GET /metrics`.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    // Seed 001's alerts, to standard error here (a real service sends them
    // to its pager or chat through the hook).
    let alerts = Arc::new(Monitor::new(
        MonitorConfig::default(),
        Arc::new(StderrAlerts),
    ));

    // One manager for the keys page, the management API and the gate, so
    // HTTP traffic updates "last used" and the usage counts the page shows.
    let manager = Arc::new(
        KeyManager::new(verifier, store)
            .with_limits(Arc::new(limits))
            .with_max_keys_per_owner(5)
            .with_monitor(alerts),
    );

    // First run only: issue the demo keys (later runs find them stored).
    let existing = manager.list("org_demo").await?;
    let mut issued = Vec::new();
    if existing.is_empty() {
        for new in [
            NewKey::new("sk_live_")
                .owner("org_demo")
                .name("reader")
                .scopes(["tasks:read"]),
            NewKey::new("sk_live_")
                .owner("org_demo")
                .name("writer")
                .scopes(["tasks:read", "tasks:write"])
                .metadata("plan", "professional"),
        ] {
            match manager.create(new, &Actor::system()).await {
                Ok((key, summary)) => issued.push((summary.name.clone(), key)),
                // Instances started together on an empty database each seed;
                // the owner's limit stops the last ones, which is no error.
                Err(apikey::Error::KeyLimitReached { .. }) => {
                    println!("org_demo is at its key limit: other instances issued demo keys");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    } else {
        println!(
            "{} keys of org_demo found in the store; the keys printed by the first run still work",
            existing.len()
        );
    }

    let gate = Arc::new(
        Gate::from_manager(&manager)
            .with_quotas(QuotaTable::fixed(FREE).plan("professional", PROFESSIONAL))
            .with_credits("tasks")
            .with_store_timeout(Duration::from_secs(2)),
    );
    let guard = |route: Route| ApiKeyLayer::new(Arc::clone(&gate), route);

    // The management surface: who calls is this app's business (see
    // `DemoCallers`); the rest is apikey-axum's.
    let session = ServerSecret::generate();
    let callers = DemoCallers {
        keys: KeyCaller::new(Arc::clone(&gate), Arc::clone(&manager), "keys:manage")?,
        session: KeyDigest::from_bytes(session_bytes(session.expose_secret())),
    };
    let config = ManageConfig::new("sk_live_")
        .prefix(apikey::Environment::Test, "sk_test_")
        .title("Tasks API keys")
        .scope("tasks:read", "View tasks")
        .scope("tasks:write", "Create and update tasks")
        .scope("keys:manage", "Manage API keys with this key")
        .plan("professional")
        .credit_api("tasks");
    let management = ManageApi::new(Arc::clone(&manager), callers, config).router_with_credits();

    // Leaked-key response: anyone who finds a key posts it here
    // (`{"tokens": ["sk_live_..."]}`) and it is revoked; the answer is the
    // same 202 whatever the tokens are, throttled per client address.
    // GitHub's secret-scanning endpoint is `apikey_leak::axum::github_router`
    // (docs/leak-response.md).
    // The owner is told (printed here, e-mailed in a real service): the
    // key stops working at once, and its owner must know why.
    let responder = Arc::new(
        apikey_leak::LeakResponder::new(Arc::clone(&manager)).with_notifier(
            |n: &apikey_leak::LeakNotice| {
                println!(
                    "leak notice: key {} of {}: {:?} (reported via {}{})",
                    n.key_id,
                    n.owner.as_deref().unwrap_or("-"),
                    n.outcome,
                    n.source,
                    n.reporter.map_or(String::new(), |ip| format!(" from {ip}"))
                );
            },
        ),
    );
    let public = Arc::new(apikey_leak::PublicRevoke::new(
        responder,
        MemoryLimits::new(),
    ));
    let leaks = apikey_leak::axum::public_revoke_router("/v1/leaks/revoke", public);

    let app = Router::new()
        .route(
            "/v1/tasks",
            get(list_tasks)
                .route_layer(guard(Route::new(Requirement::scope("tasks:read")?).cost(0)))
                .merge(
                    post(create_task)
                        .route_layer(guard(Route::new(Requirement::scope("tasks:write")?))),
                ),
        )
        .merge(management)
        .merge(apikey_axum::rate_limit_router(Arc::clone(&gate)))
        .merge(leaks)
        .route("/demo-login", get(demo_login))
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        // The layer reads the client address from a `ClientIp` extension.
        .layer(axum::middleware::from_fn(client_ip));

    // Usage counts reach the store (and the page) every 10 seconds.
    let period = std::env::var("APIKEY_FLUSH_MS")
        .ok()
        .and_then(|p| p.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let flusher = Arc::clone(&manager);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            // A failed flush keeps its counts for the next one; say so (an
            // outage of the database shows here first).
            if let Err(e) = flusher.flush().await {
                eprintln!("usage flush: {e}");
            }
        }
    });

    // The expiry sweep, hourly: auto-renewal (keys created with the
    // `apikey.auto_renew` metadata entry, or `apikey keys create
    // --auto-renew`) and one `expiring` audit event per key 30 days before
    // it expires. Safe with several instances on one database. A key is
    // noticed once (its record keeps that it was), so the notifier must
    // tell someone: printed here, e-mailed to the owner in a real service.
    let sweeper = Arc::clone(&manager);
    tokio::spawn(async move {
        let options = apikey::SweepOptions::default().notifier(|n: &apikey::ExpiryNotice| {
            println!(
                "expiry notice: key {} {} ({:?}) of {}: {} {}",
                n.id,
                n.display,
                n.name,
                n.owner.as_deref().unwrap_or("-"),
                if n.renewed {
                    "renewed until"
                } else {
                    "expires"
                },
                n.expires_at
            );
        });
        sweeper
            .run_sweeper(&options, |result| async move {
                match result {
                    Ok(r) if r.renewed + r.notified + r.failed.len() > 0 => println!(
                        "expiry sweep: renewed {}, notified {}, failed {}",
                        r.renewed,
                        r.notified,
                        r.failed.len()
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("expiry sweep: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                true
            })
            .await;
    });

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    for (name, key) in &issued {
        println!("{name} key, shown once: {}", key.expose_secret());
    }
    if let Some((_, key)) = issued.first() {
        println!(
            "try: curl -i -H \"X-API-Key: {}\" http://127.0.0.1:{port}/v1/tasks",
            key.expose_secret()
        );
    }
    use base64ct::Encoding;
    println!(
        "keys page: open http://127.0.0.1:{port}/demo-login?token={} (signs you in as org_demo)",
        base64ct::Base64UrlUnpadded::encode_string(session.expose_secret())
    );
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    // The usage counted since the last flush (the gate records into the
    // manager's recorder) reaches the store before the process exits.
    // A database that is down at that moment gets a few more tries, a
    // second apart (the counts stay in memory until one succeeds).
    let mut tries = 0;
    loop {
        match manager.shutdown().await {
            Ok(_) => break,
            Err(e) if tries < 4 => {
                tries += 1;
                eprintln!("usage flush at shutdown: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("usage flushed; stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what a service manager or a container runtime sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Monitoring events on standard error (a stand-in for a pager).
#[derive(Debug)]
struct StderrAlerts;

impl AuditSink for StderrAlerts {
    fn record(&self, event: &AuditEvent) {
        eprintln!("alert: {event}");
    }
}

/// The first 32 bytes of a secret (a generated one has exactly 32).
fn session_bytes(secret: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    for (o, b) in out.iter_mut().zip(secret) {
        *o = *b;
    }
    out
}

/// Who calls the management API: a key holding `keys:manage`
/// (`Authorization: Bearer`), or the demo user's browser session. A real
/// app resolves its own signed-in user here instead of the demo cookie.
struct DemoCallers<S: KeyStoreWrite + UsageStore + 'static, L: Limits + 'static> {
    keys: KeyCaller<S, SystemClock, Arc<L>>,
    /// The demo session token, compared in constant time.
    session: KeyDigest,
}

impl<S, L> ResolveCaller for DemoCallers<S, L>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    L: Limits + 'static,
{
    async fn resolve(&self, parts: &axum::http::request::Parts) -> Result<Caller, ApiError> {
        if self.keys.presents_key(parts) {
            return self.keys.resolve(parts).await;
        }
        use base64ct::Encoding;
        let token = parts
            .headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split("; "))
            .find_map(|c| c.strip_prefix("demo_session="))
            .and_then(|t| base64ct::Base64UrlUnpadded::decode_vec(t).ok());
        match token {
            Some(t)
                if KeyDigest::from_bytes(session_bytes(&t)) == self.session && t.len() == 32 =>
            {
                Ok(Caller::user("org_demo"))
            }
            // No key and no session: the gate's `MISSING_API_KEY`, which
            // says where the key goes.
            _ => self.keys.resolve(parts).await,
        }
    }
}

/// The demo's sign-in: sets the session cookie from the printed link, then
/// goes to the keys page. (Your app has its own login.)
async fn demo_login(
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let token = query
        .as_deref()
        .and_then(|q| q.strip_prefix("token="))
        .unwrap_or("")
        .to_owned();
    let mut r = axum::response::Redirect::to("/keys").into_response();
    if let Ok(cookie) = axum::http::HeaderValue::from_str(&format!(
        "demo_session={token}; Path=/; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut()
            .insert(axum::http::header::SET_COOKIE, cookie);
    }
    r
}

/// Puts the peer address into the request as the layer's `ClientIp` (behind
/// a proxy you trust, take it from its forwarding header instead).
async fn client_ip(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    req.extensions_mut()
        .insert(apikey::web::ClientIp(peer.ip()));
    next.run(req).await
}
