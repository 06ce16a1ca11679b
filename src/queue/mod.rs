//! Redis, by stage of an order's path: [`ingest`] (enqueue, the pending lookup), [`delivery`]
//! (claim, publish and acknowledge, dead letters), [`lease`] (heartbeats, the reaper, orphan
//! adoption, retirement), [`retry`] (the schedule and its promotion) and [`admin`] (dead-letter
//! listing and revival, removal, gauges), [`probe`] (whether this Redis lets the roles do
//! their work) and [`repair`] (orders PostgreSQL holds as processing that Redis lost). Each Lua script sits in a `.lua` file beside the one
//! function that runs it, and runs through [`script::Lua`]. Key names are in [`keys`].

mod admin;
mod delivery;
mod ingest;
mod keys;
mod lease;
mod probe;
mod repair;
mod retry;
mod script;

pub use admin::{QueueGauges, Removal};
pub use delivery::{Ack, WorkerQueue};
pub use ingest::{Enqueued, Replay, IDEMPOTENCY_TTL_SECONDS};
pub use keys::Keys;
pub use probe::{Probe, ProbeError};

use crate::config::Config;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncConnectionConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A Redis call failed (unreachable, timed out, or refused the command).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
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
}

/// The Redis side of the service.
#[derive(Clone)]
pub struct Queue {
    /// One multiplexed connection that reconnects by itself: concurrent commands from many
    /// requests are pipelined on it (a pool checkout per request would serialise them).
    conn: ConnectionManager,
    /// Connections with no client-side response timeout, one per fetch loop, for BLMOVE.
    blocking: deadpool_redis::Pool,
    /// To the enqueuer task, which puts the orders of concurrent requests on the queue together.
    enqueuer: mpsc::Sender<ingest::Submission>,
    keys: Arc<Keys>,
    client: redis::Client,
}

impl Queue {
    /// Connects to Redis and starts the enqueuer; fails when Redis does not answer.
    pub async fn connect(config: &Config) -> Result<Queue, QueueError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await?;
        // A blocking pop waits longer than any response timeout would allow.
        let blocking_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let manager =
            deadpool_redis::Manager::new_with_config(config.redis_url.as_str(), blocking_config)?;
        let blocking = deadpool_redis::Pool::builder(manager)
            .max_size(config.fetch_loops)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(2)))
            .wait_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "redis pool", e.to_string()))
            })?;
        let keys = Arc::new(Keys::new(&config.redis_prefix));
        let enqueuer = ingest::start_enqueuer(conn.clone(), keys.clone(), config.max_queue_depth);
        Ok(Queue {
            conn,
            blocking,
            enqueuer,
            keys,
            client,
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The client, for subscriptions (which need a connection of their own).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The shared multiplexed connection (a clone is a handle on the same connection).
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}
