//! The worker role: fetch loops claim orders from the queue and hand each to a task that stores,
//! processes, completes, publishes and acknowledges it.
//!
//! An order is acknowledged (removed from this process's processing list) only after its final
//! commit and its publish. If the process dies anywhere before that, the order is still in the
//! processing list, the heartbeat stops, and the reaper of any worker process puts it back on the
//! queue; the attempt number stored with it fences out the stale delivery.

use crate::config::{Config, DelayRange};
use crate::events::{Event, FAILED_CHANNEL};
use crate::order::{Job, Status};
use crate::queue::Queue;
use crate::store::Store;
use crate::Shutdown;
use slog::{debug, error, info, warn, Logger};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// What one worker process shares between its loops and tasks.
struct Ctx {
    queue: Queue,
    store: Store,
    /// This process's id: fresh on every start, so a restarted process never adopts the list of
    /// the one before (the reaper returns that one's orders).
    worker_id: String,
    processing: String,
    channel: String,
    delay: DelayRange,
    max_attempts: u32,
    log: Logger,
}

/// Runs the worker role until `shutdown`, then lets in-flight orders finish for up to
/// `shutdown_timeout_ms`, and puts whatever is left back on the queue.
pub async fn run(config: &Config, queue: Queue, store: Store, shutdown: Shutdown, log: Logger) {
    let worker_id = uuid::Uuid::new_v4().simple().to_string();
    let log = log.new(slog::o!("role" => "worker", "worker" => worker_id.clone()));
    let ctx = Arc::new(Ctx {
        processing: queue.keys().processing(&worker_id),
        queue,
        store,
        worker_id,
        channel: config.event_channel.clone(),
        delay: config.processing_delay_ms,
        max_attempts: config.max_attempts,
        log,
    });
    let lease = Duration::from_millis(config.lease_ms);
    let slots = Arc::new(Semaphore::new(config.max_in_flight));
    let tasks = TaskTracker::new();
    // Cancelled when the shutdown deadline passes: tasks stop where they are, unacknowledged.
    let abort = Shutdown::new();

    // The lease must exist before the first claim, or a reaper could take the claimed orders.
    while let Err(e) = ctx.queue.heartbeat(&ctx.worker_id, lease).await {
        warn!(ctx.log, "cannot register the worker, retrying"; "error" => %e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    let keeper = tokio::spawn(keep_lease_and_reap(ctx.clone(), lease, abort.clone()));
    info!(ctx.log, "worker started"; "fetch_loops" => config.workers, "max_in_flight" => config.max_in_flight);

    let loops: Vec<_> = (0..config.workers)
        .map(|_| {
            tokio::spawn(fetch_loop(
                ctx.clone(),
                slots.clone(),
                tasks.clone(),
                shutdown.clone(),
                abort.clone(),
            ))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
    tasks.close();
    let deadline = Duration::from_millis(config.shutdown_timeout_ms);
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        warn!(ctx.log, "shutdown deadline passed, returning unfinished orders to the queue"; "in_flight" => tasks.len());
        abort.cancel();
        tasks.wait().await;
    }
    abort.cancel();
    let _ = keeper.await;
    match ctx.queue.retire(&ctx.worker_id).await {
        Ok(n) => info!(ctx.log, "worker stopped"; "returned_to_queue" => n),
        Err(e) => {
            error!(ctx.log, "could not return held orders; the reaper will once the lease expires"; "error" => %e)
        }
    }
}

/// Renews this process's lease every third of it, and returns the orders of dead workers to the
/// queue every half lease, until `stop`.
async fn keep_lease_and_reap(ctx: Arc<Ctx>, lease: Duration, stop: Shutdown) {
    let mut beat = tokio::time::interval(lease / 3);
    let mut reap = tokio::time::interval(lease / 2);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if let Err(e) = ctx.queue.heartbeat(&ctx.worker_id, lease).await {
                    warn!(ctx.log, "heartbeat failed"; "error" => %e);
                }
            }
            _ = reap.tick() => match ctx.queue.requeue_orphans().await {
                Ok(0) => {}
                Ok(n) => info!(ctx.log, "returned orders of dead workers to the queue"; "count" => n),
                Err(e) => warn!(ctx.log, "reaper failed"; "error" => %e),
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Claims orders one blocking pop at a time while a slot is free. Stops between pops when
/// `shutdown` is cancelled: a pop in flight is never cancelled, since a dropped BLMOVE could
/// still move an order that no one then processes.
async fn fetch_loop(
    ctx: Arc<Ctx>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: Shutdown,
    abort: Shutdown,
) {
    let mut backoff = Duration::from_millis(50);
    'connect: while !shutdown.is_cancelled() {
        let mut conn = match ctx.queue.blocking_connection().await {
            Ok(c) => c,
            Err(e) => {
                warn!(ctx.log, "cannot reach Redis to claim orders, retrying"; "error" => %e);
                pause(&mut backoff, &shutdown).await;
                continue;
            }
        };
        while !shutdown.is_cancelled() {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            match ctx.queue.claim(&mut conn, &ctx.processing).await {
                Ok(Some(payload)) => {
                    backoff = Duration::from_millis(50);
                    let ctx = ctx.clone();
                    let abort = abort.clone();
                    tasks.spawn(async move {
                        tokio::select! {
                            _ = handle(&ctx, payload) => {}
                            _ = abort.cancelled() => {}
                        }
                        drop(slot);
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(ctx.log, "claim failed, reconnecting"; "error" => %e);
                    drop(deadpool_redis::Connection::take(conn));
                    pause(&mut backoff, &shutdown).await;
                    continue 'connect;
                }
            }
        }
    }
}

/// Sleeps for the backoff (or until shutdown) and doubles it, up to 5 s.
async fn pause(backoff: &mut Duration, shutdown: &Shutdown) {
    let jittered = backoff.mul_f64(rand::random_range(0.5..=1.0));
    tokio::select! {
        _ = tokio::time::sleep(jittered) => {}
        _ = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// Retries a transient failure with exponential backoff and full jitter, up to the configured
/// attempts; the error of the last try when they run out.
async fn with_retries<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    ctx: &Ctx,
    what: &str,
    order_id: uuid::Uuid,
    mut op: impl FnMut() -> F,
) -> Result<T, String> {
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= ctx.max_attempts => return Err(format!("{what}: {e}")),
            Err(e) => {
                let cap = Duration::from_millis(100 * 2u64.pow(attempt.min(8)));
                let wait = cap.mul_f64(rand::random_range(0.0..=1.0));
                warn!(ctx.log, "transient failure, retrying"; "order_id" => %order_id, "step" => what, "attempt" => attempt, "in_ms" => wait.as_millis() as u64, "error" => %e);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// Steps 1 to 5 of SPEC §3 for one claimed payload.
async fn handle(ctx: &Ctx, payload: Vec<u8>) {
    // 1. Validate again: anything can be pushed on the list.
    let job = match Job::parse(&payload) {
        Ok(job) => job,
        Err(e) => {
            error!(ctx.log, "dead-lettering a payload that is not a valid order"; "error" => %e);
            let order_id = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("order_id")?.as_str()?.parse().ok());
            let reason = format!("invalid payload: {e}");
            let _ = with_retries(ctx, "dead-letter", order_id.unwrap_or_default(), || {
                ctx.queue
                    .dead_letter(&ctx.processing, &payload, order_id, &reason, None)
            })
            .await;
            return;
        }
    };
    let order_id = job.order_id;
    match process(ctx, &job, &payload).await {
        Ok(()) => {}
        Err(reason) => give_up(ctx, &job, &payload, &reason).await,
    }
    debug!(ctx.log, "order handled"; "order_id" => %order_id);
}

async fn process(ctx: &Ctx, job: &Job, payload: &[u8]) -> Result<(), String> {
    let order_id = job.order_id;
    // 2. Store it as processing (with its items, one transaction).
    let attempt = with_retries(ctx, "store", order_id, || ctx.store.begin_processing(job)).await?;
    let Some(attempt) = attempt else {
        info!(ctx.log, "order already final, dropping this delivery"; "order_id" => %order_id);
        return with_retries(ctx, "acknowledge", order_id, || {
            ctx.queue
                .acknowledge(&ctx.processing, payload, order_id, None)
        })
        .await;
    };
    info!(ctx.log, "order processing"; "order_id" => %order_id, "attempt" => attempt);
    // 3. Simulate the work.
    tokio::time::sleep(ctx.delay.sample()).await;
    // 4. Complete it, unless it was cancelled or redelivered meanwhile.
    let completed_at = with_retries(ctx, "complete", order_id, || {
        ctx.store.complete(order_id, attempt)
    })
    .await?;
    // 5. Publish and acknowledge, in one round trip.
    let event = completed_at.map(|at| Event::new(job, Status::Completed, Some(at)).to_json());
    let message = event.as_deref().map(|e| (ctx.channel.as_str(), e));
    with_retries(ctx, "acknowledge", order_id, || {
        ctx.queue
            .acknowledge(&ctx.processing, payload, order_id, message)
    })
    .await?;
    match completed_at {
        Some(_) => info!(ctx.log, "order completed"; "order_id" => %order_id),
        None => {
            info!(ctx.log, "order was cancelled or taken over, not completed"; "order_id" => %order_id)
        }
    }
    Ok(())
}

/// The order's attempts ran out: mark it failed, publish `order.failed`, dead-letter it. If even
/// that cannot be done, the order stays in the processing list and the reaper retries it once
/// this process is gone.
async fn give_up(ctx: &Ctx, job: &Job, payload: &[u8], reason: &str) {
    let order_id = job.order_id;
    error!(ctx.log, "order failed, dead-lettering"; "order_id" => %order_id, "error" => reason);
    let marked = with_retries(ctx, "mark failed", order_id, || ctx.store.fail(job, reason)).await;
    if let Err(e) = marked {
        error!(ctx.log, "cannot mark the order failed; it stays held"; "order_id" => %order_id, "error" => e);
        return;
    }
    let event = Event::new(job, Status::Failed, None).to_json();
    let dead = with_retries(ctx, "dead-letter", order_id, || {
        ctx.queue.dead_letter(
            &ctx.processing,
            payload,
            Some(order_id),
            reason,
            Some((FAILED_CHANNEL, &event)),
        )
    })
    .await;
    if let Err(e) = dead {
        error!(ctx.log, "cannot dead-letter the order; it stays held"; "order_id" => %order_id, "error" => e);
    }
}
