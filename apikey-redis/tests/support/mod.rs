//! A throwaway `redis-server` per test: free loopback port, temp dir, no
//! persistence; killed on drop.
//!
//! Without `redis-server` on `PATH` the tests print that they were skipped
//! and how to enable them, unless `CI=true`, where a missing server fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apikey::ManualClock;
use apikey_redis::{RedisLimits, RedisLimitsBuilder, TimeBase};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisServer {
    /// A running server, or `None` (skipped) when `redis-server` is missing
    /// outside CI.
    pub fn start(test: &str) -> Option<Self> {
        if !available() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "redis-server is not installed but CI=true: install it (apt-get install -y redis-server)"
                );
            }
            eprintln!(
                "SKIPPED {test}: redis-server not found on PATH; install it (e.g. `apt-get install -y redis-server`) to run the Redis tests"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "apikey-redis-{}-{}-{port}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = Self {
            port,
            dir,
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Bounded wait until it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A builder with a prefix of its own for `test`.
    pub fn builder(&self, test: &str) -> RedisLimitsBuilder {
        RedisLimits::builder(self.url()).prefix(format!("test:{test}:"))
    }

    /// Limits on an injected clock.
    pub fn limits_on(&self, test: &str, clock: &ManualClock) -> RedisLimits {
        self.builder(test)
            .time_base(TimeBase::Clock(Arc::new(clock.clone())))
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
