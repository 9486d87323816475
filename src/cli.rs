//! The command line (SPEC 5.1): parsing, and each subcommand reported with context at the edge.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::pipeline::{Envelope, IngestError, Outcome, Pipeline, Source};
use crate::replay::{self, CaseDatabase};
use crate::store::{self, Store, orgs, quarantine};

/// Exit codes from sysexits.h, as MTAs expect from a pipe transport.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const NOUSER: u8 = 67;
    pub const TEMPFAIL: u8 = 75;
    pub const CONFIG: u8 = 78;
}

/// initdesk-gateway: the inbound email gateway of the initdesk helpdesk.
#[derive(Debug, Parser)]
#[command(name = "initdesk-gateway", version, about)]
pub struct Cli {
    /// Configuration file (TOML); INITDESK_CONFIG names one too. Embedded defaults otherwise.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: listeners, fetchers, HTTP API and senders, until SIGTERM/SIGINT.
    Serve,
    /// Create or upgrade the database schema.
    Migrate,
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage inboxes.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Manage agents.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ingest one raw message (stdin when no FILE), for MTA pipe transports.
    /// Exit 0 stored, 67 unknown recipient, 65 unusable input, 75 temporary failure.
    Deliver(DeliverArgs),
    /// Run fixture cases and print a diff for each that fails.
    Replay(ReplayArgs),
    /// Re-run quarantined messages.
    Reprocess(ReprocessArgs),
}

/// `org` subcommands.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization; prints {"id", "token"}.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
    },
}

/// `inbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Create an inbox; prints it as JSON.
    Create {
        #[arg(long)]
        org: i64,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        auto_acknowledge: bool,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an agent; prints it as JSON.
    Create {
        #[arg(long)]
        org: i64,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a new API token; prints {"token"}.
    Create {
        #[arg(long)]
        org: i64,
    },
}

/// `deliver` arguments.
#[derive(Debug, Args)]
pub struct DeliverArgs {
    /// Envelope recipient.
    #[arg(long)]
    pub recipient: String,
    /// Envelope sender (`""` for the null sender), as the MTA passes it.
    #[arg(long)]
    pub sender: Option<String>,
    /// The raw message; stdin when absent.
    pub file: Option<PathBuf>,
}

/// `replay` arguments.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A case folder, or a folder of cases.
    pub dir: PathBuf,
    /// Run against this PostgreSQL server (a fresh database per case) instead of SQLite.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

/// `reprocess` arguments.
#[derive(Debug, Args)]
pub struct ReprocessArgs {
    /// Every open quarantine entry.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Quarantine entry ids.
    pub ids: Vec<i64>,
}

/// Runs the parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("initdesk-gateway: {e}");
            // For an MTA's pipe transport 78 is permanent and would bounce the mail; a broken
            // configuration is the operator's to fix while the mail waits in the queue.
            let code = if matches!(cli.command, Command::Deliver(_)) {
                exit::TEMPFAIL
            } else {
                exit::CONFIG
            };
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Deliver(args) => return deliver(&config, args).await,
        Command::Replay(args) => return replay_cmd(args).await,
        Command::Serve => crate::app::serve(config).await.map(|()| exit::OK),
        Command::Migrate => migrate(&config).await,
        Command::Org(c) => org(&config, c).await,
        Command::Inbox(c) => inbox(&config, c).await,
        Command::User(c) => user(&config, c).await,
        Command::Token(c) => token(&config, c).await,
        Command::Reprocess(args) => reprocess(&config, args).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("initdesk-gateway: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Connects, migrates, and applies the organizations the configuration declares.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = store::open(&config.database.url, config.database.max_connections)
        .await
        .with_context(|| format!("opening database {}", redact(&config.database.url)))?;
    if !config.organizations.is_empty() {
        let mut tx = store.begin().await?;
        for org in &config.organizations {
            orgs::apply_config(&mut tx, org).await.with_context(|| {
                format!(
                    "applying organization {:?} from the configuration",
                    org.name
                )
            })?;
        }
        tx.commit().await?;
    }
    Ok(store)
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

async fn migrate(config: &Config) -> anyhow::Result<u8> {
    let store = open_store(config).await?;
    store.close().await;
    eprintln!("schema is up to date ({})", redact(&config.database.url));
    Ok(exit::OK)
}

async fn org(config: &Config, cmd: OrgCommand) -> anyhow::Result<u8> {
    let OrgCommand::Create { name, domains } = cmd;
    for d in &domains {
        if !crate::address::is_domain(d) {
            anyhow::bail!("--domain {d:?} is not a domain");
        }
    }
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    let org = orgs::create_org(&mut tx, &orgs::NewOrg::named(&name, &domains)).await?;
    let token = orgs::create_token(&mut tx, org.id).await?;
    tx.commit().await?;
    print_json(
        &json!({"id": org.id, "public_id": org.public_id, "name": org.name, "domains": org.domains, "token": token}),
    );
    Ok(exit::OK)
}

async fn require_org(tx: &mut store::Tx, id: i64) -> anyhow::Result<orgs::Org> {
    orgs::get_org(tx, id)
        .await?
        .with_context(|| format!("--org {id}: no such organization"))
}

async fn inbox(config: &Config, cmd: InboxCommand) -> anyhow::Result<u8> {
    let InboxCommand::Create {
        org,
        prefix,
        name,
        auto_acknowledge,
    } = cmd;
    if !crate::address::is_local_part(&prefix) || prefix.contains('+') {
        anyhow::bail!("--prefix {prefix:?} is not a valid local part without '+'");
    }
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    require_org(&mut tx, org).await?;
    let inbox = orgs::create_inbox(&mut tx, org, &prefix, &name, auto_acknowledge).await?;
    tx.commit().await?;
    print_json(
        &json!({"id": inbox.id, "organization": org, "name": inbox.name, "email_prefix": inbox.email_prefix, "auto_acknowledge": inbox.auto_acknowledge}),
    );
    Ok(exit::OK)
}

async fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<u8> {
    let UserCommand::Create { org, email, name } = cmd;
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    require_org(&mut tx, org).await?;
    let user = orgs::create_user(&mut tx, org, &email, &name).await?;
    tx.commit().await?;
    print_json(
        &json!({"id": user.id, "organization": org, "email": user.email, "name": user.name}),
    );
    Ok(exit::OK)
}

async fn token(config: &Config, cmd: TokenCommand) -> anyhow::Result<u8> {
    let TokenCommand::Create { org } = cmd;
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    require_org(&mut tx, org).await?;
    let token = orgs::create_token(&mut tx, org).await?;
    tx.commit().await?;
    print_json(&json!({"token": token}));
    Ok(exit::OK)
}

async fn deliver(config: &Config, args: DeliverArgs) -> ExitCode {
    let raw = match &args.file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map(|_| buf)
                .context("reading stdin")
        }
    };
    let raw = match raw {
        Ok(raw) if raw.iter().all(|b| b.is_ascii_whitespace()) => {
            eprintln!("initdesk-gateway deliver: the message is empty");
            return ExitCode::from(exit::DATAERR);
        }
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("initdesk-gateway deliver: {e:#}");
            return ExitCode::from(exit::DATAERR);
        }
    };
    // The database being down is the sender's cue to retry, not to bounce.
    let store = match open_store(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("initdesk-gateway deliver: {e:#}");
            return ExitCode::from(exit::TEMPFAIL);
        }
    };
    let pipeline = match Pipeline::from_config(config, store.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "initdesk-gateway deliver: cannot read or create {}: {e}",
                config.outbound.secret_file.display()
            );
            return ExitCode::from(exit::TEMPFAIL);
        }
    };
    let mut envelope = Envelope::to(args.recipient.clone(), Source::Pipe);
    envelope.mail_from = args.sender;
    let result = pipeline.ingest(&raw, &envelope).await;
    store.close().await;
    let (code, report) = match result {
        Ok(outcome) => (exit::OK, outcome_json(&outcome)),
        Err(e @ IngestError::UnknownRecipient(_)) => {
            (exit::NOUSER, json!({"error": e.to_string()}))
        }
        Err(e @ IngestError::Unusable(_)) => (exit::DATAERR, json!({"error": e.to_string()})),
        Err(e) => (exit::TEMPFAIL, json!({"error": e.to_string()})),
    };
    if code == exit::OK {
        print_json(&report);
    } else {
        eprintln!(
            "initdesk-gateway deliver: {}",
            report["error"].as_str().unwrap_or_default()
        );
    }
    ExitCode::from(code)
}

/// An outcome as JSON for command output.
pub fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Created {
            ticket_id,
            public_id,
            message_id,
        }
        | Outcome::Appended {
            ticket_id,
            public_id,
            message_id,
        } => {
            json!({"outcome": outcome.kind(), "ticket_id": ticket_id, "public_id": public_id, "message_id": message_id})
        }
        Outcome::Duplicate {
            ticket_id,
            message_id,
        } => json!({"outcome": "duplicate", "ticket_id": ticket_id, "message_id": message_id}),
        Outcome::Loop => json!({"outcome": "loop"}),
        Outcome::Bounce { linked_message_id } => {
            json!({"outcome": "bounce", "message_id": linked_message_id})
        }
        Outcome::Quarantined { id, reason } => {
            json!({"outcome": "quarantined", "quarantine_id": id, "reason": reason})
        }
    }
}

async fn replay_cmd(args: ReplayArgs) -> ExitCode {
    let db = match args.postgres {
        Some(url) => CaseDatabase::Postgres(url),
        None => CaseDatabase::Sqlite,
    };
    let reports = match replay::run_dir(&args.dir, &db).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("initdesk-gateway replay: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed).collect();
    for r in &reports {
        println!("{} {}", if r.passed { "ok  " } else { "FAIL" }, r.name);
    }
    for r in &failed {
        println!("\n=== {} ===\n{}", r.name, r.diff);
    }
    println!(
        "\n{} passed, {} failed",
        reports.len() - failed.len(),
        failed.len()
    );
    ExitCode::from(if failed.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

async fn reprocess(config: &Config, args: ReprocessArgs) -> anyhow::Result<u8> {
    if !args.all && args.ids.is_empty() {
        eprintln!("initdesk-gateway reprocess: name quarantine ids or --all");
        return Ok(exit::USAGE);
    }
    let store = open_store(config).await?;
    let pipeline =
        Pipeline::from_config(config, store.clone()).context("reading the reply-token secret")?;
    let ids = if args.all {
        let mut tx = store.begin_read().await?;
        let open = quarantine::list_open(&mut tx, None).await?;
        tx.rollback().await?;
        open.into_iter().map(|q| q.id).collect()
    } else {
        args.ids
    };
    let mut still_failing = 0;
    for id in ids {
        match pipeline.reprocess(id).await {
            Ok(Outcome::Quarantined { reason, .. }) => {
                still_failing += 1;
                println!("{id}: still failing: {reason}");
            }
            Ok(outcome) => println!("{id}: {}", outcome_json(&outcome)),
            Err(e) => {
                still_failing += 1;
                println!("{id}: {e}");
            }
        }
    }
    store.close().await;
    Ok(if still_failing == 0 {
        exit::OK
    } else {
        exit::FAILURE
    })
}
