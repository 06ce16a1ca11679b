//! `orders serve [--roles api,worker,notifier]`, `orders migrate` and `orders healthcheck`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use orders::config::Config;
use orders::telemetry::cause_chain;
use orders::{Roles, Shutdown};
use slog::{error, info};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Ask a running service's `/healthz` (the container's health check: the image has no curl);
    /// exit 0 on 200, else 1 with the reason.
    Healthcheck {
        /// The URL to ask; by default `/healthz` on ORDERS_LISTEN (a wildcard address as loopback).
        #[arg(long)]
        url: Option<String>,
    },
}

/// How long `orders healthcheck` waits for the whole answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let job = match cli.command.unwrap_or(Command::Serve { roles: Roles::ALL }) {
        Command::Healthcheck { url } => return healthcheck(url),
        Command::Migrate => Job::Migrate,
        Command::Serve { roles } => Job::Serve(roles),
    };
    let config = match Config::load() {
        Ok(config) => config,
        Err(e) => return fail(&anyhow::Error::new(e).context("loading the configuration")),
    };
    let runtime = match orders::runtime(&config) {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    runtime.block_on(run(job, config))
}

/// What a process does with its configuration and logger.
enum Job {
    Migrate,
    Serve(Roles),
}

/// An error before the logger exists, with its whole cause chain, on one line of stderr.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("orders: {}", cause_chain(e.as_ref()));
    ExitCode::FAILURE
}

async fn run(job: Job, config: Config) -> ExitCode {
    let (log, _flush_on_exit) = orders::telemetry::logger(&config);
    let (failure, done) = match job {
        Job::Migrate => ("migrations failed", migrate(&config, &log).await),
        Job::Serve(roles) => ("cannot start", serve(&config, roles, &log).await),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        // The logger is the one place an error is written, with its cause chain, once.
        Err(e) => {
            error!(log, "{failure}"; "error" => cause_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: &Config, roles: Roles, log: &slog::Logger) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    tokio::spawn(stop_on_signal(shutdown.clone(), log.clone()));
    let tracing = orders::trace::init(config, roles)?;
    if tracing.is_some() {
        info!(log, "tracing"; "endpoint" => config.trace_endpoint.trim(),
            "sample_ratio" => config.trace_sample_ratio);
    }
    let started = orders::start(config, roles, shutdown, log.clone()).await;
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            if let Some(tracing) = tracing {
                let _ = tracing.shutdown().await;
            }
            return Err(e.into());
        }
    };
    running.wait().await;
    // The last spans of a short-lived process go out before it exits.
    if let Some(tracing) = tracing {
        if let Err(e) = tracing.shutdown().await {
            slog::warn!(log, "tracing: the last spans were not exported"; "error" => e);
        }
    }
    info!(log, "stopped");
    Ok(())
}

async fn migrate(config: &Config, log: &slog::Logger) -> anyhow::Result<()> {
    let store = orders::store::Store::new(config).context("PostgreSQL (DATABASE_URL)")?;
    store.migrate().await.context("PostgreSQL (DATABASE_URL)")?;
    info!(log, "migrations applied");
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

/// `orders healthcheck`: one GET, the answer on one line.
fn healthcheck(url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match Config::load() {
            Ok(config) => format!("http://{}/healthz", reachable(config.listen)),
            Err(e) => return fail(&anyhow::Error::new(e).context("loading the configuration")),
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(get_status(&url)) {
        Ok(200) => {
            println!("healthy: {url} answered 200");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("unhealthy: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {url}: {}", cause_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn get_status(url: &str) -> reqwest::Result<u16> {
    // No proxy: an HTTP_PROXY of the container's environment must not stand between the check
    // and the process beside it.
    let client = reqwest::Client::builder()
        .timeout(HEALTHCHECK_TIMEOUT)
        .no_proxy()
        .build()?;
    Ok(client.get(url).send().await?.status().as_u16())
}

/// Where a client on this machine reaches a listener: a wildcard address is not one to connect
/// to, its loopback is.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}
