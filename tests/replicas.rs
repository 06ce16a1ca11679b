//! `ORDERS_REDIS_MIN_REPLICAS` against a real primary: with no replica online `/readyz` says so
//! and `POST /orders` answers 503 `not_replicated` (the order is queued all the same); once a
//! replica has synced, `/readyz` is 200 and the retry with the same `Idempotency-Key` answers 202
//! with the same order id, and the order was enqueued once.

#[allow(dead_code)]
#[path = "chaos/cluster.rs"]
mod cluster;
mod common;

use cluster::{Cluster, Fsync};
use common::servers::RedisServer;
use common::{wait_until, Sent};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_acknowledged_only_once_a_replica_holds_it() {
    let cluster = Cluster::start("min-replicas", Fsync::EverySec).await;
    let service = cluster.spawn_service(
        "api",
        "api",
        &[
            ("ORDERS_REDIS_MIN_REPLICAS", "1"),
            ("ORDERS_REDIS_REPLICA_TIMEOUT_MS", "200"),
        ],
    );
    let http = common::http::client();
    let readyz = async || -> Option<(u16, Value)> {
        let response = http.get(service.url("/readyz")).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    };
    let mut not_ready = None;
    wait_until("/readyz to answer", Duration::from_secs(30), async || {
        not_ready = readyz().await;
        not_ready.is_some()
    })
    .await;
    let (status, body) = not_ready.expect("an answer");
    assert_eq!(status, 503, "{body}");
    let reason = body["redis"].as_str().unwrap_or_default();
    assert!(
        reason.contains("0 of the 1 replicas") && reason.contains("ORDERS_REDIS_MIN_REPLICAS"),
        "{body}"
    );

    let order = json!({"customer_id": "replicated", "items": ["sku-1"], "total": 12.5});
    let post = async || {
        http.post(service.url("/orders"))
            .header("idempotency-key", "min-replicas-1")
            .json(&order)
            .sent()
            .await
    };
    let refused = post().await;
    assert_eq!(refused.status(), 503);
    let error: Value = refused.json().await.expect("a JSON error");
    assert_eq!(error["error"]["code"], "not_replicated", "{error}");

    let _replica = RedisServer::start(
        cluster.log_dir.join("servers/replica.log"),
        None,
        &["--replicaof", "127.0.0.1", &cluster.redis.port.to_string()],
    )
    .await;
    wait_until(
        "/readyz to be 200 once the replica is online",
        Duration::from_secs(30),
        async || matches!(readyz().await, Some((200, _))),
    )
    .await;
    let accepted = post().await;
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.expect("a JSON body");
    let mut redis = cluster.redis().await;
    let queued: Vec<String> = redis::cmd("LRANGE")
        .arg(cluster.key("queue"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("the queue");
    let id = body["order_id"].as_str().expect("an order id");
    assert_eq!(
        queued.iter().filter(|p| p.contains(id)).count(),
        1,
        "the refused try and its retry made one order: {queued:?}"
    );
    println!(
        "min-replicas: 503 not_replicated with no replica (readyz: {reason:?}); 202 for the \
         retry once one synced, order {id} queued once"
    );
}
