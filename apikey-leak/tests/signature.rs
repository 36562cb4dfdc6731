//! GitHub's signature over the raw body: a known answer from GitHub's own
//! documentation, then valid, wrong key id, tampered, re-serialized,
//! truncated and oversized bodies, and key-set refreshes racing alerts.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey_leak::{GithubEndpoint, KeyCache, KeySource, KeySourceError, LeakError, PublicKeySet};
use support::{FakeGithub, World, alert};

/// GitHub's published validation sample (github/docs, the secret scanning
/// partner program page's Python example): key identifier, public key,
/// payload and signature, verbatim.
const GITHUB_SAMPLE_KEY_ID: &str =
    "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
const GITHUB_SAMPLE_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq
kCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==
-----END PUBLIC KEY-----";
const GITHUB_SAMPLE_PAYLOAD: &[u8] =
    br#"[{"token":"some_token","type":"some_type","url":"some_url"}]"#;
const GITHUB_SAMPLE_SIGNATURE: &str = "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc=";

fn sample_keys() -> PublicKeySet {
    PublicKeySet::new()
        .with_pem(GITHUB_SAMPLE_KEY_ID, GITHUB_SAMPLE_PEM)
        .unwrap()
}

#[test]
fn githubs_published_sample_verifies() {
    sample_keys()
        .verify(
            GITHUB_SAMPLE_KEY_ID,
            GITHUB_SAMPLE_SIGNATURE,
            GITHUB_SAMPLE_PAYLOAD,
        )
        .unwrap();
}

#[test]
fn githubs_published_sample_fails_with_one_byte_changed() {
    let mut payload = GITHUB_SAMPLE_PAYLOAD.to_vec();
    payload[11] ^= 1;
    assert!(matches!(
        sample_keys().verify(GITHUB_SAMPLE_KEY_ID, GITHUB_SAMPLE_SIGNATURE, &payload),
        Err(LeakError::BadSignature)
    ));
}

#[test]
fn githubs_published_key_list_format_is_read() {
    let json = serde_json::json!({"public_keys": [{
        "key_identifier": GITHUB_SAMPLE_KEY_ID, "key": GITHUB_SAMPLE_PEM, "is_current": true
    }]})
    .to_string();
    let keys = PublicKeySet::from_github_json(json.as_bytes()).unwrap();
    keys.verify(
        GITHUB_SAMPLE_KEY_ID,
        GITHUB_SAMPLE_SIGNATURE,
        GITHUB_SAMPLE_PAYLOAD,
    )
    .unwrap();
    assert!(
        PublicKeySet::from_github_json(
            b"{\"public_keys\":[{\"key_identifier\":\"x\",\"key\":\"junk\"}]}"
        )
        .is_err()
    );
}

fn endpoint(
    world: &World,
    keys: PublicKeySet,
) -> GithubEndpoint<Arc<apikey_testkit::netstore::NetStore>, PublicKeySet, apikey::ManualClock> {
    GithubEndpoint::new(Arc::new(world.responder()), keys)
}

#[tokio::test]
async fn a_valid_signature_is_accepted_and_the_key_revoked() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    let body = alert(&[key.expose_secret()]);
    let ep = endpoint(&world, github.keys());
    let report = github.post(&ep, &body).await.unwrap();
    assert_eq!(report.summary.changed, 1);
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        apikey::KeyStatus::Revoked
    );
}

#[tokio::test]
async fn a_wrong_key_id_is_refused() {
    let world = World::new();
    let (github, other) = (FakeGithub::new(3), FakeGithub::new(4));
    let body = alert(&["whatever"]);
    let ep = endpoint(&world, github.keys());
    // Signed by GitHub's key but naming another identifier.
    let err = ep
        .handle(
            Some(&other.key_id),
            Some(&github.sign(body.as_bytes())),
            body.as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeakError::UnknownKeyId), "{err:?}");
    assert_eq!(err.status(), 401);
    // Signed by a key GitHub does not hold, naming GitHub's identifier.
    let err = ep
        .handle(
            Some(&github.key_id),
            Some(&other.sign(body.as_bytes())),
            body.as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeakError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn a_tampered_body_is_refused_and_nothing_is_revoked() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    let signed = alert(&["harmless"]);
    let tampered = alert(&[key.expose_secret()]);
    let before = world.calls();
    let err = endpoint(&world, github.keys())
        .handle(
            Some(&github.key_id),
            Some(&github.sign(signed.as_bytes())),
            tampered.as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeakError::BadSignature), "{err:?}");
    assert_eq!(
        world.calls(),
        before,
        "no store call before the signature holds"
    );
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        apikey::KeyStatus::Active
    );
}

#[tokio::test]
async fn re_serialized_json_is_refused() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let key = world.key("sk_live_", "acme").await;
    // GitHub's bytes, with its own spacing; the signature covers them.
    let original = format!(
        "[ {{ \"type\": \"apikey_secret_key\", \"token\": \"{}\", \"url\": \"https://github.com/o/r\", \"source\": \"content\" }} ]",
        key.expose_secret()
    );
    let signature = github.sign(original.as_bytes());
    let value: serde_json::Value = serde_json::from_str(&original).unwrap();
    let reserialized = serde_json::to_string(&value).unwrap();
    assert_ne!(reserialized, original);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&reserialized).unwrap(),
        value
    );
    let ep = endpoint(&world, github.keys());
    let err = ep
        .handle(
            Some(&github.key_id),
            Some(&signature),
            reserialized.as_bytes(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LeakError::BadSignature), "{err:?}");
    // The raw bytes themselves verify.
    ep.handle(Some(&github.key_id), Some(&signature), original.as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_truncated_body_is_refused() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let body = alert(&["a", "b"]);
    let signature = github.sign(body.as_bytes());
    let ep = endpoint(&world, github.keys());
    for cut in [1, body.len() / 2, body.len() - 1] {
        let err = ep
            .handle(
                Some(&github.key_id),
                Some(&signature),
                &body.as_bytes()[..cut],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, LeakError::BadSignature),
            "cut at {cut}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_any_key_fetch() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let body = alert(&["x"; 100]);
    let ep = endpoint(&world, github.keys()).with_max_body(body.len() - 1);
    let err = github.post(&ep, &body).await.unwrap_err();
    assert!(matches!(err, LeakError::BodyTooLarge { .. }), "{err:?}");
    assert_eq!(err.status(), 413);
    assert_eq!(ep.keys().fetches(), 0);
    // At the bound it is read.
    let ep = endpoint(&world, github.keys()).with_max_body(body.len());
    github.post(&ep, &body).await.unwrap();
}

#[tokio::test]
async fn missing_headers_and_malformed_signatures_are_refused_without_a_fetch() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let body = alert(&["x"]);
    let ep = endpoint(&world, github.keys());
    let sig = github.sign(body.as_bytes());
    let err = ep
        .handle(None, Some(&sig), body.as_bytes())
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (400, "MISSING_HEADER"));
    let err = ep
        .handle(Some(&github.key_id), None, body.as_bytes())
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (400, "MISSING_HEADER"));
    for bad in ["", "not base64!", "AAAA", &"A".repeat(4000)] {
        let err = ep
            .handle(Some(&github.key_id), Some(bad), body.as_bytes())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LeakError::MalformedSignature),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(ep.keys().fetches(), 0);
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_match_array_is_a_400_without_the_token() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let ep = endpoint(&world, github.keys());
    for body in [
        r#"[{"token": 12, "type": "sk_live_secretvalue"}]"#,
        r#"[{"token": "sk_live_secretvalue", "type": 12}]"#,
        r#"{"token": "sk_live_secretvalue"}"#,
    ] {
        let err = github.post(&ep, body).await.unwrap_err();
        assert_eq!(err.status(), 400, "{body}");
        assert!(!err.to_string().contains("secretvalue"), "{err}");
    }
}

/// A key source whose set can change (GitHub rotating its key), counting
/// fetches, each taking a while so alerts pile up behind it.
#[derive(Clone, Default)]
struct Rotating {
    set: Arc<Mutex<PublicKeySet>>,
    fetches: Arc<AtomicU64>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl KeySource for Rotating {
    async fn fetch(&self) -> Result<PublicKeySet, KeySourceError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(KeySourceError::new("GitHub is down"));
        }
        Ok(self.set.lock().unwrap().clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_set_refresh_racing_a_burst_of_alerts_fetches_once() {
    let world = World::new();
    let (old, new) = (FakeGithub::new(3), FakeGithub::new(5));
    let source = Rotating::default();
    *source.set.lock().unwrap() = old.keys();
    let ep = Arc::new(GithubEndpoint::with_key_cache(
        Arc::new(world.responder()),
        KeyCache::new(source.clone()).with_min_interval(Duration::from_secs(60)),
    ));
    let body = alert(&["x"]);
    // The first alert loads the set.
    old.post(&ep, &body).await.unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    // A minute later GitHub rotates: the published set now holds both
    // keys; a burst of alerts signed with either arrives at once (each
    // fetch takes 20 ms, so the burst piles up behind the first).
    tokio::time::advance(Duration::from_secs(61)).await;
    *source.set.lock().unwrap() =
        PublicKeySet::from_github_json(FakeGithub::published(&[&old, &new]).as_bytes()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let ep = ep.clone();
        let signer = if i % 2 == 0 {
            FakeGithub::new(5)
        } else {
            FakeGithub::new(3)
        };
        let body = alert(&["x"]);
        tasks.push(tokio::spawn(async move { signer.post(&ep, &body).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        source.fetches.load(Ordering::SeqCst),
        2,
        "one refetch for the whole burst"
    );
    // A burst naming an identifier GitHub never published, within the
    // interval: no refetch at all.
    let stranger = FakeGithub::new(9);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let ep = ep.clone();
        let body = alert(&["x"]);
        let sig = stranger.sign(body.as_bytes());
        let id = stranger.key_id.clone();
        tasks.push(tokio::spawn(async move {
            ep.handle(Some(&id), Some(&sig), body.as_bytes()).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(LeakError::UnknownKeyId)));
    }
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unknown_id_refetches_after_the_interval() {
    let world = World::new();
    let (old, new) = (FakeGithub::new(3), FakeGithub::new(5));
    let source = Rotating::default();
    *source.set.lock().unwrap() = old.keys();
    let ep = GithubEndpoint::with_key_cache(
        Arc::new(world.responder()),
        KeyCache::new(source.clone()).with_min_interval(Duration::from_millis(50)),
    );
    let body = alert(&["x"]);
    let sig_new = new.sign(body.as_bytes());
    old.post(&ep, &body).await.unwrap();
    *source.set.lock().unwrap() = new.keys();
    // Within the interval of the first fetch: unknown, no fetch.
    let err = ep
        .handle(Some(&new.key_id), Some(&sig_new), body.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, LeakError::UnknownKeyId));
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    ep.handle(Some(&new.key_id), Some(&sig_new), body.as_bytes())
        .await
        .unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_key_source_is_a_503_and_is_not_hammered() {
    let world = World::new();
    let github = FakeGithub::new(3);
    let source = Rotating::default();
    source.failing.store(true, Ordering::SeqCst);
    let ep = GithubEndpoint::with_key_cache(
        Arc::new(world.responder()),
        KeyCache::new(source.clone()).with_min_interval(Duration::from_secs(3600)),
    );
    let body = alert(&["x"]);
    let sig = github.sign(body.as_bytes());
    for _ in 0..5 {
        let err = ep
            .handle(Some(&github.key_id), Some(&sig), body.as_bytes())
            .await
            .unwrap_err();
        assert!(matches!(err, LeakError::KeysUnavailable(_)), "{err:?}");
        assert_eq!(err.status(), 503);
    }
    assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
}

/// GitHub rotates its key while its key list cannot be fetched: the alert
/// that triggered the failed fetch gets 503, and so does GitHub's retry
/// within the refetch interval (not 401, which GitHub may not retry); the
/// first retry after the interval fetches again and goes through.
#[tokio::test(start_paused = true)]
async fn a_failed_refetch_answers_503_until_the_next_attempt() {
    let world = World::new();
    let (old, new) = (FakeGithub::new(3), FakeGithub::new(5));
    let source = Rotating::default();
    *source.set.lock().unwrap() = old.keys();
    let ep = GithubEndpoint::with_key_cache(
        Arc::new(world.responder()),
        KeyCache::new(source.clone()).with_min_interval(Duration::from_secs(60)),
    );
    let body = alert(&["x"]);
    old.post(&ep, &body).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    // GitHub signs with a new key; its list is unreachable.
    source.failing.store(true, Ordering::SeqCst);
    *source.set.lock().unwrap() = new.keys();
    let sig_new = new.sign(body.as_bytes());
    for retry in 0..3 {
        let err = ep
            .handle(Some(&new.key_id), Some(&sig_new), body.as_bytes())
            .await
            .unwrap_err();
        assert!(
            matches!(err, LeakError::KeysUnavailable(_)),
            "retry {retry}: {err:?}"
        );
        assert_eq!(err.status(), 503, "retry {retry}");
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    assert_eq!(source.fetches.load(Ordering::SeqCst), 2, "no extra fetch");
    // The key the cache holds still works meanwhile.
    old.post(&ep, &body).await.unwrap();
    // After the interval, the next attempt fetches again and succeeds.
    source.failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(31)).await;
    new.post(&ep, &body).await.unwrap();
    assert_eq!(source.fetches.load(Ordering::SeqCst), 3);
    // A made-up identifier after a good fetch is 401 again.
    let stranger = FakeGithub::new(9);
    let err = stranger.post(&ep, &body).await.unwrap_err();
    assert!(matches!(err, LeakError::UnknownKeyId), "{err:?}");
}
