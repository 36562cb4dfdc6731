//! The example server: a key issued by a first run is accepted after a
//! restart (same data directory, same secret file); one request fills in
//! `last_used` in the management listing; `GET /metrics` renders
//! Prometheus text.

#![cfg(not(loom))]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn example() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/axum_server
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("axum_server");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace --all-features` builds it (or `cargo build -p apikey-sqlx --example axum_server --features sqlite,postgres`)",
        bin.display()
    );
    bin
}

/// A started example server.
struct Server {
    child: Child,
    port: u16,
    /// The keys it printed (first run only).
    keys: Vec<String>,
    /// The demo sign-in token it printed.
    token: Option<String>,
    /// What it printed up to "listening on".
    printed: Vec<String>,
    /// What it prints after that, line by line.
    output: std::sync::mpsc::Receiver<String>,
}

/// Starts the server; returns it, its port and the keys it printed.
fn start(data: &std::path::Path) -> (Child, u16, Vec<String>) {
    let s = start_with(data, &[]);
    (s.child, s.port, s.keys)
}

fn start_with(data: &std::path::Path, env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(example())
        .env("APIKEY_DATA_DIR", data)
        .env("PORT", "0")
        .env_remove("DATABASE_URL")
        .env_remove("APIKEY_SECRET_V1")
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut port, mut keys, mut token) = (None, Vec::new(), None);
    let mut printed = Vec::new();
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        printed.push(line.clone());
        if let Some(key) = line.split("shown once: ").nth(1) {
            keys.push(key.trim().to_owned());
        }
        if let Some(t) = line.split("token=").nth(1) {
            token = t.split_whitespace().next().map(str::to_owned);
        }
        if let Some(addr) = line.strip_prefix("listening on http://") {
            port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            break;
        }
    }
    // Keep reading (the server never blocks on a full pipe), and pass the
    // lines on to whoever still listens.
    let (tx, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Server {
        child,
        port: port.expect("the server did not start"),
        keys,
        token,
        printed,
        output,
    }
}

/// `GET path` with extra header lines; the whole response.
fn get(port: u16, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn status(port: u16, key: &str) -> String {
    get(port, "/v1/tasks", &format!("X-API-Key: {key}\r\n"))
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let data = std::env::temp_dir().join(format!("apikey-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    data
}

#[test]
fn keys_issued_by_a_first_run_work_after_a_restart() {
    let data = data_dir("restart");
    let (mut first, port, keys) = start(&data);
    assert_eq!(keys.len(), 2, "the first run issues two keys");
    assert!(status(port, &keys[0]).contains(" 200 "));
    let answer = get(port, "/v1/tasks", &format!("X-API-Key: {}\r\n", keys[0]));
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    first.kill().unwrap();
    first.wait().unwrap();

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("server-secret-v1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the generated secret file is private");

    let (mut second, port, again) = start(&data);
    assert!(again.is_empty(), "a restart issues no new keys");
    assert!(
        status(port, &keys[0]).contains(" 200 "),
        "the first run's key after a restart"
    );
    assert!(status(port, &keys[1]).contains(" 200 "));
    assert!(status(port, "sk_live_nope").contains(" 401 "));
    second.kill().unwrap();
    second.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 18, item 3: one guarded request, one flush (the server's timer,
/// every 100 ms here), and the management listing shows `last_used`.
#[test]
fn one_request_fills_in_last_used_in_the_listing() {
    let data = data_dir("last-used");
    let mut server = start_with(&data, &[("APIKEY_FLUSH_MS", "100")]);
    let token = server.token.clone().expect("the sign-in link");
    let cookie = format!("Cookie: demo_session={token}\r\n");
    let listing = || get(server.port, "/v1/api-keys", &cookie);
    let before = listing();
    assert!(before.contains(" 200 "), "{before}");
    assert!(!before.contains("\"last_used\":\""), "{before}");
    assert!(status(server.port, &server.keys[0]).contains(" 200 "));
    // The flush runs on the server's timer: wait for it, a bounded number
    // of periods.
    let mut after = String::new();
    for _ in 0..100 {
        after = listing();
        if after.contains("\"last_used\":\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(after.contains("\"last_used\":\""), "{after}");
    assert_eq!(after.matches("\"last_used\":\"").count(), 1, "{after}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// The management API without a key or a session answers as the web edge
/// does (docs/errors.md): `MISSING_API_KEY` naming where to send the key.
#[test]
fn the_management_api_without_credentials_says_where_the_key_goes() {
    let data = data_dir("missing");
    let mut server = start_with(&data, &[]);
    let answers: Vec<String> = ["", "Cookie: demo_session=nope\r\n"]
        .iter()
        .map(|headers| get(server.port, "/v1/api-keys", headers))
        .collect();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    for answer in answers {
        assert!(answer.contains(" 401 "), "{answer}");
        assert!(answer.contains("\"code\":\"MISSING_API_KEY\""), "{answer}");
        assert!(
            answer.contains(r#""accepted":["X-API-Key","Authorization: Bearer"]"#)
                && answer.contains(r#""header":"X-API-Key""#),
            "{answer}"
        );
    }
}

/// Issue 22: `GET /metrics` renders the process's metrics as Prometheus
/// text, after one request through the gate.
#[test]
fn the_metrics_route_renders_prometheus_text() {
    let data = data_dir("metrics");
    let mut server = start_with(&data, &[]);
    assert!(status(server.port, &server.keys[0]).contains(" 200 "));
    assert!(status(server.port, "sk_live_nope").contains(" 401 "));
    let text = get(server.port, "/metrics", "");
    assert!(text.contains(" 200 "), "{text}");
    assert!(
        text.contains(
            "apikey_authentication_duration_seconds_count{result=\"success\",reason=\"none\"}"
        ) || text
            .contains("apikey_authentication_duration_count{result=\"success\",reason=\"none\"}"),
        "{text}"
    );
    assert!(text.contains("apikey_authentication_rejections"), "{text}");
    assert!(!text.contains(&server.keys[0]), "a key in the metrics");
    println!("{text}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

/// Seed 001's "notification sent 30 days before" on the example server: a
/// notice is sent once (the record keeps that it was), so the hourly sweep
/// must tell someone; the example prints each notice.
#[test]
fn the_expiry_sweep_prints_each_notice() {
    let data = data_dir("expiry-notice");
    let mut first = start_with(&data, &[]);
    let token = first.token.clone().expect("the sign-in link");
    let expires = apikey::Clock::now(&apikey::SystemClock) + Duration::from_secs(10 * 86_400);
    let body =
        format!(r#"{{"name":"nightly","permissions":["tasks:read"],"expires_at":"{expires}"}}"#);
    let mut s = TcpStream::connect(("127.0.0.1", first.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/api-keys HTTP/1.1\r\nHost: localhost\r\nCookie: demo_session={token}\r\n\
         X-Apikey-Csrf: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut created = String::new();
    let _ = s.read_to_string(&mut created);
    assert!(created.contains(" 201 "), "{created}");
    let id = created
        .split("\"id\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // The sweep runs at start-up, then hourly.
    let mut second = start_with(&data, &[]);
    let is_notice = |l: &str| l.contains("expiry notice") && l.contains(&id);
    let mut found = second.printed.iter().any(|l| is_notice(l));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !found && std::time::Instant::now() < deadline {
        match second.output.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => found = is_notice(&line),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    second.child.kill().unwrap();
    second.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    assert!(found, "no expiry notice printed for {id}");
}

/// The leaked-key response a new user can try: a key posted to the public
/// revocation endpoint is refused from then on; junk gets the same 202.
#[test]
fn a_key_posted_to_the_leak_endpoint_is_revoked() {
    let data = data_dir("leak");
    let mut server = start_with(&data, &[]);
    let post = |body: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /v1/leaks/revoke HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(status(server.port, &server.keys[0]).contains(" 200 "));
    let junk = post(r#"{"tokens":["sk_live_nope"]}"#);
    let real = post(&format!(r#"{{"tokens":["{}"]}}"#, server.keys[0]));
    assert!(real.contains(" 202 "), "{real}");
    assert_eq!(
        junk.split("\r\n\r\n").nth(1),
        real.split("\r\n\r\n").nth(1),
        "the same answer whatever the tokens"
    );
    assert!(!real.contains(&server.keys[0]));
    let revoked = status(server.port, &server.keys[0]);
    let other = status(server.port, &server.keys[1]);
    // The owner is told (here: a line on the server's output), once.
    let id = server.keys[0]["sk_live_".len().."sk_live_".len() + 11].to_owned();
    let mut notices = Vec::new();
    while let Ok(line) = server.output.recv_timeout(Duration::from_millis(500)) {
        if line.contains("leak notice") {
            notices.push(line);
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
    assert!(revoked.contains(" 401 "), "{revoked}");
    assert!(other.contains(" 200 "), "{other}");
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains(&id) && notices[0].contains("org_demo"),
        "{notices:?}"
    );
    assert!(!notices[0].contains(&server.keys[0]), "the key itself");
}

/// A `redis-server` on a free loopback port, stopped on drop.
struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two instances of the example on one data directory and one Redis
/// (`REDIS_URL`): the owner's credits (100 an hour) are one balance, so
/// 120 requests spread over both admit exactly 100.
#[test]
fn two_instances_share_limits_through_redis() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but redis-server is missing (apt-get install redis-server)"
        );
        eprintln!("skipped: redis-server not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Bounded wait for the server to listen.
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("redis://127.0.0.1:{port}/");
    let data = data_dir("redis");
    let env = [("REDIS_URL", url.as_str())];
    let mut a = start_with(&data, &env);
    let mut b = start_with(&data, &env);
    let writer = a.keys[1].clone();
    let post = |port: u16| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {writer}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..60 {
        for port in [a.port, b.port] {
            let answer = post(port);
            if answer.contains(" 200 ") {
                admitted += 1;
            } else if answer.contains("USAGE_EXCEEDED") || answer.contains("RATE_LIMITED") {
                refused += 1;
            } else {
                panic!("{answer}");
            }
        }
    }
    assert_eq!(
        (admitted, refused),
        (100, 20),
        "one balance for both instances"
    );
    for s in [&mut a, &mut b] {
        s.child.kill().unwrap();
        s.child.wait().unwrap();
    }
    let _ = std::fs::remove_dir_all(&data);
}
