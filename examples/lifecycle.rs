//! Key lifecycle walk-through: create, list, update scopes, disable/enable,
//! rotate with a grace period, the per-owner limit, revoke everything of an
//! owner, and the audit trail.
//!
//! Run with `cargo run --example lifecycle`.

use apikey::Timestamp;
use std::sync::Arc;

use apikey::{
    Actor, Clock, Error, KeyManager, KeyUpdate, Keyring, ManualClock, MemoryAuditSink, MemoryStore,
    NewKey, Requirement, Rotation, ServerSecret, Verifier,
};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // In production: ServerSecret::from_base64(&std::env::var("APIKEY_SECRET_V1")?)
    let verifier = Verifier::new(Keyring::new(1, ServerSecret::generate())?);
    let clock = ManualClock::new("2026-06-01T09:00:00Z".parse::<Timestamp>()?);
    let audit = Arc::new(MemoryAuditSink::new());
    let manager = KeyManager::with_clock(verifier, MemoryStore::new(), clock.clone())
        .with_max_keys_per_owner(3)
        .with_audit_sink(audit.clone());
    let admin = Actor::new("admin_1").reason("walk-through");
    let read = Requirement::scope("tasks:read")?;
    let write = Requirement::scope("tasks:write")?;

    // 1. Create: the full key is shown once.
    let (key, summary) = manager
        .create(
            NewKey::new("kwi_sk_")
                .owner("user_42")
                .name("Python scripts")
                .scopes(["tasks:read"])
                .expires_at(clock.now() + Duration::from_secs(90 * 86_400)),
            &admin,
        )
        .await?;
    println!(
        "created {} (show once: {} chars)",
        summary.display,
        key.expose_secret().len()
    );

    // 2. List: display forms only, never the secret or digest.
    for k in manager.list("user_42").await? {
        println!(
            "  {} {:?} scopes={:?} state={:?}",
            k.display, k.name, k.scopes, k.state
        );
    }

    // 3. Update scopes (PATCH: only what is set changes).
    let denied = manager
        .authenticate(key.expose_secret(), &write, None)
        .await;
    println!(
        "write before update: {}",
        denied.map_or_else(|e| e.code().as_str(), |_| "OK")
    );
    manager
        .update(
            summary.id,
            KeyUpdate::new().scopes(["tasks:read", "tasks:write"]),
            &admin,
        )
        .await?;
    manager
        .authenticate(key.expose_secret(), &write, None)
        .await?;
    println!("write after update: OK");

    // 4. Disable / enable: effective for every verification that starts after the call.
    manager.disable(summary.id, &admin).await?;
    let disabled = manager.authenticate(key.expose_secret(), &read, None).await;
    println!(
        "while disabled: {}",
        disabled.map_or_else(|e| e.code().as_str(), |_| "OK")
    );
    manager.enable(summary.id, &admin).await?;
    manager
        .authenticate(key.expose_secret(), &read, None)
        .await?;
    println!("enabled again: OK");

    // 5. Rotate with a 24-hour grace period: both keys work until it ends.
    let (new_key, new_summary) = manager
        .rotate(
            summary.id,
            Rotation::with_grace(Duration::from_secs(24 * 3_600)),
            &admin,
        )
        .await?;
    println!("rotated {} -> {}", summary.display, new_summary.display);
    clock.advance(Duration::from_secs(23 * 3_600));
    manager
        .authenticate(key.expose_secret(), &read, None)
        .await?;
    println!("old key after 23 h: OK (grace)");
    clock.advance(Duration::from_secs(3_600));
    let old = manager.authenticate(key.expose_secret(), &read, None).await;
    println!(
        "old key after 24 h: {}",
        old.map_or_else(|e| e.code().as_str(), |_| "OK")
    );
    manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await?;
    println!("new key: OK");

    // 6. Per-owner limit (3 active keys; disabled keys count, keys in grace do not).
    for i in 0..3 {
        let r = manager
            .create(
                NewKey::new("kwi_sk_")
                    .owner("user_42")
                    .name(format!("extra {i}")),
                &admin,
            )
            .await;
        match r {
            Ok((_, s)) => println!("created {}", s.display),
            Err(e) => println!("create refused: {} ({}): {e}", e.code(), e.http_status()),
        }
    }

    // 7. Revoke every key of an owner (a user removed from the account).
    let revoked = manager
        .revoke_owner("user_42", "user left the organisation", &admin)
        .await?;
    println!("revoked {} keys of user_42", revoked.len());
    let gone = manager
        .authenticate(new_key.expose_secret(), &read, None)
        .await;
    println!(
        "new key now: {}",
        gone.map_or_else(|e| e.code().as_str(), |_| "OK")
    );

    // Usage is counted in memory and flushed in batches; flush before exit.
    manager.shutdown().await?;
    let usage = manager.get(new_summary.id).await?;
    println!("new key used {} times today", usage.requests_today);

    // 8. The audit trail (never a secret).
    println!("\naudit events:");
    for e in audit.events() {
        println!("  {e}");
    }
    Ok(())
}
