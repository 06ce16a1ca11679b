//! Paused claiming: an operator pauses every worker process at once (`POST /workers/pause`, a
//! marker in Redis, so a process started later obeys it too). Each process reads the marker every
//! [`PAUSE_CHECK_EVERY`]; its fetch loops stop claiming while it is set, and put back at the head
//! of the queue whatever a claim under way returned after it was seen. In-flight orders finish.

use super::Ctx;
use crate::Shutdown;
use slog::{info, warn};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often a worker process reads the pause marker.
pub const PAUSE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Keeps `ctx.paused` up to date with the marker until `stop`. A failed read keeps the last
/// state: a Redis that cannot be read cannot be claimed from either.
pub(super) async fn follow_pause(ctx: Arc<Ctx>, stop: Shutdown) {
    let mut check = tokio::time::interval(PAUSE_CHECK_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = check.tick() => {}
            _ = stop.cancelled() => return,
        }
        match ctx.queue.queue().paused().await {
            Ok(paused) => {
                failing = false;
                if ctx.paused.swap(paused, Ordering::Relaxed) != paused {
                    match paused {
                        true => info!(ctx.log, "claiming paused by an operator"),
                        false => info!(ctx.log, "claiming resumed"),
                    }
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(ctx.log, "cannot read whether claiming is paused"; "error" => %e);
            }
            Err(_) => {}
        }
    }
}
