//! `apikey`: mint, list, rotate, revoke, import and verify API keys in a
//! SQLite file or PostgreSQL, from a shell. See `apikey --help` and the
//! crate README for the commands, the JSON fields and the exit statuses.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod config;
mod error;
mod import;
mod output;
mod store;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use apikey::{Actor, Keyring, ServerSecret};
use clap::Parser as _;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command, KeysCommand, SecretCommand};
use crate::commands::{Context, FileAudit, Outcome};
use crate::error::{CliError, Exit};
use crate::store::{Settings, Store};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                std::process::exit(0);
            }
            if std::env::args_os().any(|a| a == "--json") {
                let message = e.kind().as_str().unwrap_or("invalid arguments");
                output::json(&serde_json::json!({
                    "error": { "code": "USAGE", "message": message, "exit": Exit::Usage as i32 }
                }));
            }
            std::process::exit(Exit::Usage as i32);
        }
    };
    let json = cli.global.json;
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(run(cli)));
    let code = match outcome {
        Ok(None) => 0,
        Ok(Some(exit)) => exit as i32,
        Err(e) => {
            report(&e, json);
            e.exit as i32
        }
    };
    if output::stdout_failed() && code == 0 {
        errln!("error: the output could not be written (stdout is closed)");
        std::process::exit(Exit::Usage as i32);
    }
    std::process::exit(code);
}

/// Prints a failure: on stderr, and with `--json` also as a JSON document
/// on stdout.
fn report(e: &CliError, json: bool) {
    crate::errln!("error: {}", e.message);
    if json {
        output::json(&serde_json::json!({
            "error": { "code": e.code, "message": e.message, "exit": e.exit as i32 }
        }));
    }
}

/// Whether the command issues or checks keys (so needs the real secret).
fn needs_secret(command: &Command) -> bool {
    matches!(
        command,
        Command::BootstrapAdmin(_)
            | Command::Keys(
                KeysCommand::Create(_)
                    | KeysCommand::Rotate { .. }
                    | KeysCommand::Import { .. }
                    | KeysCommand::Verify { .. }
            )
    )
}

/// Whether the command prints a key that is shown once.
fn shows_a_key_once(command: &Command) -> bool {
    matches!(
        command,
        Command::BootstrapAdmin(_)
            | Command::Keys(KeysCommand::Create(_) | KeysCommand::Rotate { .. })
    )
}

async fn run(cli: Cli) -> Outcome {
    let g = cli.global;
    if let Command::Secret(SecretCommand::Generate { out }) = &cli.command {
        return secret_generate(out.as_deref(), g.json);
    }
    // Checked before anything is issued: a key printed to /dev/null (or to
    // a closed stdout, which the process finds reopened on /dev/null) is
    // lost for good.
    if shows_a_key_once(&cli.command) && output::stdout_discards() {
        return Err(CliError {
            exit: Exit::Usage,
            code: "OUTPUT_FAILED",
            message:
                "stdout is /dev/null or closed: the key, shown once, would be lost; nothing was \
                      issued (redirect it to a file or a pipe)"
                    .into(),
        });
    }
    let target = config::Target::from_args(g.sqlite.as_deref(), g.database.as_deref())?;
    let import_jobs = match (&cli.command, &target) {
        (Command::Keys(KeysCommand::Import { jobs: Some(n), .. }), _) => usize::from(*n),
        (_, config::Target::Sqlite(_)) => 1,
        (_, config::Target::Postgres(_)) => 8,
    };
    let settings = Settings {
        target,
        timeout: Duration::from_secs(g.timeout.max(1)),
        table_prefix: g.table_prefix,
        schema: g.schema,
        // One connection per import in flight, one spare.
        pool_size: import_jobs as u32 + 1,
    };
    if let Command::Migrate = cli.command {
        store::migrate(&settings).await?;
        let what = settings.target.describe();
        if g.json {
            output::json(&serde_json::json!({ "migrated": true }));
        } else {
            crate::outln!("migrated the {what}");
        }
        return Ok(None);
    }
    // Commands that issue or check keys need the service's secret. The
    // others (list, show, disable, revoke, ...) never compute a digest; the
    // manager still wants a keyring, so they get a throwaway one.
    let ring = if needs_secret(&cli.command) {
        config::keyring(g.secret_file.as_deref(), g.secret_version)?
    } else {
        Keyring::new(1, ServerSecret::generate())
            .map_err(|e| CliError::usage(format!("keyring: {e}")))?
    };
    let user = login_name();
    let ctx = Context {
        json: g.json,
        actor: Actor::new(match g.actor {
            Some(a) if a.trim().is_empty() => {
                return Err(CliError::usage(
                    "--actor (APIKEY_ACTOR) is empty: the audit trail needs a name",
                ));
            }
            Some(a) => a,
            None => format!("cli:{user}"),
        }),
        verifier: config::verifier(ring, &g.register_prefix)?,
        legacy_prefixes: g.legacy_prefix,
        audit: g
            .audit_log
            .as_deref()
            .map(FileAudit::open)
            .transpose()?
            .map(Arc::new),
        import_jobs,
    };
    let store = store::open(&settings).await?;
    let outcome = match (store, cli.command) {
        (Store::Sqlite(s), Command::Keys(k)) => commands::keys(s, k, &ctx).await,
        (Store::Postgres(s), Command::Keys(k)) => commands::keys(s, k, &ctx).await,
        (Store::Sqlite(s), Command::BootstrapAdmin(a)) => commands::bootstrap(s, a, &ctx).await,
        (Store::Postgres(s), Command::BootstrapAdmin(a)) => commands::bootstrap(s, a, &ctx).await,
        (_, Command::Migrate | Command::Secret(_)) => Ok(None),
    };
    if ctx.audit.as_ref().is_some_and(|a| a.failed()) {
        crate::errln!("warning: some audit events could not be written to the audit log");
    }
    outcome
}

/// `apikey secret generate`.
fn secret_generate(out: Option<&std::path::Path>, json: bool) -> Outcome {
    use base64ct::Encoding as _;
    let secret = ServerSecret::generate();
    let text = zeroize::Zeroizing::new(base64ct::Base64::encode_string(secret.expose_secret()));
    let Some(path) = out else {
        if json {
            output::json(&serde_json::json!({ "secret": text.as_str() }));
        } else {
            crate::outln!("{}", text.as_str());
        }
        return Ok(None);
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| {
        writeln!(f, "{}", text.as_str())?;
        f.sync_all()
    });
    written.map_err(|e| {
        let note = if e.kind() == std::io::ErrorKind::AlreadyExists {
            " (an existing file is never overwritten)"
        } else {
            ""
        };
        CliError::usage(format!(
            "cannot create the secret file {}{note}: {e}",
            path.display()
        ))
    })?;
    if json {
        output::json(&serde_json::json!({ "path": path.display().to_string() }));
    } else {
        crate::outln!(
            "wrote a new server secret to {} (mode 0600)",
            path.display()
        );
    }
    Ok(None)
}

/// Who runs the command, for the audit trail: `$USER`, else `$LOGNAME`,
/// else the process's user id (`uid1000`), else `unknown`. An empty
/// variable counts as unset.
fn login_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.trim().is_empty()
        {
            return name;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return format!("uid{}", meta.uid());
        }
    }
    "unknown".into()
}
