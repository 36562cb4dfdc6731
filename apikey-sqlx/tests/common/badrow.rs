//! A key whose stored row cannot be read, met on every path: verification
//! and management reads all answer `INVALID_RECORD` (500), never a panic
//! and never `STORE_UNAVAILABLE`; a listing holding the row fails rather
//! than leave it out.

use apikey::KeyId;
use apikey::{
    Actor, ApiKey, KeyManager, KeyStoreWrite, NewKey, Requirement, StoreErrorKind, UsageStore,
};

/// Two keys of a fresh owner, expiring in two days (inside an
/// `expiring_soon` window of seven): `(owner, good, bad key, bad id)`.
pub async fn two_keys<S: KeyStoreWrite + UsageStore>(
    m: &KeyManager<S>,
) -> (String, KeyId, ApiKey, KeyId) {
    let owner = apikey_testkit::conformance::unique_owner();
    let soon =
        apikey::Clock::now(&apikey::SystemClock) + std::time::Duration::from_secs(2 * 86_400);
    let new = || {
        NewKey::new("sk_live_")
            .owner(owner.as_str())
            .expires_at(soon)
    };
    let (_, good) = m.create(new(), &Actor::system()).await.unwrap();
    let (key, bad) = m.create(new(), &Actor::system()).await.unwrap();
    (owner, good.id, key, bad.id)
}

/// Checks every path over the row of `bad` (broken by `case`). `listed`:
/// whether the broken row is still in the expiring window (a broken
/// expiry, or a revoked key, is not).
pub async fn invalid_record_on_every_path<S: KeyStoreWrite + UsageStore>(
    m: &KeyManager<S>,
    (owner, good, key, bad): (&str, KeyId, &ApiKey, KeyId),
    listed: bool,
    case: &str,
) {
    let err = m.store().fetch(bad).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{case}");
    let inner = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<apikey::Error>())
        .unwrap_or_else(|| panic!("{case}: {err:?}"));
    assert_eq!(inner.code().as_str(), "INVALID_RECORD", "{case}");
    let expiring = m
        .expiring_soon(Some(owner), std::time::Duration::from_secs(7 * 86_400))
        .await;
    let mut results = vec![
        m.authenticate(key.expose_secret(), &Requirement::none(), None)
            .await
            .map(|_| ()),
        m.record(bad).await.map(|_| ()),
        m.get(bad).await.map(|_| ()),
        m.list(owner).await.map(|_| ()),
    ];
    if listed {
        results.push(expiring.map(|_| ()));
    } else {
        let ids: Vec<_> = expiring.unwrap().iter().map(|s| s.id).collect();
        assert_eq!(ids, [good], "{case}: only the good key is listed");
    }
    for (i, r) in results.into_iter().enumerate() {
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{case}: call {i} answered Ok"));
        assert_eq!(
            (e.code().as_str(), e.http_status()),
            ("INVALID_RECORD", 500),
            "{case}: call {i}"
        );
    }
    assert_eq!(m.get(good).await.unwrap().id, good, "{case}");
}
