//! The lease loop: renews this process's lease and returns the orders of dead workers.

use super::Ctx;
use crate::stats;
use crate::Shutdown;
use slog::{info, warn};
use std::sync::Arc;
use std::time::Duration;

/// Renews this process's lease every third of it and returns the orders of dead workers to the
/// queue every half lease, until `stop`.
pub(super) async fn keep_lease_and_reap(ctx: Arc<Ctx>, lease: Duration, stop: Shutdown) {
    let mut beat = tokio::time::interval(lease / 3);
    let mut reap = tokio::time::interval(lease / 2);
    let mut reaps: u64 = 0;
    let queue = ctx.queue.queue();
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if let Err(e) = ctx.queue.heartbeat(lease).await {
                    warn!(ctx.log, "heartbeat failed"; "error" => %e);
                }
            }
            _ = reap.tick() => {
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
            }
            _ = stop.cancelled() => return,
        }
    }
}
