//! Repair: an order PostgreSQL holds as `processing` that Redis lost (a failover, or the last
//! second of writes lost with the append-only file) goes back on the queue, once.

use super::script::Lua;
use super::{Queue, QueueError};
use crate::order::Job;

static REQUEUE_LOST: Lua = Lua::new(include_str!("repair.lua"));

impl Queue {
    /// Puts each of `jobs` that Redis holds nowhere (not in the pending hash) back at the pop end
    /// of the queue, atomically; the ids of those it put back.
    pub async fn requeue_lost(&self, jobs: &[Job]) -> Result<Vec<String>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = REQUEUE_LOST.call(&[self.keys.pending(), self.keys.queue()]);
        for job in jobs {
            call.arg(job.order_id.to_string()).arg(job.to_payload());
        }
        Ok(call.run(&mut self.conn()).await?)
    }
}
