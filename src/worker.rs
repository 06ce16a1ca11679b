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
use crate::store::{Store, StoreError};
use crate::Shutdown;
use slog::{debug, error, info, warn, Logger};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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
    retry_base: Duration,
    retry_max: Duration,
    /// Set when PostgreSQL was found unreachable: fetch loops stop claiming until it answers.
    db_down: AtomicBool,
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
        retry_base: Duration::from_millis(config.retry_base_ms),
        retry_max: Duration::from_millis(config.retry_max_ms),
        db_down: AtomicBool::new(false),
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

/// Renews this process's lease every third of it, returns the orders of dead workers to the
/// queue every half lease, and promotes due retries every 100 ms, until `stop`.
async fn keep_lease_and_reap(ctx: Arc<Ctx>, lease: Duration, stop: Shutdown) {
    let mut beat = tokio::time::interval(lease / 3);
    let mut reap = tokio::time::interval(lease / 2);
    let mut promote = tokio::time::interval(Duration::from_millis(100));
    let mut reaps: u64 = 0;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if let Err(e) = ctx.queue.heartbeat(&ctx.worker_id, lease).await {
                    warn!(ctx.log, "heartbeat failed"; "error" => %e);
                }
            }
            _ = reap.tick() => {
                reaps += 1;
                // Now and then, also look for processing lists nobody registered.
                if reaps % 10 == 1 {
                    if let Err(e) = ctx.queue.adopt_unregistered().await {
                        warn!(ctx.log, "scan for unregistered processing lists failed"; "error" => %e);
                    }
                }
                match ctx.queue.requeue_orphans().await {
                    Ok(0) => {}
                    Ok(n) => info!(ctx.log, "returned orders of dead workers to the queue"; "count" => n),
                    Err(e) => warn!(ctx.log, "reaper failed"; "error" => %e),
                }
            }
            _ = promote.tick() => {
                if let Err(e) = ctx.queue.promote_due(now_ms()).await {
                    debug!(ctx.log, "promoting due retries failed"; "error" => %e);
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            if ctx.db_down.load(Ordering::Relaxed) {
                wait_for_database(&ctx, &shutdown).await;
                continue;
            }
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

/// Waits, with backoff, until PostgreSQL answers again; orders stay safe on the queue meanwhile.
async fn wait_for_database(ctx: &Ctx, shutdown: &Shutdown) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        if matches!(ctx.store.ready().await, Ok(true)) {
            if ctx.db_down.swap(false, Ordering::Relaxed) {
                info!(ctx.log, "PostgreSQL answers again, claiming orders");
            }
            return;
        }
        pause(&mut backoff, shutdown).await;
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

/// Runs a Redis step until it succeeds, with capped backoff. The order is safe in this worker's
/// processing list meanwhile; if the process stops first, the reaper returns it to the queue.
async fn until_done<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    ctx: &Ctx,
    step: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let mut backoff = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(ctx.log, "Redis step failed, retrying"; "step" => step, "error" => %e);
                tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..=1.0))).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
            let errors = [format!("invalid payload: {e}")];
            until_done(ctx, "dead-letter", || {
                ctx.queue
                    .dead_letter(&ctx.processing, &payload, order_id, &errors, None)
            })
            .await;
            return;
        }
    };
    if let Err(e) = process(ctx, &job, &payload).await {
        if e.is_unavailable() {
            ctx.db_down.store(true, Ordering::Relaxed);
        }
        retry_later(ctx, job.failed_once(e.to_string()), &payload).await;
    }
}

async fn process(ctx: &Ctx, job: &Job, payload: &[u8]) -> Result<(), StoreError> {
    let order_id = job.order_id;
    // 2. Store it as processing (with its items, one transaction).
    let Some(attempt) = ctx.store.begin_processing(job).await? else {
        info!(ctx.log, "order already final, dropping this delivery"; "order_id" => %order_id);
        until_done(ctx, "acknowledge", || {
            ctx.queue
                .acknowledge(&ctx.processing, payload, order_id, None)
        })
        .await;
        return Ok(());
    };
    info!(ctx.log, "order processing"; "order_id" => %order_id, "attempt" => attempt);
    // 3. Simulate the work.
    tokio::time::sleep(ctx.delay.sample()).await;
    // 4. Complete it, unless it was cancelled or redelivered meanwhile.
    let completed_at = ctx.store.complete(order_id, attempt).await?;
    // 5. Publish and acknowledge, in one round trip.
    let event = completed_at.map(|at| Event::new(job, Status::Completed, Some(at)).to_json());
    let message = event.as_deref().map(|e| (ctx.channel.as_str(), e));
    until_done(ctx, "acknowledge", || {
        ctx.queue
            .acknowledge(&ctx.processing, payload, order_id, message)
    })
    .await;
    match completed_at {
        Some(_) => info!(ctx.log, "order completed"; "order_id" => %order_id),
        None => {
            info!(ctx.log, "order was cancelled or taken over, not completed"; "order_id" => %order_id)
        }
    }
    Ok(())
}

/// The wait before the next try after `failures` failed ones: random between zero and an
/// exponentially growing cap ("full jitter").
fn backoff(ctx: &Ctx, failures: u32) -> Duration {
    let window = ctx
        .retry_base
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(ctx.retry_max);
    window.mul_f64(rand::random_range(0.0..=1.0))
}

/// After a transient failure: schedule the next try, or give up once the tries are spent.
async fn retry_later(ctx: &Ctx, job: Job, payload: &[u8]) {
    let order_id = job.order_id;
    if job.failures >= ctx.max_attempts {
        return give_up(ctx, &job, payload).await;
    }
    let wait = backoff(ctx, job.failures);
    warn!(ctx.log, "order failed, retrying later"; "order_id" => %order_id,
        "failures" => job.failures, "in_ms" => wait.as_millis() as u64,
        "error" => job.errors.last().map(String::as_str).unwrap_or(""));
    let due = now_ms() + wait.as_millis() as u64;
    until_done(ctx, "schedule retry", || {
        ctx.queue
            .schedule_retry(&ctx.processing, payload, &job, due)
    })
    .await;
}

/// The order's tries ran out: mark it failed, publish `order.failed`, dead-letter it. If the
/// failure cannot even be recorded (PostgreSQL still down), it is scheduled once more instead.
async fn give_up(ctx: &Ctx, job: &Job, payload: &[u8]) {
    let order_id = job.order_id;
    let reason = job
        .errors
        .last()
        .map(String::as_str)
        .unwrap_or("attempts exhausted");
    match ctx.store.fail(job, reason).await {
        Ok(true) => {}
        Ok(false) => {
            info!(ctx.log, "order already final, dropping this delivery"; "order_id" => %order_id);
            until_done(ctx, "acknowledge", || {
                ctx.queue
                    .acknowledge(&ctx.processing, payload, order_id, None)
            })
            .await;
            return;
        }
        Err(e) => {
            error!(ctx.log, "cannot mark the order failed yet, retrying later"; "order_id" => %order_id, "error" => %e);
            let due = now_ms() + backoff(ctx, job.failures).as_millis() as u64;
            until_done(ctx, "schedule retry", || {
                ctx.queue.schedule_retry(&ctx.processing, payload, job, due)
            })
            .await;
            return;
        }
    }
    error!(ctx.log, "order failed, dead-lettered"; "order_id" => %order_id, "failures" => job.failures, "error" => reason);
    let event = Event::new(job, Status::Failed, None).to_json();
    until_done(ctx, "dead-letter", || {
        ctx.queue.dead_letter(
            &ctx.processing,
            payload,
            Some(order_id),
            &job.errors,
            Some((FAILED_CHANNEL, &event)),
        )
    })
    .await;
}
