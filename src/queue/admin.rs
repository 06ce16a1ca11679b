//! Admin and the console: taking a queued order off the queue, pausing claiming, the scheduled
//! retries (listed, or run now), the worker processes, the per-second history, and the gauges
//! of `/stats` and `/metrics`.

use super::script::Lua;
use super::{Queue, QueueError};
use crate::order::Job;
use redis::AsyncCommands;
use uuid::Uuid;

static REMOVE_QUEUED: Lua = Lua::new(include_str!("remove_queued.lua"));
static GAUGES: Lua = Lua::new(include_str!("gauges.lua"));
static HISTORY: Lua = Lua::new(include_str!("history.lua"));
static WORKERS: Lua = Lua::new(include_str!("workers.lua"));
static RUN_SCHEDULED_NOW: Lua = Lua::new(include_str!("run_scheduled_now.lua"));

/// Seconds of history the per-second counters keep (they expire after 660).
pub const HISTORY_SECONDS: usize = 600;

/// The state of the queue at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QueueGauges {
    pub queue_depth: u64,
    pub in_flight: u64,
    pub scheduled_retries: u64,
    pub dead_letters: u64,
    pub live_workers: u64,
    pub completed_last_minute: u64,
    /// When claiming was paused (Unix ms), if it is.
    #[serde(skip)]
    pub paused_at_ms: Option<u64>,
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

/// Completions and dead letters per second, oldest first, the last at `end_unix`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct History {
    pub end_unix: u64,
    pub seconds: usize,
    pub completed: Vec<u64>,
    pub failed: Vec<u64>,
}

/// One registered worker process as Redis knows it.
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub id: String,
    /// What it last told of itself (JSON), if that has not expired.
    pub info: Option<String>,
    /// Time left on its lease; `None` when the lease has expired.
    pub lease_left_ms: Option<u64>,
    pub held: u64,
    /// The payload it has held longest.
    pub oldest_held: Option<Job>,
}

/// A page of scheduled retries, soonest first, each with when it is due (Unix ms).
#[derive(Debug, Default)]
pub struct ScheduledPage {
    pub scheduled: Vec<(Job, u64)>,
    pub total: u64,
    /// Where the next page starts: a due time and how many due then were shown.
    pub next: Option<(u64, u64)>,
}

/// What Redis holds of one order: its pending payload (accepted and not yet acknowledged), when
/// its scheduled retry is due (Unix ms), when it was dead-lettered.
#[derive(Debug, Default)]
pub struct OrderTraces {
    pub job: Option<Job>,
    pub retry_due_ms: Option<u64>,
    pub dead_letter_failed_at: Option<String>,
}

impl Queue {
    /// What Redis holds of one order, for its history.
    pub async fn order_traces(&self, order_id: Uuid) -> Result<OrderTraces, QueueError> {
        let id = order_id.to_string();
        let mut conn = self.conn();
        let (pending, dead): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.keys.pending(), &id)
            .hget(self.keys.dead_entries(), &id)
            .query_async(&mut conn)
            .await?;
        let retry_due_ms = match &pending {
            Some(payload) => conn
                .zscore::<_, _, Option<f64>>(self.keys.scheduled(), payload)
                .await?
                .map(|s| s as u64),
            None => None,
        };
        let dead_letter_failed_at = dead
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d["failed_at"].as_str().map(str::to_string));
        Ok(OrderTraces {
            job: pending.and_then(|p| Job::parse(p.as_bytes()).ok()),
            retry_due_ms,
            dead_letter_failed_at,
        })
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
            .call(&[
                keys.workers(),
                keys.queue(),
                keys.scheduled(),
                keys.dead_entries(),
                keys.paused(),
            ])
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
            paused_at_ms: Some(at(6)).filter(|&ms| ms > 0),
        })
    }

    /// Pauses claiming for every worker process (they check about every
    /// [`crate::worker::PAUSE_CHECK_EVERY`]); when it was paused (Unix ms), now or before.
    pub async fn pause(&self, now_ms: u64) -> Result<u64, QueueError> {
        let mut conn = self.conn();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.keys.paused())
            .arg(now_ms)
            .arg("NX")
            .query_async(&mut conn)
            .await?;
        let at: Option<u64> = conn.get(self.keys.paused()).await?;
        // Resumed in between: it was paused now all the same.
        Ok(at.unwrap_or(now_ms))
    }

    /// Lets every worker process claim again.
    pub async fn resume(&self) -> Result<(), QueueError> {
        self.conn().del::<_, ()>(self.keys.paused()).await?;
        Ok(())
    }

    /// Whether claiming is paused.
    pub async fn paused(&self) -> Result<bool, QueueError> {
        Ok(self.conn().exists(self.keys.paused()).await?)
    }

    /// Completions and dead letters per second over the last [`HISTORY_SECONDS`].
    pub async fn history(&self) -> Result<History, QueueError> {
        let (end_unix, completed, failed): (u64, Vec<u64>, Vec<u64>) = HISTORY
            .call(&[self.keys.queue()])
            .arg(self.keys.tag())
            .arg(HISTORY_SECONDS)
            .run(&mut self.conn())
            .await?;
        Ok(History {
            end_unix,
            seconds: HISTORY_SECONDS,
            completed,
            failed,
        })
    }

    /// Every registered worker process, and Redis's clock (Unix ms).
    pub async fn workers(&self) -> Result<(u64, Vec<WorkerState>), QueueError> {
        let reply: Vec<redis::Value> = WORKERS
            .call(&[self.keys.workers()])
            .arg(self.keys.tag())
            .run(&mut self.conn())
            .await?;
        let text = |v: &redis::Value| {
            redis::from_redis_value::<Option<String>>(v.clone())
                .ok()
                .flatten()
        };
        let number = |v: &redis::Value| redis::from_redis_value::<i64>(v.clone()).unwrap_or(-1);
        let now = reply.first().map_or(0, |v| number(v).max(0) as u64);
        let mut workers: Vec<WorkerState> = reply
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(5)
            .map(|w| WorkerState {
                id: text(&w[0]).unwrap_or_default(),
                info: text(&w[1]),
                lease_left_ms: u64::try_from(number(&w[2])).ok(),
                held: number(&w[3]).max(0) as u64,
                oldest_held: text(&w[4]).and_then(|p| Job::parse(p.as_bytes()).ok()),
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((now, workers))
    }

    /// Up to `limit` scheduled retries from `from` (a due time and how many due then to skip),
    /// soonest first.
    pub async fn scheduled(
        &self,
        from: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<ScheduledPage, QueueError> {
        let (from_ms, skip) = from.unwrap_or((0, 0));
        let mut conn = self.conn();
        let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys.scheduled())
            .arg(from_ms)
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(skip)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let total: u64 = conn.zcard(self.keys.scheduled()).await?;
        let next = entries
            .last()
            .filter(|_| entries.len() == limit)
            .map(|&(_, last)| {
                let last = last as u64;
                let same = entries.iter().filter(|(_, s)| *s as u64 == last).count() as u64;
                // All on the due time the page started from: skip those too.
                let before = if last == from_ms { skip } else { 0 };
                (last, before + same)
            });
        let scheduled = entries
            .iter()
            .filter_map(|(p, due)| Some((Job::parse(p.as_bytes()).ok()?, *due as u64)))
            .collect();
        Ok(ScheduledPage {
            scheduled,
            total,
            next,
        })
    }

    /// Moves a scheduled retry to the queue now; false when the order is not waiting for one.
    pub async fn run_scheduled_now(&self, order_id: Uuid) -> Result<bool, QueueError> {
        let keys = &self.keys;
        let moved: i64 = RUN_SCHEDULED_NOW
            .call(&[keys.pending(), keys.scheduled(), keys.queue()])
            .arg(order_id.to_string())
            .run(&mut self.conn())
            .await?;
        Ok(moved == 1)
    }
}
