//! Fetch loops: claim orders while in-flight slots are free and hand them to the starter; after
//! a claim that may have been lost, put back what this process's list holds beyond what the
//! process holds.

use super::{Ctx, BATCH};
use crate::backoff::Backoff;
use crate::queue::{Claim, QueueError};
use crate::Shutdown;
use slog::{info, warn};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// An order this process holds: its payload as claimed and its in-flight slot. Counted in
/// [`Held`] until dropped.
pub(super) struct Claimed {
    pub(super) payload: Vec<u8>,
    /// When it was claimed, with tracing on (the end of its queue wait span).
    pub(super) claimed_at: Option<std::time::SystemTime>,
    _slot: OwnedSemaphorePermit,
    held: Arc<Held>,
}

impl Claimed {
    fn new(
        payload: Vec<u8>,
        claimed_at: Option<std::time::SystemTime>,
        slot: OwnedSemaphorePermit,
        held: &Arc<Held>,
    ) -> Claimed {
        held.change(&payload, true);
        Claimed {
            payload,
            claimed_at,
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
pub(super) struct Held(std::sync::Mutex<HashMap<u64, u32>>);

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

/// One fetch loop and what it hands work to.
pub(super) struct Fetcher {
    pub(super) ctx: Arc<Ctx>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) claimed: mpsc::UnboundedSender<Claimed>,
}

impl Fetcher {
    /// Claims orders while slots are free: what is already waiting, up to a batch, or else one
    /// blocking pop. Stops between pops when `shutdown` is cancelled: a pop in flight is never
    /// cancelled, since a dropped BLMOVE could still move an order that no one then processes.
    pub(super) async fn run(self, shutdown: Shutdown) {
        let ctx = &self.ctx;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
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
                    backoff.wait(&shutdown).await;
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
                            backoff.wait(&shutdown).await;
                            continue;
                        }
                    }
                }
                if ctx.db_down.load(Ordering::Relaxed) {
                    wait_for_database(ctx, &shutdown).await;
                    continue;
                }
                if ctx.paused.load(Ordering::Relaxed) {
                    tokio::select! {
                        _ = tokio::time::sleep(super::PAUSE_CHECK_EVERY) => {}
                        _ = shutdown.cancelled() => {}
                    }
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
                // and under light load the order a pop returns goes on at once.
                let mut slots = slot;
                let more = self.slots.available_permits().min(BATCH - 1) as u32;
                if let Ok(extra) = self.slots.clone().try_acquire_many_owned(more) {
                    slots.merge(extra);
                }
                let claiming = ctx.claiming.read().await;
                let mut claim = match ctx.queue.claim_waiting(slots.num_permits()).await {
                    Ok(claim) => claim,
                    // Nothing was claimed, or the reply was lost with orders moved into the
                    // list, which goes back before the next claim.
                    Err(e) => {
                        warn!(ctx.log, "claiming waiting orders failed"; "error" => %e);
                        unsure = true;
                        drop(claiming);
                        backoff.wait(&shutdown).await;
                        continue;
                    }
                };
                if claim == Claim::Orders(Vec::new()) {
                    // The pop may wait a while: the other slots go back meanwhile.
                    if let Some(one) = slots.split(1) {
                        slots = one;
                    }
                    claim = match ctx.queue.claim(&mut conn).await {
                        Ok(claim) => claim,
                        Err(e) => {
                            warn!(ctx.log, "claim failed, reconnecting"; "error" => %e);
                            unsure = true;
                            drop(claiming);
                            conn.discard();
                            backoff.wait(&shutdown).await;
                            continue 'connect;
                        }
                    };
                }
                backoff.reset();
                let claimed = match claim {
                    Claim::Orders(claimed) => claimed,
                    // Paused, seen by the claim itself before this process's next look at the
                    // marker: what a pop under way took goes back to the head.
                    Claim::Paused(taken) => {
                        ctx.paused.store(true, Ordering::Relaxed);
                        if !taken.is_empty() {
                            if let Err(e) = ctx.queue.requeue(&taken).await {
                                warn!(ctx.log, "cannot put back an order claimed as claiming was paused"; "error" => %e);
                                unsure = true;
                            }
                        }
                        drop(claiming);
                        continue;
                    }
                };
                let claimed_at = crate::trace::now();
                for payload in claimed {
                    let Some(slot) = slots.split(1) else { break };
                    let claimed = Claimed::new(payload, claimed_at, slot, &ctx.held);
                    let _ = self.claimed.send(claimed);
                }
                drop(claiming);
            }
        }
    }
}

/// Puts what this process's processing list holds beyond what the process holds back on the
/// queue; how many.
async fn requeue_not_held(ctx: &Ctx) -> Result<u64, QueueError> {
    let _no_claims = ctx.claiming.write().await;
    let listed = ctx.queue.processing_list().await?;
    let stranded = ctx.held.not_held(listed);
    if stranded.is_empty() {
        return Ok(0);
    }
    ctx.queue.requeue(&stranded).await
}

/// Waits, with backoff, until PostgreSQL answers again and takes writes (not a standby); orders
/// stay safe on the queue meanwhile.
async fn wait_for_database(ctx: &Ctx, shutdown: &Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        if ctx.store.ready().await.is_ready() {
            if ctx.db_down.swap(false, Ordering::Relaxed) {
                info!(ctx.log, "PostgreSQL answers again, claiming orders");
            }
            return;
        }
        backoff.wait(shutdown).await;
    }
}
