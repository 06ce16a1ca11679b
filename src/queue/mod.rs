//! Redis, by stage of an order's path: [`ingest`] (enqueue, the pending lookup), [`delivery`]
//! (claim, publish and acknowledge, dead-lettering), [`lease`] (heartbeats, the reaper, orphan
//! adoption, retirement), [`retry`] (the schedule and its promotion), [`dead_letters`] (the
//! indexed dead letters: pages, retry, delete, purge), [`admin`] (removal, pause, scheduled
//! retries, workers, history, gauges), [`probe`] (whether this Redis lets the roles do
//! their work), [`repair`] (orders PostgreSQL holds as processing that Redis lost) and [`stream`]
//! (the event stream: the notifier's consumer group, reads from an id, following it live). Each
//! Lua script sits in a `.lua` file beside the one function that runs it, and runs through
//! [`script::Lua`]. Key names are in [`keys`].

mod admin;
mod connection;
mod dead_letters;
mod delivery;
mod ingest;
mod keys;
mod lease;
mod probe;
mod repair;
mod retry;
mod script;
mod stream;

pub use admin::{
    History, OrderTraces, QueueGauges, Removal, ScheduledPage, WorkerState, HISTORY_SECONDS,
};
pub use connection::{BlockingConnection, Connection};
pub use dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterPage, DEAD_LETTER_SCAN};
pub use delivery::{Ack, Claim, FinalEvent, WorkerQueue};
pub use ingest::{Enqueued, Replay, IDEMPOTENCY_TTL_SECONDS};
pub use keys::Keys;
pub use probe::{Probe, ProbeError};
pub use stream::StreamEvent;

use crate::config::Config;
use connection::Deployment;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A Redis call failed (unreachable, timed out, or refused the command), or Redis could not be
/// reached at start.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// At start: what could not be reached, naming the settings that chose it.
    #[error("cannot connect to {what}")]
    Connect {
        what: String,
        #[source]
        source: redis::RedisError,
    },
    /// At start: a file a setting names could not be read.
    #[error("{setting}: cannot read {path}")]
    ReadFile {
        setting: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The enqueue call that carried this request's orders failed; the error is shared by every
    /// request of that call.
    #[error("redis: {0}")]
    Enqueue(#[source] Arc<redis::RedisError>),
    /// The enqueue script answered something it never answers.
    #[error("unexpected reply from the enqueue script")]
    EnqueueReply,
    /// The enqueuer task is gone (the process is stopping).
    #[error("the enqueuer stopped")]
    EnqueuerStopped,
    /// The orders were queued on the primary, but fewer replicas than `ORDERS_REDIS_MIN_REPLICAS`
    /// acknowledged them within `ORDERS_REDIS_REPLICA_TIMEOUT_MS`.
    #[error("queued, but only {acked} of the {wanted} replicas required acknowledged it")]
    NotReplicated { wanted: u32, acked: u32 },
}

/// The Redis side of the service.
#[derive(Clone)]
pub struct Queue {
    /// One multiplexed connection that reconnects by itself: concurrent commands from many
    /// requests are pipelined on it (a pool checkout per request would serialise them).
    conn: Connection,
    /// What makes the blocking connections: the fetch loops', the notifier's stream reads.
    deployment: Arc<Deployment>,
    /// To the enqueuer task, which puts the orders of concurrent requests on the queue together.
    enqueuer: mpsc::Sender<ingest::Submission>,
    keys: Arc<Keys>,
    /// Replicas that must hold an enqueue before it is answered, and a claim before the order
    /// is processed: an order answered 503 `not_replicated` and then lost with its primary is
    /// never processed either, so the client's retry does not make it a second order.
    replication: ingest::Replication,
    /// Where each final status is published.
    channels: Arc<Channels>,
    /// The event stream's approximate length limit (`event_stream_maxlen`).
    event_stream_maxlen: u64,
}

/// The channels final-status events are published on, by status.
struct Channels {
    completed: String,
    failed: String,
    cancelled: String,
}

impl Channels {
    /// The channel of `status` (the completed one for a status that is not final).
    fn of(&self, status: crate::order::Status) -> &str {
        use crate::order::Status;
        match status {
            Status::Failed => &self.failed,
            Status::Cancelled => &self.cancelled,
            _ => &self.completed,
        }
    }
}

impl Queue {
    /// Connects to Redis as `ORDERS_REDIS_MODE` says and starts the enqueuer; fails when Redis
    /// does not answer, with an error that names the settings involved.
    pub async fn connect(config: &Config) -> Result<Queue, QueueError> {
        let (conn, deployment) = Deployment::connect(config).await?;
        let keys = Arc::new(Keys::new(&config.redis_prefix));
        let replication = ingest::Replication {
            min_replicas: config.redis_min_replicas,
            timeout_ms: config.redis_replica_timeout_ms,
        };
        let enqueuer = ingest::start_enqueuer(
            conn.clone(),
            keys.clone(),
            config.max_queue_depth,
            replication,
        );
        Ok(Queue {
            replication,
            channels: Arc::new(Channels {
                completed: config.event_channel.clone(),
                failed: config.failed_channel.clone(),
                cancelled: config.cancelled_channel.clone(),
            }),
            event_stream_maxlen: config.event_stream_maxlen,
            conn,
            deployment: Arc::new(deployment),
            enqueuer,
            keys,
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The shared multiplexed connection (a clone is a handle on the same connection).
    fn conn(&self) -> Connection {
        self.conn.clone()
    }
}
