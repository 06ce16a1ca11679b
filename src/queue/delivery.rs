//! Delivery: what one worker process does with the queue. It claims orders into its own
//! processing list (atomically, so a crash cannot lose one), then either publishes their events
//! and acknowledges them, schedules a retry ([`super::retry`]) or dead-letters them.

use super::script::Lua;
use super::{BlockingConnection, Queue, QueueError};
use redis::AsyncCommands;
use uuid::Uuid;

static CLAIM_WAITING: Lua = Lua::new(include_str!("claim_waiting.lua"));
static REQUEUE: Lua = Lua::new(include_str!("requeue.lua"));
static PUBLISH_AND_ACKNOWLEDGE: Lua = Lua::new(include_str!("publish_and_acknowledge.lua"));
static DEAD_LETTER_AND_PUBLISH: Lua = Lua::new(include_str!("dead_letter_and_publish.lua"));

/// How long one blocking pop waits on the server before the fetch loop checks for shutdown.
const CLAIM_BLOCK_SECONDS: f64 = 1.0;

/// One order to acknowledge: its payload as claimed, and the event to publish, if any.
pub struct Ack<'a> {
    pub payload: &'a [u8],
    pub order_id: Uuid,
    pub event: Option<String>,
    /// Another delivery of the order is still in flight (this one was taken over, or was a
    /// second copy in one batch): its pending entry is that delivery's, and stays.
    pub keep_pending: bool,
}

/// The queue as one worker process uses it: bound to its id (and so its processing list and
/// lease) and to the channels its completion and failure events go to.
pub struct WorkerQueue {
    pub(super) queue: Queue,
    pub(super) worker_id: String,
    pub(super) processing: String,
    completed_channel: String,
    failed_channel: String,
}

impl Queue {
    /// The handle of worker process `worker_id`, publishing completions on `completed_channel`
    /// and failures on `failed_channel`.
    pub fn for_worker(
        &self,
        worker_id: &str,
        completed_channel: &str,
        failed_channel: &str,
    ) -> WorkerQueue {
        WorkerQueue {
            queue: self.clone(),
            worker_id: worker_id.to_string(),
            processing: self.keys.processing(worker_id),
            completed_channel: completed_channel.to_string(),
            failed_channel: failed_channel.to_string(),
        }
    }

    /// Publishes an event with no queue change (a cancellation from the API).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), QueueError> {
        self.conn().publish::<_, _, ()>(channel, message).await?;
        Ok(())
    }
}

impl WorkerQueue {
    /// The whole queue, for what is not one worker's (the reaper, promotion).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// A connection for one fetch loop's blocking pops. Drop it with
    /// [`BlockingConnection::discard`] after an error, so a broken one is not reused.
    pub async fn blocking_connection(&self) -> Result<BlockingConnection, QueueError> {
        self.queue.deployment.blocking_connection().await
    }

    /// Waits up to a second for the next order and moves it, atomically, from the queue into
    /// this worker's processing list, where it stays until acknowledged. With
    /// `ORDERS_REDIS_MIN_REPLICAS`, the move must reach that many replicas (a `WAIT` in the same
    /// round trip), or the claim fails with the order left in the list, for the fetch loop to put
    /// back: an order whose enqueue a failover may still lose is not processed.
    pub async fn claim(
        &self,
        conn: &mut BlockingConnection,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let mut blmove = redis::cmd("BLMOVE");
        blmove
            .arg(self.queue.keys.queue())
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(CLAIM_BLOCK_SECONDS);
        let replication = self.queue.replication;
        if replication.min_replicas == 0 {
            return Ok(conn.query(&blmove).await?);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(blmove)
            .cmd("WAIT")
            .arg(replication.min_replicas)
            .arg(replication.timeout_ms);
        let (claimed, acked): (Option<Vec<u8>>, u32) = conn.query_pipeline(&pipe).await?;
        match claimed {
            Some(_) if acked < replication.min_replicas => Err(QueueError::NotReplicated {
                wanted: replication.min_replicas,
                acked,
            }),
            claimed => Ok(claimed),
        }
    }

    /// Takes up to `n` orders that are already waiting, in one round trip and without blocking,
    /// so a deep queue is drained in batches; moved atomically like [`WorkerQueue::claim`], and
    /// like it replicated first with `ORDERS_REDIS_MIN_REPLICAS`.
    pub async fn claim_waiting(&self, n: usize) -> Result<Vec<Vec<u8>>, QueueError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut call = CLAIM_WAITING.call(&[self.queue.keys.queue(), &self.processing]);
        call.arg(n);
        let replication = self.queue.replication;
        if replication.min_replicas == 0 {
            return Ok(call.run(&mut self.queue.conn()).await?);
        }
        let (claimed, acked): (Vec<Vec<u8>>, u32) = call
            .run_and_wait(
                &mut self.queue.conn(),
                replication.min_replicas,
                replication.timeout_ms,
            )
            .await?;
        if !claimed.is_empty() && acked < replication.min_replicas {
            return Err(QueueError::NotReplicated {
                wanted: replication.min_replicas,
                acked,
            });
        }
        Ok(claimed)
    }

    /// Everything in this worker's processing list.
    pub async fn processing_list(&self) -> Result<Vec<Vec<u8>>, QueueError> {
        Ok(self.queue.conn().lrange(&self.processing, 0, -1).await?)
    }

    /// Moves these orders from the processing list back to the queue, to be claimed next (after
    /// a claim whose reply may have been lost); how many were still in the list.
    pub async fn requeue(&self, payloads: &[Vec<u8>]) -> Result<u64, QueueError> {
        let mut call = REQUEUE.call(&[&self.processing, self.queue.keys.queue()]);
        for payload in payloads {
            call.arg(payload.as_slice());
        }
        Ok(call.run(&mut self.queue.conn()).await?)
    }

    /// Publishes the event of each order that has one, drops the orders from the processing list
    /// and the pending hash, and counts the completions, in one atomic round trip. `ack_id` names
    /// this acknowledgement: retried after a lost reply (Redis restarted), it does nothing the
    /// second time, so no event goes out twice. The id is remembered for 120 s. A refused
    /// publish (no permission on the channel) changes nothing, so the retry does the whole thing.
    pub async fn publish_and_acknowledge(
        &self,
        acks: &[Ack<'_>],
        ack_id: &str,
    ) -> Result<(), QueueError> {
        let keys = &self.queue.keys;
        // Completions per second, for "completed in the last minute" without a table scan.
        let (counter, marker) = (keys.completed(unix_second()), keys.ack(ack_id));
        let mut call =
            PUBLISH_AND_ACKNOWLEDGE.call(&[&self.processing, keys.pending(), &counter, &marker]);
        call.arg(&self.completed_channel);
        for ack in acks {
            let pending_id = match ack.keep_pending {
                true => String::new(),
                false => ack.order_id.to_string(),
            };
            call.arg(ack.payload)
                .arg(pending_id)
                .arg(ack.event.as_deref().unwrap_or(""));
        }
        call.run::<i64>(&mut self.queue.conn()).await?;
        Ok(())
    }

    /// Moves a payload that will never succeed, or whose attempts ran out, from the processing
    /// list to the dead letters, publishing `failed_event` (if any) on the failed channel, in one
    /// atomic round trip; a refused publish leaves everything as it was.
    pub async fn dead_letter_and_publish(
        &self,
        payload: &[u8],
        order_id: Option<Uuid>,
        errors: &[String],
        failed_event: Option<&str>,
    ) -> Result<(), QueueError> {
        let letter = super::DeadLetter::new(payload, order_id, errors);
        let keys = &self.queue.keys;
        let counter = keys.failed(unix_second());
        let order_id = order_id.map(|id| id.to_string()).unwrap_or_default();
        DEAD_LETTER_AND_PUBLISH
            .call(&[
                &self.processing,
                keys.dead_entries(),
                keys.dead_index(),
                keys.pending(),
                &counter,
            ])
            .arg(&self.failed_channel)
            .arg(failed_event.unwrap_or(""))
            .arg(&letter.id)
            .arg(letter.to_stored())
            .arg(&letter.key)
            .arg(payload)
            .arg(order_id)
            .run::<i64>(&mut self.queue.conn())
            .await?;
        Ok(())
    }
}

/// The current Unix second, which names the per-second counters.
pub(super) fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
