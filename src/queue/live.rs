//! Following the event stream as it grows, for live events over HTTP (`crate::live`): where
//! "now" is in it, and what was appended after an id (a blocking `XREAD`).

use super::{BlockingConnection, Queue, QueueError, StreamEvent};
use redis::streams::StreamReadReply;

impl Queue {
    /// An id to follow the event stream from that skips what it holds now: just before the
    /// stream server's current millisecond (entry ids are that server's time, or later). Asked
    /// with `TIME`, which the api role may run already (`XREVRANGE` is not in its ACL).
    pub async fn events_now(&self) -> Result<String, QueueError> {
        let (seconds, micros): (u64, u64) = self
            .conn()
            .query_on_owner_of(self.keys.events(), &redis::cmd("TIME"))
            .await?;
        let ms = (seconds * 1000 + micros / 1000).saturating_sub(1);
        Ok(format!("{ms}-{}", u64::MAX))
    }

    /// Up to `count` entries appended after the entry `after` (`0-0`: from the start), oldest
    /// first, waiting up to `block_ms` on the server for the first one.
    pub async fn follow_events(
        &self,
        conn: &mut BlockingConnection,
        after: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<StreamEvent>, QueueError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(after);
        let reply: Option<StreamReadReply> = conn.query(&cmd).await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(StreamEvent::from_entry)
            .collect())
    }
}
