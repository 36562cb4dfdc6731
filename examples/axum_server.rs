//! A small API guarded by apikey: routes needing different scopes, rate
//! limits per plan, credits per key and per owner, brute-force throttling.
//!
//! ```text
//! cargo run --example axum_server --features axum
//! curl -i -H "X-API-Key: <reader key printed at start-up>" http://127.0.0.1:3000/v1/tasks
//! ```
//!
//! Keys are issued at start-up into the in-memory store and printed once.
//! Set `PORT` to listen elsewhere.

use std::net::SocketAddr;
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
    Authenticator, Error, Keyring, MemoryStore, NewKey, Requirement, ServerSecret, VerifiedKey,
    Verifier,
};
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Load the server secret from your secret manager; never hard-code it.
    let secret = ServerSecret::generate();
    let verifier = Verifier::new(Keyring::new(1, secret)?);
    let store = Arc::new(MemoryStore::new());
    let now = time::OffsetDateTime::now_utc();

    let issue = |new: NewKey| -> Result<_, Error> {
        let (key, record) = verifier.issue(new, now)?;
        store.insert_sync(record)?;
        Ok(key)
    };
    let reader = issue(
        NewKey::new("sk_live_")
            .owner("org_demo")
            .name("reader")
            .scopes(["tasks:read"]),
    )?;
    let writer = issue(
        NewKey::new("sk_live_")
            .owner("org_demo")
            .name("writer")
            .scopes(["tasks:read", "tasks:write"])
            .metadata("plan", "professional"),
    )?;

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
    println!("listening on http://{}", listener.local_addr()?);
    println!(
        "reader key (tasks:read, FREE plan), shown once:  {}",
        reader.expose_secret()
    );
    println!(
        "writer key (tasks:read tasks:write, PROFESSIONAL): {}",
        writer.expose_secret()
    );
    println!(
        "try: curl -i -H \"X-API-Key: {}\" http://127.0.0.1:{port}/v1/tasks",
        reader.expose_secret()
    );
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
