//! Leases: each worker process renews a heartbeat; the reaper of any worker process puts the
//! orders of a worker whose heartbeat expired back on the queue; a processing list whose owner
//! is not registered is adopted so the reaper judges it too; a stopping worker retires.

use super::script::Lua;
use super::{Queue, QueueError, WorkerQueue};
use redis::AsyncCommands;
use std::time::Duration;

static REQUEUE_ORPHANS: Lua = Lua::new(include_str!("requeue_orphans.lua"));
static RETIRE: Lua = Lua::new(include_str!("retire.lua"));

impl Queue {
    /// Puts the orders held by worker processes whose lease expired back on the queue; how many.
    pub async fn requeue_orphans(&self) -> Result<u64, QueueError> {
        Ok(REQUEUE_ORPHANS
            .call(&[self.keys.workers(), self.keys.queue()])
            .arg(self.keys.tag())
            .run(&mut self.conn())
            .await?)
    }

    /// Registers every processing list whose owner is not in the workers set (a worker that was
    /// reaped while paused and then claimed more before dying), so the reaper judges it by its
    /// heartbeat like any other.
    pub async fn adopt_unregistered(&self) -> Result<(), QueueError> {
        let mut conn = self.conn();
        let pattern = format!("{}processing:*", self.keys.tag());
        let prefix_len = pattern.len() - 1;
        // SCAN walks one node: in a cluster, the one that owns the queue's slot, where every
        // processing list lives (one hash tag).
        let mut lists: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) =
                conn.query_on_owner_of(self.keys.queue(), &scan).await?;
            lists.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let owners: Vec<&str> = lists.iter().map(|k| &k[prefix_len..]).collect();
        if !owners.is_empty() {
            conn.sadd::<_, _, ()>(self.keys.workers(), owners).await?;
        }
        Ok(())
    }
}

impl WorkerQueue {
    /// Renews this worker process's lease (and registers it).
    pub async fn heartbeat(&self, lease: Duration) -> Result<(), QueueError> {
        let keys = &self.queue.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.heartbeat(&self.worker_id))
            .arg(1)
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .ignore();
        pipe.sadd(keys.workers(), &self.worker_id).ignore();
        pipe.query_async::<()>(&mut self.queue.conn()).await?;
        Ok(())
    }

    /// Puts everything this worker process still holds back at the head of the queue and
    /// removes its lease (graceful shutdown); how many orders it put back.
    pub async fn retire(&self) -> Result<u64, QueueError> {
        let keys = &self.queue.keys;
        let heartbeat = keys.heartbeat(&self.worker_id);
        Ok(RETIRE
            .call(&[&self.processing, keys.queue(), keys.workers(), &heartbeat])
            .arg(&self.worker_id)
            .run(&mut self.queue.conn())
            .await?)
    }
}
