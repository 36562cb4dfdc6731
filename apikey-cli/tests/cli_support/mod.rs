//! Shared by the `apikey` binary tests: one run of the binary, and a database
//! with a server secret to run commands against.
#![allow(dead_code)]

// The throwaway-cluster harness of apikey-sqlx's tests, shared rather than
// copied (its crash module needs the testkit, a dev-dependency here).
#[path = "../../../apikey-sqlx/tests/common/mod.rs"]
pub mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub use serde_json::Value;

/// One run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self:?}");
        self
    }

    pub fn fails(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:?}");
        assert!(
            !self.stderr.trim().is_empty(),
            "a failure says why on stderr"
        );
        self
    }

    /// Neither stream holds `secret`.
    pub fn never_shows(&self, secret: &str) -> &Self {
        assert!(
            !self.stdout.contains(secret) && !self.stderr.contains(secret),
            "a secret was printed:\n{self:?}"
        );
        self
    }
}

/// A database and a server secret to run commands against.
#[derive(Debug)]
pub struct Env {
    pub db: Vec<String>,
    pub secret: String,
    pub dir: PathBuf,
}

impl Env {
    pub fn sqlite(test: &str) -> Self {
        let dir = common::temp_dir(test);
        let db = vec!["--sqlite".into(), dir.join("keys.db").display().to_string()];
        Self::new(db, dir)
    }

    /// PostgreSQL in a schema of its own; `None` when PostgreSQL is missing
    /// (a skip, or a failure with CI=true).
    pub fn postgres(test: &str) -> Option<Self> {
        let url = common::shared(test)?;
        let dir = common::temp_dir(test);
        let db = vec![
            "--database".into(),
            url,
            "--schema".into(),
            common::unique("cli"),
        ];
        Some(Self::new(db, dir))
    }

    pub fn new(db: Vec<String>, dir: PathBuf) -> Self {
        let secret = run(&["secret", "generate"], &[], None).ok().stdout;
        let secret = secret.trim().to_owned();
        assert_eq!(secret.len(), 44, "32 bytes in base64: {secret}");
        Self { db, secret, dir }
    }

    /// `apikey <db> <args>` with the secret in APIKEY_SECRET_V1.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all: Vec<&str> = self.db.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let run = run(&all, &[("APIKEY_SECRET_V1", &self.secret)], stdin);
        run.never_shows(&self.secret);
        run
    }

    /// Without any secret configured.
    pub fn run_without_secret(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = self.db.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run(&all, &[], None)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the binary with a clean environment (no DATABASE_URL, no
/// APIKEY_* from the caller) plus `env`.
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apikey"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name == "DATABASE_URL" || name.starts_with("APIKEY_") {
            cmd.env_remove(name);
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().expect("the apikey binary runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn join<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The JSON of a key never carries the stored digest or the secret.
pub fn assert_no_digest(v: &Value) {
    let text = v.to_string();
    assert!(!text.contains("digest"), "{text}");
}
