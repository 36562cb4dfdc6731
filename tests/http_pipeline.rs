//! End-to-end over real HTTP: the layer over a `KeyManager`'s authenticator
//! (usage, audit, legacy keys, plans) and the monitor's alerts.
//!
//! Each test starts its own server (port 0); time comes from one
//! `ManualClock`, so no assertion depends on real time.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used)]

mod http_support;

use http_support::*;

// ----- one pipeline: the layer over a KeyManager's authenticator -----

struct Managed {
    addr: SocketAddr,
    manager: Arc<KeyManager<MemoryStore, ManualClock>>,
    audit: Arc<MemoryAuditSink>,
}

async fn managed() -> Managed {
    let clocks = clocks();
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_audit_sink(Arc::clone(&audit))
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()));
    let addr = serve(router(Arc::new(gate))).await;
    Managed {
        addr,
        manager,
        audit,
    }
}

fn failures(audit: &MemoryAuditSink) -> Vec<&'static str> {
    audit
        .events()
        .iter()
        .filter_map(|e| match e.kind {
            AuditKind::VerificationFailed { code } => Some(code),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn requests_through_the_layer_update_last_used_and_counts() {
    let m = managed().await;
    let (key, s) = m.manager.create(reader(), &Actor::system()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            get_with(m.addr, "/read", &x_api_key(&key)).await.status,
            200
        );
    }
    assert_eq!(m.manager.usage().pending(), 3);
    assert_eq!(m.manager.flush().await.unwrap(), 3);
    let got = m.manager.get(s.id).await.unwrap();
    assert_eq!((got.requests_today, got.requests_this_month), (3, 3));
    assert_eq!(got.last_used_at, Some(T0));
}

/// Issue 22: the last use's client address and route are kept next to
/// `last_used_at`, flushed with usage (no store write per request); the
/// query is never kept, nor a path that holds the key.
#[tokio::test]
async fn last_used_keeps_the_address_and_route_of_the_latest_use() {
    let m = managed().await;
    let (key, s) = m.manager.create(reader(), &Actor::system()).await.unwrap();
    for path in ["/read", "/items/42?api_token=zzz"] {
        assert_eq!(
            get_with(m.addr, path, &x_api_key(&key)).await.status,
            200,
            "{path}"
        );
    }
    let before = m.manager.get(s.id).await.unwrap();
    assert_eq!(
        (before.last_used_at, before.last_used_route.as_deref()),
        (None, None),
        "nothing is written before the flush"
    );
    assert_eq!(m.manager.flush().await.unwrap(), 2);
    let got = m.manager.get(s.id).await.unwrap();
    assert_eq!(got.last_used_at, Some(T0));
    assert_eq!(
        got.last_used_ip,
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    );
    // The route's normal form: ids, tokens and keys are `*`, no query.
    assert_eq!(got.last_used_route.as_deref(), Some("GET /items/*"));

    // A client that put its key in the path: the route is not kept (and
    // the key's segment would be `*` anyway).
    let in_path = format!("/items/{}", key.expose_secret());
    assert_eq!(
        get_with(m.addr, &in_path, &x_api_key(&key)).await.status,
        200
    );
    m.manager.flush().await.unwrap();
    let got = m.manager.get(s.id).await.unwrap();
    assert_eq!(
        got.last_used_ip,
        Some(std::net::IpAddr::from([127, 0, 0, 1]))
    );
    assert_eq!(got.last_used_route, None);
    let record = m.manager.record(s.id).await.unwrap();
    assert!(!format!("{record:?}").contains(key.expose_secret()));
}

#[tokio::test]
async fn an_imported_legacy_key_passes_the_layer() {
    let m = managed().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    m.manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let r = get_with(m.addr, "/read", &[("X-API-Key", legacy)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // And a wrong legacy key is refused, with no event per attempt.
    let r = get_with(m.addr, "/read", &[("X-API-Key", "oldco_nope")]).await;
    r.error(401, "INVALID_API_KEY");
    assert!(failures(&m.audit).is_empty());
}

#[tokio::test]
async fn a_wrong_secret_through_the_layer_writes_an_audit_event() {
    let m = managed().await;
    let (_, s) = m.manager.create(reader(), &Actor::system()).await.unwrap();
    // A key this service could have issued, stored under its id with
    // another key's digest: the id exists, the secret is wrong.
    let (other, other_record) = verifier().issue(reader(), T0).unwrap();
    let mut wrong = m.manager.record(s.id).await.unwrap();
    wrong.id = other_record.id;
    m.manager.store().insert_sync(wrong).unwrap();
    get_with(m.addr, "/read", &x_api_key(&other))
        .await
        .error(401, "INVALID_API_KEY");
    let events = m.audit.events();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, AuditKind::VerificationFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key_id, Some(other.id()));
    assert_eq!(
        failed[0].kind,
        AuditKind::VerificationFailed {
            code: "INVALID_API_KEY"
        }
    );
}

#[tokio::test]
async fn junk_through_the_layer_is_only_counted_and_sampled() {
    let m = managed().await;
    for junk in ["nope", "sk_live_short", "Bearer-ish", "kwi_sk_x"] {
        let r = get_with(m.addr, "/read", &[("X-API-Key", junk)]).await;
        assert_eq!(r.status, 401);
    }
    let (key, _) = verifier().issue(reader(), T0).unwrap();
    let mut forged = key.expose_secret().to_owned();
    // Change one secret character and fix the checksum: a forged key.
    let body = forged.split_off("sk_live_".len());
    let mut bytes = body.into_bytes();
    bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
    let mut text = format!("sk_live_{}", String::from_utf8(bytes).unwrap()).into_bytes();
    apikey::__private::write_checksum(&mut text);
    let forged = String::from_utf8(text).unwrap();
    get_with(m.addr, "/read", &[("X-API-Key", forged.as_str())])
        .await
        .error(401, "INVALID_API_KEY");
    assert!(
        failures(&m.audit).is_empty(),
        "junk wrote events one by one"
    );
    m.manager.shutdown().await.unwrap();
    let sampled: u64 = m
        .audit
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            AuditKind::RejectionsSampled { counts } => {
                Some(counts.iter().map(|(_, n)| n).sum::<u64>())
            }
            _ => None,
        })
        .sum();
    assert_eq!(sampled, 5);
}

/// Usage recorded over HTTP survives a flush that is cancelled (here by a
/// timeout while the store is slow): nothing is lost, nothing doubled.
#[tokio::test]
async fn a_cancelled_flush_after_http_traffic_loses_nothing() {
    use apikey_testkit::netstore::NetStore;
    let store = NetStore::new(Duration::ZERO);
    let clocks = clocks();
    let manager = Arc::new(KeyManager::with_clock(
        verifier(),
        Arc::clone(&store),
        clocks.0.clone(),
    ));
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()));
    let addr = serve(router(Arc::new(gate))).await;
    let (key, s) = manager.create(reader(), &Actor::system()).await.unwrap();
    for _ in 0..20 {
        assert_eq!(get_with(addr, "/read", &x_api_key(&key)).await.status, 200);
    }
    store.set_latency(Duration::from_millis(50));
    for _ in 0..2 {
        assert!(
            tokio::time::timeout(Duration::from_millis(5), manager.flush())
                .await
                .is_err()
        );
    }
    assert_eq!(manager.usage().pending(), 20);
    store.set_latency(Duration::ZERO);
    assert_eq!(manager.flush().await.unwrap(), 20);
    assert_eq!(manager.usage_of(s.id).await.unwrap().today, 20);
}

/// Legacy (untagged) lookups are throttled per client address, counted when
/// they start; a valid native key from that same address is never refused
/// for it, and neither is the valid legacy key of someone else elsewhere.
#[tokio::test]
async fn legacy_guesses_lock_out_the_address_for_legacy_lookups_only() {
    let clocks = clocks();
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let cfg = FailureThrottleConfig {
        max_failures: 3,
        lockout: Duration::from_secs(120),
        ..FailureThrottleConfig::default()
    };
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()).with_failure_throttle(cfg));
    let addr = serve(router(Arc::new(gate))).await;
    let (native, _) = manager.create(reader(), &Actor::system()).await.unwrap();
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    for i in 0..3 {
        let guess = format!("oldco_guess{i}");
        get_with(addr, "/read", &[("X-API-Key", guess.as_str())])
            .await
            .error(401, "INVALID_API_KEY");
    }
    // The address may not start another legacy lookup...
    let r = get_with(addr, "/read", &[("X-API-Key", legacy)]).await;
    assert_eq!(r.error(429, "TOO_MANY_FAILED_ATTEMPTS")["retry_after"], 120);
    // ...but a valid native key from the same address still works.
    assert_eq!(
        get_with(addr, "/read", &x_api_key(&native)).await.status,
        200
    );
    clocks.1.advance(Duration::from_secs(120));
    assert_eq!(
        get_with(addr, "/read", &[("X-API-Key", legacy)])
            .await
            .status,
        200
    );
}

// ----- issue 17: post-tag failures, legacy keys in Bearer, MISSING_API_KEY -----

/// Issue 17, item 7: the key's own plan, not the default quota.
const PAID: Quota = Quota::new(Some(2), Some(100));

/// A gate whose default quota is unlimited and whose `paid` plan allows 2
/// requests a minute, over the pipeline of a manager that knows the legacy
/// prefix `oldco_`.
async fn paid_plan_server() -> (SocketAddr, Arc<KeyManager<MemoryStore, ManualClock>>) {
    let clocks = clocks();
    let manager = Arc::new(
        KeyManager::with_clock(verifier(), MemoryStore::new(), clocks.0.clone())
            .with_legacy_prefix("oldco_", "sk_live_")
            .unwrap(),
    );
    let gate = Gate::new(manager.authenticator().clone())
        .with_limits(MemoryLimits::with_clock(clocks.0.clone()))
        .with_quotas(QuotaTable::fixed(Quota::unlimited()).plan("paid", PAID));
    (serve(router(Arc::new(gate))).await, manager)
}

/// Repeated scope failures of a key on a 2-a-minute plan: two 403s, then
/// 429 `RATE_LIMITED` with the plan's numbers, and the plan stays spent.
async fn assert_scope_failures_run_out_the_plan(addr: SocketAddr, headers: &[(&str, &str)]) {
    for _ in 0..2 {
        get_with(addr, "/write", headers)
            .await
            .error(403, "INSUFFICIENT_SCOPE");
    }
    for _ in 0..48 {
        let r = get_with(addr, "/write", headers).await;
        r.error(429, "RATE_LIMITED");
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"), "{r:?}");
    }
    // The failures spent the key's own budget: an allowed call is refused too.
    get_with(addr, "/read", headers)
        .await
        .error(429, "RATE_LIMITED");
}

#[tokio::test]
async fn scope_failures_are_charged_to_the_keys_own_plan() {
    let (addr, manager) = paid_plan_server().await;
    let (key, _) = manager
        .create(reader().metadata("plan", "paid"), &Actor::system())
        .await
        .unwrap();
    assert_scope_failures_run_out_the_plan(addr, &x_api_key(&key)).await;
}

#[tokio::test]
async fn scope_failures_of_a_legacy_key_are_charged_to_its_plan() {
    let (addr, manager) = paid_plan_server().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    manager
        .import(
            ImportKey::plaintext(legacy)
                .scopes(["tasks:read"])
                .metadata("plan", "paid"),
            &Actor::system(),
        )
        .await
        .unwrap();
    assert_scope_failures_run_out_the_plan(addr, &[("X-API-Key", legacy)]).await;
}

/// Issue 17, item 11: seeds 001 and 003 send keys as `Authorization:
/// Bearer`; an imported key sent that way authenticates, while a JWT is
/// still not ours.
#[tokio::test]
async fn an_imported_legacy_key_sent_as_bearer_authenticates() {
    let m = managed().await;
    let legacy = "oldco_8f14e45fceea167a5a36dedd4bea2544";
    let s = m
        .manager
        .import(
            ImportKey::plaintext(legacy).scopes(["tasks:read"]),
            &Actor::system(),
        )
        .await
        .unwrap();
    let bearer = format!("Bearer {legacy}");
    let r = get_with(m.addr, "/read", &[("Authorization", bearer.as_str())]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, format!("{} bearer -", s.id));
    // A wrong legacy key in Bearer is ours and refused as a key...
    get_with(m.addr, "/read", &[("Authorization", "Bearer oldco_nope")])
        .await
        .error(401, "INVALID_API_KEY");
    // ...while foreign credentials are still refused as before, or passed
    // on where the route opts in.
    let jwt = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln";
    get_with(m.addr, "/read", &[("Authorization", jwt)])
        .await
        .error(401, "MISSING_API_KEY");
    let r = get_with(m.addr, "/open", &[("Authorization", jwt)]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "anonymous"));
}

/// Issue 17, item 13: seed 003 documents `"details": {"header":
/// "Authorization"}` for a service that takes keys as Bearer only.
#[tokio::test]
async fn missing_key_names_the_authorization_header_when_only_bearer_is_accepted() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let gate = gate(Arc::clone(&store), &clocks);
    let extractor = apikey::web::Extractor::new(gate.authenticator().verifier().prefixes().clone())
        .with_sources(apikey::web::Sources::BEARER);
    let addr = serve(router(Arc::new(gate.with_extractor(extractor)))).await;
    let r = get_with(addr, "/read", &[]).await;
    let details = r.error(401, "MISSING_API_KEY");
    assert_eq!(
        details,
        serde_json::json!({"header": "Authorization", "accepted": ["Authorization: Bearer"]})
    );
}

/// One stored key, a server over a gate built with `build`, and one
/// admitted request: the store, the key's id and the gate.
async fn one_request(
    build: impl FnOnce(Arc<MemoryStore>, &Clocks) -> TestGate<Arc<MemoryStore>>,
) -> (Arc<MemoryStore>, KeyId, Arc<TestGate<Arc<MemoryStore>>>) {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let gate = Arc::new(build(Arc::clone(&store), &clocks));
    let addr = serve(router(Arc::clone(&gate))).await;
    let r = get_with(addr, "/read", &x_api_key(&key)).await;
    assert_eq!(r.status, 200, "{r:?}");
    (store, record.id, gate)
}

/// A gate over `Authenticator::with_clock` (the door the README and the
/// module docs show, not `Gate::from_manager`), over a store that takes usage.
fn usage_gate(store: Arc<MemoryStore>, clocks: &Clocks) -> TestGate<Arc<MemoryStore>> {
    Gate::new(Authenticator::with_clock(
        verifier(),
        store,
        clocks.0.clone(),
    ))
    .with_limits(MemoryLimits::with_clock(clocks.0.clone()))
}

/// Issue 18, item 3: a gate built from a bare authenticator records usage,
/// so one request and one flush fill in `last_used_at`.
#[tokio::test]
async fn a_gate_over_a_bare_authenticator_records_last_used() {
    let (store, id, gate) = one_request(usage_gate).await;
    gate.flush().await.unwrap();
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(T0));
    let day = T0.utc_date();
    assert_eq!(
        apikey::UsageStore::usage(&*store, id, day..day.next_day().unwrap())
            .await
            .unwrap(),
        vec![(day, 1)]
    );
}

/// Issue 18, item 3: the axum layer writes usage without anyone calling
/// `flush`: it starts one in the background when due.
#[tokio::test]
async fn the_layer_flushes_usage_in_the_background() {
    let (store, id, _gate) = one_request(usage_gate).await;
    let mut last_used = None;
    for _ in 0..500 {
        last_used = store.get(id).await.unwrap().unwrap().last_used_at;
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last_used, Some(T0), "the background flush never ran");
}

/// Issue 18, item 3: usage off is an explicit choice, `read_only`.
#[tokio::test]
async fn a_read_only_authenticator_records_no_usage() {
    let (store, id, gate) = one_request(gate).await;
    assert_eq!(gate.flush().await.unwrap(), 0);
    assert!(gate.authenticator().usage().is_none());
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, None);
}

/// Sets the client address from `X-Test-Client` (a stand-in for a trusted
/// proxy's forwarding header), so one test can call from many networks.
async fn test_client(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let ip = req
        .headers()
        .get("x-test-client")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(ip) = ip {
        req.extensions_mut().insert(apikey::web::ClientIp(ip));
    }
    next.run(req).await
}

/// A server whose gate raises monitoring events into the returned sink.
async fn monitored(
    store: Arc<MemoryStore>,
    clocks: &Clocks,
    limits: MemoryLimits<ManualClock>,
) -> (SocketAddr, Arc<MemoryAuditSink>) {
    let events = Arc::new(MemoryAuditSink::new());
    let monitor = Arc::new(apikey::pipeline::Monitor::new(
        apikey::pipeline::MonitorConfig::default(),
        events.clone(),
    ));
    let gate = Gate::new(
        Authenticator::with_clock(verifier(), store, clocks.0.clone()).with_monitor(monitor),
    )
    .with_limits(limits)
    .with_credits("rest");
    let router = router(Arc::new(gate)).layer(axum::middleware::from_fn(test_client));
    (serve(router).await, events)
}

fn kinds(events: &MemoryAuditSink) -> Vec<&'static str> {
    events.events().iter().map(|e| e.kind.as_str()).collect()
}

/// Issue 22 (seed 001, "key used from new location"): the first network
/// sets the baseline; a second network raises one event, naming the /24.
#[tokio::test]
async fn a_key_used_from_a_second_network_raises_one_new_network_event() {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    let (addr, events) = monitored(store, &clocks, limits).await;
    for client in [
        "198.51.100.4",
        "198.51.100.77",
        "203.0.113.9",
        "203.0.113.10",
    ] {
        let r = get_with(
            addr,
            "/read",
            &[
                ("X-API-Key", key.expose_secret()),
                ("X-Test-Client", client),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["new_network"]);
    assert_eq!(raised[0].key_id, Some(record.id));
    assert_eq!(
        raised[0].kind,
        AuditKind::NewNetwork {
            network: "203.0.113.0/24".parse().unwrap()
        }
    );
}

/// Issue 22 (seed 001, "failed authentication attempts"): 1,000 failures
/// from one network are one burst event, not 1,000.
#[tokio::test]
async fn a_thousand_failures_from_one_network_raise_one_burst_summary() {
    let store = Arc::new(MemoryStore::new());
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    let (addr, events) = monitored(store, &clocks, limits).await;
    for i in 0..1_000 {
        let client = format!("198.51.100.{}", i % 256);
        let r = get_with(
            addr,
            "/read",
            &[("X-API-Key", "sk_live_nope"), ("X-Test-Client", &client)],
        )
        .await;
        assert_eq!(r.status, 401, "{r:?}");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["failure_burst"]);
    match &raised[0].kind {
        AuditKind::FailureBurst {
            network: Some(n), ..
        } => assert_eq!(n.to_string(), "198.51.100.0/24"),
        other => panic!("{other:?}"),
    }
    assert_eq!(raised[0].key_id, None);
}

/// Issue 22 (seed 001, "quota exceeded"): a key out of credits raises one
/// event per dedupe window, however many refusals follow.
#[tokio::test]
async fn exhausted_credits_raise_quota_exceeded_once_per_window() {
    let store = Arc::new(MemoryStore::new());
    let (key, record) = issue(&store, NewKey::new("sk_live_").scopes(["tasks:read"]));
    let clocks = clocks();
    let limits = MemoryLimits::with_clock(clocks.0.clone());
    limits.set_credits_sync(CreditAccount::Key(record.id.as_u64()), 2, None);
    let (addr, events) = monitored(store, &clocks, limits).await;
    let headers = x_api_key(&key);
    let call = || get_with(addr, "/read", &headers);
    assert_eq!(call().await.status, 200);
    assert_eq!(call().await.status, 200);
    for _ in 0..5 {
        call().await.error(429, "USAGE_EXCEEDED");
    }
    assert_eq!(kinds(&events), ["quota_exceeded"]);
    clocks.1.advance(Duration::from_secs(3_600));
    for _ in 0..5 {
        call().await.error(429, "USAGE_EXCEEDED");
    }
    let raised = events.events();
    assert_eq!(kinds(&events), ["quota_exceeded", "quota_exceeded"]);
    assert_eq!(raised[1].kind, AuditKind::QuotaExceeded { suppressed: 4 });
    assert_eq!(raised[1].key_id, Some(record.id));
}
