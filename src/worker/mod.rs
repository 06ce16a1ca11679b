//! The worker role, one process's worth:
//!
//! - [`fetch`]: fetch loops claim orders from the queue (whatever is waiting, up to a batch, in
//!   one round trip; a blocking pop when nothing is), within the in-flight limit;
//! - [`steps`]: the starter stores what has been claimed as `processing`, a batch per statement;
//!   each order then sleeps its simulated processing time and goes to the completer, which
//!   completes, publishes and acknowledges whatever has finished, again a batch per round trip;
//! - [`retry`]: a transient failure schedules the order's next try, an order whose tries ran out
//!   is failed and dead-lettered, and a loop promotes the retries that are due;
//! - [`pause`]: a loop follows the operator's pause of claiming, which the fetch loops obey;
//! - [`lease`]: a loop renews this process's lease (and tells the console about the process), reaps the orders of dead workers, and puts
//!   back on the queue the orders PostgreSQL holds as `processing` that Redis lost.
//!
//! An order is acknowledged (removed from this process's processing list) only after its final
//! commit and its publish. If the process dies anywhere before that, the order is still in the
//! processing list, the heartbeat stops, and the reaper of any worker process puts it back on the
//! queue; the attempt number stored with it fences out the stale delivery.

mod fetch;
mod lease;
mod pause;
mod retry;
mod steps;

use crate::backoff::Backoff;
use crate::config::{Config, DelayRange};
use crate::queue::{Queue, WorkerQueue};
use crate::store::Store;
use crate::Shutdown;
use slog::{error, info, warn, Logger};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::task::TaskTracker;

pub use pause::PAUSE_CHECK_EVERY;

/// What one worker process shares between its loops and tasks.
struct Ctx {
    /// The queue bound to this process's id: fresh on every start, so a restarted process never
    /// adopts the list of the one before (the reaper returns that one's orders).
    queue: WorkerQueue,
    store: Store,
    delay: DelayRange,
    max_attempts: u32,
    retry_base: Duration,
    retry_max: Duration,
    /// Set while an operator has paused claiming (see [`pause`]).
    paused: AtomicBool,
    /// What the console shows of this process and does not change: host, pid, start time.
    about: serde_json::Value,
    /// Set when PostgreSQL was found unreachable: fetch loops stop claiming until it answers.
    db_down: AtomicBool,
    held: Arc<fetch::Held>,
    /// Held (shared) by a fetch loop from a claim until what it claimed is counted in `held`;
    /// taken alone to compare the processing list with `held`.
    claiming: tokio::sync::RwLock<()>,
    log: Logger,
}

/// Orders claimed, stored or completed per round trip, at the most.
const BATCH: usize = 256;

/// Runs the worker role until `shutdown`, then lets in-flight orders finish for up to
/// `shutdown_timeout_ms`, and puts whatever is left back on the queue.
pub async fn run(config: &Config, queue: Queue, store: Store, shutdown: Shutdown, log: Logger) {
    let worker_id = uuid::Uuid::new_v4().simple().to_string();
    let log = log.new(slog::o!("role" => "worker", "worker" => worker_id.clone()));
    let ctx = Arc::new(Ctx {
        queue: queue.for_worker(&worker_id),
        store,
        delay: config.processing_delay_ms,
        max_attempts: config.max_attempts,
        retry_base: Duration::from_millis(config.retry_base_ms),
        retry_max: Duration::from_millis(config.retry_max_ms),
        paused: AtomicBool::new(false),
        about: about_this_process(&worker_id),
        db_down: AtomicBool::new(false),
        held: Arc::default(),
        claiming: tokio::sync::RwLock::new(()),
        log,
    });
    let lease = Duration::from_millis(config.lease_ms);
    let max_in_flight = config.max_in_flight.min(Semaphore::MAX_PERMITS) as u32;
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let tasks = TaskTracker::new();
    // Cancelled when the shutdown deadline passes: tasks stop where they are, unacknowledged.
    let abort = Shutdown::new();

    // The lease must exist before the first claim, or a reaper could take the claimed orders.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while let Err(e) = ctx.queue.heartbeat(lease, &lease::info(&ctx)).await {
        warn!(ctx.log, "cannot register the worker, retrying"; "error" => %e);
        backoff.wait(&shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
    }
    let keeper = tokio::spawn(lease::keep_lease_reap_and_repair(
        ctx.clone(),
        lease,
        abort.clone(),
    ));
    let promoter = tokio::spawn(retry::promote_due_retries(ctx.clone(), abort.clone()));
    // Read once before the first claim, so a process started while paused claims nothing.
    if let Ok(paused) = ctx.queue.queue().paused().await {
        ctx.paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
    }
    let pauser = tokio::spawn(pause::follow_pause(ctx.clone(), abort.clone()));
    let (finished, finished_rx) = mpsc::unbounded_channel();
    let completer = tokio::spawn(steps::completer(ctx.clone(), finished_rx, abort.clone()));
    let (claimed, claimed_rx) = mpsc::unbounded_channel();
    let starter = tokio::spawn(steps::starter(
        ctx.clone(),
        claimed_rx,
        finished,
        tasks.clone(),
        abort.clone(),
    ));
    info!(ctx.log, "worker started"; "fetch_loops" => config.fetch_loops, "max_in_flight" => config.max_in_flight);

    let loops: Vec<_> = (0..config.fetch_loops)
        .map(|_| {
            let fetcher = fetch::Fetcher {
                ctx: ctx.clone(),
                slots: slots.clone(),
                claimed: claimed.clone(),
            };
            tokio::spawn(fetcher.run(shutdown.clone()))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    // The starter stores what is still on its way, then ends, and with it the completer.
    drop(claimed);
    // Every slot back means every claimed order was acknowledged or scheduled for a retry.
    let deadline = Duration::from_millis(config.shutdown_timeout_ms);
    let all_back = tokio::time::timeout(deadline, slots.acquire_many(max_in_flight)).await;
    if all_back.is_err() {
        warn!(ctx.log, "shutdown deadline passed, returning unfinished orders to the queue";
            "in_flight" => max_in_flight as usize - slots.available_permits());
    }
    abort.cancel();
    tasks.close();
    tasks.wait().await;
    let _ = starter.await;
    let _ = completer.await;
    let _ = keeper.await;
    let _ = promoter.await;
    let _ = pauser.await;
    match ctx.queue.retire().await {
        Ok(n) => info!(ctx.log, "worker stopped"; "returned_to_queue" => n),
        Err(e) => {
            error!(ctx.log, "could not return held orders; the reaper will once the lease expires"; "error" => %e)
        }
    }
}

/// The host, pid and start time of this process, for the console's workers page.
fn about_this_process(worker_id: &str) -> serde_json::Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "id": worker_id,
        "host": host,
        "pid": std::process::id(),
        "started_at": started_at,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs a Redis step until it succeeds, with capped backoff. The order is safe in this worker's
/// processing list meanwhile; if the process stops first, the reaper returns it to the queue.
async fn until_done<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    ctx: &Ctx,
    step: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(ctx.log, "Redis step failed, retrying"; "step" => step, "error" => %e);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
