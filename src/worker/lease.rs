//! The lease loop: renews this process's lease, returns the orders of dead workers, and puts
//! back the orders PostgreSQL holds as `processing` that Redis lost.

use super::Ctx;
use crate::stats;
use crate::Shutdown;
use slog::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// An order `processing` in PostgreSQL for this many leases with no trace in Redis is lost there:
/// a live worker renews its lease every third of one, and a dead one's orders go back to the
/// queue (and to `processing` again, with a new start time) within about one and a half.
const REPAIR_AFTER_LEASES: u32 = 3;

/// Orders one repair sweep looks at, at most.
const REPAIR_BATCH: i64 = 1000;

/// Renews this process's lease every third of it and, every half lease, returns the orders of
/// dead workers to the queue and repairs the orders Redis lost, until `stop`. The renewal runs
/// beside the rest, never after it: a reaper refused while a cluster slot migrates (TRYAGAIN,
/// retried up to the response timeout) or a slow repair query would otherwise hold the renewal
/// back past the lease, and this live worker's orders would be taken.
pub(super) async fn keep_lease_reap_and_repair(ctx: Arc<Ctx>, lease: Duration, stop: Shutdown) {
    let renew = async {
        let mut beat = tokio::time::interval(lease / 3);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if let Err(e) = ctx.queue.heartbeat(lease, &info(&ctx)).await {
                        warn!(ctx.log, "heartbeat failed"; "error" => %e);
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    };
    let reap_and_repair = async {
        let mut reap = tokio::time::interval(lease / 2);
        let mut reaps: u64 = 0;
        let queue = ctx.queue.queue();
        loop {
            tokio::select! {
                _ = reap.tick() => {}
                _ = stop.cancelled() => return,
            }
            reaps += 1;
            // Now and then, also look for processing lists nobody registered.
            if reaps % 10 == 1 {
                if let Err(e) = queue.adopt_unregistered().await {
                    warn!(ctx.log, "scan for unregistered processing lists failed"; "error" => %e);
                }
            }
            match queue.requeue_orphans().await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!(stats::RECOVERED).increment(n);
                    info!(ctx.log, "returned orders of dead workers to the queue"; "count" => n);
                }
                Err(e) => warn!(ctx.log, "reaper failed"; "error" => %e),
            }
            requeue_orders_redis_lost(&ctx, lease * REPAIR_AFTER_LEASES).await;
        }
    };
    tokio::join!(renew, reap_and_repair);
}

/// Puts back on the queue, from their rows, the orders `processing` in PostgreSQL for longer than
/// `stuck_after` that Redis holds nowhere (a failover, or its last second of writes lost). A
/// stale copy still somewhere is harmless: the redelivery counts a new attempt, which fences out
/// the old one's completion, and a final order is never processed again.
async fn requeue_orders_redis_lost(ctx: &Ctx, stuck_after: Duration) {
    let stuck = match ctx.store.stuck_processing(stuck_after, REPAIR_BATCH).await {
        Ok(stuck) => stuck,
        Err(e) => return warn!(ctx.log, "looking for orders Redis lost failed"; "error" => %e),
    };
    match ctx.queue.queue().requeue_lost(&stuck).await {
        Ok(repaired) => {
            metrics::counter!(stats::REPAIRED).increment(repaired.len() as u64);
            for order_id in repaired {
                warn!(ctx.log, "order was processing with no trace in Redis, put back on the queue";
                    "order_id" => order_id);
            }
        }
        Err(e) => warn!(ctx.log, "putting back orders Redis lost failed"; "error" => %e),
    }
}

/// What the console shows of this process, as of now: its host, pid and start, the time of this
/// renewal, and its memory and CPU.
pub(super) fn info(ctx: &Ctx) -> String {
    let mut info = ctx.about.clone();
    let sample = stats::process_sample();
    info["beat_ms"] = super::now_ms().into();
    info["rss_bytes"] = sample.rss_bytes.into();
    info["cpu_seconds"] = sample.cpu_seconds.into();
    info["open_fds"] = sample.open_fds.into();
    info.to_string()
}
