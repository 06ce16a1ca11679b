//! Delivery: what one worker process does with the queue. It claims orders into its own
//! processing list (atomically, so a crash cannot lose one), then either publishes their events
//! and acknowledges them, schedules a retry ([`super::retry`]) or dead-letters them.

use super::script::Lua;
use super::{BlockingConnection, Queue, QueueError};
use crate::order::Status;
use redis::AsyncCommands;
use uuid::Uuid;

static CLAIM_WAITING: Lua = Lua::new(include_str!("claim_waiting.lua"));
static REQUEUE: Lua = Lua::new(include_str!("requeue.lua"));
static PUBLISH_AND_ACKNOWLEDGE: Lua = Lua::new(include_str!("publish_and_acknowledge.lua"));
static DEAD_LETTER_AND_PUBLISH: Lua = Lua::new(include_str!("dead_letter_and_publish.lua"));
static PUBLISH_EVENT: Lua = Lua::new(include_str!("publish_event.lua"));

/// How long one blocking pop waits on the server before the fetch loop checks for shutdown.
const CLAIM_BLOCK_SECONDS: f64 = 1.0;

/// What a claim took.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// These payloads, now in this worker's processing list (none: nothing was waiting).
    Orders(Vec<Vec<u8>>),
    /// Claiming is paused; these payloads (taken by a pop under way) are in the processing list
    /// all the same, to be put back.
    Paused(Vec<Vec<u8>>),
}

impl Claim {
    /// The payloads it took, paused or not.
    pub fn into_payloads(self) -> Vec<Vec<u8>> {
        match self {
            Claim::Orders(p) | Claim::Paused(p) => p,
        }
    }
}

/// The reply of `claim_waiting.lua`: the payloads, or `None` for its 0 (paused).
struct ClaimReply(Option<Vec<Vec<u8>>>);

impl redis::FromRedisValue for ClaimReply {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        match v {
            redis::Value::Int(_) => Ok(ClaimReply(None)),
            other => Ok(ClaimReply(Some(redis::from_redis_value(other)?))),
        }
    }
}

/// One order to acknowledge: its payload as claimed, and the event to publish, if any.
pub struct Ack<'a> {
    pub payload: &'a [u8],
    pub order_id: Uuid,
    pub event: Option<FinalEvent>,
    /// Another delivery of the order is still in flight (this one was taken over, or was a
    /// second copy in one batch): its pending entry is that delivery's, and stays.
    pub keep_pending: bool,
}

/// The event of an order's final status, to publish on that status's channel and append to the
/// event stream.
pub struct FinalEvent {
    pub status: Status,
    pub json: String,
    /// Whether this delivery made the order final (a completion it counts), rather than found
    /// it final and sends its event again.
    pub first: bool,
}

/// The queue as one worker process uses it: bound to its id (and so its processing list and
/// lease).
pub struct WorkerQueue {
    pub(super) queue: Queue,
    pub(super) worker_id: String,
    pub(super) processing: String,
}

impl Queue {
    /// The handle of worker process `worker_id`.
    pub fn for_worker(&self, worker_id: &str) -> WorkerQueue {
        WorkerQueue {
            queue: self.clone(),
            worker_id: worker_id.to_string(),
            processing: self.keys.processing(worker_id),
        }
    }

    /// Publishes an event with no queue change (a cancellation from the API) on its status's
    /// channel and appends it to the event stream, in one script.
    pub async fn publish_event(&self, status: Status, event: &str) -> Result<(), QueueError> {
        PUBLISH_EVENT
            .call(&[self.keys.events()])
            .arg(self.channels.of(status))
            .arg(event)
            .arg(self.event_stream_maxlen)
            .run::<i64>(&mut self.conn())
            .await?;
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
    /// this worker's processing list, where it stays until acknowledged. The same round trip
    /// reads whether claiming is paused: an order a pop in flight took after the pause is
    /// [`Claim::Paused`] too, still in the list, for the fetch loop to put back. With
    /// `ORDERS_REDIS_MIN_REPLICAS`, the move must also reach that many replicas (a `WAIT`), or the
    /// claim fails with the order left in the list likewise: an order whose enqueue a failover
    /// may still lose is not processed.
    pub async fn claim(&self, conn: &mut BlockingConnection) -> Result<Claim, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("BLMOVE")
            .arg(self.queue.keys.queue())
            .arg(&self.processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(CLAIM_BLOCK_SECONDS)
            .exists(self.queue.keys.paused());
        let replication = self.queue.replication;
        let (claimed, paused, acked): (Option<Vec<u8>>, bool, u32) =
            if replication.min_replicas == 0 {
                let (claimed, paused) = conn.query_pipeline(&pipe).await?;
                (claimed, paused, 0)
            } else {
                pipe.cmd("WAIT")
                    .arg(replication.min_replicas)
                    .arg(replication.timeout_ms);
                conn.query_pipeline(&pipe).await?
            };
        Ok(match claimed {
            Some(_) if replication.min_replicas > acked => {
                return Err(QueueError::NotReplicated {
                    wanted: replication.min_replicas,
                    acked,
                })
            }
            Some(payload) if paused => Claim::Paused(vec![payload]),
            Some(payload) => Claim::Orders(vec![payload]),
            None if paused => Claim::Paused(Vec::new()),
            None => Claim::Orders(Vec::new()),
        })
    }

    /// Takes up to `n` orders that are already waiting, in one round trip and without blocking,
    /// so a deep queue is drained in batches; moved atomically like [`WorkerQueue::claim`], and
    /// like it replicated first with `ORDERS_REDIS_MIN_REPLICAS`. Nothing while claiming is
    /// paused.
    pub async fn claim_waiting(&self, n: usize) -> Result<Claim, QueueError> {
        let keys = &self.queue.keys;
        let mut call = CLAIM_WAITING.call(&[keys.queue(), &self.processing, keys.paused()]);
        call.arg(n);
        let replication = self.queue.replication;
        let (reply, acked): (ClaimReply, u32) = if replication.min_replicas == 0 {
            (call.run(&mut self.queue.conn()).await?, 0)
        } else {
            call.run_and_wait(
                &mut self.queue.conn(),
                replication.min_replicas,
                replication.timeout_ms,
            )
            .await?
        };
        let ClaimReply(Some(claimed)) = reply else {
            return Ok(Claim::Paused(Vec::new()));
        };
        if !claimed.is_empty() && acked < replication.min_replicas {
            return Err(QueueError::NotReplicated {
                wanted: replication.min_replicas,
                acked,
            });
        }
        Ok(Claim::Orders(claimed))
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

    /// Publishes the event of each order that has one on its status's channel and appends it to
    /// the event stream, drops the orders from the processing list and the pending hash, and
    /// counts the completions, in one atomic round trip. `ack_id` names
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
        let mut call = PUBLISH_AND_ACKNOWLEDGE.call(&[
            &self.processing,
            keys.pending(),
            &counter,
            &marker,
            keys.events(),
        ]);
        call.arg(self.queue.event_stream_maxlen);
        for ack in acks {
            let pending_id = match ack.keep_pending {
                true => String::new(),
                false => ack.order_id.to_string(),
            };
            call.arg(ack.payload).arg(pending_id);
            match &ack.event {
                Some(event) => call
                    .arg(self.queue.channels.of(event.status))
                    .arg(&event.json)
                    .arg(if event.first && event.status == Status::Completed {
                        "1"
                    } else {
                        ""
                    }),
                None => call.arg("").arg("").arg(""),
            };
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
                keys.events(),
            ])
            .arg(self.queue.channels.of(Status::Failed))
            .arg(failed_event.unwrap_or(""))
            .arg(&letter.id)
            .arg(letter.to_stored())
            .arg(&letter.key)
            .arg(payload)
            .arg(order_id)
            .arg(self.queue.event_stream_maxlen)
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
