//! The names of the Redis keys under one prefix, all inside one hash tag (`{orders}:…`) so they
//! share a Redis Cluster slot and every script may touch any of them.
//!
//! - `queue`: the list orders wait on (LPUSH in, taken from the right);
//! - `processing:<worker>`: what one worker process holds, until acknowledged;
//! - `pending`: hash order id → payload of every accepted order not yet acknowledged, so
//!   `GET /orders/{id}` sees an order as `queued` from the moment its POST returned;
//! - `workers` and `heartbeat:<worker>`: live worker processes and their leases;
//! - `scheduled`: sorted set of orders waiting to be retried, scored by due time (ms);
//! - `idempotency:<key>`: the orders an `Idempotency-Key` made (one, or a batch), for 24 h;
//! - `dead:entries` and `dead:index`: dead letters, a hash id → entry (payload, errors, time)
//!   and their order, a sorted set of `<failed at, ms, 15 digits>:<id>` all scored 0, paged by
//!   lex range; `dead` is the list that held them before, adopted into those at start;
//! - `paused`: present (the Unix ms it was set) while claiming is paused for every worker;
//! - `worker:<worker>`: what one worker process tells the console (host, pid, start, its last
//!   renewal, memory and CPU), kept ten leases;
//! - `failed:<unix second>`: dead letters in that second, beside `completed:<second>`;
//! - `completed:<unix second>`: completions in that second (kept 11 minutes), for "completed in
//!   the last minute" and the console's chart;
//! - `ack:<id>`: the marker of one acknowledgement, so a retried one does nothing twice;
//! - `events`: the stream of final-status events (completed, failed, cancelled), trimmed to
//!   `event_stream_maxlen`; the notifier reads it as the consumer group `notifier`.

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
    queue: String,
    pending: String,
    dead: String,
    dead_entries: String,
    dead_index: String,
    paused: String,
    workers: String,
    scheduled: String,
    events: String,
}

impl Keys {
    /// The keys under `prefix`, wrapped in a hash tag.
    pub fn new(prefix: &str) -> Keys {
        let tag = format!("{{{prefix}}}:");
        Keys {
            queue: format!("{tag}queue"),
            pending: format!("{tag}pending"),
            dead: format!("{tag}dead"),
            dead_entries: format!("{tag}dead:entries"),
            dead_index: format!("{tag}dead:index"),
            paused: format!("{tag}paused"),
            workers: format!("{tag}workers"),
            scheduled: format!("{tag}scheduled"),
            events: format!("{tag}events"),
            tag,
        }
    }

    /// `{prefix}:`, which scripts prepend to the names they build themselves.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The list orders wait on.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The hash of accepted, unacknowledged orders.
    pub fn pending(&self) -> &str {
        &self.pending
    }

    /// The list dead letters were kept in before the index (adopted at start).
    pub fn dead(&self) -> &str {
        &self.dead
    }

    /// The hash of dead letters by id.
    pub fn dead_entries(&self) -> &str {
        &self.dead_entries
    }

    /// The sorted set that orders the dead letters, newest last.
    pub fn dead_index(&self) -> &str {
        &self.dead_index
    }

    /// The stream of final-status events.
    pub fn events(&self) -> &str {
        &self.events
    }

    /// The marker of paused claiming.
    pub fn paused(&self) -> &str {
        &self.paused
    }

    /// What one worker process tells the console.
    pub fn worker_info(&self, worker: &str) -> String {
        format!("{}worker:{worker}", self.tag)
    }

    /// The dead-letter counter of one Unix second.
    pub fn failed(&self, second: u64) -> String {
        format!("{}failed:{second}", self.tag)
    }

    /// The set of registered worker processes.
    pub fn workers(&self) -> &str {
        &self.workers
    }

    /// The sorted set of scheduled retries.
    pub fn scheduled(&self) -> &str {
        &self.scheduled
    }

    /// The list of orders one worker process holds.
    pub fn processing(&self, worker: &str) -> String {
        format!("{}processing:{worker}", self.tag)
    }

    /// The lease of one worker process.
    pub fn heartbeat(&self, worker: &str) -> String {
        format!("{}heartbeat:{worker}", self.tag)
    }

    /// The record of one `Idempotency-Key`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}idempotency:{key}", self.tag)
    }

    /// The completion counter of one Unix second.
    pub fn completed(&self, second: u64) -> String {
        format!("{}completed:{second}", self.tag)
    }

    /// The marker of one acknowledgement.
    pub fn ack(&self, ack_id: &str) -> String {
        format!("{}ack:{ack_id}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("shop");
        assert_eq!(keys.queue(), "{shop}:queue");
        assert_eq!(keys.processing("w1"), "{shop}:processing:w1");
        assert_eq!(keys.heartbeat("w1"), "{shop}:heartbeat:w1");
        assert_eq!(keys.dead(), "{shop}:dead");
    }
}
