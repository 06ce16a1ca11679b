//! The service on a Redis Cluster of three masters (private servers on free ports), in
//! `ORDERS_REDIS_MODE=cluster` with `REDIS_URL` at a node that never owns the `{orders}` slot:
//! while orders flow, the slot is moved to another node by the real resharding protocol, and
//! every order that got a 202 still ends completed exactly once, notified once, its event seen by
//! a `redis-cli SUBSCRIBE order.completed` on that other node. Prints
//!
//! `cluster-reshard: accepted N, completed N, failed 0, lost 0, duplicated 0`
//!
//! Logs in `target/chaos-logs/<scenario>/` (servers in `servers/`, what was counted in
//! `tally.txt`).

mod common;

use common::load::KeyedLoad;
use common::process::Process;
use common::redis_servers::{RedisCliSubscriber, RedisCluster};
use common::servers::Stage;
use common::tally::{wait_until_settled, EventRule, Tally, COMPLETED_CHANNEL};
use common::wait_until;
use std::time::{Duration, Instant};

/// Orders the clients post in all, and how many must be accepted before the slot moves.
const ORDERS: usize = 600;
const BEFORE_MOVE: usize = 150;
/// Clients posting at once, and each one's pause between orders: a few hundred orders a second,
/// so that the load lasts longer than the move.
const CLIENTS: usize = 16;
const PAUSE: Duration = Duration::from_millis(40);
/// How long everything may take to settle after the load.
const SETTLE: Duration = Duration::from_secs(45);

/// A fresh cluster of three masters, and for the `{orders}` slot: the slot, the node that owns
/// it, one that never does (the service's only URL, the subscriber's node), and the one it is
/// moved to.
async fn start_cluster(scenario: &str) -> (Stage<RedisCluster>, u16, usize, usize, usize) {
    let stage = Stage::launch(scenario, async |servers| {
        RedisCluster::start(&servers, 3).await
    })
    .await;
    let slot = stage.redis.slot_of(&stage.key("queue")).await;
    let owner = stage.redis.owner_of(slot).await;
    (stage, slot, owner, (owner + 1) % 3, (owner + 2) % 3)
}

/// How many of these orders were delivered to a worker more than once.
async fn redelivered(stage: &Stage<RedisCluster>, ids: &[uuid::Uuid]) -> i64 {
    common::scalar(
        &stage.db().await,
        "SELECT count(*) FROM orders WHERE attempts > 1 AND order_id = ANY($1)",
        &[&ids],
    )
    .await
}

/// `GET /readyz` of a process: status and body.
async fn readyz(service: &Process) -> (u16, String) {
    let response = common::http::client()
        .get(service.url("/readyz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /readyz of {}: {e}", service.name));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_while_orders_flow_loses_and_doubles_nothing() {
    let (stage, slot, owner, seed, target) = start_cluster("cluster-reshard").await;
    let seed_url = stage.redis.nodes[seed].url();
    let settings = [
        ("ORDERS_REDIS_MODE", "cluster"),
        ("REDIS_URL", seed_url.as_str()),
        ("ORDERS_PROCESSING_DELAY_MS", "50-300"),
        // The service's default lease (the scenario env's is short, for kills): no worker dies
        // here, and the move stalls Redis calls for about a second, which a 1.5 s lease does not
        // always survive (a_live_worker_keeps_its_lease_while_its_slot_migrates says why).
        ("ORDERS_LEASE_MS", "10000"),
    ];
    let front = stage
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let second = stage.start_service("second", "api,worker", &settings).await;
    for service in [&front, &second] {
        let (status, body) = readyz(service).await;
        assert_eq!(
            status, 200,
            "{} ready in cluster mode: {body}",
            service.name
        );
    }
    let subscriber = RedisCliSubscriber::start(
        stage.redis.nodes[seed].port,
        COMPLETED_CHANNEL,
        stage.log_dir.join("redis-cli-subscribe.out"),
    )
    .await;

    let load = KeyedLoad::start(
        vec![front.url("/orders"), second.url("/orders")],
        CLIENTS,
        Some(ORDERS),
        PAUSE,
    );
    load.wait_accepted(BEFORE_MOVE).await;
    let started = Instant::now();
    let moved_keys = stage.redis.move_slot(slot, target).await;
    let took = started.elapsed();
    let during = load.accepted();
    let load = load.finish(false).await;
    println!(
        "slot {slot} of {} moved from node {owner} to node {target} ({moved_keys} keys) in \
         {took:?}, with {during} of {ORDERS} orders accepted; REDIS_URL and redis-cli at node \
         {seed}",
        stage.key("queue")
    );
    load.report();
    assert!(
        during < ORDERS,
        "the slot moved while orders were still being posted"
    );
    assert_eq!(
        stage.redis.owner_of(slot).await,
        target,
        "the slot is on its new node"
    );
    for service in [&front, &second] {
        let (status, body) = readyz(service).await;
        assert_eq!(status, 200, "{} ready after the move: {body}", service.name);
    }

    let ids = load.ids();
    wait_until_settled(&stage, &ids, SETTLE).await;
    let events = subscriber.finish(Duration::from_secs(2)).await;
    let seen: usize = events.values().sum();
    println!("redis-cli SUBSCRIBE on node {seed} (not the owner) printed {seen} events");
    let tally = Tally::count(&stage, &ids, &events).await;
    // Nothing is killed here: every completed order is published once, and the publish reaches
    // every node of the cluster.
    tally.report(EventRule::ExactlyOne);
    assert_eq!(tally.unexpected_rows, 0, "rows of orders never accepted");
    // No worker died, so nothing is delivered twice: a second delivery would be a reaper that
    // took a live worker for dead.
    let redelivered = redelivered(&stage, &ids).await;
    let reaped = front
        .log
        .logged_count("returned orders of dead workers to the queue")
        + second
            .log
            .logged_count("returned orders of dead workers to the queue");
    println!("orders delivered more than once: {redelivered}; returned by a reaper: {reaped}");
    assert_eq!(
        (redelivered, reaped),
        (0, 0),
        "a live worker taken for dead"
    );
}

/// A service in standalone mode pointed at a cluster node that does not own the slot is loud
/// about it, either way the issue allows: it refuses to start, or `/readyz` answers 503; and it
/// names MOVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mode_at_a_cluster_node_is_not_ready_and_says_moved() {
    let (stage, _, _, seed, _) = start_cluster("cluster-standalone-misconfigured").await;
    let elsewhere = stage.redis.nodes[seed].url();
    let mut service = stage.spawn_service(
        "standalone",
        "api",
        &[
            ("ORDERS_REDIS_MODE", "standalone"),
            ("REDIS_URL", elsewhere.as_str()),
        ],
    );
    let log = service.log.path().to_path_buf();
    let mut verdict = String::new();
    let what = format!("a start-up error or /readyz 503 (see {})", log.display());
    wait_until(&what, Duration::from_secs(30), async || {
        if !service.is_running() {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            verdict = format!("refused to start: {}", output.trim());
            return true;
        }
        let Ok(response) = common::http::client()
            .get(service.url("/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            return false;
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 200, "ready at a node without the slot: {body}");
        verdict = format!("/readyz {status} {body}");
        status == 503
    })
    .await;
    println!("standalone mode at a node without the slot: {verdict}");
    assert!(verdict.contains("MOVED"), "it names MOVED: {verdict}");
}

/// A worker that stays alive while its slot moves keeps its lease: for a while its heartbeat key
/// is on the target while the rest of the slot is still on the source, and the renewals must
/// follow the ASK there. Runs the move in steps: only the heartbeat is migrated, for two leases,
/// then the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_keeps_its_lease_while_its_slot_migrates() {
    let (stage, slot, owner, seed, target) = start_cluster("cluster-heartbeat-moved").await;
    let seed_url = stage.redis.nodes[seed].url();
    let lease = Duration::from_millis(1500);
    let lease_ms = lease.as_millis().to_string();
    let settings = [
        ("ORDERS_REDIS_MODE", "cluster"),
        ("REDIS_URL", seed_url.as_str()),
        ("ORDERS_LEASE_MS", lease_ms.as_str()),
        // Long enough that the worker holds every order across the whole move.
        ("ORDERS_PROCESSING_DELAY_MS", "8000"),
    ];
    let service = stage
        .start_service("front", "api,worker,notifier", &settings)
        .await;
    let worker = service.worker_id();
    let load = KeyedLoad::start(vec![service.url("/orders")], 1, Some(5), Duration::ZERO);
    let load = load.finish(false).await;
    load.report();
    let held = stage.key(&format!("processing:{worker}"));
    let owner_node = &stage.redis.nodes[owner];
    wait_until(
        "the worker holds the 5 orders",
        Duration::from_secs(10),
        async || {
            let mut conn = owner_node.conn().await;
            redis::cmd("LLEN")
                .arg(&held)
                .query_async::<usize>(&mut conn)
                .await
                .is_ok_and(|n| n == 5)
        },
    )
    .await;

    let mut moving = stage.redis.begin_move(slot, target).await;
    moving
        .migrate(&[stage.key(&format!("heartbeat:{worker}"))])
        .await;
    tokio::time::sleep(lease * 2).await;
    // An importing node answers for the slot only after ASKING.
    let heartbeat = stage.key(&format!("heartbeat:{worker}"));
    let target_node = &stage.redis.nodes[target];
    let (left,): (i64,) = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .cmd("PTTL")
        .arg(&heartbeat)
        .query_async(&mut target_node.conn().await)
        .await
        .expect("PTTL of the heartbeat on the target");
    let reaped = service
        .log
        .logged_count("returned orders of dead workers to the queue");
    moving.migrate_rest().await;
    moving.finish().await;

    let ids = load.ids();
    wait_until_settled(&stage, &ids, SETTLE).await;
    let redelivered = redelivered(&stage, &ids).await;
    println!(
        "heartbeat on the target, the rest on the source for {lease:?} x 2: PTTL {left} ms \
         there; {reaped} orders returned by the reaper, {redelivered} delivered twice"
    );
    assert!(
        left > 0,
        "the heartbeat was not renewed on the target (PTTL {left}; see {})",
        service.log.path().display()
    );
    assert_eq!(reaped, 0, "the live worker's orders were taken back");
    assert_eq!(redelivered, 0, "orders delivered twice");
}
