//! `GithubKeySource` against a local server speaking GitHub's format (only
//! loopback is reachable here; the code path is the HTTPS one's but for
//! TLS).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use apikey_leak::{GithubEndpoint, GithubKeySource, KeySource};
use support::{FakeGithub, World, alert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `status` and `body` to every request; counts requests.
async fn serve(status: &'static str, body: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/meta/public_keys/secret_scanning",
        listener.local_addr().unwrap()
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_key_list_is_fetched_and_used() {
    let github = FakeGithub::new(3);
    let (url, hits) = serve("200 OK", FakeGithub::published(&[&github])).await;
    let source = GithubKeySource::new().with_url(&url).unwrap();
    let set = source.fetch().await.unwrap();
    assert_eq!(set.ids().collect::<Vec<_>>(), [github.key_id.as_str()]);

    let world = World::new();
    let key = world.key("sk_live_", "acme").await;
    let ep = GithubEndpoint::new(Arc::new(world.responder()), source);
    let body = alert(&[key.expose_secret()]);
    for _ in 0..3 {
        github.post(&ep, &body).await.unwrap();
    }
    assert_eq!(
        world.manager.get(key.id()).await.unwrap().status,
        apikey::KeyStatus::Revoked
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "one direct fetch, one cached for three alerts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_foreign_key_list_is_an_error() {
    for (status, body) in [
        ("500 Internal Server Error", "{}".to_owned()),
        ("200 OK", "{\"public_keys\": 3}".to_owned()),
        ("200 OK", " ".repeat(2 << 20)),
    ] {
        let (url, _) = serve(status, body).await;
        let source = GithubKeySource::new().with_url(&url).unwrap();
        assert!(source.fetch().await.is_err(), "{status}");
    }
}

#[test]
fn plain_http_is_refused_except_to_loopback() {
    assert!(
        GithubKeySource::new()
            .with_url("http://api.github.com/meta")
            .is_err()
    );
    assert!(
        GithubKeySource::new()
            .with_url("http://127.0.0.1.example.com/x")
            .is_err()
    );
    assert!(GithubKeySource::new().with_url("ftp://x").is_err());
    // User information before the host: the request goes to the host after
    // the `@`, which is not loopback (nor expected over https).
    for url in [
        "http://localhost:1@evil.example/",
        "http://127.0.0.1:80@evil.example/meta",
        "http://[::1]:1@evil.example/",
        "https://user:pass@ghe.example.com/meta",
        "http://localhost\\@evil.example/",
        "http://",
        "http://[::1/",
    ] {
        assert!(GithubKeySource::new().with_url(url).is_err(), "{url}");
    }
    for url in [
        "http://127.0.0.1/meta",
        "http://127.0.0.1:8080/meta",
        "http://localhost:8080/meta?x=@y",
        "http://[::1]:8080/meta",
    ] {
        assert!(GithubKeySource::new().with_url(url).is_ok(), "{url}");
    }
    assert!(
        GithubKeySource::new()
            .with_url("https://ghe.example.com/api/v3/meta/public_keys/secret_scanning")
            .is_ok()
    );
}
