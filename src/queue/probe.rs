//! The permission and role probe: whether the Redis this process talks to lets it do everything
//! its roles will do. A Redis ACL user missing one permission (Redis 7 creates users with no
//! channel permission: `resetchannels`) otherwise fails only deep in a worker, after an order
//! was completed, and a replica or a cluster node that does not own the `{prefix}` slot refuses
//! every write. One script call ([`Queue::probe`]) checks the ACL of every command the roles run,
//! with their real key and channel names, and makes one real write; it runs at start (a refusal
//! is a start-up error) and on every `/readyz` (a refusal is a 503 naming it).

use super::script::Lua;
use super::{Keys, Queue};
use crate::config::Config;
use crate::Roles;

static PROBE: Lua = Lua::new(include_str!("probe.lua"));

/// What this process will ask of Redis, as ACL checks.
#[derive(Debug, Clone)]
pub struct Probe {
    key: String,
    /// `~{prefix}:*`, the key pattern the ACL must allow.
    key_pattern: String,
    /// `redis_min_replicas` when this process enqueues (API role), else 0: how many replicas
    /// must be online for a `POST /orders` to be answered 202.
    min_replicas: u32,
    checks: Vec<Check>,
}

/// One ACL check: a command with real arguments, and how to name it when refused.
#[derive(Debug, Clone)]
struct Check {
    words: Vec<String>,
    what: String,
    /// The ACL rules that allow it (the check cannot tell which one is missing).
    rules: Vec<String>,
}

/// Why Redis cannot serve this process.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The ACL user lacks these permissions (each named with its key or channel); `rules` are
    /// the ACL rules that would allow them.
    #[error("missing permission: {}", .missing.join(", "))]
    Missing { missing: Vec<String>, rules: String },
    /// The node refuses writes: a replica.
    #[error("read-only replica: this node cannot take writes (a replica?): set ORDERS_REDIS_MODE=cluster|sentinel, or point REDIS_URL at the primary")]
    ReadOnly(#[source] redis::RedisError),
    /// Another cluster node owns the `{prefix}` slot.
    #[error("MOVED: this node cannot take writes (another cluster node owns the slot): set ORDERS_REDIS_MODE=cluster|sentinel")]
    Moved(#[source] redis::RedisError),
    /// The ACL refuses the scripts themselves.
    #[error("missing permission: EVALSHA or SCRIPT LOAD (every queue step is a Lua script; the ACL needs +evalsha +script|load)")]
    Scripts(#[source] redis::RedisError),
    /// Fewer replicas are online than `ORDERS_REDIS_MIN_REPLICAS` asks for: every enqueue
    /// would answer 503 `not_replicated`.
    #[error("{online} of the {wanted} replicas ORDERS_REDIS_MIN_REPLICAS asks for are online: every POST /orders answers 503 not_replicated until more are")]
    TooFewReplicas { online: u32, wanted: u32 },
    /// Redis unreachable, or another error.
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
}

impl ProbeError {
    /// What the Redis user's ACL line needs, for the start-up error.
    pub fn acl_hint(&self) -> Option<String> {
        match self {
            ProbeError::Missing { rules, .. } => Some(format!(
                "the Redis user's ACL needs {rules} (README: the least-privilege ACL line)"
            )),
            ProbeError::Scripts(_) => {
                Some("the Redis user's ACL needs +evalsha +script|load".into())
            }
            _ => None,
        }
    }
}

impl From<redis::RedisError> for ProbeError {
    fn from(e: redis::RedisError) -> ProbeError {
        use redis::ServerErrorKind as K;
        match e.kind() {
            redis::ErrorKind::Server(K::ReadOnly) => ProbeError::ReadOnly(e),
            redis::ErrorKind::Server(K::Moved) => ProbeError::Moved(e),
            redis::ErrorKind::Server(K::NoPerm) => ProbeError::Scripts(e),
            _ => ProbeError::Redis(e),
        }
    }
}

impl Probe {
    /// The checks for what `roles` do with the keys of `config`'s prefix and its channels: the
    /// commands of every script and every direct command of the queue (run as EVALSHA, so the
    /// script itself also proves EVALSHA).
    pub fn new(config: &Config, roles: Roles) -> Probe {
        let keys = Keys::new(&config.redis_prefix);
        let key = format!("{}probe", keys.tag());
        let processing = keys.processing("probe");
        let heartbeat = keys.heartbeat("probe");
        let (queue, pending, scheduled, dead, workers) = (
            keys.queue(),
            keys.pending(),
            keys.scheduled(),
            keys.dead(),
            keys.workers(),
        );
        let (idempotency, completed, ack) = (
            keys.idempotency("probe"),
            keys.completed(0),
            keys.ack("probe"),
        );
        let (dead_entries, dead_index, paused) =
            (keys.dead_entries(), keys.dead_index(), keys.paused());
        let (failed, worker_info) = (keys.failed(0), keys.worker_info("probe"));
        let events = keys.events();
        let mut probe = Probe {
            key: key.clone(),
            key_pattern: format!("~{}*", keys.tag()),
            min_replicas: if roles.api {
                config.redis_min_replicas
            } else {
                0
            },
            checks: Vec::new(),
        };
        // First: the probe's own write (probe.lua relies on it being check 1).
        probe.key_check(&["SET", &key, "1", "PX", "10000"]);
        probe.command(&["PING"]);
        probe.command(&["EVALSHA", "0", "1", &key]);
        probe.command(&["SCRIPT", "LOAD", "return 1"]);
        if roles.api {
            // enqueue.lua, the pending lookups, remove_queued.lua, revive.lua, gauges.lua.
            probe.key_check(&["LLEN", queue]);
            probe.key_check(&["GET", &idempotency]);
            probe.key_check(&["SET", &idempotency, "x", "EX", "1"]);
            probe.key_check(&["HSET", pending, "id", "x"]);
            probe.key_check(&["LPUSH", queue, "x"]);
            probe.key_check(&["HGET", pending, "id"]);
            probe.key_check(&["HEXISTS", pending, "id"]);
            probe.key_check(&["LREM", queue, "0", "x"]);
            probe.key_check(&["ZREM", scheduled, "x"]);
            probe.key_check(&["HDEL", pending, "id"]);
            // The dead letters (dead_letters.rs and its scripts) and the console's reads.
            probe.key_check(&["HLEN", dead_entries]);
            probe.key_check(&["HMGET", dead_entries, "id"]);
            probe.key_check(&["HGET", dead_entries, "id"]);
            probe.key_check(&["HDEL", dead_entries, "id"]);
            probe.key_check(&["ZREM", dead_index, "x"]);
            probe.key_check(&[
                "ZRANGE", dead_index, "+", "-", "BYLEX", "REV", "LIMIT", "0", "1",
            ]);
            probe.key_check(&["UNLINK", dead_entries, dead_index, dead]);
            probe.key_check(&["LLEN", dead]);
            probe.key_check(&["LRANGE", dead, "0", "0"]);
            probe.key_check(&["LREM", dead, "-1", "x"]);
            probe.key_check(&["HSET", dead_entries, "id", "x"]);
            probe.key_check(&["ZADD", dead_index, "0", "x"]);
            probe.key_check(&["ZSCORE", scheduled, "x"]);
            probe.key_check(&[
                "ZRANGE", scheduled, "0", "+inf", "BYSCORE", "LIMIT", "0", "1",
            ]);
            probe.key_check(&["RPUSH", queue, "x"]);
            probe.key_check(&["SET", paused, "1", "NX"]);
            probe.key_check(&["GET", paused]);
            probe.key_check(&["DEL", paused]);
            probe.key_check(&["EXISTS", paused]);
            probe.key_check(&["GET", &worker_info]);
            probe.key_check(&["PTTL", &heartbeat]);
            probe.key_check(&["LINDEX", &processing, "-1"]);
            probe.key_check(&["MGET", &completed, &failed]);
            probe.key_check(&["SMEMBERS", workers]);
            probe.key_check(&["EXISTS", &heartbeat]);
            probe.key_check(&["LLEN", &processing]);
            probe.key_check(&["GET", &completed]);
            probe.key_check(&["ZCARD", scheduled]);
            probe.command(&["TIME"]);
            probe.channel_check("PUBLISH", &config.cancelled_channel);
            // publish_event.lua (cancellations), and the live events' reads.
            probe.key_check(&["XADD", events, "MAXLEN", "~", "1000", "*", "event", "x"]);
            probe.key_check(&["XRANGE", events, "-", "+", "COUNT", "1"]);
            probe.stream_check(
                &["XREAD", "COUNT", "1", "STREAMS", events, "$"],
                "+xread",
                4,
            );
        }
        if roles.worker {
            // Claims, acknowledgement, retries, dead letters, leases, the reaper, repair.
            probe.key_check(&["BLMOVE", queue, &processing, "RIGHT", "LEFT", "1"]);
            // What deadpool-redis sends when it recycles a blocking connection.
            probe.command(&["UNWATCH"]);
            probe.key_check(&["LRANGE", queue, "-1", "-1"]);
            probe.key_check(&["LTRIM", queue, "0", "-1"]);
            probe.key_check(&["LPUSH", &processing, "x"]);
            probe.key_check(&["LRANGE", &processing, "0", "-1"]);
            probe.key_check(&["LREM", &processing, "1", "x"]);
            probe.key_check(&["RPUSH", queue, "x"]);
            probe.key_check(&["EXISTS", &ack]);
            probe.key_check(&["SET", &ack, "1", "EX", "120"]);
            probe.key_check(&["HDEL", pending, "id"]);
            probe.key_check(&["HSET", pending, "id", "x"]);
            probe.key_check(&["HEXISTS", pending, "id"]);
            probe.key_check(&["INCRBY", &completed, "1"]);
            probe.key_check(&["EXPIRE", &completed, "120"]);
            probe.key_check(&["HGET", dead_entries, "id"]);
            probe.key_check(&["HSET", dead_entries, "id", "x"]);
            probe.key_check(&["ZREM", dead_index, "x"]);
            probe.key_check(&["ZADD", dead_index, "0", "x"]);
            probe.key_check(&["INCR", &failed]);
            probe.key_check(&["EXPIRE", &failed, "660"]);
            probe.key_check(&["EXISTS", paused]);
            probe.key_check(&["SET", &worker_info, "{}", "PX", "1000"]);
            probe.key_check(&["DEL", &heartbeat, &worker_info]);
            probe.key_check(&["HLEN", dead_entries]);
            probe.key_check(&["LRANGE", dead, "-1", "-1"]);
            probe.key_check(&["LREM", dead, "-1", "x"]);
            probe.command(&["MULTI"]);
            probe.command(&["EXEC"]);
            probe.key_check(&["ZADD", scheduled, "0", "x"]);
            probe.key_check(&["ZRANGEBYSCORE", scheduled, "-inf", "0", "LIMIT", "0", "1"]);
            probe.key_check(&["ZREM", scheduled, "x"]);
            probe.key_check(&["SET", &heartbeat, "1", "PX", "1000"]);
            probe.key_check(&["SADD", workers, "probe"]);
            probe.key_check(&["SMEMBERS", workers]);
            probe.key_check(&["SISMEMBER", workers, "probe"]);
            probe.key_check(&["EXISTS", &heartbeat]);
            probe.key_check(&["LMOVE", &processing, queue, "LEFT", "RIGHT"]);
            probe.key_check(&["SREM", workers, "probe"]);
            probe.key_check(&["DEL", &heartbeat]);
            let pattern = format!("{}processing:*", keys.tag());
            probe.command(&["SCAN", "0", "MATCH", &pattern]);
            probe.channel_check("PUBLISH", &config.event_channel);
            probe.channel_check("PUBLISH", &config.failed_channel);
            probe.key_check(&["XADD", events, "MAXLEN", "~", "1000", "*", "event", "x"]);
        }
        if roles.notifier {
            // The consumer group (stream.rs) and the catch-up of what dead members left.
            let group = crate::events::NOTIFIER_GROUP;
            probe.stream_check(
                &["XGROUP", "CREATE", events, group, "0", "MKSTREAM"],
                "+xgroup|create",
                2,
            );
            probe.stream_check(
                &[
                    "XREADGROUP",
                    "GROUP",
                    group,
                    "probe",
                    "STREAMS",
                    events,
                    ">",
                ],
                "+xreadgroup",
                5,
            );
            probe.key_check(&["XACK", events, group, "0-1"]);
            probe.key_check(&["XAUTOCLAIM", events, group, "probe", "1", "0-0"]);
            probe.stream_check(
                &["XINFO", "CONSUMERS", events, group],
                "+xinfo|consumers",
                2,
            );
            probe.stream_check(
                &["XGROUP", "DELCONSUMER", events, group, "probe"],
                "+xgroup|delconsumer",
                2,
            );
        }
        if (roles.api || roles.worker) && config.redis_min_replicas > 0 {
            // After each enqueue, and after each claim.
            probe.command(&["WAIT", "0", "0"]);
        }
        if roles.api && config.redis_min_replicas > 0 {
            // How many replicas are online, for readiness.
            probe.command(&["INFO", "replication"]);
        }
        // What the redis crate itself asks the data nodes: the slot map in a cluster, the role of
        // the primary the sentinels named.
        match config.redis_mode {
            crate::config::RedisMode::Cluster => probe.command(&["CLUSTER", "SLOTS"]),
            crate::config::RedisMode::Sentinel => probe.command(&["ROLE"]),
            crate::config::RedisMode::Standalone => {}
        }
        probe
    }

    fn push(&mut self, words: &[&str], what: String, rules: Vec<String>) {
        if self.checks.iter().any(|c| c.words == words) {
            return;
        }
        let words = words.iter().map(|w| w.to_string()).collect();
        self.checks.push(Check { words, what, rules });
    }

    /// A command that names no key or channel.
    fn command(&mut self, words: &[&str]) {
        let what = match words {
            [cmd, sub, ..] if *cmd == "SCRIPT" || *cmd == "CLUSTER" => format!("{cmd} {sub}"),
            [cmd, ..] if *cmd == "INFO" => "INFO".to_string(),
            [cmd, ..] => cmd.to_string(),
            [] => return,
        };
        let rule = format!("+{}", what.to_lowercase().replace(' ', "|"));
        self.push(words, what, vec![rule]);
    }

    /// A command on the key that is its first argument.
    fn key_check(&mut self, words: &[&str]) {
        let what = format!("{} on key {}", words[0], words[1]);
        let rules = vec![
            format!("+{}", words[0].to_lowercase()),
            self.key_pattern.clone(),
        ];
        self.push(words, what, rules);
    }

    /// A command on the event stream: `rule` allows the command (`+xgroup|create`), and `key`
    /// is where in `words` the stream is named.
    fn stream_check(&mut self, words: &[&str], rule: &str, key: usize) {
        let name = rule
            .trim_start_matches('+')
            .replace('|', " ")
            .to_uppercase();
        let what = format!("{name} on key {}", words[key]);
        self.push(
            words,
            what,
            vec![rule.to_string(), self.key_pattern.clone()],
        );
    }

    /// PUBLISH on a channel.
    fn channel_check(&mut self, command: &str, channel: &str) {
        let what = format!("{command} on channel {channel}");
        let rules = vec![
            format!("+{}", command.to_lowercase()),
            format!("&{channel}"),
        ];
        self.push(&[command, channel, "x"], what, rules);
    }
}

impl Queue {
    /// Runs `probe` in one round trip: `Ok` when Redis lets this process do all it will do, with
    /// whether it could check the ACLs (false before Redis 7: only the write was checked).
    pub async fn probe(&self, probe: &Probe) -> Result<bool, ProbeError> {
        let mut call = PROBE.call(&[&probe.key]);
        call.arg(probe.min_replicas);
        for check in &probe.checks {
            call.arg(check.words.len()).arg(&check.words);
        }
        let reply: Vec<usize> = call.run(&mut self.conn()).await?;
        let refused: Vec<&Check> = reply
            .iter()
            .skip(2)
            .filter_map(|&n| probe.checks.get(n.wrapping_sub(1)))
            .collect();
        if refused.is_empty() {
            let online = reply.get(1).copied().unwrap_or(0) as u32;
            if online < probe.min_replicas {
                return Err(ProbeError::TooFewReplicas {
                    online,
                    wanted: probe.min_replicas,
                });
            }
            return Ok(reply.first() == Some(&1));
        }
        let mut rules: Vec<&str> = Vec::new();
        for rule in refused.iter().flat_map(|c| &c.rules) {
            if !rules.contains(&rule.as_str()) {
                rules.push(rule);
            }
        }
        Err(ProbeError::Missing {
            missing: refused.iter().map(|c| c.what.clone()).collect(),
            rules: rules.join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_write_comes_first_and_checks_are_distinct() {
        let config = Config::load_from(|_| None).expect("default config");
        let probe = Probe::new(&config, Roles::ALL);
        assert_eq!(probe.checks[0].words[0], "SET");
        assert_eq!(probe.checks[0].words[1], probe.key);
        for (i, a) in probe.checks.iter().enumerate() {
            assert!(probe.checks[i + 1..].iter().all(|b| b.words != a.words));
        }
        let names: Vec<&str> = probe.checks.iter().map(|c| c.what.as_str()).collect();
        assert!(names.contains(&"PUBLISH on channel order.completed"));
        assert!(names.contains(&"XREADGROUP on key {orders}:events"));
        assert!(names.contains(&"XGROUP CREATE on key {orders}:events"));
        assert!(names.contains(&"PUBLISH on channel order.cancelled"));
    }
}
