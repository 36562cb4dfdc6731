//! The loopback load run shared by the web-edge benches (`benches/web_edge.rs`,
//! `apikey-sqlx/benches/web_edge_sqlite.rs`, `apikey-redis/benches/redis_gate.rs`):
//! each route on its own server thread (a current-thread tokio runtime, so
//! one worker), a load generator (`wrk` or a Rust client), the server
//! thread's CPU time from `/proc/thread-self/schedstat`, routes alternated
//! round by round, ratios against the first row of the same round.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One route served on its own thread.
pub struct Server {
    pub addr: SocketAddr,
    /// `/proc/self/task/<tid>/schedstat` of the server thread.
    schedstat: String,
}

impl Server {
    /// Serves `router` on 127.0.0.1 (any port) from a new thread running a
    /// current-thread runtime: one worker, all connections on it.
    pub fn start(router: axum::Router) -> Self {
        Self::start_with(move || async move { router })
    }

    /// As [`start`](Self::start), with the router made on the server's
    /// own runtime (stores whose pools belong to a runtime).
    pub fn start_with<F, Fut>(make: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = axum::Router>,
    {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let router = make().await;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                // `/proc/thread-self` links to `<pid>/task/<tid>`.
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                let schedstat = format!("/proc/{}/schedstat", me.display());
                tx.send((listener.local_addr().unwrap(), schedstat))
                    .unwrap();
                axum::serve(listener, router).await.unwrap();
            });
        });
        let (addr, schedstat) = rx.recv().unwrap();
        Self { addr, schedstat }
    }

    /// CPU time the server thread has used (user + system).
    pub fn cpu(&self) -> Duration {
        thread_cpu(&self.schedstat)
    }
}

/// Nanoseconds on the CPU, the first field of a `schedstat` file.
fn thread_cpu(path: &str) -> Duration {
    let text = std::fs::read_to_string(path).unwrap();
    let ns: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

/// One round of one route.
struct Sample {
    requests: u64,
    secs: f64,
    server_cpu: Duration,
    client_cpu: Option<Duration>,
}

impl Sample {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
    fn cpu_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.requests as f64
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn have_wrk() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Alternates `rows` (name, server) for `WEB_EDGE_ROUNDS` rounds of
/// `WEB_EDGE_SECS` seconds each, every request carrying `X-API-Key: key`,
/// and prints each round and the ratios to the first row.
pub fn run(rows: &[(&str, &Server)], key: &str) {
    let rounds: usize = env("WEB_EDGE_ROUNDS", 3);
    let secs: u64 = env("WEB_EDGE_SECS", 3);
    let conns: usize = env("WEB_EDGE_CONNS", 32);
    let client = std::env::var("WEB_EDGE_CLIENT").unwrap_or_else(|_| {
        if have_wrk() {
            "wrk".into()
        } else {
            "rust".into()
        }
    });
    println!(
        "web edge: {rounds} rounds x {secs} s per route, {conns} connections, client {client}, one server worker per route"
    );
    println!("load before: {}", uptime());
    // Warm-up: a short run per route (connections, allocator, caches).
    for (_, server) in rows {
        drive(&client, server, key, conns, Duration::from_secs(1));
    }
    let mut all: Vec<Vec<Sample>> = (0..rows.len()).map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (name, server)) in rows.iter().enumerate() {
            let s = drive(&client, server, key, conns, Duration::from_secs(secs));
            let client_cpu = s
                .client_cpu
                .map(|c| {
                    format!(
                        ", client {:.2} µs/req",
                        c.as_secs_f64() * 1e6 / s.requests as f64
                    )
                })
                .unwrap_or_default();
            println!(
                "round {round} {name:<44} {:>9.0} req/s  server {:>6.2} µs/req{client_cpu}",
                s.rps(),
                s.cpu_us()
            );
            all[i].push(s);
        }
    }
    println!("load after: {}", uptime());
    println!();
    println!(
        "| route | requests/s | server CPU/request | ratio to {} (per round) |",
        rows[0].0
    );
    println!("|---|---:|---:|---|");
    for (i, (name, _)) in rows.iter().enumerate() {
        let range = |f: &dyn Fn(&Sample) -> f64| {
            let v: Vec<f64> = all[i].iter().map(f).collect();
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        };
        let (r0, r1) = range(&|s| s.rps());
        let (c0, c1) = range(&|s| s.cpu_us());
        let ratios: Vec<String> = all[i]
            .iter()
            .zip(&all[0])
            .map(|(s, b)| {
                format!(
                    "{:.2}x, {:+.2} µs",
                    s.rps() / b.rps(),
                    s.cpu_us() - b.cpu_us()
                )
            })
            .collect();
        println!(
            "| {name} | {r0:.0}–{r1:.0} | {c0:.2}–{c1:.2} µs | {} |",
            if i == 0 {
                "1.00x".to_owned()
            } else {
                ratios.join("; ")
            }
        );
    }
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn drive(client: &str, server: &Server, key: &str, conns: usize, dur: Duration) -> Sample {
    let cpu0 = server.cpu();
    let started = Instant::now();
    let (requests, client_cpu) = if client == "wrk" {
        (wrk(server.addr, key, conns, dur), None)
    } else {
        let (n, c) = rust_client(server.addr, key, conns, dur);
        (n, Some(c))
    };
    let secs = started.elapsed().as_secs_f64();
    Sample {
        requests,
        secs,
        server_cpu: server.cpu() - cpu0,
        client_cpu,
    }
}

/// `wrk -t1`: the number of requests it completed (every answer must be 2xx).
fn wrk(addr: SocketAddr, key: &str, conns: usize, dur: Duration) -> u64 {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{}s", dur.as_secs().max(1)),
        ])
        .args(["-H", &format!("X-API-Key: {key}")])
        .arg(format!("http://{addr}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(!text.contains("Non-2xx"), "refused requests: {text}");
    text.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output: {text}"))
}

/// `conns` keep-alive connections, one request in flight on each, until
/// `dur` has passed: completed requests and the client thread's CPU time.
fn rust_client(addr: SocketAddr, key: &str, conns: usize, dur: Duration) -> (u64, Duration) {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: web-edge-bench\r\nAccept: */*\r\nX-API-Key: {key}\r\n\r\n"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            let schedstat = format!("/proc/{}/schedstat", me.display());
            let cpu0 = thread_cpu(&schedstat);
            let deadline = Instant::now() + dur;
            let n = rt.block_on(async {
                let tasks: Vec<_> = (0..conns)
                    .map(|_| {
                        let request = request.clone();
                        tokio::spawn(
                            async move { connection(addr, request.as_bytes(), deadline).await },
                        )
                    })
                    .collect();
                let mut n = 0;
                for t in tasks {
                    n += t.await.unwrap();
                }
                n
            });
            (n, thread_cpu(&schedstat) - cpu0)
        })
        .join()
        .unwrap()
    })
}

async fn connection(addr: SocketAddr, request: &[u8], deadline: Instant) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while Instant::now() < deadline {
        stream.write_all(request).await.unwrap();
        let mut filled = 0;
        loop {
            let read = stream.read(&mut buf[filled..]).await.unwrap();
            assert!(read > 0, "server closed the connection");
            filled += read;
            if let Some(len) = complete_response(&buf[..filled]) {
                assert_eq!(len, filled, "one response per request");
                break;
            }
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "refused: {}",
            String::from_utf8_lossy(&buf[..filled])
        );
        n += 1;
    }
    n
}

/// The length of a complete response at the start of `buf`, if there is one.
fn complete_response(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + len).then_some(end + len)
}
