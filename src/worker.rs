//! The worker role: fetch loops claim orders from the queue (whatever is waiting, up to a batch, in
//! one round trip; a blocking pop when nothing is) and hand them to the starter, which stores
//! what has been claimed as `processing`, a batch per statement; each order then sleeps its
//! simulated processing time and goes to the completer, which completes, publishes and
//! acknowledges whatever has finished, again a batch per round trip.
//!
//! The starter and the completer each run one batch at a time and take everything that arrived
//! meanwhile as the next batch: an idle service sends each order on at once, a busy one sends
//! bigger batches, and PostgreSQL's fixed cost per statement (executor start-up, the count
//! triggers, the commit) is paid per batch, not per order. (With two batches under way each,
//! PostgreSQL used a fifth more CPU at 2,000 orders/s and the end-to-end p99 was higher.)
//!
//! An order is acknowledged (removed from this process's processing list) only after its final
//! commit and its publish. If the process dies anywhere before that, the order is still in the
//! processing list, the heartbeat stops, and the reaper of any worker process puts it back on the
//! queue; the attempt number stored with it fences out the stale delivery.

use crate::config::{Config, DelayRange};
use crate::events::{Event, FAILED_CHANNEL};
use crate::order::{Job, Status};
use crate::queue::Ack;
use crate::queue::Queue;
use crate::stats;
use crate::store::Store;
use crate::Shutdown;
use slog::{debug, error, info, warn, Logger};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

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
    held: Arc<Held>,
    /// Held (shared) by a fetch loop from a claim until what it claimed is counted in `held`;
    /// taken alone to compare the processing list with `held`.
    claiming: tokio::sync::RwLock<()>,
    log: Logger,
}

/// Orders claimed, stored or completed per round trip, at the most.
const BATCH: usize = 256;
/// How long a completion under way may go on after the shutdown deadline.
const COMPLETION_GRACE: Duration = Duration::from_secs(5);

/// An order this process holds: its payload as claimed and its in-flight slot. Counted in
/// [`Held`] until dropped.
struct Claimed {
    payload: Vec<u8>,
    _slot: OwnedSemaphorePermit,
    held: Arc<Held>,
}

impl Claimed {
    fn new(payload: Vec<u8>, slot: OwnedSemaphorePermit, held: &Arc<Held>) -> Claimed {
        held.change(&payload, true);
        Claimed {
            payload,
            _slot: slot,
            held: held.clone(),
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.held.change(&self.payload, false);
    }
}

/// The payloads this process holds, by hash, with how many of each: what its processing list
/// should contain. Anything else in the list was moved there by a claim whose reply was lost.
#[derive(Default)]
struct Held(std::sync::Mutex<std::collections::HashMap<u64, u32>>);

impl Held {
    fn key(payload: &[u8]) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(payload)
    }

    fn change(&self, payload: &[u8], add: bool) {
        let key = Self::key(payload);
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if add {
            *counts.entry(key).or_default() += 1;
        } else if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// The entries of `listed` (a processing list) beyond what this process holds.
    fn not_held(&self, listed: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut left = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        listed
            .into_iter()
            .filter(|payload| match left.get_mut(&Self::key(payload)) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .collect()
    }
}

/// A stored order, processing, with the attempt that fences its completion.
struct Started {
    job: Job,
    attempt: i32,
    claimed: Claimed,
    since: std::time::Instant,
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
    while let Err(e) = ctx.queue.heartbeat(&ctx.worker_id, lease).await {
        warn!(ctx.log, "cannot register the worker, retrying"; "error" => %e);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    let keeper = tokio::spawn(keep_lease_and_reap(ctx.clone(), lease, abort.clone()));
    let (finished, finished_rx) = mpsc::unbounded_channel();
    let completer = tokio::spawn(completer(ctx.clone(), finished_rx, abort.clone()));
    let (claimed, claimed_rx) = mpsc::unbounded_channel();
    let starter = tokio::spawn(starter(
        ctx.clone(),
        claimed_rx,
        finished,
        tasks.clone(),
        abort.clone(),
    ));
    info!(ctx.log, "worker started"; "fetch_loops" => config.workers, "max_in_flight" => config.max_in_flight);

    let loops: Vec<_> = (0..config.workers)
        .map(|_| {
            let fetcher = Fetcher {
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
                    Ok(n) => {
                        metrics::counter!(stats::RECOVERED).increment(n);
                        info!(ctx.log, "returned orders of dead workers to the queue"; "count" => n);
                    }
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

/// One fetch loop and what it hands work to.
struct Fetcher {
    ctx: Arc<Ctx>,
    slots: Arc<Semaphore>,
    claimed: mpsc::UnboundedSender<Claimed>,
}

impl Fetcher {
    /// Claims orders while slots are free: one blocking pop, then up to a batch of those already
    /// waiting. Stops between pops when `shutdown` is cancelled: a pop in flight is never
    /// cancelled, since a dropped BLMOVE could still move an order that no one then processes.
    async fn run(self, shutdown: Shutdown) {
        let ctx = &self.ctx;
        let mut backoff = Duration::from_millis(50);
        // Set when a claim failed: Redis may have moved orders into this process's list and lost
        // the reply (killed after writing its append-only file), and no reaper looks at the list
        // of a live worker. Before claiming again, what the list holds beyond what this process
        // holds goes back to the queue, while no fetch loop is between a claim and counting what
        // it claimed (`Ctx::claiming`).
        let mut unsure = false;
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
                if unsure {
                    match requeue_not_held(ctx).await {
                        Ok(n) => {
                            unsure = false;
                            info!(ctx.log, "returned orders this worker does not hold to the queue after a failed claim";
                                "count" => n);
                        }
                        Err(e) => {
                            warn!(ctx.log, "cannot return this worker's orders to the queue, retrying"; "error" => %e);
                            pause(&mut backoff, &shutdown).await;
                            continue;
                        }
                    }
                }
                if ctx.db_down.load(Ordering::Relaxed) {
                    wait_for_database(ctx, &shutdown).await;
                    continue;
                }
                let slot = tokio::select! {
                    slot = self.slots.clone().acquire_owned() => match slot {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                    _ = shutdown.cancelled() => return,
                };
                // First whatever is waiting, up to a batch and the free slots (taken at once; one
                // goes to each order, the rest return together), without blocking; only when
                // nothing was, the blocking pop. A deep queue is drained a batch per round trip,
                // and under light load the order a pop returns goes on at once: the look at the
                // queue that comes next is made while nothing waits on it.
                let mut slots = slot;
                let more = self.slots.available_permits().min(BATCH - 1) as u32;
                if let Ok(extra) = self.slots.clone().try_acquire_many_owned(more) {
                    slots.merge(extra);
                }
                let claiming = ctx.claiming.read().await;
                let mut claimed = match ctx
                    .queue
                    .claim_waiting(&ctx.processing, slots.num_permits())
                    .await
                {
                    Ok(payloads) => payloads,
                    // Nothing was claimed, or the reply was lost with orders moved into the
                    // list, which goes back before the next claim.
                    Err(e) => {
                        warn!(ctx.log, "claiming waiting orders failed"; "error" => %e);
                        unsure = true;
                        drop(claiming);
                        pause(&mut backoff, &shutdown).await;
                        continue;
                    }
                };
                if claimed.is_empty() {
                    // The pop may wait a while: the other slots go back meanwhile.
                    if let Some(one) = slots.split(1) {
                        slots = one;
                    }
                    match ctx.queue.claim(&mut conn, &ctx.processing).await {
                        Ok(Some(payload)) => claimed.push(payload),
                        Ok(None) => continue,
                        Err(e) => {
                            warn!(ctx.log, "claim failed, reconnecting"; "error" => %e);
                            unsure = true;
                            drop(claiming);
                            drop(deadpool_redis::Connection::take(conn));
                            pause(&mut backoff, &shutdown).await;
                            continue 'connect;
                        }
                    }
                }
                backoff = Duration::from_millis(50);
                for payload in claimed {
                    let Some(slot) = slots.split(1) else { break };
                    let _ = self.claimed.send(Claimed::new(payload, slot, &ctx.held));
                }
                drop(claiming);
            }
        }
    }
}

/// Puts what this process's processing list holds beyond what the process holds back on the
/// queue; how many.
async fn requeue_not_held(ctx: &Ctx) -> Result<u64, crate::queue::QueueError> {
    let _no_claims = ctx.claiming.write().await;
    let listed = ctx.queue.processing_list(&ctx.processing).await?;
    let stranded = ctx.held.not_held(listed);
    if stranded.is_empty() {
        return Ok(0);
    }
    ctx.queue.requeue(&ctx.processing, &stranded).await
}

/// Stores claimed orders as `processing`, one batch at a time: whatever has been claimed since
/// the last one.
async fn starter(
    ctx: Arc<Ctx>,
    mut claimed: mpsc::UnboundedReceiver<Claimed>,
    finished: mpsc::UnboundedSender<Started>,
    tasks: TaskTracker,
    abort: Shutdown,
) {
    while let Some(batch) = next_batch(&mut claimed, &abort).await {
        tokio::select! {
            _ = start_batch(&ctx, batch, &tasks, &abort, finished.clone()) => {}
            _ = abort.cancelled() => return,
        }
    }
}

/// Everything waiting on `from`, up to a batch, once there is something; `None` when every
/// sender is gone or the shutdown deadline has passed.
async fn next_batch<T>(from: &mut mpsc::UnboundedReceiver<T>, abort: &Shutdown) -> Option<Vec<T>> {
    let mut batch = Vec::with_capacity(BATCH);
    tokio::select! {
        n = from.recv_many(&mut batch, BATCH) => (n > 0).then_some(batch),
        _ = abort.cancelled() => None,
    }
}

/// Steps 1 and 2 of SPEC §3 for a claimed batch: validate each payload again (anything can be
/// pushed on the list), store the valid ones as `processing` in one statement, then start each
/// one's processing time; when it is over the order goes to the completer.
async fn start_batch(
    ctx: &Arc<Ctx>,
    batch: Vec<Claimed>,
    tasks: &TaskTracker,
    abort: &Shutdown,
    finished: mpsc::UnboundedSender<Started>,
) {
    let mut jobs: Vec<(Job, Claimed)> = Vec::with_capacity(batch.len());
    let mut seen = HashSet::with_capacity(batch.len());
    let mut drop_now = Vec::new();
    for claimed in batch {
        match Job::parse(&claimed.payload) {
            Err(e) => dead_letter_poison(ctx, &claimed.payload, e.to_string()).await,
            // The same order twice in one batch (pushed twice): the copy is dropped.
            Ok(job) if !seen.insert(job.order_id) => drop_now.push((job.order_id, claimed)),
            Ok(job) => jobs.push((job, claimed)),
        }
    }
    if !jobs.is_empty() {
        let refs: Vec<&Job> = jobs.iter().map(|(job, _)| job).collect();
        let begun = ctx.store.begin_processing(&refs).await;
        let attempts = match begun {
            Ok(attempts) => attempts,
            Err(e) => {
                if e.is_unavailable() {
                    ctx.db_down.store(true, Ordering::Relaxed);
                }
                for (job, claimed) in jobs {
                    retry_later(ctx, job.failed_once(e.to_string()), &claimed.payload).await;
                }
                return;
            }
        };
        for (job, claimed) in jobs {
            let Some(&attempt) = attempts.get(&job.order_id) else {
                info!(ctx.log, "order already final, dropping this delivery"; "order_id" => %job.order_id);
                drop_now.push((job.order_id, claimed));
                continue;
            };
            info!(ctx.log, "order processing"; "order_id" => %job.order_id, "attempt" => attempt,
                "request_id" => job.request_id.as_deref().unwrap_or(""));
            if attempt == 1 {
                let waited = OffsetDateTime::now_utc() - job.accepted_at;
                metrics::histogram!(stats::QUEUE_WAIT).record(waited.as_seconds_f64().max(0.0));
            }
            let started = Started {
                job,
                attempt,
                claimed,
                since: std::time::Instant::now(),
            };
            // 3. Simulate the work: an async sleep, so thousands can be in flight.
            let delay = ctx.delay.sample();
            if delay.is_zero() {
                let _ = finished.send(started);
            } else {
                let (finished, abort) = (finished.clone(), abort.clone());
                tasks.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => { let _ = finished.send(started); }
                        _ = abort.cancelled() => {}
                    }
                });
            }
        }
    }
    if !drop_now.is_empty() {
        metrics::counter!(stats::DUPLICATES).increment(drop_now.len() as u64);
        let acks: Vec<Ack> = drop_now
            .iter()
            .map(|(order_id, claimed)| Ack {
                payload: &claimed.payload,
                order_id: *order_id,
                event: None,
            })
            .collect();
        acknowledge(ctx, &acks).await;
    }
}

/// Completes what has finished processing, one batch at a time: whatever has finished since the
/// last one.
async fn completer(ctx: Arc<Ctx>, mut finished: mpsc::UnboundedReceiver<Started>, abort: Shutdown) {
    while let Some(batch) = next_batch(&mut finished, &abort).await {
        // A completion that has begun runs on past the shutdown deadline, for a while: once its
        // commit is made, stopping before the publish would lose the event.
        let grace = async {
            abort.cancelled().await;
            tokio::time::sleep(COMPLETION_GRACE).await;
        };
        tokio::select! {
            _ = complete_batch(&ctx, batch) => {}
            _ = grace => {}
        }
    }
}

/// Steps 4 and 5 of SPEC §3: complete the orders still `processing` under their attempt (a
/// cancelled or redelivered one is not), then publish their events and acknowledge them all in
/// one round trip.
async fn complete_batch(ctx: &Ctx, batch: Vec<Started>) {
    let ids: Vec<Uuid> = batch.iter().map(|s| s.job.order_id).collect();
    let attempts: Vec<i32> = batch.iter().map(|s| s.attempt).collect();
    let completed = match ctx.store.complete(&ids, &attempts).await {
        Ok(completed) => completed,
        Err(e) => {
            if e.is_unavailable() {
                ctx.db_down.store(true, Ordering::Relaxed);
            }
            for started in batch {
                let retry = started.job.failed_once(e.to_string());
                retry_later(ctx, retry, &started.claimed.payload).await;
            }
            return;
        }
    };
    let acks: Vec<Ack> = batch
        .iter()
        .map(|s| Ack {
            payload: &s.claimed.payload,
            order_id: s.job.order_id,
            event: completed
                .get(&(s.job.order_id, s.attempt))
                .map(|at| Event::new(&s.job, Status::Completed, Some(*at)).to_json()),
        })
        .collect();
    acknowledge(ctx, &acks).await;
    metrics::counter!(stats::COMPLETED).increment(completed.len() as u64);
    for started in &batch {
        let order_id = started.job.order_id;
        let request_id = started.job.request_id.as_deref().unwrap_or("");
        match completed.get(&(order_id, started.attempt)) {
            Some(at) => {
                metrics::histogram!(stats::PROCESSING)
                    .record(started.since.elapsed().as_secs_f64());
                let total = (*at - started.job.accepted_at).as_seconds_f64().max(0.0);
                metrics::histogram!(stats::END_TO_END).record(total);
                info!(ctx.log, "order completed"; "order_id" => %order_id, "request_id" => request_id);
            }
            None => info!(ctx.log, "order was cancelled or taken over, not completed";
                "order_id" => %order_id, "request_id" => request_id),
        }
    }
}

/// Acknowledges orders (publishing their events), retrying until Redis takes it; the retries
/// share one acknowledgement id, so a retry after a lost reply publishes nothing twice.
async fn acknowledge(ctx: &Ctx, acks: &[Ack<'_>]) {
    let ack_id = Uuid::new_v4().simple().to_string();
    until_done(ctx, "acknowledge", || {
        ctx.queue
            .acknowledge_all(&ctx.processing, &ctx.channel, acks, &ack_id)
    })
    .await;
}

/// Moves a payload that can never be an order to the dead letters, never to be retried.
async fn dead_letter_poison(ctx: &Ctx, payload: &[u8], error: String) {
    error!(ctx.log, "dead-lettering a payload that is not a valid order"; "error" => &error);
    let order_id = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("order_id")?.as_str()?.parse().ok());
    let errors = [format!("invalid payload: {error}")];
    until_done(ctx, "dead-letter", || {
        ctx.queue
            .dead_letter(&ctx.processing, payload, order_id, &errors, None)
    })
    .await;
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
    metrics::counter!(stats::RETRIED).increment(1);
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
            let ack = [Ack {
                payload,
                order_id,
                event: None,
            }];
            acknowledge(ctx, &ack).await;
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
    metrics::counter!(stats::FAILED).increment(1);
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
