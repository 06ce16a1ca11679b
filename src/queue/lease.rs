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
    ///
    /// The script is given every key it reads (each registered worker's heartbeat and processing
    /// list): a script that built them itself would, on the source node of a cluster slot being
    /// migrated, find a heartbeat that has moved missing and reap a live worker. With the keys
    /// declared, Redis refuses the call (ASK or TRYAGAIN) until the migration is done.
    pub async fn requeue_orphans(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn();
        let workers: Vec<String> = conn.smembers(self.keys.workers()).await?;
        if workers.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![
            self.keys.workers().to_string(),
            self.keys.queue().to_string(),
        ];
        for worker in &workers {
            keys.push(self.keys.heartbeat(worker));
            keys.push(self.keys.processing(worker));
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut call = REQUEUE_ORPHANS.call(&keys);
        for worker in &workers {
            call.arg(worker);
        }
        Ok(call.run(&mut conn).await?)
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
    /// Renews this worker process's lease (and registers it), and leaves `info` (what the
    /// console shows of the process) for ten leases.
    pub async fn heartbeat(&self, lease: Duration, info: &str) -> Result<(), QueueError> {
        // Two single-key commands, sent together on the multiplexed connection (one round trip),
        // not a pipeline: while a cluster migrates the slot, a command whose key has moved is
        // answered ASK, which the cluster client follows for a command but not inside a
        // pipeline, and a lease that lapses mid-migration would have a live worker reaped.
        let keys = &self.queue.keys;
        let (mut a, mut b, mut c) = (self.queue.conn(), self.queue.conn(), self.queue.conn());
        let mut renew = redis::cmd("SET");
        renew
            .arg(keys.heartbeat(&self.worker_id))
            .arg(1)
            .arg("PX")
            .arg(lease.as_millis() as u64);
        let mut register = redis::cmd("SADD");
        register.arg(keys.workers()).arg(&self.worker_id);
        let mut tell = redis::cmd("SET");
        tell.arg(keys.worker_info(&self.worker_id))
            .arg(info)
            .arg("PX")
            .arg(lease.as_millis() as u64 * 10);
        tokio::try_join!(
            renew.query_async::<()>(&mut a),
            register.query_async::<()>(&mut b),
            tell.query_async::<()>(&mut c)
        )?;
        Ok(())
    }

    /// Puts everything this worker process still holds back at the head of the queue and
    /// removes its lease (graceful shutdown); how many orders it put back.
    pub async fn retire(&self) -> Result<u64, QueueError> {
        let keys = &self.queue.keys;
        let heartbeat = keys.heartbeat(&self.worker_id);
        Ok(RETIRE
            .call(&[
                &self.processing,
                keys.queue(),
                keys.workers(),
                &heartbeat,
                &keys.worker_info(&self.worker_id),
            ])
            .arg(&self.worker_id)
            .run(&mut self.queue.conn())
            .await?)
    }
}
