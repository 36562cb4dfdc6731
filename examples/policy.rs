//! Policy, renewal, derived and publishable keys, end to end, on an in-memory store and a manual clock:
//!
//! 1. an issuance policy gives live keys a default and a maximum lifetime; a key that a tightened policy no
//!    longer allows is refused (`POLICY_VIOLATION`) without being revoked, and works again when it loosens;
//! 2. the expiry sweep sends one notice 30 days before expiry and renews an auto-renewing key in place;
//! 3. a derived key for an agent only narrows its parent and dies with it;
//! 4. a publishable key holds only public scopes and works only from its allowed origins.
//!
//! `cargo run --example policy`

use apikey::Timestamp;
use std::sync::Arc;

use apikey::web::{Decision, Gate, Route};
use apikey::{
    Actor, Clock, Derivation, Environment, KeyManager, KeyPolicies, KeyPolicy, KeyRecord,
    KeyUpdate, Keyring, ManualClock, MemoryStore, NewKey, PolicyRule, PolicyTarget, Requirement,
    ServerSecret, SweepOptions, Verifier,
};
use std::time::Duration;

fn policies(max_days: i64) -> KeyPolicies {
    KeyPolicies::new().rule(PolicyRule::new(
        PolicyTarget::Prefix("sk_live_".into()),
        KeyPolicy::new()
            .default_lifetime(Duration::from_secs(90 * 86_400))
            .max_lifetime(Duration::from_secs(max_days as u64 * 86_400)),
    ))
}

/// The code of a refusal; an error if the call succeeded.
fn refused<T>(r: apikey::Result<T>) -> Result<apikey::ErrorCode, Box<dyn std::error::Error>> {
    match r {
        Ok(_) => Err("expected a refusal".into()),
        Err(e) => Ok(e.code()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let verifier = || -> apikey::Result<Verifier> {
        Verifier::new(Keyring::new(1, ServerSecret::from_bytes(&[7; 32])?)?)
            .with_prefix("pk_live_", Environment::Live)
    };
    let clock = ManualClock::new("2026-06-01T09:00:00Z".parse::<Timestamp>()?);
    let admin = Actor::new("admin_1");
    let store = Arc::new(MemoryStore::new());
    let keys = KeyManager::with_clock(verifier()?, store.clone(), clock.clone())
        .with_key_policies(policies(366))
        .with_public_scopes(["search:query"])?;
    let any = Requirement::none();

    // 1. Policy: 90 days by default, at most 366.
    let (key, summary) = keys
        .create(
            NewKey::new("sk_live_")
                .owner("acme")
                .scopes(["search:query", "data:write"]),
            &admin,
        )
        .await?;
    println!(
        "1. created {} expiring {}",
        summary.display,
        summary.expires_at.map_or("never".into(), |t| t.to_string())
    );
    let too_long =
        KeyUpdate::new().expires_at(Some(clock.now() + Duration::from_secs(400 * 86_400)));
    let err = refused(keys.update(summary.id, too_long, &admin).await)?;
    println!("   an expiry past the maximum: {}", err);
    // Tighten the policy below the key's lifetime: refused, not revoked.
    let strict = KeyManager::with_clock(verifier()?, store.clone(), clock.clone())
        .with_key_policies(policies(30));
    let err = refused(strict.authenticate(key.expose_secret(), &any, None).await)?;
    println!(
        "   under a 30-day maximum: {} (the key is not revoked)",
        err
    );
    keys.authenticate(key.expose_secret(), &any, None).await?;
    println!("   under the 366-day policy again: valid");

    // 2. Expiry notices and auto-renewal, once per key, whatever the number of sweepers.
    let (_, renewing) = keys
        .create(
            NewKey::new("sk_live_")
                .owner("acme")
                .name("auto")
                .metadata(KeyRecord::AUTO_RENEW, "true"),
            &admin,
        )
        .await?;
    clock.advance(Duration::from_secs(61 * 86_400)); // 29 days left on both keys
    let options = SweepOptions::default().renew_before(Duration::from_secs(30 * 86_400));
    let report = keys.sweep_once(&options).await?;
    let again = keys.sweep_once(&options).await?;
    println!(
        "2. sweep: {} notified, {} renewed; a second pass: {} notified, {} renewed",
        report.notified, report.renewed, again.notified, again.renewed
    );
    println!(
        "   the auto-renewing key now expires {}",
        keys.get(renewing.id)
            .await?
            .expires_at
            .map_or("never".into(), |t| t.to_string())
    );

    // 3. A derived key for an agent: narrower than its parent, dead with it.
    let (child, _) = keys
        .derive(
            summary.id,
            Derivation::new("agent").scopes(["search:query"]),
            &admin,
        )
        .await?;
    let wider = refused(
        keys.derive(
            summary.id,
            Derivation::new("greedy").scopes(["admin:*"]),
            &admin,
        )
        .await,
    )?;
    println!("3. a child asking for more than its parent: {}", wider);
    keys.authenticate(
        child.expose_secret(),
        &Requirement::scope("search:query")?,
        None,
    )
    .await?;
    keys.revoke(summary.id, "rotated out", &admin).await?;
    let err = refused(keys.authenticate(child.expose_secret(), &any, None).await)?;
    println!("   after the parent's revocation the child is {}", err);

    // 4. A publishable key for a web page: public scopes only, allowed origins only.
    let secret_scope = refused(
        keys.create(NewKey::new("pk_live_").scopes(["data:write"]), &admin)
            .await,
    )?;
    println!(
        "4. a publishable key with a non-public scope: {}",
        secret_scope
    );
    let (pk, _) = keys
        .create(
            NewKey::new("pk_live_").scopes(["search:query"]).metadata(
                apikey::web::publishable::ALLOWED_ORIGINS,
                "https://shop.example",
            ),
            &admin,
        )
        .await?;
    let gate = Gate::from_manager(&keys);
    let route = Route::new(Requirement::scope("search:query")?);
    for origin in ["https://shop.example", "https://evil.example"] {
        let headers = [("X-API-Key", pk.expose_secret()), ("Origin", origin)];
        match gate.check(headers, None, None, &route).await {
            Decision::Admitted(ok) => {
                println!("   from {origin}: admitted, CORS {:?}", ok.allow_origin)
            }
            Decision::Rejected(no) => println!("   from {origin}: {}", no.to_response().status),
            Decision::NotOurs => println!("   from {origin}: not ours"),
        }
    }
    Ok(())
}
