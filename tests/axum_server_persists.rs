//! The example server keeps its keys: a key issued by a first run is
//! accepted after a restart (same data directory, same secret file).

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
        "{} is missing: `cargo test --all-features` builds it (or `cargo build --example axum_server --features axum`)",
        bin.display()
    );
    bin
}

/// Starts the server; returns it, its port and the keys it printed.
fn start(data: &std::path::Path) -> (Child, u16, Vec<String>) {
    let mut child = Command::new(example())
        .env("APIKEY_DATA_DIR", data)
        .env("PORT", "0")
        .env_remove("DATABASE_URL")
        .env_remove("APIKEY_SECRET_V1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut port, mut keys) = (None, Vec::new());
    for line in lines.by_ref().take(20) {
        let line = line.unwrap();
        if let Some(key) = line.split("shown once: ").nth(1) {
            keys.push(key.trim().to_owned());
        }
        if let Some(addr) = line.strip_prefix("listening on http://") {
            port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, port.expect("the server did not start"), keys)
}

fn status(port: u16, key: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/tasks HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn keys_issued_by_a_first_run_work_after_a_restart() {
    let data = std::env::temp_dir().join(format!("apikey-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (mut first, port, keys) = start(&data);
    assert_eq!(keys.len(), 2, "the first run issues two keys");
    assert!(status(port, &keys[0]).contains(" 200 "));
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
