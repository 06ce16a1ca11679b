//! Following the event stream as it grows, for live events over HTTP (`crate::live`): where it
//! ends now, and what was appended after an id (a blocking `XREAD`).

use super::{BlockingConnection, Queue, QueueError, StreamEvent};
use redis::streams::{StreamRangeReply, StreamReadReply};

impl Queue {
    /// The id of the newest entry of the event stream, `None` when it is empty or missing.
    pub async fn latest_event_id(&self) -> Result<Option<String>, QueueError> {
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        Ok(reply.ids.into_iter().next().map(|entry| entry.id))
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
