//! The `apikey` binary, continued: help, secret files, bad input and an
//! unusable database answered with the documented exit status, the audit
//! log, and a closed stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli_support;

use std::path::Path;
use std::process::{Command, Stdio};

use cli_support::*;

#[test]
fn help_documents_the_commands_and_exit_codes() {
    let help = run(&["--help"], &[], None).ok();
    for text in [
        "secret",
        "migrate",
        "keys",
        "bootstrap-admin",
        "Exit status",
        "APIKEY_SECRET_V1",
    ] {
        assert!(
            help.stdout.contains(text),
            "{text} missing:\n{}",
            help.stdout
        );
    }
    let keys = run(&["keys", "--help"], &[], None).ok();
    for cmd in [
        "create", "list", "show", "disable", "enable", "rotate", "revoke", "delete", "import",
        "verify", "expiring", "usage",
    ] {
        assert!(keys.stdout.contains(cmd), "{cmd} missing:\n{}", keys.stdout);
    }
    run(&["keys", "frobnicate"], &[], None).fails(1);
    let r = run(&["--json", "keys", "show"], &[], None).fails(1);
    assert_eq!(r.json()["error"]["code"], "USAGE");
    assert!(
        run(&["--version"], &[], None)
            .ok()
            .stdout
            .starts_with("apikey ")
    );
    run(&[], &[], None).fails(1);
}

#[test]
fn secret_generate_writes_a_private_file_once() {
    let dir = common::temp_dir("secret_file");
    let path = dir.join("secret");
    let p = path.display().to_string();
    let r = run(&["secret", "generate", "--out", &p], &[], None).ok();
    let secret = std::fs::read_to_string(&path).unwrap();
    r.never_shows(secret.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    run(&["secret", "generate", "--out", &p], &[], None).fails(1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        secret,
        "never overwritten"
    );

    // The file is a --secret-file: a key made with it verifies with it.
    let db = dir.join("keys.db").display().to_string();
    let base = ["--sqlite", db.as_str(), "--secret-file", p.as_str()];
    run(&join(&base, &["migrate"]), &[], None).ok();
    let created = run(&join(&base, &["--json", "keys", "create"]), &[], None)
        .ok()
        .json();
    let key = s(&created["key"]).to_owned();
    run(&join(&base, &["keys", "verify"]), &[], Some(&key))
        .ok()
        .never_shows(secret.trim());
    // Another secret: the key does not verify.
    let other = Env::sqlite("secret_other");
    let r = run(
        &["--sqlite", &db, "keys", "verify"],
        &[("APIKEY_SECRET_V1", &other.secret)],
        Some(&key),
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stdout.starts_with("invalid: INVALID_API_KEY"), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_names_the_problem_with_its_exit_code() {
    let env = Env::sqlite("bad_input");
    env.run(&["migrate"]).ok();

    // Unknown id, malformed id.
    let r = env.run(&["keys", "show", "AAAAAAAAAAA"]).fails(2);
    assert!(r.stderr.contains("no such API key"), "{r:?}");
    let r = env
        .run(&["--json", "keys", "revoke", "not-an-id", "--reason", "x"])
        .fails(1);
    assert_eq!(r.json()["error"]["exit"], 1);
    assert!(r.stderr.contains("not a key id"), "{r:?}");
    // A whole key pasted where its id belongs is not repeated.
    let created = env.run(&["--json", "keys", "create"]).ok().json();
    let whole = s(&created["key"]);
    let r = env.run(&["keys", "disable", whole]).fails(1);
    r.never_shows(whole);
    assert!(r.stderr.contains("looks like a whole key"), "{r:?}");

    // Malformed key: invalid, with the stable code, never echoed.
    let malformed = "sk_live_ThisIsNotAValidKeyButLooksSecret";
    let r = env.run_with(&["--json", "keys", "verify"], Some(malformed));
    assert_eq!(r.code, 4, "{r:?}");
    r.never_shows(malformed);
    assert_eq!(r.json()["code"], "MALFORMED_API_KEY");
    let r = env.run_with(&["keys", "verify"], Some(""));
    assert_eq!(r.code, 1, "{r:?}");

    // Missing secret, bad secret (never echoed), a command that needs none.
    let r = env
        .run_without_secret(&["keys", "create", "--owner", "u"])
        .fails(1);
    assert!(
        r.stderr.contains("APIKEY_SECRET_V1") && r.stderr.contains("--secret-file"),
        "{r:?}"
    );
    let not_base64 = "hunter2-is-not-base64!!";
    let mut args: Vec<&str> = env.db.iter().map(String::as_str).collect();
    args.extend(["keys", "create"]);
    let r = run(&args, &[("APIKEY_SECRET_V1", not_base64)], None).fails(1);
    r.never_shows(not_base64);
    assert!(
        r.stderr.contains("APIKEY_SECRET_V1") && r.stderr.contains("base64"),
        "{r:?}"
    );
    let short = "c2hvcnQ=";
    let r = run(&args, &[("APIKEY_SECRET_V1", short)], None).fails(1);
    r.never_shows(short);
    assert!(r.stderr.contains("32 bytes"), "{r:?}");
    env.run_without_secret(&["keys", "list", "--owner", "u"])
        .ok();

    // Bad arguments.
    for bad in [
        &["keys", "create", "--expires-in", "soon"][..],
        &["keys", "create", "--expires-at", "tomorrow"],
        &["keys", "create", "--scopes", "Bad Scope!"],
        &["keys", "create", "--prefix", "nope_"],
        &["keys", "create", "--allow-ip", "300.0.0.1/8"],
        &["keys", "create", "--metadata", "novalue"],
        &["keys", "expiring", "--within", "-3d"],
    ] {
        let r = env.run(bad).fails(1);
        assert!(r.stderr.starts_with("error: "), "{r:?}");
    }

    // A bad import file.
    let r = env
        .run(&["keys", "import", "/nonexistent/keys.jsonl"])
        .fails(1);
    assert!(r.stderr.contains("cannot open"), "{r:?}");
    let r = env.run_with(
        &[
            "--legacy-prefix",
            "oldco_=sk_live_",
            "keys",
            "import",
            "--format",
            "csv",
            "-",
        ],
        Some("oldco_KeyWhereTheHeaderShouldBe,owner\n"),
    );
    assert_eq!(r.code, 1, "{r:?}");
    r.never_shows("oldco_KeyWhereTheHeaderShouldBe");
    assert!(r.stderr.contains("line 1: column 1 of the header"), "{r:?}");
}

#[test]
fn an_unusable_database_is_exit_3_without_its_password() {
    let env = Env::sqlite("unusable");
    // No file: not created behind the operator's back.
    let r = env.run(&["keys", "list", "--owner", "u"]).fails(3);
    assert!(r.stderr.contains("apikey migrate"), "{r:?}");
    assert!(!Path::new(&env.db[1]).exists());
    // A file without the tables.
    std::fs::write(&env.db[1], b"").unwrap();
    let r = env
        .run(&["--json", "keys", "list", "--owner", "u"])
        .fails(3);
    assert_eq!(r.json()["error"]["code"], "STORE_UNAVAILABLE");
    assert!(r.stderr.contains("run `apikey migrate` first"), "{r:?}");

    // PostgreSQL nobody listens on: the URL's password is never printed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("postgres://app:Sup3rS3cretPw@127.0.0.1:{port}/keys");
    // (--timeout 1: a refused connection is retried until the timeout.)
    for args in [
        vec!["--timeout", "1", "keys", "list", "--owner", "u"],
        vec!["--timeout", "1", "migrate"],
        vec!["--timeout", "1", "keys", "create"],
    ] {
        let r = run(
            &args,
            &[("DATABASE_URL", &url), ("APIKEY_SECRET_V1", &env.secret)],
            None,
        )
        .fails(3);
        r.never_shows("Sup3rS3cretPw").never_shows(&env.secret);
        assert!(r.stderr.contains("127.0.0.1"), "names the server: {r:?}");
        // The cause, not only the pool's "timed out".
        assert!(
            r.stderr.to_lowercase().contains("refused"),
            "names the cause: {r:?}"
        );
    }
    // --sqlite wins over DATABASE_URL from the environment.
    let r = run(
        &[
            "--timeout",
            "1",
            "--sqlite",
            &env.db[1],
            "keys",
            "list",
            "--owner",
            "u",
        ],
        &[("DATABASE_URL", &url)],
        None,
    )
    .fails(3);
    assert!(
        r.stderr.contains("SQLite file") && r.stderr.contains("apikey migrate"),
        "{r:?}"
    );
    let r = run(
        &["keys", "list", "--owner", "u"],
        &[("DATABASE_URL", "mysql://app:pw0rd@h/db")],
        None,
    )
    .fails(1);
    r.never_shows("pw0rd");
    let r = run(&["keys", "list", "--owner", "u"], &[], None).fails(1);
    assert!(r.stderr.contains("DATABASE_URL"), "{r:?}");
}

#[test]
fn the_audit_log_records_who_did_what() {
    let env = Env::sqlite("audit");
    env.run(&["migrate"]).ok();
    let log = env.path("audit.jsonl").display().to_string();
    let created = env
        .run(&[
            "--json",
            "--audit-log",
            &log,
            "--actor",
            "oncall",
            "keys",
            "create",
            "--owner",
            "u",
        ])
        .ok()
        .json();
    let id = s(&created["summary"]["id"]).to_owned();
    env.run(&[
        "--audit-log",
        &log,
        "--actor",
        "oncall",
        "keys",
        "revoke",
        &id,
        "--reason",
        "3am page",
    ])
    .ok();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(s(&created["key"])));
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| s(&e["kind"])).collect();
    assert_eq!(kinds, ["created", "revoked"]);
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == "oncall" && e["key_id"] == id.as_str())
    );
    assert_eq!(events[1]["reason"], "3am page");

    // The same database through DATABASE_URL=sqlite:PATH.
    let listed = run(
        &["--json", "keys", "list", "--owner", "u"],
        &[("DATABASE_URL", &format!("sqlite:{}", env.db[1]))],
        None,
    )
    .ok()
    .json();
    assert_eq!(listed["keys"][0]["id"], id.as_str());

    // No --actor and no login name in the environment (empty counts as
    // unset): the process's user id, never an empty or made-up name.
    let mut args: Vec<&str> = env.db.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--audit-log", &log, "keys", "create", "--owner", "u"]);
    run(
        &args,
        &[
            ("APIKEY_SECRET_V1", &env.secret),
            ("USER", ""),
            ("LOGNAME", ""),
        ],
        None,
    )
    .ok();
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "created");
    let actor = s(&last["actor"]);
    assert!(
        actor
            .strip_prefix("cli:uid")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "{actor}"
    );
    // An empty --actor is refused, not written as "".
    let mut args: Vec<&str> = env.db.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--actor", " ", "keys", "create", "--owner", "u"]);
    let r = run(&args, &[("APIKEY_SECRET_V1", &env.secret)], None).fails(1);
    assert!(r.stderr.contains("--actor"), "{r:?}");
}

/// Runs the binary with stdout a pipe whose reader is already closed (as
/// `apikey ... | head -1` after head exits).
fn run_with_closed_stdout(args: &[&str], env: &[(&str, &str)]) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_apikey"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic_and_names_the_unseen_key() {
    let env = Env::sqlite("closed_stdout");
    env.run(&["migrate"]).ok();
    let db = [env.db[0].as_str(), env.db[1].as_str()];
    let secret = [("APIKEY_SECRET_V1", env.secret.as_str())];
    let r = run_with_closed_stdout(&join(&db, &["bootstrap-admin"]), &secret).fails(1);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert!(
        r.stderr.contains("was issued but could not be printed"),
        "{r:?}"
    );
    // The message names the key to revoke, and that key exists.
    let id = env
        .run(&["--json", "keys", "list", "--owner", "admin"])
        .ok()
        .json()["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        r.stderr.contains(&format!("apikey keys revoke {id}")),
        "{r:?}"
    );
    let r = run_with_closed_stdout(&join(&db, &["keys", "list", "--owner", "admin"]), &[]).fails(1);
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

/// A key printed to /dev/null is lost: refused before anything is issued
/// (a closed stdout is reopened on /dev/null when the process starts, so
/// `>&-` is the same case).
#[test]
fn a_discarded_stdout_issues_nothing() {
    let env = Env::sqlite("null_stdout");
    env.run(&["migrate"]).ok();
    let db = [env.db[0].as_str(), env.db[1].as_str()];
    for args in [
        join(&db, &["keys", "create", "--owner", "u"]),
        join(&db, &["bootstrap-admin"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_apikey"))
            .args(&args)
            .env("APIKEY_SECRET_V1", &env.secret)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("nothing was issued"), "{stderr}");
    }
    for owner in ["u", "admin"] {
        let listed = env
            .run(&["--json", "keys", "list", "--owner", owner])
            .ok()
            .json();
        assert_eq!(listed["keys"], serde_json::json!([]), "{owner}");
    }
    // Commands that show no key still run with their output discarded.
    let out = Command::new(env!("CARGO_BIN_EXE_apikey"))
        .args(join(&db, &["keys", "list", "--owner", "u"]))
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
}
