//! A private Redis and a private PostgreSQL for one scenario ([`crate::common::servers`]): free
//! ports, data in temporary directories, logs under `target/chaos-logs/<scenario>/servers/`. Both
//! can be killed and started again on the same port and data, and both are killed (and their
//! data removed) when the [`Cluster`] is dropped, panic or not.

use crate::common::events::Events;
pub use crate::common::servers::{Fsync, RedisTls};
use crate::common::servers::{RedisServer, Stage};
use crate::common::tally::COMPLETED_CHANNEL;

/// One scenario's private Redis (append-only file on) and PostgreSQL, and the directory its logs
/// go to.
pub type Cluster = Stage<RedisServer>;

impl Cluster {
    /// Starts both servers. Logs go to `target/chaos-logs/<scenario>/`; the previous run's move
    /// to `<scenario>.previous/`, so that a rare failure survives one more run.
    pub async fn start(scenario: &str, fsync: Fsync) -> Cluster {
        Self::start_with(scenario, fsync, None).await
    }

    /// [`Cluster::start`], with a Redis that speaks TLS only when `tls` is given.
    pub async fn start_with(scenario: &str, fsync: Fsync, tls: Option<RedisTls>) -> Cluster {
        Stage::launch(scenario, async |servers| {
            RedisServer::with_aof(&servers, fsync, tls).await
        })
        .await
    }

    /// A fresh connection to the private Redis.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        self.redis.conn().await
    }

    /// A subscriber to `order.completed` on the scenario's Redis, which counts events per order
    /// id and subscribes again when Redis restarts.
    pub async fn subscribe(&self) -> Events {
        Events::subscribe_with(self.redis.client(), COMPLETED_CHANNEL).await
    }
}
