//! Repair from PostgreSQL: orders stored as `processing` whose every trace in Redis is gone (a
//! failover, or a Redis that lost its last second of writes) and whose worker died are put back
//! on the queue from their rows by another worker's sweep, and complete exactly once. Prints
//!
//! `repair-lost-trace: accepted N, completed N, failed 0, lost 0, duplicated 0`

#[path = "chaos/cluster.rs"]
#[allow(dead_code)]
mod cluster;
mod common;

use cluster::{Cluster, Fsync};
use common::http::batch_ids;
use common::tally::{wait_until_settled, EventRule, Tally};
use common::{wait_until, Sent};
use redis::AsyncCommands;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_processing_with_no_trace_in_redis_are_repaired_exactly_once() {
    let cluster = Cluster::start("repair-lost-trace", Fsync::EverySec).await;
    // A short lease, so the sweep takes an order `processing` for 3 s with no trace as lost.
    let lease = ("ORDERS_LEASE_MS", "1000");
    let api = cluster.start_service("api", "api,notifier", &[lease]).await;
    let worker = async |name: &str, delay_ms: &str| {
        let delay = ("ORDERS_PROCESSING_DELAY_MS", delay_ms);
        cluster.start_service(name, "worker", &[lease, delay]).await
    };
    // The worker that will die holding the orders: its processing outlasts the test.
    let doomed = worker("doomed", "600000").await;
    let events = cluster.subscribe().await;

    let http = common::http::client();
    let mut accepted: Vec<Uuid> = Vec::with_capacity(ORDERS);
    while accepted.len() < ORDERS {
        let batch: Vec<_> = (0..100)
            .map(|i| json!({"customer_id": format!("c-repair-{i}"), "items": ["sku-1"], "total": 5.25}))
            .collect();
        let response = http
            .post(api.url("/orders/batch"))
            .json(&batch)
            .sent()
            .await;
        assert_eq!(response.status(), 202);
        accepted.extend(batch_ids(response).await);
    }
    let db = cluster.db().await;
    wait_until(
        "the doomed worker to store every order as processing",
        Duration::from_secs(30),
        async || {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM orders WHERE status = 'processing'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n == ORDERS as i64
        },
    )
    .await;

    // Redis forgets them (its processing list and pending entries), then their worker dies.
    let mut redis = cluster.redis().await;
    let list = cluster.key(&format!("processing:{}", doomed.worker_id()));
    let held: usize = redis.llen(&list).await.unwrap();
    assert_eq!(held, ORDERS, "the doomed worker holds every order");
    let ids: Vec<String> = accepted.iter().map(Uuid::to_string).collect();
    let () = redis.del(&list).await.unwrap();
    let forgotten: usize = redis.hdel(cluster.key("pending"), &ids).await.unwrap();
    assert_eq!(forgotten, ORDERS);
    doomed.signal("KILL");
    drop(doomed);

    // Another worker's sweep finds them and puts them back, from their rows.
    let survivor = worker("survivor", "50").await;
    let settled = wait_until_settled(&cluster, &accepted, Duration::from_secs(60)).await;
    let seen = events.finish(Duration::from_secs(2)).await;
    let tally = Tally::count(&cluster, &accepted, &seen).await;
    tally.report(EventRule::ExactlyOne);
    assert!(settled, "every order settled");
    let repaired = survivor
        .log
        .all("order was processing with no trace in Redis, put back on the queue")
        .len();
    assert_eq!(repaired, ORDERS, "each order repaired once");
}

/// A delivery that was taken over (its order was delivered again while it ran, as after a reaper
/// took a live worker's orders) must leave the order's pending entry to the delivery in flight:
/// otherwise an order that runs longer than the repair's 3 leases has "no trace", is put back,
/// fences the delivery in flight, whose acknowledgement drops the entry again, and never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_taken_over_leaves_the_order_to_the_one_in_flight() {
    let cluster = Cluster::start("repair-taken-over", Fsync::EverySec).await;
    // The repair judges an order lost after 3 leases (3 s); it runs 5 s.
    let settings = [
        ("ORDERS_LEASE_MS", "1000"),
        ("ORDERS_PROCESSING_DELAY_MS", "5000"),
    ];
    let service = cluster
        .start_service("service", "api,worker,notifier", &settings)
        .await;
    let events = cluster.subscribe().await;
    let http = common::http::client();
    let response = http
        .post(service.url("/orders"))
        .json(&json!({"customer_id": "c-taken-over", "items": ["sku-1"], "total": 5.25}))
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let id: Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    let db = cluster.db().await;
    let attempts = async || -> i32 {
        db.query_opt("SELECT attempts FROM orders WHERE order_id = $1", &[&id])
            .await
            .unwrap()
            .map_or(0, |r| r.get(0))
    };
    wait_until("the first delivery", Duration::from_secs(10), async || {
        attempts().await == 1
    })
    .await;
    // A second delivery of the same order, 2 s into the first: for the 2 s between the first's
    // end and the second's, only the second holds the order.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut redis = cluster.redis().await;
    let payload: Vec<u8> = redis
        .hget(cluster.key("pending"), id.to_string())
        .await
        .unwrap();
    let () = redis.lpush(cluster.key("queue"), payload).await.unwrap();
    wait_until("the second delivery", Duration::from_secs(10), async || {
        attempts().await == 2
    })
    .await;
    let settled = wait_until_settled(&cluster, &[id], Duration::from_secs(30)).await;
    let seen = events.finish(Duration::from_secs(1)).await;
    let tally = Tally::count(&cluster, &[id], &seen).await;
    tally.report(EventRule::ExactlyOne);
    assert!(settled, "the order settled");
    let repaired = service
        .log
        .all("order was processing with no trace in Redis, put back on the queue")
        .len();
    assert_eq!(repaired, 0, "the order in flight was put back");
    assert_eq!(attempts().await, 2, "only the two deliveries ran");
}
