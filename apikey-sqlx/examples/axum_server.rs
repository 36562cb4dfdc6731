//! A small API guarded by apikey: routes needing different scopes, rate
//! limits per plan, credits per key and per owner, brute-force throttling.
//!
//! ```text
//! cargo run -p apikey-sqlx --example axum_server --features sqlite,postgres
//! curl -i -H "X-API-Key: <reader key printed at start-up>" http://127.0.0.1:3000/v1/tasks
//! ```
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

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apikey::limits::{CreditAccount, FailureThrottleConfig, MemoryLimits, Quota, Refill};
use apikey::web::ApiKeyLayer;
use apikey::web::{Admitted, Gate, QuotaTable, Route};

/// The product plans: 100 requests a minute and 1,000 an hour on Free,
/// 500 and 10,000 on Professional. Plans are the application's, not the
/// library's.
const FREE: Quota = Quota::unlimited().per_minute(100).per_hour(1_000);
const PROFESSIONAL: Quota = Quota::unlimited().per_minute(500).per_hour(10_000);
use apikey::{
    Actor, Authenticator, KeyManager, KeyStoreLifecycle, Keyring, NewKey, Requirement,
    ServerSecret, UsageStore, VerifiedKey, Verifier,
};
use apikey::{CachedStore, ChangeFeed};
use apikey_sqlx::{PgChangeFeed, PostgresStore, SqliteStore};
use axum::Router;
use axum::routing::{get, post};

async fn list_tasks(key: VerifiedKey) -> String {
    format!(
        "{{\"tasks\":[],\"owner\":\"{}\"}}\n",
        key.owner().unwrap_or("")
    )
}

async fn create_task(admitted: Admitted) -> String {
    // Warn clients still on a deprecated scheme (as the Keyword Insights docs do).
    if admitted.scheme == apikey::web::Scheme::Bearer {
        eprintln!(
            "key {} uses the Bearer scheme; X-API-Key is recommended",
            admitted.key.id()
        );
    }
    let left = admitted.credits.and_then(|c| c.owner_remaining);
    format!(
        "{{\"created\":true,\"owner_credits_left\":{}}}\n",
        left.map_or("null".into(), |n| n.to_string())
    )
}

async fn rate_limit(admitted: Admitted) -> String {
    let Some(info) = admitted.rate_limit else {
        return "{\"limit\":null}\n".into();
    };
    format!(
        "{{\"limit\":{},\"remaining\":{},\"reset\":{}}}\n",
        info.limit,
        info.remaining,
        info.reset_at_unix(admitted.now.unix_timestamp())
    )
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
            let served = serve(cache, secret).await;
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
            serve(cache, secret).await
        }
    }
}

async fn serve<S>(store: S, secret: ServerSecret) -> Result<(), Box<dyn std::error::Error>>
where
    S: KeyStoreLifecycle + UsageStore + Clone + 'static,
{
    let verifier = Verifier::new(Keyring::new(1, secret)?);
    let store = Arc::new(store);

    // First run only: issue the demo keys (later runs find them stored).
    let manager = KeyManager::new(verifier.clone(), Arc::clone(&store));
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
            let (key, summary) = manager.create(new, &Actor::system()).await?;
            issued.push((summary.name.clone(), key));
        }
    } else {
        println!(
            "{} keys of org_demo found in the store; the keys printed by the first run still work",
            existing.len()
        );
    }

    // Credits: the owner may create 100 tasks an hour on this API.
    let limits = MemoryLimits::new().with_failure_throttle(FailureThrottleConfig::default());
    limits.set_credits_sync(
        CreditAccount::Owner {
            owner: "org_demo",
            api: "tasks",
        },
        100,
        Refill::every(100, Duration::from_secs(3600)),
    );

    let gate = Arc::new(
        Gate::new(Authenticator::new(verifier.clone(), Arc::clone(&store)))
            .with_limits(limits)
            .with_quotas(QuotaTable::fixed(FREE).plan("professional", PROFESSIONAL))
            .with_credits("tasks"),
    );
    let guard = |route: Route| {
        ApiKeyLayer::new(Arc::clone(&gate), route).with_store_timeout(Duration::from_secs(2))
    };

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
        .route(
            "/v1/rate-limit",
            get(rate_limit).route_layer(guard(Route::any_key().cost(0))),
        )
        // The layer reads the client address from a `ClientIp` extension.
        .layer(axum::middleware::from_fn(client_ip));

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
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
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
