//! The `deskpool` binary: parses the command line, loads the configuration, sets up logging
//! and hands over to the subcommand. Exit codes: 0 ok, 1 failure, 2 usage or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use deskpool::config::{self, Config, LogFormat};
use deskpool::{check, db, logging, serve, token};

/// Keeps VMware vSphere desktop pools at their target size with linked clones.
#[derive(Debug, Parser)]
#[command(name = "deskpool", version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Default: config/deskpool.toml if it exists, else built-in
    /// defaults. DESKPOOL__SECTION__KEY environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format on stderr; overrides [log] format.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: apply pending migrations, then serve HTTP until SIGINT/SIGTERM.
    Serve,
    /// Apply database migrations (creating the database if missing), then exit.
    Migrate,
    /// Check the configuration, the database and every vCenter and pool reference.
    ///
    /// Prints one line per check (ok or FAIL) and exits 1 if any check failed.
    Check,
    /// Manage API tokens (stored hashed in the database).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once, alone on stdout.
    Create {
        /// Who or what holds the token (recorded as the actor of its actions).
        #[arg(long)]
        name: String,
        /// What the token may do: admin (everything), helpdesk (resize within bounds,
        /// replace desktops), viewer (read only).
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke the active token with this name.
    Revoke {
        /// Name of the token to revoke.
        #[arg(long)]
        name: String,
    },
}

/// `--role` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Helpdesk,
    /// Read, claim and release only (a portal or connection broker).
    Broker,
    Viewer,
}

impl From<RoleArg> for deskpool_store::tokens::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Self::Admin,
            RoleArg::Helpdesk => Self::Helpdesk,
            RoleArg::Broker => Self::Broker,
            RoleArg::Viewer => Self::Viewer,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `migrate` and `token` only use the database: they run as the service user, who cannot
    // read the vCenter password that only the service is given.
    let secrets = match cli.command {
        Command::Migrate | Command::Token(_) => config::Secrets::Skip,
        Command::Serve | Command::Check => config::Secrets::Load,
    };
    let env = config::Environment::from_process();
    let cfg = match config::load_with(cli.config.as_deref(), &env, secrets) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    let format = cli.log_format.unwrap_or(cfg.log.format);
    logging::init(format, &cfg.log.level);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cfg)) {
        Ok(code) => code,
        Err(e) => {
            // One line either way: a plain message for people, an event for log collectors.
            match format {
                LogFormat::Text => eprintln!("{e:#}"),
                LogFormat::Json => tracing::error!(error = %format!("{e:#}"), "fatal"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => serve::serve(cfg).await?,
        Command::Migrate => db::migrate(&cfg.database).await?,
        Command::Check => {
            if !check::check(&cfg).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Token(TokenCommand::Create { name, role }) => {
            token::create(&cfg, &name, role.into()).await?;
        }
        Command::Token(TokenCommand::List) => token::list(&cfg).await?,
        Command::Token(TokenCommand::Revoke { name }) => token::revoke(&cfg, &name).await?,
    }
    Ok(ExitCode::SUCCESS)
}
