//! Redis topologies of private servers for the scenarios that move or kill them: a Redis Cluster
//! of masters ([`RedisCluster`]), whose slots can be moved by the real resharding protocol while
//! orders flow, and a primary with replicas watched by sentinels ([`RedisSentinel`]), whose
//! primary can be killed. Every server is a [`RedisServer`] (free port, own directory, log under
//! the scenario's `servers/`), killed and removed on drop, panic or not. And a real
//! `redis-cli SUBSCRIBE`, as a user watches events ([`RedisCliSubscriber`]).

use super::process::dying_with_us;
use super::servers::{append, RedisServer, Topology};
use super::wait::{poll_until, wait_until};
use redis::aio::MultiplexedConnection;
use redis::RedisResult;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Keys moved per `MIGRATE` while resharding, and the pause between two batches: so that a move
/// takes a while, as a reshard of a loaded slot does, and the service meets the slot half-moved
/// (ASK redirections, TRYAGAIN on multi-key scripts).
const MIGRATE_BATCH: usize = 10;
const MIGRATE_PAUSE: Duration = Duration::from_millis(20);

/// Runs one command on a connection, naming it and the node when it fails.
async fn run<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    port: u16,
    cmd: &redis::Cmd,
) -> T {
    cmd.query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("{cmd:?} on 127.0.0.1:{port}: {e}"))
}

/// The servers' URLs, comma-separated, as `REDIS_URL` lists them outside standalone mode.
fn url_list(servers: &[RedisServer]) -> String {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    urls.join(",")
}

/// A Redis Cluster of masters only (no replicas), on 127.0.0.1.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One master as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers (logs `<log_dir>/cluster-<i>.log`), joins them
    /// with `redis-cli --cluster create` and waits until every node says `cluster_state:ok`.
    pub async fn start(log_dir: &Path, masters: usize) -> RedisCluster {
        let mut nodes = Vec::with_capacity(masters);
        for i in 0..masters {
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--appendonly",
                "no",
                "--save",
                "",
            ];
            let log = log_dir.join(format!("cluster-{i}.log"));
            nodes.push(RedisServer::start(log, None, &args).await);
        }
        let cluster = RedisCluster { nodes };
        let create = log_dir.join("cluster-create.log");
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(append(&create))
            .stderr(append(&create))
            .status()
            .expect("run redis-cli --cluster create");
        assert!(
            status.success(),
            "redis-cli --cluster create failed (see {})",
            create.display()
        );
        let what = format!("cluster_state:ok on every node (see {})", create.display());
        wait_until(&what, Duration::from_secs(30), async || {
            for node in &cluster.nodes {
                let Ok(mut conn) = node.try_conn().await else {
                    return false;
                };
                let info: RedisResult<String> = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await;
                if !info.is_ok_and(|i| i.contains("cluster_state:ok")) {
                    return false;
                }
            }
            true
        })
        .await;
        cluster
    }

    /// Every node's URL, comma-separated: the seeds of a cluster client.
    pub fn seeds(&self) -> String {
        url_list(&self.nodes)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`), e.g. of `{orders}:queue`.
    pub async fn slot_of(&self, key: &str) -> u16 {
        let node = &self.nodes[0];
        let mut conn = node.conn().await;
        run(
            &mut conn,
            node.port,
            redis::cmd("CLUSTER").arg("KEYSLOT").arg(key),
        )
        .await
    }

    /// The masters as node `i` sees them (`CLUSTER NODES`).
    pub async fn masters_seen_by(&self, i: usize) -> Vec<ClusterNode> {
        let node = &self.nodes[i];
        let mut conn = node.conn().await;
        let text: String = run(&mut conn, node.port, redis::cmd("CLUSTER").arg("NODES")).await;
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") {
                    return None;
                }
                // `127.0.0.1:7000@17000`
                let port = fields[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = fields[8..]
                    .iter()
                    // `[slot->-id]` and `[slot-<-id]` are migrations in progress, not ranges.
                    .filter(|f| !f.starts_with('['))
                    .filter_map(|range| match range.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => range.parse().ok().map(|s| (s, s)),
                    })
                    .collect();
                Some(ClusterNode {
                    id: fields[0].to_string(),
                    port,
                    slots,
                })
            })
            .collect()
    }

    /// The index of the node that serves `slot`, as every node agrees; panics if they do not.
    pub async fn owner_of(&self, slot: u16) -> usize {
        let mut owners = Vec::new();
        for i in 0..self.nodes.len() {
            let masters = self.masters_seen_by(i).await;
            let owner = masters
                .iter()
                .find(|m| m.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
                .unwrap_or_else(|| panic!("node {i} sees no owner of slot {slot}: {masters:?}"));
            owners.push(self.index_of(owner.port));
        }
        assert!(
            owners.windows(2).all(|w| w[0] == w[1]),
            "the nodes disagree on the owner of slot {slot}: {owners:?}"
        );
        owners[0]
    }

    /// The index of a node by its port.
    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The node id of node `i` (`CLUSTER MYID`).
    pub async fn id_of(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let mut conn = node.conn().await;
        run(&mut conn, node.port, redis::cmd("CLUSTER").arg("MYID")).await
    }

    /// Moves `slot` to node `to` as `redis-cli --cluster reshard` does, so that it can run while
    /// clients use the slot: `SETSLOT IMPORTING` on the target, `SETSLOT MIGRATING` on the
    /// source, `GETKEYSINSLOT` + `MIGRATE` in batches until the source has none left (clients
    /// meanwhile get ASK for keys already moved), then `SETSLOT NODE` on the target, the source
    /// and the other masters (clients get MOVED). Returns how many keys it moved.
    pub async fn move_slot(&self, slot: u16, to: usize) -> usize {
        let mut moving = self.begin_move(slot, to).await;
        moving.migrate_rest().await;
        moving.finish().await
    }

    /// The first step of [`RedisCluster::move_slot`]: the slot importing on node `to` and
    /// migrating on its owner, no key moved yet.
    pub async fn begin_move(&self, slot: u16, to: usize) -> SlotMove<'_> {
        let from = self.owner_of(slot).await;
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let moving = SlotMove {
            cluster: self,
            slot,
            from,
            to,
            source: self.nodes[from].conn().await,
            target_id: self.id_of(to).await,
            moved: 0,
        };
        let source_id = self.id_of(from).await;
        let target = &self.nodes[to];
        let () = run(
            &mut target.conn().await,
            target.port,
            &moving.setslot("IMPORTING", &source_id),
        )
        .await;
        let () = run(
            &mut moving.source.clone(),
            self.nodes[from].port,
            &moving.setslot("MIGRATING", &moving.target_id),
        )
        .await;
        moving
    }
}

/// A slot half-way between two nodes (see [`RedisCluster::move_slot`]).
pub struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: usize,
    to: usize,
    source: MultiplexedConnection,
    target_id: String,
    moved: usize,
}

impl SlotMove<'_> {
    fn setslot(&self, state: &str, id: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(self.slot).arg(state).arg(id);
        cmd
    }

    /// Moves these keys (of the slot) from the source to the target with one `MIGRATE`.
    pub async fn migrate(&mut self, keys: &[String]) {
        let target = &self.cluster.nodes[self.to];
        // `NOKEY` (all of them gone meanwhile) is a status reply, not an error.
        let _: redis::Value = run(
            &mut self.source,
            self.cluster.nodes[self.from].port,
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(target.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(keys),
        )
        .await;
        self.moved += keys.len();
    }

    /// Moves every key the source still holds, in batches of [`MIGRATE_BATCH`].
    pub async fn migrate_rest(&mut self) {
        loop {
            let keys: Vec<String> = run(
                &mut self.source,
                self.cluster.nodes[self.from].port,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(self.slot)
                    .arg(MIGRATE_BATCH),
            )
            .await;
            if keys.is_empty() {
                return;
            }
            self.migrate(&keys).await;
            tokio::time::sleep(MIGRATE_PAUSE).await;
        }
    }

    /// Gives the slot to the target on every master (the target first, so that the slot is
    /// never without an owner that accepts it) and waits until all agree; the keys moved.
    pub async fn finish(self) -> usize {
        let (cluster, to, from) = (self.cluster, self.to, self.from);
        let mut order = vec![to, from];
        order.extend((0..cluster.nodes.len()).filter(|i| *i != to && *i != from));
        for i in order {
            let node = &cluster.nodes[i];
            let mut conn = node.conn().await;
            let () = run(&mut conn, node.port, &self.setslot("NODE", &self.target_id)).await;
        }
        let what = format!("every node to see slot {} on node {to}", self.slot);
        wait_until(&what, Duration::from_secs(10), async || {
            cluster.owner_of(self.slot).await == to
        })
        .await;
        self.moved
    }
}

impl Topology for RedisCluster {
    /// Every node: the service's seeds in cluster mode.
    fn service_url(&self) -> String {
        self.seeds()
    }

    /// The owner of the key's slot.
    async fn holder_of(&self, key: &str) -> RedisResult<MultiplexedConnection> {
        let owner = self.owner_of(self.slot_of(key).await).await;
        self.nodes[owner].try_conn().await
    }
}

/// A primary with replicas (`--replicaof`) and sentinels watching it, all on 127.0.0.1.
pub struct RedisSentinel {
    /// The name the sentinels monitor it by.
    pub name: String,
    /// The primary first, then the replicas; a killed one stays in the list, stopped.
    pub data: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// Starts a primary, `replicas` replicas and `sentinels` sentinels (quorum 2, down after
    /// 1 s, failover timeout 5 s), and waits until every sentinel sees every replica and every
    /// other sentinel, so that a failover can start the moment the primary dies.
    pub async fn start(log_dir: &Path, replicas: usize, sentinels: usize) -> RedisSentinel {
        let name = "orders-primary".to_string();
        let no_disk = ["--appendonly", "no", "--save", ""];
        let primary = RedisServer::start(log_dir.join("primary.log"), None, &no_disk).await;
        let primary_port = primary.port.to_string();
        let mut data = vec![primary];
        for i in 0..replicas {
            let mut args = no_disk.to_vec();
            args.extend(["--replicaof", "127.0.0.1", &primary_port]);
            let log = log_dir.join(format!("replica-{i}.log"));
            data.push(RedisServer::start(log, None, &args).await);
        }
        let conf = format!(
            "sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n"
        );
        let mut watchers = Vec::with_capacity(sentinels);
        for i in 0..sentinels {
            let log = log_dir.join(format!("sentinel-{i}.log"));
            watchers.push(RedisServer::start(log, Some(&conf), &["--sentinel"]).await);
        }
        let setup = RedisSentinel {
            name,
            data,
            sentinels: watchers,
        };
        let what = format!("sentinels seeing {replicas} replicas and each other");
        wait_until(&what, Duration::from_secs(30), async || {
            for sentinel in &setup.sentinels {
                let Ok(mut conn) = sentinel.try_conn().await else {
                    return false;
                };
                let seen = |what: &'static str| {
                    let mut cmd = redis::cmd("SENTINEL");
                    cmd.arg(what).arg(&setup.name);
                    cmd
                };
                let seen_replicas: RedisResult<Vec<redis::Value>> =
                    seen("REPLICAS").query_async(&mut conn).await;
                let others: RedisResult<Vec<redis::Value>> =
                    seen("SENTINELS").query_async(&mut conn).await;
                if !seen_replicas.is_ok_and(|r| r.len() == replicas)
                    || !others.is_ok_and(|s| s.len() + 1 == sentinels)
                {
                    return false;
                }
            }
            true
        })
        .await;
        setup
    }

    /// The sentinels' URLs, comma-separated (`REDIS_URL` of the service in sentinel mode).
    pub fn sentinel_urls(&self) -> String {
        url_list(&self.sentinels)
    }

    /// The master's address as the first sentinel that answers gives it
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub async fn master_addr(&self) -> (String, u16) {
        for sentinel in &self.sentinels {
            let Ok(mut conn) = sentinel.try_conn().await else {
                continue;
            };
            let addr: RedisResult<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&self.name)
                .query_async(&mut conn)
                .await;
            if let Ok(addr) = addr {
                return addr;
            }
        }
        panic!("no sentinel gave the address of {}", self.name)
    }

    /// The index in [`RedisSentinel::data`] of the server the sentinels call master.
    pub async fn master_index(&self) -> usize {
        let (_, port) = self.master_addr().await;
        self.data
            .iter()
            .position(|s| s.port == port)
            .unwrap_or_else(|| panic!("the master's port {port} is none of ours"))
    }

    /// A connection to the current master.
    pub async fn master(&self) -> RedisResult<MultiplexedConnection> {
        self.data[self.master_index().await].try_conn().await
    }

    /// SIGKILLs the current master; returns its index and when it was killed.
    pub async fn kill_primary(&mut self) -> (usize, Instant) {
        let index = self.master_index().await;
        self.data[index].kill9();
        (index, Instant::now())
    }

    /// Waits until the sentinels name a master other than `old` and it says it is one
    /// (`ROLE`); its index.
    pub async fn wait_failover(&self, old: usize, timeout: Duration) -> usize {
        let mut new = old;
        wait_until("a sentinel failover", timeout, async || {
            new = self.master_index().await;
            if new == old {
                return false;
            }
            let Ok(mut conn) = self.data[new].try_conn().await else {
                return false;
            };
            let role: RedisResult<Vec<redis::Value>> =
                redis::cmd("ROLE").query_async(&mut conn).await;
            matches!(role.as_deref(), Ok([redis::Value::BulkString(r), ..]) if r == b"master")
        })
        .await;
        new
    }
}

impl Topology for RedisSentinel {
    /// The sentinels: the service's `REDIS_URL` in sentinel mode.
    fn service_url(&self) -> String {
        self.sentinel_urls()
    }

    /// The current master, whatever the key.
    async fn holder_of(&self, _key: &str) -> RedisResult<MultiplexedConnection> {
        self.master().await
    }
}

/// `redis-cli -p PORT SUBSCRIBE CHANNEL` as a child process, its output in a file: what a user
/// watching the events sees.
pub struct RedisCliSubscriber {
    output: PathBuf,
    child: Child,
}

impl RedisCliSubscriber {
    /// Starts it and waits until it has subscribed.
    pub async fn start(port: u16, channel: &str, output: PathBuf) -> RedisCliSubscriber {
        let child = dying_with_us("redis-cli")
            .args(["-p", &port.to_string(), "SUBSCRIBE", channel])
            .stdin(Stdio::null())
            .stdout(append(&output))
            .stderr(append(&output))
            .spawn()
            .expect("start redis-cli SUBSCRIBE");
        let subscriber = RedisCliSubscriber { output, child };
        let what = format!("redis-cli to subscribe to {channel} on {port}");
        wait_until(&what, Duration::from_secs(10), async || {
            subscriber.text().starts_with("subscribe")
        })
        .await;
        subscriber
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// The events it printed so far, per order id (each payload is one JSON line).
    pub fn events(&self) -> HashMap<Uuid, usize> {
        let mut counts = HashMap::new();
        for line in self.text().lines() {
            let Ok(event) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(id) = event["order_id"].as_str().and_then(|s| s.parse().ok()) {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }

    /// Waits until nothing new has been printed for `quiet` (up to a minute), stops, and returns
    /// the events per order id.
    pub async fn finish(mut self, quiet: Duration) -> HashMap<Uuid, usize> {
        let mut last = (self.text().len(), Instant::now());
        poll_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            async || {
                let len = self.text().len();
                if len != last.0 {
                    last = (len, Instant::now());
                }
                last.1.elapsed() >= quiet
            },
        )
        .await;
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.events()
    }
}

impl Drop for RedisCliSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
