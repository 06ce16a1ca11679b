//! Retries: an order that failed for a transient reason waits in the scheduled set, scored by
//! when it is due, and is promoted back to the queue then.

use super::script::Lua;
use super::{Queue, QueueError, WorkerQueue};
use crate::order::Job;

static PROMOTE_DUE: Lua = Lua::new(include_str!("promote_due.lua"));

/// Due retries one promotion moves, at the most.
const PROMOTE_BATCH: u64 = 1000;

impl WorkerQueue {
    /// Takes an order off this worker's processing list and schedules `retry` (its next try) at
    /// `due_ms` (Unix time, ms), in one atomic round trip.
    pub async fn schedule_retry(
        &self,
        payload: &[u8],
        retry: &Job,
        due_ms: u64,
    ) -> Result<(), QueueError> {
        let keys = &self.queue.keys;
        let next = retry.to_payload();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(keys.scheduled(), &next, due_ms)
            .ignore()
            .hset(keys.pending(), retry.order_id.to_string(), &next)
            .ignore()
            .lrem(&self.processing, -1, payload)
            .ignore();
        pipe.query_async::<()>(&mut self.queue.conn()).await?;
        Ok(())
    }
}

impl Queue {
    /// Moves the retries due by `now_ms` to the head of the queue; how many.
    pub async fn promote_due(&self, now_ms: u64) -> Result<u64, QueueError> {
        Ok(PROMOTE_DUE
            .call(&[self.keys.scheduled(), self.keys.queue()])
            .arg(now_ms)
            .arg(PROMOTE_BATCH)
            .run(&mut self.conn())
            .await?)
    }
}
