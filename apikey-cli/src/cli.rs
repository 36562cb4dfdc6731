//! The command line (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Database: --sqlite PATH, or --database URL / DATABASE_URL (sqlite:PATH or postgres://USER@HOST/DB).
Run `apikey migrate` once to create the tables; other commands never change the schema.

Server secret (create, rotate, import, verify, bootstrap-admin): APIKEY_SECRET_V1 (base64 of 32+
random bytes, the variable the example server reads; APIKEY_SECRET_V2.. add versions, the highest is
current unless APIKEY_SECRET_CURRENT says otherwise), or --secret-file PATH. It must be the secret
your service verifies with. list, show, disable, enable, revoke, delete, expiring and usage need none.

The first admin key for the management API:
  apikey bootstrap-admin --owner admin            (refused when admin has a key not revoked or expired)
  apikey keys create --owner admin --scopes 'admin:*' --name bootstrap

Output: tables for people; --json prints one JSON document on stdout (errors too, as
{\"error\":{\"code\",\"message\",\"exit\"}}). A full key is printed once, by create, rotate and
bootstrap-admin; never a digest or a server secret (except `secret generate`, which makes one).

Exit status:
  0  success
  1  bad arguments or input: malformed id, key, time or secret, missing secret, bad import lines
  2  not found: no key with that id
  3  store unavailable: database missing, unreachable, timed out, not migrated, or newer schema
  4  verification failed (`keys verify`: the key is invalid, expired, revoked, ...)
  5  refused: revoked key, already rotated or imported, owner limit, admin already bootstrapped";

/// Manage API keys in a SQLite file or PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "apikey", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
// Listed under their own heading in every subcommand's help, not
// interleaved with the subcommand's options.
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The key database: sqlite:PATH or postgres://USER@HOST/DB.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// A SQLite file (wins over --database and DATABASE_URL).
    #[arg(long, global = true, value_name = "PATH")]
    pub sqlite: Option<PathBuf>,
    /// A file holding the server secret, base64 (instead of APIKEY_SECRET_V1, V2, ...).
    #[arg(long, global = true, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// The keyring version of --secret-file's secret.
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    pub secret_version: u8,
    /// Registers an application prefix next to the built-in sk_live_, sk_test_, kwi_sk_
    /// (PREFIX=live|test; repeatable or comma-separated).
    #[arg(
        long,
        global = true,
        env = "APIKEY_PREFIXES",
        value_name = "PREFIX=ENV"
    )]
    pub register_prefix: Vec<String>,
    /// Declares the prefix of keys imported from another system and the native prefix
    /// they are stored under (LEGACY=NATIVE; repeatable or comma-separated).
    #[arg(
        long,
        global = true,
        env = "APIKEY_LEGACY_PREFIXES",
        value_name = "LEGACY=NATIVE"
    )]
    pub legacy_prefix: Vec<String>,
    /// Table name prefix (as the service's StoreOptions::table_prefix).
    #[arg(long, global = true, value_name = "PREFIX")]
    pub table_prefix: Option<String>,
    /// PostgreSQL schema of the tables (as StoreOptions::schema).
    #[arg(long, global = true, value_name = "SCHEMA")]
    pub schema: Option<String>,
    /// The longest any database call may take, in seconds (at most a day).
    #[arg(
        long,
        global = true,
        default_value_t = 5,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(0..=86_400)
    )]
    pub timeout: u64,
    /// Who runs the command, for the audit trail (default: cli:$USER, else
    /// cli:$LOGNAME, else cli:uid<N>).
    #[arg(long, global = true, env = "APIKEY_ACTOR")]
    pub actor: Option<String>,
    /// Appends the audit events of this run to FILE, one JSON object per line.
    #[arg(long, global = true, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Prints JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Server secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Creates or upgrades the key tables (creates a missing SQLite file).
    Migrate,
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Mints the first admin key for the management API, unless the owner already has
    /// a key that is not revoked or expired.
    BootstrapAdmin(BootstrapArgs),
}

/// `apikey secret ...`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Prints a new random server secret (32 bytes, base64) for APIKEY_SECRET_V1 (or V2, ...).
    Generate {
        /// Writes it to a new file with mode 0600 instead of printing it.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

/// `apikey keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key and prints it once.
    Create(CreateArgs),
    /// Lists an owner's keys, oldest first.
    List {
        /// The owner.
        #[arg(long)]
        owner: String,
    },
    /// Shows one key.
    Show {
        /// Key id.
        id: String,
    },
    /// Disables a key (reversible with `enable`).
    Disable {
        /// Key id.
        id: String,
    },
    /// Enables a disabled key.
    Enable {
        /// Key id.
        id: String,
    },
    /// Issues a successor; the old key works for the grace period, then expires.
    Rotate {
        /// Key id.
        id: String,
        /// How long the old key keeps working (30m, 24h, 7d; 0: it stops
        /// now). The default, 24h, is the REST API's: clients still holding
        /// the old key keep working while they move.
        #[arg(long, default_value = "24h")]
        grace: String,
        /// Expiry of the new key (RFC 3339); by default the old key's
        /// lifetime again, counted from now.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Revokes a key for good, or every key of an owner (--owner: a user removed from an
    /// account).
    Revoke {
        /// Key id.
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        id: Option<String>,
        /// Revokes every key of this owner instead (resumable: run it again after a failure).
        #[arg(long)]
        owner: Option<String>,
        /// Why (kept with the key and in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Deletes a key's record.
    Delete {
        /// Key id.
        id: String,
    },
    /// Imports legacy keys from a JSONL or CSV file (`-`: stdin), streaming.
    ///
    /// One key per line. JSONL: {"key": "oldco_..."} or {"sha256": "<64 hex>", "prefix":
    /// "oldco_"}, with optional "owner", "name", "description", "scopes" (array or
    /// space-separated), "expires_at" (RFC 3339), "metadata" (object of strings). CSV: a
    /// header naming the same columns (scopes space-separated, metadata `k=v;k=v`). Each prefix must be
    /// declared with --legacy-prefix LEGACY=NATIVE. Lines that fail are reported with
    /// their number (never the key) and the import goes on; exit 1 if any failed.
    Import {
        /// The file (`-`: stdin).
        file: PathBuf,
        /// The format (default: from the file name, .csv or else JSONL).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// Stops at the first failed line.
        #[arg(long)]
        fail_fast: bool,
        /// Imports in flight at once (default: 1 for SQLite, 8 for PostgreSQL).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: Option<u16>,
    },
    /// Verifies a key: valid, or invalid with the stable error code (exit 4).
    ///
    /// Reads the key from stdin when KEY is absent or `-` (arguments are visible to other
    /// users of the machine). Not counted as a use.
    Verify {
        /// The key (`-` or absent: the first line of stdin).
        key: Option<String>,
        /// A scope the key must grant (repeatable: all of them).
        #[arg(long, value_name = "SCOPE")]
        scope: Vec<String>,
        /// The client address, checked against the key's IP allowlist.
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// A scope that grants everything, as the service declares it (e.g. 'admin:*').
        #[arg(long, value_name = "SCOPE")]
        full_access_scope: Vec<String>,
    },
    /// Lists keys expiring soon (revoked and rotated keys left out), soonest first.
    Expiring {
        /// The window from now (e.g. 30d).
        #[arg(long, default_value = "30d")]
        within: String,
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Runs one expiry sweep: renews auto-renewing keys that expire soon (--auto-renew on
    /// create) and records one `expiring` audit event per other key before it expires.
    ///
    /// Prints each notice and renewal (also to --audit-log when given): a key is noticed
    /// once, so keep the output. Run it from cron or a timer, more often than
    /// --renew-before (e.g. daily). Safe on several machines at once: every notice and
    /// renewal happens once.
    Sweep {
        /// Notice keys expiring within this.
        #[arg(long, value_name = "DURATION", default_value = "30d")]
        notice_before: String,
        /// Renew auto-renewing keys expiring within this.
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        renew_before: String,
        /// A renewal sets the expiry this far from now (capped by the policy's maximum).
        #[arg(long, value_name = "DURATION", default_value = "90d")]
        renew_for: String,
    },
    /// Shows usage counts and last use, of one key or of an owner's keys.
    Usage {
        /// Key id.
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        id: Option<String>,
        /// Every key of this owner.
        #[arg(long)]
        owner: Option<String>,
    },
}

/// The import file's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

/// `apikey keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The key's prefix (built-in: sk_live_, sk_test_, kwi_sk_; others with
    /// --register-prefix).
    #[arg(long, default_value = "sk_live_")]
    pub prefix: String,
    /// Owner (user, team or account id).
    #[arg(long)]
    pub owner: Option<String>,
    /// Name shown in listings.
    #[arg(long)]
    pub name: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Scopes (comma- or space-separated, repeatable).
    #[arg(long)]
    pub scopes: Vec<String>,
    /// Expiry (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "expires_in")]
    pub expires_at: Option<String>,
    /// Expiry from now (e.g. 90d).
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
    /// Start of validity (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub not_before: Option<String>,
    /// Metadata entry KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// IP allowlist range in CIDR form (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow_ip: Vec<String>,
    /// Renews the key's expiry before it ends, keeping the same key (needs an expiry;
    /// renewals happen in `keys sweep`).
    #[arg(long)]
    pub auto_renew: bool,
}

/// `apikey bootstrap-admin`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The admin owner.
    #[arg(long, default_value = "admin")]
    pub owner: String,
    /// Scopes of the admin key.
    #[arg(long, default_value = "admin:*")]
    pub scopes: Vec<String>,
    /// Name of the key.
    #[arg(long, default_value = "bootstrap admin")]
    pub name: String,
    /// The key's prefix.
    #[arg(long, default_value = "sk_live_")]
    pub prefix: String,
    /// Expiry from now (e.g. 30d); default none.
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}
