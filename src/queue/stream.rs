//! The event stream `{prefix}:events`: every final-status event, appended by the same script
//! that publishes it (see `publish_and_acknowledge.lua`, `dead_letter_and_publish.lua`,
//! `publish_event.lua`) and trimmed to about `event_stream_maxlen` entries. Each entry has one
//! field, `event`, the event's JSON as published. Here: reading it as a consumer group (the
//! notifier's), taking over what a dead member left pending, and reading it from an id and
//! following it as it grows (live events over HTTP).

use super::{BlockingConnection, Queue, QueueError};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};

/// One entry of the event stream: its id and the event's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub id: String,
    pub event: Vec<u8>,
}

impl StreamEvent {
    fn from_entry(entry: StreamId) -> StreamEvent {
        let event = match entry.map.get("event") {
            Some(redis::Value::BulkString(bytes)) => bytes.clone(),
            Some(redis::Value::SimpleString(s)) => s.clone().into_bytes(),
            _ => Vec::new(),
        };
        StreamEvent {
            id: entry.id,
            event,
        }
    }
}

impl Queue {
    /// Makes the consumer group `group` if there is none, reading from the stream's start (so
    /// events appended before the group existed are read too), and the stream with it.
    pub async fn ensure_event_group(&self, group: &str) -> Result<(), QueueError> {
        let made: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.events())
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match made {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Up to `count` events no member of `group` has read yet, for `consumer`, waiting up to
    /// `block_ms` for one. They stay pending for `consumer` until [`Queue::ack_events`].
    pub async fn read_event_group(
        &self,
        conn: &mut BlockingConnection,
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<StreamEvent>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(">");
        Ok(read_entries(conn.query(&cmd).await?))
    }

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
    /// first, waiting up to `block_ms` on the server for the first one: how the live events
    /// (`crate::live`) follow the stream as it grows.
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
        Ok(read_entries(conn.query(&cmd).await?))
    }

    /// Acknowledges these entries for `group`.
    pub async fn ack_events(&self, group: &str, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XACK")
            .arg(self.keys.events())
            .arg(group)
            .arg(ids)
            .query_async::<u64>(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Takes over, for `consumer`, up to `count` entries of `group` that a member read and has
    /// not acknowledged for `min_idle_ms` (it died, or its notifications failed), and deletes
    /// members that have been idle as long with nothing pending (one is left by every process
    /// that ever ran). Entries trimmed from the stream meanwhile are dropped from the group.
    pub async fn claim_idle_events(
        &self,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEvent>, QueueError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.events())
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(self.keys.events())
            .arg(group)
            .query_async(&mut self.conn())
            .await?;
        for gone in consumers.consumers.iter().filter(|c| {
            c.name != consumer && c.pending == 0 && c.idle as u64 > min_idle_ms.max(3_600_000)
        }) {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(self.keys.events())
                .arg(group)
                .arg(&gone.name)
                .query_async::<u64>(&mut self.conn())
                .await?;
        }
        Ok(reply
            .claimed
            .into_iter()
            .map(StreamEvent::from_entry)
            .collect())
    }

    /// Up to `count` events after the entry `after` (`None`: from the oldest kept), oldest first.
    pub async fn events_after(
        &self,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEvent>, QueueError> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.events())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        Ok(reply.ids.into_iter().map(StreamEvent::from_entry).collect())
    }

    /// A connection for blocking stream reads (a notifier's group reads, the live events').
    pub async fn stream_connection(&self) -> Result<BlockingConnection, QueueError> {
        self.deployment.blocking_connection().await
    }
}

/// The entries of an `XREAD` or `XREADGROUP` reply on the one stream (none when it timed out).
fn read_entries(reply: Option<StreamReadReply>) -> Vec<StreamEvent> {
    reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(StreamEvent::from_entry)
        .collect()
}
