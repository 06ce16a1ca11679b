//! Redis permissions and roles, against a private `redis-server` with ACL users and the real
//! binary: the README's least-privilege user runs every role; a user or a node that cannot do
//! what the roles need is refused at start, naming what is missing; a permission revoked at run
//! time makes `/readyz` 503 naming it, and the orders completed meanwhile are kept, not
//! acknowledged, until it is back.

#[path = "chaos/cluster.rs"]
#[allow(dead_code)]
mod cluster;
mod common;

use cluster::{Cluster, Fsync};
use common::process::{dying_with_us, free_port, Process};
use common::tally;
use common::temp::TempDir;
use common::wait_until;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use uuid::Uuid;

/// The README's least-privilege ACL rules for a process running every role (default prefix and
/// channels), after `ACL SETUSER orders on >PASSWORD`.
const LEAST_PRIVILEGE: &[&str] = &[
    "resetkeys",
    "~{orders}:*",
    "resetchannels",
    "&order.completed",
    "&order.failed",
    "&order.cancelled",
    "-@all",
    "+ping",
    "+evalsha",
    "+script|load",
    "+time",
    "+get",
    "+set",
    "+del",
    "+exists",
    "+expire",
    "+incr",
    "+incrby",
    "+mget",
    "+pttl",
    "+unlink",
    "+llen",
    "+lrange",
    "+lindex",
    "+lpush",
    "+rpush",
    "+lrem",
    "+ltrim",
    "+lmove",
    "+blmove",
    "+hget",
    "+hmget",
    "+hset",
    "+hdel",
    "+hexists",
    "+hlen",
    "+sadd",
    "+srem",
    "+smembers",
    "+sismember",
    "+zadd",
    "+zrem",
    "+zcard",
    "+zscore",
    "+zrange",
    "+zrangebyscore",
    "+scan",
    "+multi",
    "+exec",
    "+unwatch",
    "+publish",
    "+xadd",
    "+xrange",
    "+xread",
    "+xreadgroup",
    "+xack",
    "+xautoclaim",
    "+xgroup|create",
    "+xgroup|delconsumer",
    "+xinfo|consumers",
];

const PASSWORD: &str = "orders-test-secret";

/// Creates (or changes) ACL user `user` with `rules`, through the default user.
async fn set_user(cluster: &Cluster, user: &str, rules: &[&str]) {
    let mut redis = cluster.redis().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user).arg(rules);
    let () = cmd.query_async(&mut redis).await.expect("ACL SETUSER");
}

/// The cluster's environment with REDIS_URL as `user`.
fn env_as(cluster: &Cluster, user: &str) -> HashMap<String, String> {
    let url = format!("redis://{user}:{PASSWORD}@127.0.0.1:{}", cluster.redis.port);
    let mut env = cluster.env();
    env.insert("REDIS_URL".into(), url);
    env
}

async fn post_order(service: &Process, customer: &str) -> Uuid {
    let body = json!({"customer_id": customer, "items": ["sku-1"], "total": 9.99});
    let response = common::http::client()
        .post(service.url("/orders"))
        .json(&body)
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 202, "POST /orders");
    let body: Value = response.json().await.expect("a JSON body");
    body["order_id"].as_str().unwrap().parse().unwrap()
}

async fn readyz(service: &Process) -> (u16, Value) {
    let response = common::http::client()
        .get(service.url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

async fn ack_markers(cluster: &Cluster) -> usize {
    let mut redis = cluster.redis().await;
    let keys: Vec<String> = redis.keys(cluster.key("ack:*")).await.unwrap();
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_user_works_and_a_revoked_channel_loses_nothing() {
    let cluster = Cluster::start("acl-least-privilege", Fsync::EverySec).await;
    let mut rules = vec!["on", ">orders-test-secret"];
    rules.extend(LEAST_PRIVILEGE);
    set_user(&cluster, "orders", &rules).await;
    let env = env_as(&cluster, "orders");
    let log = cluster.log_dir.join("service.log");
    let service = Process::start("service", "api,worker,notifier", &env, log).await;
    let events = cluster.subscribe().await;

    // Every role works as that user: the order completes, its event goes out, the customer is
    // told.
    let first = post_order(&service, "c-acl").await;
    events.of_order(first, Duration::from_secs(20)).await;
    wait_until(
        "the first order's notification",
        Duration::from_secs(20),
        async || tally::email_lines(&cluster).get(&first) == Some(&1),
    )
    .await;
    assert_eq!(readyz(&service).await.0, 200);

    // The channel permission revoked at run time: /readyz says so at once.
    set_user(
        &cluster,
        "orders",
        &["resetchannels", "&order.failed", "&order.cancelled"],
    )
    .await;
    let (status, body) = readyz(&service).await;
    println!("revoked: /readyz {status} {body}");
    assert_eq!(status, 503);
    let redis_line = body["redis"].as_str().unwrap_or_default();
    assert!(
        redis_line.contains("missing permission")
            && redis_line.contains("PUBLISH on channel order.completed"),
        "{body}"
    );

    // Orders completed meanwhile stay held: in the processing list and the pending hash, with no
    // acknowledgement marker, and no event.
    let markers = ack_markers(&cluster).await;
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(post_order(&service, &format!("c-held-{i}")).await);
    }
    // The completer retries the refused acknowledgement (with backoff) before it takes the
    // next batch: the first held order to finish is completed in PostgreSQL, the others wait
    // as `processing`.
    let db = cluster.db().await;
    let completed_sql =
        "SELECT count(*) FROM orders WHERE order_id = ANY($1) AND status = 'completed'";
    wait_until(
        "a held order completed in PostgreSQL",
        Duration::from_secs(20),
        async || {
            let n: i64 = db.query_one(completed_sql, &[&held]).await.unwrap().get(0);
            n >= 1
        },
    )
    .await;
    let processing = cluster.key(&format!("processing:{}", service.worker_id()));
    let mut redis = cluster.redis().await;
    wait_until(
        "refused acknowledgements",
        Duration::from_secs(20),
        async || service.log.all("Redis step failed, retrying").len() >= 3,
    )
    .await;
    // Past the processing time of every held order (at most 3 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let in_list: usize = redis.llen(&processing).await.unwrap();
    let pending: usize = redis.hlen(cluster.key("pending")).await.unwrap();
    assert_eq!(in_list, held.len(), "the held orders stay in {processing}");
    assert_eq!(pending, held.len(), "the held orders stay pending");
    assert_eq!(
        ack_markers(&cluster).await,
        markers,
        "no acknowledgement marked done"
    );

    // The permission back: each held order's event goes out, once, and Redis lets go of them.
    set_user(&cluster, "orders", &["&order.completed"]).await;
    for id in &held {
        events.of_order(*id, Duration::from_secs(30)).await;
    }
    wait_until(
        "Redis to let go of the held orders",
        Duration::from_secs(20),
        async || {
            let in_list: usize = redis.llen(&processing).await.unwrap();
            let pending: usize = redis.hlen(cluster.key("pending")).await.unwrap();
            in_list == 0 && pending == 0
        },
    )
    .await;
    wait_until(
        "a notification for each",
        Duration::from_secs(30),
        async || {
            let emails = tally::email_lines(&cluster);
            held.iter().all(|id| emails.get(id) == Some(&1))
        },
    )
    .await;
    wait_until("/readyz 200 again", Duration::from_secs(20), async || {
        readyz(&service).await.0 == 200
    })
    .await;
    let seen = events.finish(Duration::from_secs(2)).await;
    for id in held.iter().chain([&first]) {
        assert_eq!(seen.get(id), Some(&1), "one event for {id}");
    }
    println!(
        "least privilege: accepted {}, completed {}, held while revoked {}, events once each",
        held.len() + 1,
        held.len() + 1,
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_or_node_that_cannot_serve_the_roles_is_refused_at_start() {
    let cluster = Cluster::start("acl-refused", Fsync::EverySec).await;

    // `~* +@all` as Redis 7 creates it: no channel permission.
    set_user(
        &cluster,
        "nochannels",
        &["on", ">orders-test-secret", "~*", "+@all"],
    )
    .await;
    let env = env_as(&cluster, "nochannels");
    let log = cluster.log_dir.join("nochannels.log");
    let (status, output) =
        Process::start_refused("nochannels", "api,worker,notifier", &env, log).await;
    println!("no channels: {status}\n{output}");
    assert!(!status.success());
    for named in [
        "PUBLISH on channel order.completed",
        "PUBLISH on channel order.failed",
        "PUBLISH on channel order.cancelled",
    ] {
        assert!(output.contains(named), "the start-up error names {named}");
    }
    assert!(
        output.contains("ACL needs +publish &order.cancelled &order.completed &order.failed"),
        "the start-up error says what the ACL line needs"
    );

    // Everything but the scripts.
    set_user(
        &cluster,
        "noscripts",
        &["on", ">orders-test-secret", "~*", "&*", "+@all", "-evalsha"],
    )
    .await;
    let env = env_as(&cluster, "noscripts");
    let log = cluster.log_dir.join("noscripts.log");
    let (status, output) = Process::start_refused("noscripts", "api", &env, log).await;
    assert!(!status.success());
    assert!(
        output.contains("EVALSHA"),
        "the start-up error names EVALSHA:\n{output}"
    );

    // A replica as REDIS_URL.
    let port = free_port();
    let dir = TempDir::new("replica");
    let _replica = KillOnDrop(
        dying_with_us("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--replicaof", "127.0.0.1", &cluster.redis.port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the replica"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    wait_until(
        "the replica to answer",
        Duration::from_secs(20),
        async || {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        },
    )
    .await;
    let mut env = cluster.env();
    env.insert("REDIS_URL".into(), url);
    let log = cluster.log_dir.join("replica.log");
    let (status, output) =
        Process::start_refused("replica", "api,worker,notifier", &env, log).await;
    println!("replica: {status}\n{output}");
    assert!(!status.success());
    assert!(
        output.contains("read-only replica") && output.contains("ORDERS_REDIS_MODE"),
        "the start-up error says the node takes no writes"
    );
}

/// A child process killed with the test (the replica).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A publish the ACL refuses, in the acknowledgement or the dead-letter step, leaves everything
/// as it was (a Lua error is not rolled back, so nothing may be written before it), and the same
/// call goes through whole once the permission is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_leaves_no_trace() {
    let cluster = Cluster::start("acl-refused-publish", Fsync::EverySec).await;
    let mut rules = vec!["on", ">orders-test-secret"];
    rules.extend(LEAST_PRIVILEGE);
    rules.extend(["resetchannels", "&order.cancelled"]);
    set_user(&cluster, "orders", &rules).await;
    let env = env_as(&cluster, "orders");
    let config = orders::config::Config::load_from(|k| env.get(k).cloned()).unwrap();
    let queue = orders::queue::Queue::connect(&config)
        .await
        .unwrap()
        .for_worker("w");
    let mut redis = cluster.redis().await;
    let (processing, pending, dead) = (
        cluster.key("processing:w"),
        cluster.key("pending"),
        cluster.key("dead:entries"),
    );
    let (done_id, failed_id) = (Uuid::now_v7(), Uuid::now_v7());
    let (done, failed) = (b"done-payload".to_vec(), b"failed-payload".to_vec());
    for (id, payload) in [(done_id, &done), (failed_id, &failed)] {
        let () = redis.lpush(&processing, payload).await.unwrap();
        let () = redis.hset(&pending, id.to_string(), payload).await.unwrap();
    }
    let acks = [orders::queue::Ack {
        payload: &done,
        order_id: done_id,
        event: Some(orders::queue::FinalEvent {
            status: orders::order::Status::Completed,
            json: json!({"order_id": done_id}).to_string(),
            first: true,
        }),
        keep_pending: false,
    }];
    let errors = ["gave up".to_string()];
    let event = json!({"order_id": failed_id}).to_string();
    let marker = cluster.key("ack:a1");

    let refused = queue.publish_and_acknowledge(&acks, "a1").await;
    assert!(refused.is_err(), "the acknowledgement's publish is refused");
    let refused = queue
        .dead_letter_and_publish(&failed, Some(failed_id), &errors, Some(&event))
        .await;
    assert!(refused.is_err(), "the dead letter's publish is refused");
    let held: usize = redis.llen(&processing).await.unwrap();
    let still_pending: usize = redis.hlen(&pending).await.unwrap();
    let dead_letters: usize = redis.hlen(&dead).await.unwrap();
    let marked: bool = redis.exists(&marker).await.unwrap();
    assert_eq!(
        (held, still_pending, dead_letters, marked),
        (2, 2, 0, false)
    );

    set_user(&cluster, "orders", &["&order.completed", "&order.failed"]).await;
    queue.publish_and_acknowledge(&acks, "a1").await.unwrap();
    queue
        .dead_letter_and_publish(&failed, Some(failed_id), &errors, Some(&event))
        .await
        .unwrap();
    let held: usize = redis.llen(&processing).await.unwrap();
    let still_pending: usize = redis.hlen(&pending).await.unwrap();
    let dead_letters: usize = redis.hlen(&dead).await.unwrap();
    let marked: bool = redis.exists(&marker).await.unwrap();
    assert_eq!((held, still_pending, dead_letters, marked), (0, 0, 1, true));
}
