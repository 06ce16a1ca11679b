//! Order processing service: a warp API that validates orders and puts them on a Redis list,
//! workers that persist and process them in PostgreSQL and publish `order.completed`, and a
//! notifier that tells each customer once.

pub mod backoff;
pub mod config;
pub mod events;
pub mod http;
pub mod live;
pub mod order;
pub mod queue;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod trace;
pub mod worker;

use config::Config;
use slog::{info, Logger};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;

/// Cancelled once, when the process should stop (SIGINT/SIGTERM, or a test).
pub type Shutdown = tokio_util::sync::CancellationToken;

/// mimalloc for every binary of the crate (the service, the baseline and the load tool alike):
/// glibc's malloc and free were a large share of the API's CPU time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub notifier: bool,
}

impl Roles {
    /// All three roles.
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        notifier: true,
    };

    /// Parses a comma-separated list such as `api,worker`.
    pub fn parse(list: &str) -> Result<Roles, String> {
        let mut roles = Roles {
            api: false,
            worker: false,
            notifier: false,
        };
        for role in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "worker" => roles.worker = true,
                "notifier" => roles.notifier = true,
                other => return Err(format!("unknown role {other:?}: use api, worker, notifier")),
            }
        }
        if roles
            == (Roles {
                api: false,
                worker: false,
                notifier: false,
            })
        {
            return Err("no role given: use api, worker, notifier".into());
        }
        Ok(roles)
    }
}

/// Which roles of this process are running, for `/readyz`.
#[derive(Debug, Default)]
pub struct RoleStatus {
    pub configured: std::sync::OnceLock<Roles>,
    pub worker: std::sync::atomic::AtomicBool,
    /// The notifier reads the event stream right now (not merely running).
    pub notifier: std::sync::atomic::AtomicBool,
}

/// Marks a role running (or the notifier subscribed) for as long as it lives (a panic unwinds
/// through it too).
pub(crate) struct RoleGuard<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> RoleGuard<'a> {
    pub(crate) fn mark(flag: &'a std::sync::atomic::AtomicBool) -> Self {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        RoleGuard(flag)
    }
}

impl Drop for RoleGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its chain names the URL parameter or the server's refusal (a certificate, a password).
    #[error("PostgreSQL (DATABASE_URL)")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    /// The Redis user, or the node, cannot do what this process's roles need.
    #[error("Redis cannot serve this process: {source}{}", hint(.source))]
    Redis {
        #[source]
        source: queue::ProbeError,
    },
    #[error("{0}")]
    Limits(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn hint(e: &queue::ProbeError) -> String {
    e.acl_hint().map(|h| format!("; {h}")).unwrap_or_default()
}

/// A started service.
pub struct Running {
    /// Where the API listens, when this process runs the API role.
    pub addr: Option<SocketAddr>,
    roles: JoinSet<&'static str>,
    log: Logger,
}

impl Running {
    /// Waits until every role has stopped (after the shutdown token is cancelled).
    pub async fn wait(mut self) {
        while let Some(done) = self.roles.join_next().await {
            match done {
                Ok(role) => info!(self.log, "role stopped"; "role" => role),
                Err(e) => slog::error!(self.log, "role crashed"; "error" => %e),
            }
        }
    }
}

/// The async runtime of a process, with [`Config::runtime_threads`] worker threads.
pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads())
        .enable_all()
        .build()
}

/// Applies the migrations and starts the chosen roles; they run until `shutdown`.
pub async fn start(
    config: &Config,
    roles: Roles,
    shutdown: Shutdown,
    log: Logger,
) -> Result<Running, StartError> {
    stats::recorder();
    let store = store::Store::new(config)?;
    store.migrate().await?;
    let queue = queue::Queue::connect(config).await?;
    // A missing permission otherwise shows only after orders were completed (no event, no ack).
    let probe = Arc::new(queue::Probe::new(config, roles));
    let acl_checked = match queue.probe(&probe).await {
        Ok(checked) => checked,
        // Replicas may attach after the primary starts: /readyz answers 503 meanwhile.
        Err(e @ queue::ProbeError::TooFewReplicas { .. }) => {
            slog::warn!(log, "not ready to accept orders"; "reason" => %e);
            true
        }
        Err(source) => return Err(StartError::Redis { source }),
    };
    if !acl_checked {
        slog::warn!(
            log,
            "Redis before 7 cannot check ACLs: permissions not probed"
        );
    }
    // Dead letters of an earlier version, kept in a list, move into the index once.
    if roles.api || roles.worker {
        match queue.adopt_listed_dead_letters().await {
            Ok(0) => {}
            Ok(n) => info!(log, "moved dead letters into the index"; "count" => n),
            Err(e) => {
                slog::warn!(log, "cannot move the listed dead letters into the index"; "error" => %e)
            }
        }
    }
    tokio::spawn(stats::keep_up(shutdown.clone()));
    let mut set = JoinSet::new();
    let mut addr = None;
    let status = Arc::new(RoleStatus::default());
    let _ = status.configured.set(roles);
    if roles.api {
        let listener = http::listen(config.listen).map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        addr = Some(local);
        info!(log, "API listening"; "addr" => %local);
        let limits = http::Limits::from_config(config);
        limits.reserve_files().map_err(StartError::Limits)?;
        let api = Arc::new(http::Api {
            body_budget: http::BodyBudget::from_config(config),
            queue: queue.clone(),
            store: store.clone(),
            admin: http::AdminAuth::new(config),
            cancelled_channel: config.cancelled_channel.clone(),
            roles: status.clone(),
            probe: probe.clone(),
            live: live::Hub::start(config, queue.clone(), shutdown.clone(), &log),
            lease: std::time::Duration::from_millis(config.lease_ms),
            log: log.new(slog::o!("role" => "api")),
        });
        let shutdown = shutdown.clone();
        set.spawn(async move {
            http::serve(listener, api, limits, shutdown).await;
            "api"
        });
    }
    if roles.worker {
        let (config, queue, store, shutdown, log) = (
            config.clone(),
            queue.clone(),
            store.clone(),
            shutdown.clone(),
            log.clone(),
        );
        let status = status.clone();
        set.spawn(async move {
            let _running = RoleGuard::mark(&status.worker);
            worker::run(&config, queue, store, shutdown, log).await;
            "worker"
        });
    }
    if roles.notifier {
        let notifier = events::run_notifier(
            queue.clone(),
            store.clone(),
            std::time::Duration::from_millis(config.notifier_catch_up_ms),
            std::time::Duration::from_millis(config.notifier_claim_idle_ms),
            status.clone(),
            shutdown.clone(),
            log.clone(),
        );
        set.spawn(async move {
            notifier.await;
            "notifier"
        });
    }
    Ok(Running {
        addr,
        roles: set,
        log,
    })
}
