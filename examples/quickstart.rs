//! Quickstart: issue a `kwi_sk_` key into the memory store, verify it, fail a
//! missing scope, show expiry with the manual clock, revoke it and show the
//! rejection.
//!
//! Run with `cargo run --example quickstart`.

use apikey::Timestamp;
use apikey::{
    Authenticator, Error, KeyStatus, KeyStoreQuery, Keyring, ManualClock, MemoryStore, NewKey,
    Requirement, Revocation, ServerSecret, Verifier,
};
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    // In production, load the secret from an environment variable or a
    // secret manager: ServerSecret::from_base64(&std::env::var("APIKEY_SECRET_V1")?)
    let secret = ServerSecret::generate();
    let verifier = Verifier::new(Keyring::new(1, secret)?);
    let clock = ManualClock::new("2026-11-25T12:00:00Z".parse::<Timestamp>()?);
    let store = MemoryStore::new();

    // 1. Issue a key. The full key is shown once; only its digest is stored.
    let (key, record) = verifier.issue(
        NewKey::new("kwi_sk_")
            .owner("user_42")
            .name("Python scripts")
            .scopes(["tasks:read", "projects:*"])
            .expires_at("2026-12-25T12:00:00Z".parse::<Timestamp>()?),
        "2026-11-25T12:00:00Z".parse::<Timestamp>()?,
    )?;
    println!(
        "issued (copy it now, it is shown once): {}",
        key.expose_secret()
    );
    println!("listed as: {}", record.display_form());
    store.insert_sync(record)?;

    let auth = Authenticator::with_clock(verifier, &store, clock.clone());

    // 2. Verify it with a scope the key has.
    let ok = auth
        .authenticate(
            key.expose_secret(),
            &Requirement::scope("projects:read")?,
            None,
        )
        .await?;
    println!("verified key {} of owner {:?}", ok.id(), ok.owner());

    // 3. A scope it lacks.
    let err = auth
        .authenticate(
            key.expose_secret(),
            &Requirement::scope("admin:users")?,
            None,
        )
        .await
        .expect_err("the key lacks admin:users");
    println!(
        "missing scope -> {} {}: {err}",
        err.http_status(),
        err.code()
    );

    // 4. Expiry, with the manual clock moved past expires_at.
    clock.advance(Duration::from_secs(31 * 86_400));
    let err = auth
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .expect_err("the key has expired");
    println!(
        "after 31 days -> {} {}: {err}",
        err.http_status(),
        err.code()
    );
    clock.rewind(Duration::from_secs(31 * 86_400));

    // 5. Revoke it and show the rejection.
    let mut record = store.get(key.id()).await?.ok_or(Error::KeyNotFound)?;
    record.status = KeyStatus::Revoked;
    record.revocation = Some(Revocation {
        at: "2026-11-25T13:00:00Z".parse::<Timestamp>()?,
        reason: "leaked in a CI log".into(),
    });
    store.update_sync(record)?;
    let err = auth
        .authenticate(key.expose_secret(), &Requirement::none(), None)
        .await
        .expect_err("the key is revoked");
    println!(
        "after revoke -> {} {}: {err}",
        err.http_status(),
        err.code()
    );

    // 6. Garbage never reaches the store.
    let err = auth
        .authenticate("kwi_sk_not-a-key", &Requirement::none(), None)
        .await
        .expect_err("garbage");
    println!("garbage -> {} {}: {err}", err.http_status(), err.code());
    Ok(())
}
