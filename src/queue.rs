//! Redis: enqueue, claim, acknowledge, dead-letter, heartbeats and the reaper.
//!
//! Keys, all under one hash tag so they share a Redis Cluster slot (prefix `orders`):
//! - `{orders}:queue`: the list clients' orders wait on (LPUSH in, BLMOVE out from the right);
//! - `{orders}:processing:<worker>`: what one worker process holds, until acknowledged;
//! - `{orders}:pending`: hash order id → payload of every accepted order not yet acknowledged, so
//!   `GET /orders/{id}` sees an order as `queued` from the moment its POST returned;
//! - `{orders}:workers` and `{orders}:heartbeat:<worker>`: live worker processes and their leases;
//! - `{orders}:scheduled`: sorted set of orders waiting to be retried, scored by due time (ms);
//! - `{orders}:idempotency:<key>`: the order an `Idempotency-Key` made, for 24 h;
//! - `{orders}:dead`: dead letters (payload, error, time).

use crate::config::Config;
use crate::order::Job;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig, Script};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A Redis call failed (unreachable, timed out, or refused the command).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The enqueue that carried this request's orders failed (shared by every request in it).
    #[error("redis: {0}")]
    Enqueue(String),
}

/// One order to acknowledge: its payload as claimed, and the event to publish, if any.
pub struct Ack<'a> {
    pub payload: &'a [u8],
    pub order_id: Uuid,
    pub event: Option<String>,
}

/// The state of the queue at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QueueGauges {
    pub queue_depth: u64,
    pub in_flight: u64,
    pub scheduled_retries: u64,
    pub dead_letters: u64,
    pub live_workers: u64,
    pub completed_last_minute: u64,
}

/// What [`Queue::remove_queued`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Taken off the queue or the retry schedule.
    Removed,
    /// Accepted and claimed by a worker, which may not have stored it yet.
    HeldByWorker,
    /// Not waiting in Redis (stored, finished, or unknown).
    NotQueued,
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_TTL_SECONDS: u64 = 24 * 3600;

/// What [`Queue::enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Nothing enqueued: the queue is at its configured depth.
    QueueFull,
    /// Nothing enqueued: the idempotency key was used before; its record.
    Seen(String),
}

/// How long one blocking pop waits on the server before the fetch loop checks for shutdown.
const CLAIM_BLOCK_SECONDS: f64 = 1.0;

/// The names of the keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    tag: String,
    queue: String,
    pending: String,
    dead: String,
    workers: String,
    scheduled: String,
}

impl Keys {
    /// The keys under `prefix`, wrapped in a hash tag.
    pub fn new(prefix: &str) -> Keys {
        let tag = format!("{{{prefix}}}:");
        Keys {
            queue: format!("{tag}queue"),
            pending: format!("{tag}pending"),
            dead: format!("{tag}dead"),
            workers: format!("{tag}workers"),
            scheduled: format!("{tag}scheduled"),
            tag,
        }
    }

    /// The list orders wait on.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The dead-letter list.
    pub fn dead(&self) -> &str {
        &self.dead
    }

    /// The list of orders one worker process holds.
    pub fn processing(&self, worker: &str) -> String {
        format!("{}processing:{worker}", self.tag)
    }

    /// The sorted set of scheduled retries.
    pub fn scheduled(&self) -> &str {
        &self.scheduled
    }

    fn idempotency(&self, key: &str) -> String {
        format!("{}idempotency:{key}", self.tag)
    }

    fn heartbeat(&self, worker: &str) -> String {
        format!("{}heartbeat:{worker}", self.tag)
    }
}

/// Moves every order held by a worker process whose heartbeat expired back to the queue.
/// KEYS: workers set, queue. ARGV: key tag. Returns how many orders it moved.
static REQUEUE_ORPHANS: Lua = Lua(
    r"
local moved = 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'heartbeat:' .. worker) == 0 then
    local held = ARGV[1] .. 'processing:' .. worker
    while redis.call('LMOVE', held, KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
    redis.call('SREM', KEYS[1], worker)
  end
end
return moved
",
    std::sync::OnceLock::new(),
);

/// Puts what one worker process still holds back at the head of the queue and retires it.
/// KEYS: its processing list, queue, workers set, its heartbeat. ARGV: worker id.
static RETIRE: Lua = Lua(
    r"
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return moved
",
    std::sync::OnceLock::new(),
);

/// Moves the given orders from a processing list to the pop end of the queue, one list entry
/// each, skipping those no longer in the list. KEYS: the list, queue. ARGV: payloads. Returns
/// how many it moved.
static REQUEUE: Lua = Lua(
    r"
local moved = 0
for _, payload in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, payload) > 0 then
    redis.call('RPUSH', KEYS[2], payload)
    moved = moved + 1
  end
end
return moved
",
    std::sync::OnceLock::new(),
);

/// Accepts the orders of several requests at once, each request all or none: refused when the
/// queue would grow past its max depth, or answered with the record of the earlier request that
/// used its idempotency key.
/// KEYS: queue, pending, then the idempotency keys of the requests that have one.
/// ARGV: the keys' TTL in seconds, the max depth (0: none), then for each request its number of
/// orders n (at least 1), or -n followed by the index of its idempotency key in KEYS and the
/// record to keep under it; then its n (order id, payload) pairs. Two arguments per order and one
/// per plain request: turning arguments into Lua strings was a fifth of the script's time.
/// Returns {one letter per request: "o" accepted, "f" full, "s" seen; then the record of each
/// "s"}, a flat reply (a table per request was another sixth).
static ENQUEUE: Lua = Lua(
    r"
local depth = redis.call('LLEN', KEYS[1])
local max = tonumber(ARGV[2])
local status, out, fields, payloads = {}, {''}, {}, {}
local i = 3
while i <= #ARGV do
  local n, key, record = tonumber(ARGV[i]), 0, nil
  if n < 0 then
    n, key, record = -n, tonumber(ARGV[i + 1]), ARGV[i + 2]
    i = i + 3
  else
    i = i + 1
  end
  local first = i
  i = first + 2 * n
  local seen = key > 0 and redis.call('GET', KEYS[key])
  if seen then
    status[#status + 1] = 's'
    out[#out + 1] = seen
  elseif max > 0 and depth + n > max then
    status[#status + 1] = 'f'
  else
    if key > 0 then redis.call('SET', KEYS[key], record, 'EX', ARGV[1]) end
    for j = first, i - 1, 2 do
      fields[#fields + 1] = ARGV[j]
      fields[#fields + 1] = ARGV[j + 1]
      payloads[#payloads + 1] = ARGV[j + 1]
    end
    depth = depth + n
    status[#status + 1] = 'o'
  end
end
if #payloads > 0 then
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('LPUSH', KEYS[1], unpack(payloads))
end
out[1] = table.concat(status)
return out
",
    std::sync::OnceLock::new(),
);

/// Acknowledges orders, once per acknowledgement id. KEYS: processing list, pending hash, this
/// second's completion counter, the acknowledgement's marker. ARGV: channel, then (payload,
/// order id, event or "") for each order.
static ACKNOWLEDGE: Lua = Lua(
    r"
if not redis.call('SET', KEYS[4], 1, 'NX', 'EX', 120) then return -1 end
local published, ids = 0, {}
for i = 2, #ARGV, 3 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  ids[#ids + 1] = ARGV[i + 1]
  if ARGV[i + 2] ~= '' then
    redis.call('PUBLISH', ARGV[1], ARGV[i + 2])
    published = published + 1
  end
end
if #ids > 0 then redis.call('HDEL', KEYS[2], unpack(ids)) end
if published > 0 then
  redis.call('INCRBY', KEYS[3], published)
  redis.call('EXPIRE', KEYS[3], 120)
end
return published
",
    std::sync::OnceLock::new(),
);

/// Claims up to ARGV[1] waiting orders without blocking, as that many `LMOVE queue processing
/// RIGHT LEFT` would, in three commands (a command called from Lua costs a few microseconds over
/// its own work; one LMOVE per order was a third of the script's time). Returns them in the
/// order those moves would have taken them. KEYS: queue, processing list.
static CLAIM_WAITING: Lua = Lua(
    r"
local want = tonumber(ARGV[1])
if want < 1 then return {} end
local oldest_last = redis.call('LRANGE', KEYS[1], -want, -1)
local n = #oldest_last
if n == 0 then return oldest_last end
redis.call('LTRIM', KEYS[1], 0, -n - 1)
local claimed = {}
for i = n, 1, -1 do claimed[#claimed + 1] = oldest_last[i] end
redis.call('LPUSH', KEYS[2], unpack(claimed))
return claimed
",
    std::sync::OnceLock::new(),
);

/// Moves retries that are due from the schedule to the head of the queue.
/// KEYS: scheduled, queue. ARGV: now (ms), most to move. Returns how many it moved.
static PROMOTE_DUE: Lua = Lua(
    r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, payload in ipairs(due) do
  redis.call('ZREM', KEYS[1], payload)
  redis.call('RPUSH', KEYS[2], payload)
end
return #due
",
    std::sync::OnceLock::new(),
);

/// Puts a dead letter back on the queue. KEYS: dead, pending, queue. ARGV: the dead-letter
/// entry, order id, payload to enqueue. Returns 1, or 0 when the entry is gone.
static REVIVE: Lua = Lua(
    r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
",
    std::sync::OnceLock::new(),
);

/// The queue's state for /stats and /metrics. KEYS: workers, queue, scheduled, dead. ARGV: key
/// tag. Returns {queue depth, in flight, scheduled, dead letters, live workers, completions in
/// the last minute}.
static GAUGES: Lua = Lua(
    r"
local live, in_flight = 0, 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'heartbeat:' .. worker) == 1 then live = live + 1 end
  in_flight = in_flight + redis.call('LLEN', ARGV[1] .. 'processing:' .. worker)
end
local now = tonumber(redis.call('TIME')[1])
local last_minute = 0
for second = now - 59, now do
  last_minute = last_minute + (tonumber(redis.call('GET', ARGV[1] .. 'completed:' .. second)) or 0)
end
return {redis.call('LLEN', KEYS[2]), in_flight, redis.call('ZCARD', KEYS[3]),
        redis.call('LLEN', KEYS[4]), live, last_minute}
",
    std::sync::OnceLock::new(),
);

/// Takes a queued order off the queue and the retry schedule (admin delete). Returns 1 when it
/// did, 2 when the order is accepted but held by a worker, 0 when it is not pending at all.
/// KEYS: pending, queue, scheduled. ARGV: order id.
static REMOVE_QUEUED: Lua = Lua(
    r"
local payload = redis.call('HGET', KEYS[1], ARGV[1])
if not payload then return 0 end
local removed = redis.call('LREM', KEYS[2], 0, payload) + redis.call('ZREM', KEYS[3], payload)
if removed == 0 then return 2 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
",
    std::sync::OnceLock::new(),
);

/// A Lua script, hashed once and run by EVALSHA (loaded on first use).
struct Lua(&'static str, std::sync::OnceLock<Script>);

impl Lua {
    fn script(&self) -> Script {
        self.1.get_or_init(|| Script::new(self.0)).clone()
    }

    /// An `EVALSHA` of this script, to which the caller adds the key count, keys and arguments.
    fn evalsha(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script().get_hash());
        cmd
    }

    /// Runs an [`Lua::evalsha`] command, loading the script first when Redis does not know it
    /// (restarted, or flushed). Built by hand for the enqueue script, whose many arguments
    /// `Script::invoke_async` would copy twice.
    async fn run<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script().prepare_invoke().load_async(conn).await?;
                cmd.query_async(conn).await
            }
            other => other,
        }
    }
}

/// Requests waiting for the enqueuer, at most; more wait to be let in.
const ENQUEUER_BACKLOG: usize = 1024;
/// Requests one enqueue script call takes, at most.
const ENQUEUE_REQUESTS: usize = 128;
/// Orders one enqueue script call takes, at most (a request is never split).
const ENQUEUE_ORDERS: usize = 2000;

/// One request's orders on their way to the queue.
struct Submission {
    /// (order id, payload) of each order.
    orders: Vec<(String, String)>,
    /// The idempotency key (full Redis key) and the record to keep under it.
    idempotency: Option<(String, String)>,
    reply: oneshot::Sender<Result<Enqueued, QueueError>>,
}

/// The enqueuer: takes every request waiting and enqueues them in one script call, then the
/// next lot, so under load a round trip and a script run carry many orders (the script's own
/// cost was two thirds of Redis's time per order when each request ran it alone). Each request
/// still succeeds or fails on its own, all its orders or none; refused when the queue would grow
/// past `max_depth` (0: no limit). Ends when every [`Queue`] clone is gone.
async fn enqueue_together(
    mut conn: ConnectionManager,
    keys: Arc<Keys>,
    max_depth: u64,
    mut submissions: mpsc::Receiver<Submission>,
) {
    let mut waiting = Vec::with_capacity(ENQUEUE_REQUESTS);
    while submissions.recv_many(&mut waiting, ENQUEUE_REQUESTS).await > 0 {
        let mut lot: Vec<Submission> = Vec::with_capacity(waiting.len());
        let mut orders = 0;
        for submission in waiting.drain(..) {
            if orders + submission.orders.len() > ENQUEUE_ORDERS && !lot.is_empty() {
                enqueue_lot(&mut conn, &keys, max_depth, std::mem::take(&mut lot)).await;
                orders = 0;
            }
            orders += submission.orders.len();
            lot.push(submission);
        }
        enqueue_lot(&mut conn, &keys, max_depth, lot).await;
    }
}

/// One script call for the requests of `lot`; answers each of them.
async fn enqueue_lot(
    conn: &mut ConnectionManager,
    keys: &Keys,
    max_depth: u64,
    lot: Vec<Submission>,
) {
    let mut cmd = ENQUEUE.evalsha();
    let keyed = lot.iter().filter(|s| s.idempotency.is_some()).count();
    cmd.arg(2 + keyed).arg(&keys.queue).arg(&keys.pending);
    for (key, _) in lot.iter().filter_map(|s| s.idempotency.as_ref()) {
        cmd.arg(key);
    }
    cmd.arg(IDEMPOTENCY_TTL_SECONDS).arg(max_depth);
    let mut key_index = 2;
    for submission in &lot {
        let n = submission.orders.len() as i64;
        match &submission.idempotency {
            Some((_, record)) => {
                key_index += 1;
                cmd.arg(-n).arg(key_index).arg(record);
            }
            None => {
                cmd.arg(n);
            }
        }
        for (id, payload) in &submission.orders {
            cmd.arg(id).arg(payload);
        }
    }
    match ENQUEUE.run::<Vec<String>>(conn, &cmd).await {
        Ok(reply) => {
            let mut reply = reply.into_iter();
            let status = reply.next().unwrap_or_default();
            let mut status = status.bytes();
            for submission in lot {
                let outcome = match status.next() {
                    Some(b'o') => Ok(Enqueued::Accepted),
                    Some(b'f') => Ok(Enqueued::QueueFull),
                    Some(b's') => Ok(Enqueued::Seen(reply.next().unwrap_or_default())),
                    _ => Err(QueueError::Enqueue(
                        "unexpected reply from the enqueue script".into(),
                    )),
                };
                let _ = submission.reply.send(outcome);
            }
        }
        Err(e) => {
            for submission in lot {
                let _ = submission
                    .reply
                    .send(Err(QueueError::Enqueue(e.to_string())));
            }
        }
    }
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
    enqueuer: mpsc::Sender<Submission>,
    keys: Arc<Keys>,
    client: redis::Client,
}

impl Queue {
    /// Connects to Redis; fails when Redis does not answer.
    pub async fn connect(config: &Config) -> Result<Queue, QueueError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await?;
        let blocking_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(None);
        let manager =
            deadpool_redis::Manager::new_with_config(config.redis_url.as_str(), blocking_config)?;
        let blocking = deadpool_redis::Pool::builder(manager)
            .max_size(config.workers)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(2)))
            .wait_timeout(Some(Duration::from_secs(2)))
            .build()
            .map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "redis pool", e.to_string()))
            })?;
        let keys = Arc::new(Keys::new(&config.redis_prefix));
        let (enqueuer, submissions) = mpsc::channel(ENQUEUER_BACKLOG);
        tokio::spawn(enqueue_together(
            conn.clone(),
            keys.clone(),
            config.max_queue_depth,
            submissions,
        ));
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

    /// Puts accepted orders on the queue, all or none: refused when the queue would grow past
    /// `ORDERS_MAX_QUEUE_DEPTH` (0: no limit), or, with an idempotency key, answered with the record of the
    /// earlier request that used the key. The orders of requests made at the same time go to
    /// Redis together, in one script call (see [`enqueue_together`]).
    pub async fn enqueue(
        &self,
        jobs: &[Job],
        idempotency: Option<(&str, &str)>,
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
                .map(|(key, record)| (self.keys.idempotency(key), record.to_string())),
            reply,
        };
        let stopped = || QueueError::Enqueue("the enqueuer stopped".into());
        self.enqueuer
            .send(submission)
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// An accepted order that no worker has acknowledged yet.
    pub async fn pending(&self, order_id: Uuid) -> Result<Option<Job>, QueueError> {
        let mut conn = self.conn.clone();
        let payload: Option<Vec<u8>> = conn.hget(&self.keys.pending, order_id.to_string()).await?;
        Ok(payload.and_then(|p| Job::parse(&p).ok()))
    }

    /// Takes a queued order off the queue (for an admin delete).
    pub async fn remove_queued(&self, order_id: Uuid) -> Result<Removal, QueueError> {
        let mut conn = self.conn.clone();
        let outcome: i64 = REMOVE_QUEUED
            .script()
            .key(&self.keys.pending)
            .key(&self.keys.queue)
            .key(&self.keys.scheduled)
            .arg(order_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(match outcome {
            1 => Removal::Removed,
            2 => Removal::HeldByWorker,
            _ => Removal::NotQueued,
        })
    }

    /// A connection for one fetch loop's blocking pops. Drop it with
    /// [`deadpool_redis::Connection::take`] after an error, so a broken one is not reused.
    pub async fn blocking_connection(&self) -> Result<deadpool_redis::Connection, QueueError> {
        Ok(self.blocking.get().await?)
    }

    /// Waits up to a second for the next order and moves it, atomically, from the queue into
    /// this worker's processing list, where it stays until acknowledged.
    pub async fn claim(
        &self,
        conn: &mut MultiplexedConnection,
        processing: &str,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let payload: Option<Vec<u8>> = redis::cmd("BLMOVE")
            .arg(&self.keys.queue)
            .arg(processing)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(CLAIM_BLOCK_SECONDS)
            .query_async(conn)
            .await?;
        Ok(payload)
    }

    /// Everything in a processing list.
    pub async fn processing_list(&self, processing: &str) -> Result<Vec<Vec<u8>>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.lrange(processing, 0, -1).await?)
    }

    /// Moves these orders from a processing list back to the queue, to be claimed next (after
    /// a claim whose reply may have been lost); how many were still in the list.
    pub async fn requeue(&self, processing: &str, payloads: &[Vec<u8>]) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let script = REQUEUE.script();
        let mut invocation = script.prepare_invoke();
        invocation.key(processing).key(&self.keys.queue);
        for payload in payloads {
            invocation.arg(payload.as_slice());
        }
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    /// Takes up to `n` orders that are already waiting, in one round trip and without blocking,
    /// so a deep queue is drained in batches; moved atomically like [`Queue::claim`].
    pub async fn claim_waiting(
        &self,
        processing: &str,
        n: usize,
    ) -> Result<Vec<Vec<u8>>, QueueError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        Ok(CLAIM_WAITING
            .script()
            .key(&self.keys.queue)
            .key(processing)
            .arg(n)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Drops the orders from the processing list and the pending hash and publishes the event of
    /// each, all in one atomic round trip. `ack_id` names this acknowledgement: retried after a
    /// lost reply (Redis restarted), it does nothing the second time, so no event goes out twice.
    /// The id is remembered for 120 s (`{orders}:ack:<id>`, a few bytes per acknowledgement).
    pub async fn acknowledge_all(
        &self,
        processing: &str,
        channel: &str,
        acks: &[Ack<'_>],
        ack_id: &str,
    ) -> Result<(), QueueError> {
        // Completions per second, for "completed in the last minute" without a table scan.
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let script = ACKNOWLEDGE.script();
        let mut invocation = script.key(processing);
        invocation
            .key(&self.keys.pending)
            .key(format!("{}completed:{second}", self.keys.tag))
            .key(format!("{}ack:{ack_id}", self.keys.tag))
            .arg(channel);
        for ack in acks {
            invocation
                .arg(ack.payload)
                .arg(ack.order_id.to_string())
                .arg(ack.event.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn.clone();
        invocation.invoke_async::<i64>(&mut conn).await?;
        Ok(())
    }

    /// Moves a payload that will never succeed, or whose attempts ran out, to the dead letters.
    pub async fn dead_letter(
        &self,
        processing: &str,
        payload: &[u8],
        order_id: Option<Uuid>,
        errors: &[String],
        event: Option<(&str, &str)>,
    ) -> Result<(), QueueError> {
        let entry = serde_json::json!({
            "order_id": order_id,
            "payload": String::from_utf8_lossy(payload),
            "errors": errors,
            "failed_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some((channel, message)) = event {
            pipe.publish(channel, message).ignore();
        }
        pipe.lpush(&self.keys.dead, entry.to_string()).ignore();
        pipe.lrem(processing, -1, payload).ignore();
        if let Some(id) = order_id {
            pipe.hdel(&self.keys.pending, id.to_string()).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Takes an order off this worker's processing list and schedules `retry` (its next try) at
    /// `due_ms` (Unix time, ms), in one atomic round trip.
    pub async fn schedule_retry(
        &self,
        processing: &str,
        payload: &[u8],
        retry: &Job,
        due_ms: u64,
    ) -> Result<(), QueueError> {
        let next = retry.to_payload();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .zadd(&self.keys.scheduled, &next, due_ms)
            .ignore()
            .hset(&self.keys.pending, retry.order_id.to_string(), &next)
            .ignore()
            .lrem(processing, -1, payload)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Moves the retries that are due to the head of the queue; how many.
    pub async fn promote_due(&self, now_ms: u64) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        Ok(PROMOTE_DUE
            .script()
            .key(&self.keys.scheduled)
            .key(&self.keys.queue)
            .arg(now_ms)
            .arg(1000)
            .invoke_async(&mut conn)
            .await?)
    }

    /// The queue's state, read atomically.
    pub async fn gauges(&self) -> Result<QueueGauges, QueueError> {
        let mut conn = self.conn.clone();
        let v: Vec<u64> = GAUGES
            .script()
            .key(&self.keys.workers)
            .key(&self.keys.queue)
            .key(&self.keys.scheduled)
            .key(&self.keys.dead)
            .arg(&self.keys.tag)
            .invoke_async(&mut conn)
            .await?;
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(QueueGauges {
            queue_depth: at(0),
            in_flight: at(1),
            scheduled_retries: at(2),
            dead_letters: at(3),
            live_workers: at(4),
            completed_last_minute: at(5),
        })
    }

    /// How many dead letters there are.
    pub async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.llen(&self.keys.dead).await?)
    }

    /// The newest `limit` dead letters, as stored.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let stop = limit.saturating_sub(1) as isize;
        Ok(conn.lrange(&self.keys.dead, 0, stop).await?)
    }

    /// Puts a dead letter back on the queue as `job`; false when `entry` is no longer there.
    pub async fn revive(&self, entry: &str, job: &Job) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let revived: i64 = REVIVE
            .script()
            .key(&self.keys.dead)
            .key(&self.keys.pending)
            .key(&self.keys.queue)
            .arg(entry)
            .arg(job.order_id.to_string())
            .arg(job.to_payload())
            .invoke_async(&mut conn)
            .await?;
        Ok(revived == 1)
    }

    /// Registers every processing list whose owner is not in the workers set (a worker that was
    /// reaped while paused and then claimed more before dying), so the reaper judges it by its
    /// heartbeat like any other.
    pub async fn adopt_unregistered(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}processing:*", self.keys.tag);
        let prefix_len = pattern.len() - 1;
        let lists: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = conn.scan_match(&pattern).await?;
            let mut lists = Vec::new();
            while let Some(key) = iter.next_item().await {
                lists.push(key?);
            }
            lists
        };
        let owners: Vec<&str> = lists.iter().map(|k| &k[prefix_len..]).collect();
        if !owners.is_empty() {
            conn.sadd::<_, _, ()>(&self.keys.workers, owners).await?;
        }
        Ok(())
    }

    /// Publishes an event with no queue change (a cancellation from the API).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        conn.publish::<_, _, ()>(channel, message).await?;
        Ok(())
    }

    /// Renews a worker process's lease.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.heartbeat(worker))
            .arg(1)
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .ignore();
        pipe.sadd(&self.keys.workers, worker).ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Puts the orders held by worker processes whose lease expired back on the queue.
    pub async fn requeue_orphans(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let moved: u64 = REQUEUE_ORPHANS
            .script()
            .key(&self.keys.workers)
            .key(&self.keys.queue)
            .arg(&self.keys.tag)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
    }

    /// Puts everything a worker process still holds back at the head of the queue and removes
    /// its lease (graceful shutdown).
    pub async fn retire(&self, worker: &str) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let moved: u64 = RETIRE
            .script()
            .key(self.keys.processing(worker))
            .key(&self.keys.queue)
            .key(&self.keys.workers)
            .key(self.keys.heartbeat(worker))
            .arg(worker)
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
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
