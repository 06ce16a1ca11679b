//! Workers: claiming takes the oldest waiting orders first; the reaper returns the orders of a
//! worker whose lease expired; on SIGTERM the orders in flight finish within the deadline. (Kills,
//! pauses and lost replies under load are the chaos suite's, in `chaos.rs`.)

mod common;

use common::http::batch_ids;
use common::process::{test_log_path, Process};
use common::{test_env, wait_until, Sent, TestApp};
use orders::Roles;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::Duration;

/// Claiming what is waiting takes the oldest orders first, as one LMOVE per order would, and
/// leaves the queue and the processing list as those moves would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_waiting_orders_takes_the_oldest_first() {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let vars = std::collections::HashMap::from([
        ("REDIS_URL".to_string(), common::redis_url()),
        ("ORDERS_REDIS_PREFIX".to_string(), prefix.clone()),
    ]);
    let config = orders::config::Config::load_from(|k| vars.get(k).cloned()).unwrap();
    let queue = orders::queue::Queue::connect(&config)
        .await
        .unwrap()
        .for_worker("w");
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let (queue_key, processing) = (
        queue.queue().keys().queue().to_string(),
        queue.queue().keys().processing("w"),
    );
    // Pushed as the API does, newest at the head: o1 is the oldest.
    for o in ["o1", "o2", "o3", "o4", "o5"] {
        let _: () = redis::AsyncCommands::lpush(&mut redis, &queue_key, o)
            .await
            .unwrap();
    }
    let text = |v: Vec<Vec<u8>>| {
        v.into_iter()
            .map(|p| String::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
    };
    assert!(queue
        .claim_waiting(0)
        .await
        .unwrap()
        .into_payloads()
        .is_empty());
    assert_eq!(
        text(queue.claim_waiting(3).await.unwrap().into_payloads()),
        ["o1", "o2", "o3"]
    );
    let range = |key: String| {
        let mut redis = redis.clone();
        async move {
            redis::AsyncCommands::lrange::<_, Vec<String>>(&mut redis, key, 0, -1)
                .await
                .unwrap()
        }
    };
    assert_eq!(range(queue_key.clone()).await, ["o5", "o4"]);
    assert_eq!(range(processing.clone()).await, ["o3", "o2", "o1"]);
    assert_eq!(
        text(queue.claim_waiting(10).await.unwrap().into_payloads()),
        ["o4", "o5"]
    );
    assert!(range(queue_key.clone()).await.is_empty());
    assert_eq!(
        range(processing.clone()).await,
        ["o5", "o4", "o3", "o2", "o1"]
    );
    assert!(queue
        .claim_waiting(10)
        .await
        .unwrap()
        .into_payloads()
        .is_empty());
    let _: () = redis::AsyncCommands::del(&mut redis, &[&queue_key, &processing])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_returns_the_orders_of_a_worker_whose_lease_expired() {
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_LEASE_MS", "500")]).await;
    // A worker that died holding an order: registered, no heartbeat, one order in its list.
    let job = json!({
        "order_id": uuid::Uuid::now_v7(), "customer_id": "orphan", "items": ["a"],
        "total": 3, "accepted_at": "2026-01-01T00:00:00Z"
    });
    let mut redis = app.redis.clone();
    let _: () = redis.sadd(app.key("workers"), "dead-worker").await.unwrap();
    let _: () = redis
        .lpush(app.key("processing:dead-worker"), job.to_string())
        .await
        .unwrap();
    // And one that never registered at all.
    let job2 = json!({
        "order_id": uuid::Uuid::now_v7(), "customer_id": "orphan", "items": ["a"],
        "total": 4, "accepted_at": "2026-01-01T00:00:00Z"
    });
    let _: () = redis
        .lpush(app.key("processing:ghost"), job2.to_string())
        .await
        .unwrap();
    wait_until(
        "both orphans completed",
        Duration::from_secs(15),
        || async { app.count_status("completed").await == 2 },
    )
    .await;
    let left: Vec<String> = redis.keys(app.key("processing:dead-worker")).await.unwrap();
    assert!(left.is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_orders_finish_within_the_deadline() {
    let vars = test_env(&[
        ("ORDERS_PROCESSING_DELAY_MS", "500"),
        ("ORDERS_SHUTDOWN_TIMEOUT_MS", "10000"),
    ])
    .await;
    let mut process = Process::start(
        "all",
        "api,worker,notifier",
        &vars,
        test_log_path(&vars, "all"),
    )
    .await;
    let app = TestApp::observe(&vars).await;
    let order = json!({"customer_id": "recovery", "items": ["a", "b"], "total": 10.5});
    let response = app
        .http
        .post(process.url("/orders/batch"))
        .json(&Value::Array(vec![order; 50]))
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(batch_ids(response).await.len(), 50);
    wait_until("orders in flight", Duration::from_secs(20), || async {
        app.count_status("processing").await == 50
    })
    .await;
    process.signal("TERM");
    assert!(process.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(app.count_status("completed").await, 50);
    assert_eq!(app.list_len("queue").await, 0);
    app.cleanup().await;
}
