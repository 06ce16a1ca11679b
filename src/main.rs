//! `orders serve [--roles api,worker,notifier]` and `orders migrate`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use orders::config::Config;
use orders::{Roles, Shutdown};
use slog::{error, info};

#[derive(Parser)]
#[command(version, about = "Real-time order processing service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default command).
    Serve {
        /// Roles of this process: any of api, worker, notifier, comma-separated.
        #[arg(long, env = "ORDERS_ROLES", default_value = "api,worker,notifier", value_parser = Roles::parse)]
        roles: Roles,
    },
    /// Apply the database migrations and exit.
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load().context("loading the configuration")?;
    let runtime = orders::runtime(&config).context("starting the async runtime")?;
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let (log, _flush_on_exit) = orders::telemetry::logger(&config);
    match cli.command.unwrap_or(Command::Serve { roles: Roles::ALL }) {
        Command::Migrate => {
            let store = orders::store::Store::new(&config)?;
            store.migrate().await.context("applying migrations")?;
            info!(log, "migrations applied");
        }
        Command::Serve { roles } => {
            let shutdown = Shutdown::new();
            tokio::spawn(stop_on_signal(shutdown.clone(), log.clone()));
            let running = match orders::start(&config, roles, shutdown, log.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    error!(log, "cannot start"; "error" => %e);
                    return Err(e.into());
                }
            };
            running.wait().await;
            info!(log, "stopped");
        }
    }
    Ok(())
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: Shutdown, log: slog::Logger) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(log, "cannot listen for SIGTERM"; "error" => %e);
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!(log, "SIGINT received, shutting down"),
        _ = term.recv() => info!(log, "SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}
