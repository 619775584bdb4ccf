//! `chatq-api`: serve the API (default), apply migrations, manage keys.

use std::io::Write as _;

use anyhow::Context as _;
use chatq_common::{config::Config, db, keys::Role};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "chatq-api", version, about = "chatq HTTP API and admin commands")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on CHATQ_LISTEN (the default command).
    Serve,
    /// Create the database if needed and apply all migrations.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Upload a folder to a knowledge base, wait for the documents to settle and print a
    /// table of results. Exits non-zero when a file failed.
    Ingest {
        /// Folder with the documents (searched recursively).
        dir: std::path::PathBuf,
        /// Knowledge base id.
        #[arg(long)]
        kb: String,
        /// API base URL (default: http://CHATQ_LISTEN).
        #[arg(long)]
        api: Option<String>,
        /// A file holding the admin key (default: the CHATQ_ADMIN_KEY environment variable).
        /// The key is never taken as an argument, where `ps` would show it.
        #[arg(long)]
        key_file: Option<std::path::PathBuf>,
        /// Seconds to wait for the documents to settle.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (only the key) on stdout. It cannot be shown again.
    Create {
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Runs this key may start per minute (overrides CHATQ_RATE_KEY_RUNS_PER_MIN; 0 = unlimited).
        #[arg(long)]
        runs_per_minute: Option<i32>,
        /// Monthly cost budget in USD: new runs are refused with 429 budget_exhausted once reached.
        #[arg(long)]
        monthly_budget_usd: Option<f64>,
    },
    /// List every key: id, role, active or revoked, displayable prefix, creation, name.
    /// Secrets are never shown.
    List,
    /// Revoke a key: requests with it are refused within 30 s (the API's key cache).
    Revoke {
        /// The key's id (see `keys list`).
        id: String,
    },
    /// Give a key a new secret and print it (only it) on stdout; the old secret is revoked.
    /// The key keeps its id, name, role, limits, threads and user tokens.
    Rotate {
        /// The key's id (see `keys list`).
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    chatq_common::telemetry::init("chatq-api");
    let config = Config::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => chatq_api::run(config, chatq_common::signal::shutdown()).await,
        Command::Migrate => {
            db::create_database_if_missing(&config).await.context("cannot create the database (DATABASE_URL)")?;
            let pool = db::connect(&config, 2).await.context("cannot connect to Postgres (DATABASE_URL)")?;
            chatq_common::MIGRATOR.run(&pool).await.context("migration failed")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Ingest { dir, kb, api, key_file, timeout_secs } => {
            let key = chatq_api::ingest_cli::admin_key(key_file.as_deref(), std::env::var("CHATQ_ADMIN_KEY").ok())?;
            let api = api.unwrap_or_else(|| format!("http://{}", config.api.listen));
            let args = chatq_api::ingest_cli::IngestArgs {
                dir,
                kb,
                api,
                key,
                timeout: std::time::Duration::from_secs(timeout_secs),
            };
            let progress = chatq_api::ingest_cli::Progress::for_stderr();
            if chatq_api::ingest_cli::run(args, &mut std::io::stdout(), progress).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Keys { command } => {
            let pool = db::connect(&config, 2).await.context("cannot connect to Postgres (DATABASE_URL)")?;
            let mut out = std::io::stdout().lock();
            match command {
                KeysCommand::Create { role, name, runs_per_minute, monthly_budget_usd } => {
                    let role = match role {
                        RoleArg::Admin => Role::Admin,
                        RoleArg::Client => Role::Client,
                    };
                    let (key, row) = db::keys::create(&pool, role, &name).await.context("cannot create the key")?;
                    if runs_per_minute.is_some() || monthly_budget_usd.is_some() {
                        db::keys::set_limits(&pool, row.id, runs_per_minute, monthly_budget_usd)
                            .await
                            .context("cannot set the key's limits")?;
                    }
                    tracing::info!(key.id = %row.id, key.name = %row.name, "key created");
                    writeln!(out, "{key}")?;
                    Ok(())
                }
                KeysCommand::List => chatq_api::keys_cli::list(&pool, &mut out).await,
                KeysCommand::Revoke { id } => chatq_api::keys_cli::revoke(&pool, &id, &mut out).await,
                KeysCommand::Rotate { id } => {
                    let key = chatq_api::keys_cli::rotate(&pool, &id, &mut out).await?;
                    tracing::info!(key.id = %key.id, key.name = %key.name, "key rotated; the old secret is revoked");
                    Ok(())
                }
            }
        }
    }
}
