//! Ingest: the enqueuer, which puts the orders of concurrent requests on the queue in one script
//! call, and the lookup of an accepted order that no worker has acknowledged yet.

use super::script::Lua;
use super::{Connection, Keys, Queue, QueueError};
use crate::order::Job;
use redis::AsyncCommands;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

static ENQUEUE: Lua = Lua::new(include_str!("enqueue.lua"));

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

/// Requests waiting for the enqueuer, at most; more wait to be let in.
const ENQUEUER_BACKLOG: usize = 1024;
/// Requests one enqueue script call takes, at most.
const ENQUEUE_REQUESTS: usize = 128;
/// Orders one enqueue script call takes, at most (a request is never split).
const ENQUEUE_ORDERS: usize = 2000;

/// What an `Idempotency-Key` remembers: the orders it made and the request as validated (its
/// canonical JSON: an object for `POST /orders`, an array for `POST /orders/batch`), so the same
/// request sent with other spacing or key order counts as the same body, and a key used on one
/// route is another body on the other. Kept in Redis as `"<order id>[,<order id>…] <canonical
/// body>"` (a record of one id is the format of before batches took keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub order_ids: Vec<Uuid>,
    pub body: String,
}

impl Replay {
    fn encode(&self) -> String {
        let mut record = String::with_capacity(self.order_ids.len() * 37 + self.body.len());
        for (i, id) in self.order_ids.iter().enumerate() {
            if i > 0 {
                record.push(',');
            }
            record.push_str(&id.to_string());
        }
        record.push(' ');
        record.push_str(&self.body);
        record
    }

    fn decode(record: &str) -> Option<Replay> {
        let (ids, body) = record.split_once(' ')?;
        let order_ids = ids
            .split(',')
            .map(|id| Uuid::try_parse(id).ok())
            .collect::<Option<Vec<Uuid>>>()?;
        Some(Replay {
            order_ids,
            body: body.to_string(),
        })
    }
}

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Nothing enqueued: the queue is at its configured depth.
    QueueFull,
    /// Nothing enqueued: the idempotency key was used before; what it remembers.
    Seen(Replay),
    /// Nothing enqueued: the idempotency key holds a record that is not a [`Replay`] (written by
    /// hand); as good as another body.
    SeenUnreadable,
}

/// How many replicas must have an enqueue before its requests are answered
/// (`ORDERS_REDIS_MIN_REPLICAS`; 0: no `WAIT`), and how long to wait for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replication {
    pub(super) min_replicas: u32,
    pub(super) timeout_ms: u64,
}

/// One request's orders on their way to the queue.
pub(super) struct Submission {
    /// (order id, payload) of each order.
    orders: Vec<(String, String)>,
    /// The idempotency key (full Redis key) and the record to keep under it.
    idempotency: Option<(String, String)>,
    reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

impl Queue {
    /// Puts accepted orders on the queue, all or none: refused when the queue would grow past
    /// its max depth (`ORDERS_MAX_QUEUE_DEPTH`, 0: no limit), or, with an idempotency key and
    /// what it should remember, answered with what the earlier request that used the key
    /// remembered. Requests made at the same time go to Redis together, in one script call.
    pub async fn enqueue(
        &self,
        jobs: &[Job],
        idempotency: Option<(&str, &Replay)>,
    ) -> Result<Enqueued, QueueError> {
        if jobs.is_empty() {
            return Ok(Enqueued::Accepted);
        }
        let (reply, answer) = oneshot::channel();
        let submission = Submission {
            orders: jobs
                .iter()
                .map(|job| (job.order_id.to_string(), job.to_payload()))
                .collect(),
            idempotency: idempotency
                .map(|(key, replay)| (self.keys.idempotency(key), replay.encode())),
            reply,
        };
        self.enqueuer
            .send(submission)
            .await
            .map_err(|_| QueueError::EnqueuerStopped)?;
        answer.await.map_err(|_| QueueError::EnqueuerStopped)?
    }

    /// An accepted order that no worker has acknowledged yet.
    pub async fn pending(&self, order_id: Uuid) -> Result<Option<Job>, QueueError> {
        let payload: Option<Vec<u8>> = self
            .conn()
            .hget(self.keys.pending(), order_id.to_string())
            .await?;
        Ok(payload.and_then(|p| Job::parse(&p).ok()))
    }

    /// Whether each of these orders is accepted and not yet acknowledged (in the pending hash),
    /// in one round trip.
    pub async fn pending_among(&self, order_ids: &[Uuid]) -> Result<Vec<bool>, QueueError> {
        let mut pipe = redis::pipe();
        for id in order_ids {
            pipe.hexists(self.keys.pending(), id.to_string());
        }
        Ok(pipe.query_async(&mut self.conn()).await?)
    }
}

/// Starts the enqueuer task; it ends when every sender (every [`Queue`] clone) is gone.
pub(super) fn start_enqueuer(
    conn: Connection,
    keys: Arc<Keys>,
    max_depth: u64,
    replication: Replication,
) -> mpsc::Sender<Submission> {
    let (enqueuer, submissions) = mpsc::channel(ENQUEUER_BACKLOG);
    let lots = Lots {
        conn,
        keys,
        max_depth,
        replication,
    };
    tokio::spawn(enqueue_together(lots, submissions));
    enqueuer
}

/// What each enqueue call needs besides its requests.
struct Lots {
    conn: Connection,
    keys: Arc<Keys>,
    max_depth: u64,
    replication: Replication,
}

/// Takes every request waiting and enqueues them in one script call, then the next lot, so under
/// load one round trip and one script run carry many orders. Each request still succeeds or
/// fails on its own, all its orders or none.
async fn enqueue_together(mut lots: Lots, mut submissions: mpsc::Receiver<Submission>) {
    let mut waiting = Vec::with_capacity(ENQUEUE_REQUESTS);
    while submissions.recv_many(&mut waiting, ENQUEUE_REQUESTS).await > 0 {
        let mut lot: Vec<Submission> = Vec::with_capacity(waiting.len());
        let mut orders = 0;
        for submission in waiting.drain(..) {
            if orders + submission.orders.len() > ENQUEUE_ORDERS && !lot.is_empty() {
                lots.enqueue(std::mem::take(&mut lot)).await;
                orders = 0;
            }
            orders += submission.orders.len();
            lot.push(submission);
        }
        lots.enqueue(lot).await;
    }
}

impl Lots {
    /// One script call for the requests of `lot` (followed by `WAIT` when replicas are
    /// required, in the same round trip); answers each of them.
    async fn enqueue(&mut self, lot: Vec<Submission>) {
        let keys = &self.keys;
        let mut call_keys = vec![keys.queue(), keys.pending()];
        call_keys.extend(
            lot.iter()
                .filter_map(|s| s.idempotency.as_ref())
                .map(|(key, _)| key.as_str()),
        );
        let mut call = ENQUEUE.call(&call_keys);
        call.arg(IDEMPOTENCY_TTL_SECONDS).arg(self.max_depth);
        let mut key_index = 2;
        for submission in &lot {
            let n = submission.orders.len() as i64;
            match &submission.idempotency {
                Some((_, record)) => {
                    key_index += 1;
                    call.arg(-n).arg(key_index).arg(record);
                }
                None => {
                    call.arg(n);
                }
            }
            for (id, payload) in &submission.orders {
                call.arg(id).arg(payload);
            }
        }
        let wanted = self.replication.min_replicas;
        let reply = if wanted == 0 {
            call.run::<Vec<String>>(&mut self.conn)
                .await
                .map(|reply| (reply, 0))
        } else {
            call.run_and_wait::<Vec<String>>(&mut self.conn, wanted, self.replication.timeout_ms)
                .await
        };
        match reply {
            Ok((reply, acked)) => {
                let mut reply = reply.into_iter();
                let status = reply.next().unwrap_or_default();
                let mut status = status.bytes();
                for submission in lot {
                    let outcome = match status.next() {
                        Some(b'o') => Ok(Enqueued::Accepted),
                        Some(b'f') => Ok(Enqueued::QueueFull),
                        Some(b's') => Ok(reply
                            .next()
                            .as_deref()
                            .and_then(Replay::decode)
                            .map_or(Enqueued::SeenUnreadable, Enqueued::Seen)),
                        _ => Err(QueueError::EnqueueReply),
                    };
                    let _ = submission.reply.send(replicated(outcome, wanted, acked));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for submission in lot {
                    let _ = submission.reply.send(Err(QueueError::Enqueue(e.clone())));
                }
            }
        }
    }
}

/// An enqueue outcome once `acked` of the `wanted` replicas acknowledged the call: an accepted
/// request, or a replay of one (which answers 202 too), is not answered as accepted until
/// enough replicas have it. A full queue or an unreadable key changed nothing to replicate.
fn replicated(
    outcome: Result<Enqueued, QueueError>,
    wanted: u32,
    acked: u32,
) -> Result<Enqueued, QueueError> {
    match outcome {
        Ok(Enqueued::Accepted | Enqueued::Seen(_)) if acked < wanted => {
            Err(QueueError::NotReplicated { wanted, acked })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_replicas_turn_an_acceptance_into_not_replicated() {
        let seen = || {
            Ok(Enqueued::Seen(Replay {
                order_ids: vec![Uuid::nil()],
                body: "{}".into(),
            }))
        };
        assert!(matches!(
            replicated(Ok(Enqueued::Accepted), 2, 1),
            Err(QueueError::NotReplicated {
                wanted: 2,
                acked: 1
            })
        ));
        assert!(matches!(
            replicated(seen(), 1, 0),
            Err(QueueError::NotReplicated {
                wanted: 1,
                acked: 0
            })
        ));
        assert_eq!(
            replicated(Ok(Enqueued::Accepted), 1, 1).unwrap(),
            Enqueued::Accepted
        );
        assert_eq!(
            replicated(Ok(Enqueued::Accepted), 0, 0).unwrap(),
            Enqueued::Accepted
        );
        assert_eq!(
            replicated(Ok(Enqueued::QueueFull), 1, 0).unwrap(),
            Enqueued::QueueFull
        );
    }

    #[test]
    fn a_replay_record_round_trips() {
        let replay = Replay {
            order_ids: vec![Uuid::now_v7()],
            body: r#"{"customer_id":"c d","items":["a"],"total":1.00}"#.into(),
        };
        assert_eq!(Replay::decode(&replay.encode()), Some(replay));
        let batch = Replay {
            order_ids: vec![Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()],
            body: r#"[{"customer_id":"c d","items":["a"],"total":1.00}]"#.into(),
        };
        assert_eq!(Replay::decode(&batch.encode()), Some(batch));
        assert_eq!(Replay::decode("not-an-id {}"), None);
        assert_eq!(Replay::decode("no-space"), None);
        let id = Uuid::now_v7();
        assert_eq!(Replay::decode(&format!("{id}, []")), None);
        assert_eq!(Replay::decode(&format!("{id},x []")), None);
    }
}
