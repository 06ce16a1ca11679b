//! Admin: the dead letters (listing and revival), taking a queued order off the queue, and the
//! gauges of `/stats` and `/metrics`.

use super::script::Lua;
use super::{Queue, QueueError};
use crate::order::Job;
use redis::AsyncCommands;
use uuid::Uuid;

static REVIVE: Lua = Lua::new(include_str!("revive.lua"));
static REMOVE_QUEUED: Lua = Lua::new(include_str!("remove_queued.lua"));
static GAUGES: Lua = Lua::new(include_str!("gauges.lua"));

/// The state of the queue at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QueueGauges {
    pub queue_depth: u64,
    pub in_flight: u64,
    pub scheduled_retries: u64,
    pub dead_letters: u64,
    pub live_workers: u64,
    pub completed_last_minute: u64,
}

/// What [`Queue::remove_queued`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Taken off the queue or the retry schedule.
    Removed,
    /// Accepted and claimed by a worker, which may not have stored it yet.
    HeldByWorker,
    /// Not waiting in Redis (stored, finished, or unknown).
    NotQueued,
}

impl Queue {
    /// How many dead letters there are.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        Ok(self.conn().llen(self.keys.dead()).await?)
    }

    /// The newest `limit` dead letters, as stored.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        let stop = limit.saturating_sub(1) as isize;
        Ok(self.conn().lrange(self.keys.dead(), 0, stop).await?)
    }

    /// Puts a dead letter back on the queue as `job`; false when `entry` is no longer there.
    pub async fn revive(&self, entry: &str, job: &Job) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let revived: i64 = REVIVE
            .call(&[keys.dead(), keys.pending(), keys.queue()])
            .arg(entry)
            .arg(job.order_id.to_string())
            .arg(job.to_payload())
            .run(&mut self.conn())
            .await?;
        Ok(revived == 1)
    }

    /// Takes a queued order off the queue (for an admin delete).
    pub async fn remove_queued(&self, order_id: Uuid) -> Result<Removal, QueueError> {
        let keys = &self.keys;
        let outcome: i64 = REMOVE_QUEUED
            .call(&[keys.pending(), keys.queue(), keys.scheduled()])
            .arg(order_id.to_string())
            .run(&mut self.conn())
            .await?;
        Ok(match outcome {
            1 => Removal::Removed,
            2 => Removal::HeldByWorker,
            _ => Removal::NotQueued,
        })
    }

    /// The queue's state, read atomically.
    pub async fn gauges(&self) -> Result<QueueGauges, QueueError> {
        let keys = &self.keys;
        let v: Vec<u64> = GAUGES
            .call(&[keys.workers(), keys.queue(), keys.scheduled(), keys.dead()])
            .arg(keys.tag())
            .run(&mut self.conn())
            .await?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(QueueGauges {
            queue_depth: at(0),
            in_flight: at(1),
            scheduled_retries: at(2),
            dead_letters: at(3),
            live_workers: at(4),
            completed_last_minute: at(5),
        })
    }
}
