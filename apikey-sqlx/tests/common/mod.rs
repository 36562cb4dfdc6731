//! Test harness: a throwaway PostgreSQL cluster owned by the test process.
//!
//! `initdb` and `pg_ctl` are found under `/usr/lib/postgresql/*/bin` (the
//! Debian `postgresql` package) or on `PATH`. `initdb` refuses to run as
//! root, so as root the cluster runs as the dedicated user `apikey-pg`
//! (created here when missing; `.ci/run` creates it too) through
//! `runuser`. The cluster listens on 127.0.0.1 on a free port, with its
//! unix socket in its temporary directory, and is stopped and deleted on
//! drop (the shared cluster of a test binary by a watchdog that outlives
//! the tests by at most a second).
//!
//! Without PostgreSQL, tests that need it print that they were skipped and
//! how to enable them; with `CI=true` they fail instead.

#![allow(dead_code, clippy::unwrap_used)]

pub mod badrow;
pub mod crash;
pub mod deadline;
pub mod migration;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const USER: &str = "apikey-pg";

/// A random `u64` without a rand dependency.
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

/// A name no other test uses (a schema, a database, a directory).
pub fn unique(name: &str) -> String {
    format!("{name}_{:012x}", rand_u64() & 0xffff_ffff_ffff)
}

/// A fresh temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apikey-sqlx-{}", unique(name)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports a missing PostgreSQL: a failure in CI, a skip elsewhere.
pub fn unavailable(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: PostgreSQL is required when CI=true, but {why}");
    }
    eprintln!(
        "SKIPPED {test}: {why}. Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`) \
         to run the PostgreSQL tests; with CI=true a missing server fails them."
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The directory holding `initdb` and `pg_ctl`, newest version first.
pub fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    Path::new(path.trim()).parent().map(Path::to_path_buf)
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_user: bool,
}

impl Cluster {
    /// Starts a new cluster (`fsync` off unless `durable`: tests kill
    /// clients, never the machine).
    pub fn start(durable: bool) -> Result<Self, String> {
        let bin = pg_bin().ok_or("no initdb under /usr/lib/postgresql/*/bin or on PATH")?;
        let as_user = is_root();
        if as_user {
            let exists = Command::new("id")
                .arg(USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !exists {
                run(Command::new("useradd").args(["--system", "--no-create-home", USER]))?;
            }
        }
        let root = temp_dir("pg");
        if as_user {
            run(Command::new("chown").args([USER, root.to_str().ok_or("path")?]))?;
        }
        let data = root.join("data");
        let mut c = Self {
            root,
            bin,
            port: 0,
            as_user,
        };
        c.pg(
            "initdb",
            &[
                "-D",
                data.to_str().ok_or("path")?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let mut last = String::new();
        for _ in 0..5 {
            c.port = free_port();
            match c.pg_ctl_start(durable) {
                Ok(()) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn pg_ctl_start(&self, durable: bool) -> Result<(), String> {
        let fsync = if durable { "on" } else { "off" };
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync={fsync} -c max_connections=200",
            self.port,
            self.root.display()
        );
        let data = self.root.join("data");
        let log = self.root.join("log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().ok_or("path")?,
                "-l",
                log.to_str().ok_or("path")?,
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        )
        .map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            format!("{e}\n{log}")
        })
    }

    fn pg(&self, prog: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(prog);
        let mut cmd = if self.as_user {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.root);
        run(&mut cmd)
    }

    /// The superuser URL of database `db`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&self) {
        let data = self.root.join("data");
        let _ = self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl_start(false)
    }

    fn watchdog(&self) {
        // Stops and deletes the cluster once this process is gone (the
        // shared cluster lives in a static, which is never dropped).
        let data = self.root.join("data");
        let ctl = self.bin.join("pg_ctl");
        let stop = if self.as_user {
            format!(
                "runuser -u {USER} -- {} -D {} -m immediate stop",
                ctl.display(),
                data.display()
            )
        } else {
            format!("{} -D {} -m immediate stop", ctl.display(), data.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {root}",
            pid = std::process::id(),
            root = self.root.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.root.join("data");
        let _ = self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(54329)
}

/// The cluster shared by the tests of this binary, started on first use;
/// `None` (after reporting the skip, or failing in CI) when PostgreSQL is
/// not installed. `APIKEY_SQLX_PG_URL` points the tests at an existing
/// server instead (only the restart test then still needs a local cluster).
pub fn shared(test: &str) -> Option<String> {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    if let Ok(url) = std::env::var("APIKEY_SQLX_PG_URL") {
        return Some(url);
    }
    let c = SHARED.get_or_init(|| {
        let c = Cluster::start(false)?;
        c.watchdog();
        Ok(c)
    });
    match c {
        Ok(c) => Some(c.url()),
        Err(why) => {
            unavailable(test, why);
            None
        }
    }
}

/// An owned cluster for a test that stops and starts the server.
pub fn owned(test: &str) -> Option<Cluster> {
    match Cluster::start(false) {
        Ok(c) => {
            c.watchdog();
            Some(c)
        }
        Err(why) => {
            unavailable(test, &why);
            None
        }
    }
}

/// Waits a little (a bounded poll helper).
pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Every record `query` matches, page after page.
pub async fn list_all<S: apikey::KeyStoreQuery + ?Sized>(
    store: &S,
    mut query: apikey::KeyQuery,
) -> Vec<apikey::KeyRecord> {
    let mut all = Vec::new();
    loop {
        let mut page = store.list(&query).await.unwrap();
        let next = query.next_page(&page);
        all.append(&mut page.records);
        match next {
            Some(q) => query = q,
            None => return all,
        }
    }
}
