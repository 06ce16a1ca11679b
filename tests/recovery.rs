//! Nothing accepted is lost: a worker killed with SIGKILL, a graceful SIGTERM, poison and
//! duplicate payloads, Redis going away under the API. These run the real binary as child
//! processes where a process has to die.

mod common;

use common::process::Process;
use common::{test_env, TestApp};
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// Posts `n` orders in batches of 100 to `url`; their ids.
async fn post_orders(http: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    let order = json!({"customer_id": "recovery", "items": ["a", "b"], "total": 10.5});
    let mut ids = Vec::new();
    while ids.len() < n {
        let batch: Vec<Value> = (0..(n - ids.len()).min(100))
            .map(|_| order.clone())
            .collect();
        let response = http
            .post(url)
            .json(&batch)
            .send()
            .await
            .expect("POST batch");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.extend(
            body["order_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
    }
    ids
}

/// Counts events per order id on `channel` until none arrives for `quiet`.
fn count_events(
    channel: String,
    quiet: Duration,
) -> tokio::task::JoinHandle<HashMap<String, usize>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = tokio::spawn(async move {
        let client = redis::Client::open(common::redis_url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(&channel).await.unwrap();
        ready_tx.send(()).unwrap();
        let mut counts = HashMap::<String, usize>::new();
        let mut messages = pubsub.on_message();
        while let Ok(Some(message)) = tokio::time::timeout(quiet, messages.next()).await {
            let event: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
            *counts
                .entry(event["order_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        counts
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("subscribed");
    handle
}

/// Every accepted order ends completed, with one row, one notification, one event.
async fn assert_each_completed_once(
    app: &TestApp,
    ids: &[String],
    events: tokio::task::JoinHandle<HashMap<String, usize>>,
) {
    let n = ids.len() as i64;
    app.wait_for("every order completed", Duration::from_secs(60), || async {
        app.count_status("completed").await == n
    })
    .await;
    app.wait_for("every order notified", Duration::from_secs(30), || async {
        app.count_rows("notifications").await == n
    })
    .await;
    assert_eq!(app.count_rows("orders").await, n, "one row per order");
    assert_eq!(app.count_rows("order_items").await, 2 * n);
    let events = events.await.unwrap();
    let lost: Vec<_> = ids.iter().filter(|id| !events.contains_key(*id)).collect();
    // An event can only be missing if a worker died between its commit and its publish; the
    // notifier's catch-up covered the notification then, and the test says how many.
    assert!(lost.len() <= 1, "events missing for {} orders", lost.len());
    assert!(
        events.values().all(|&c| c == 1),
        "an order was published twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_loses_nothing() {
    let channel = format!("test.completed.{}", uuid::Uuid::new_v4().simple());
    let vars = test_env(&[
        ("ORDERS_PROCESSING_DELAY_MS", "1000-2000"),
        ("ORDERS_LEASE_MS", "1000"),
        ("ORDERS_EVENT_CHANNEL", &channel),
    ])
    .await;
    let mut doomed = Process::start("api,worker", &vars);
    doomed.wait_ready().await;
    let survivor = Process::start("api,worker,notifier", &vars);
    survivor.wait_ready().await;
    let app = TestApp::observe(&vars).await;
    let events = count_events(channel, Duration::from_secs(5));

    let ids = post_orders(&app.http, &doomed.url("/orders/batch"), 400).await;
    app.wait_for("orders in flight", Duration::from_secs(20), || async {
        app.count_status("processing").await >= 200
    })
    .await;
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(5)).await;

    assert_each_completed_once(&app, &ids, events).await;
    let recovered: i64 = app
        .db
        .query_one("SELECT count(*) FROM orders WHERE attempts > 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        recovered > 0,
        "the killed worker held orders that were redelivered"
    );
    drop(survivor);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_returns_unfinished_orders_to_the_queue() {
    let channel = format!("test.completed.{}", uuid::Uuid::new_v4().simple());
    let vars = test_env(&[
        ("ORDERS_PROCESSING_DELAY_MS", "5000"),
        ("ORDERS_SHUTDOWN_TIMEOUT_MS", "300"),
        ("ORDERS_EVENT_CHANNEL", &channel),
    ])
    .await;
    let mut first = Process::start("api,worker,notifier", &vars);
    first.wait_ready().await;
    let app = TestApp::observe(&vars).await;
    let events = count_events(channel, Duration::from_secs(5));
    let ids = post_orders(&app.http, &first.url("/orders/batch"), 200).await;
    app.wait_for("orders in flight", Duration::from_secs(20), || async {
        app.count_status("processing").await == 200
    })
    .await;

    first.signal("TERM");
    let status = first.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    // Everything it held is back on the queue; nothing is held by anyone.
    assert_eq!(app.list_len("queue").await, 200);
    let mut redis = app.redis.clone();
    let held: Vec<String> = redis.keys(app.key("processing:*")).await.unwrap();
    assert!(held.is_empty(), "processing lists left: {held:?}");

    let mut vars = vars.clone();
    vars.insert("ORDERS_PROCESSING_DELAY_MS".into(), "0".into());
    let second = Process::start("api,worker,notifier", &vars);
    second.wait_ready().await;
    assert_each_completed_once(&app, &ids, events).await;
    drop(second);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_orders_finish_within_the_deadline() {
    let vars = test_env(&[
        ("ORDERS_PROCESSING_DELAY_MS", "500"),
        ("ORDERS_SHUTDOWN_TIMEOUT_MS", "10000"),
    ])
    .await;
    let mut process = Process::start("api,worker,notifier", &vars);
    process.wait_ready().await;
    let app = TestApp::observe(&vars).await;
    post_orders(&app.http, &process.url("/orders/batch"), 50).await;
    app.wait_for("orders in flight", Duration::from_secs(20), || async {
        app.count_status("processing").await == 50
    })
    .await;
    process.signal("TERM");
    assert!(process.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(app.count_status("completed").await, 50);
    assert_eq!(app.list_len("queue").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_a_duplicate_makes_no_second_row() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis.clone();
    let queue = app.key("queue");
    // Garbage, and a well-formed job that breaks a rule, pushed by hand.
    let bad_rule = json!({
        "order_id": uuid::Uuid::now_v7(), "customer_id": "", "items": ["a"], "total": 1,
        "accepted_at": "2026-01-01T00:00:00Z"
    });
    let _: () = redis.lpush(&queue, "not json at all").await.unwrap();
    let _: () = redis.lpush(&queue, bad_rule.to_string()).await.unwrap();
    app.wait_for("two dead letters", Duration::from_secs(10), || async {
        app.list_len("dead").await == 2
    })
    .await;

    // The same valid job pushed twice: one row, one notification.
    let job = json!({
        "order_id": uuid::Uuid::now_v7(), "customer_id": "dup", "items": ["a", "b"],
        "total": 2.5, "accepted_at": "2026-01-01T00:00:00Z"
    });
    let _: () = redis.lpush(&queue, job.to_string()).await.unwrap();
    app.wait_for(
        "the first delivery completed",
        Duration::from_secs(10),
        || async { app.count_status("completed").await == 1 },
    )
    .await;
    let _: () = redis.lpush(&queue, job.to_string()).await.unwrap();
    // Workers carry on: a normal order after the poison completes.
    app.accept_order("after-poison").await;
    app.wait_for("two orders completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 2 && app.list_len("queue").await == 0
    })
    .await;
    app.wait_for("two notifications", Duration::from_secs(10), || async {
        app.count_rows("notifications").await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count_rows("orders").await, 2);
    assert_eq!(app.count_rows("notifications").await, 2);
    assert_eq!(app.count_status("failed").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_503_not_500_while_redis_is_down() {
    // A private Redis that this test can kill.
    let port = common::process::free_port();
    let dir = tempdir();
    let start_redis = || {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--dir", &dir])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server")
    };
    let mut redis_server = start_redis();
    let url = format!("redis://127.0.0.1:{port}");
    wait_for_redis(&url).await;
    let app =
        TestApp::spawn_with(orders::Roles::parse("api").unwrap(), &[("REDIS_URL", &url)]).await;
    let order = json!({"customer_id": "c", "items": ["a"], "total": 1});
    assert_eq!(app.post_order(&order).await.status(), 202);

    redis_server.kill().unwrap();
    redis_server.wait().unwrap();
    let response = app.post_order(&order).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(
        app.http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    // Back from its append-only file: the first order is still there, and the API recovers.
    let mut redis_server = start_redis();
    wait_for_redis(&url).await;
    let mut accepted = false;
    for _ in 0..50 {
        if app.post_order(&order).await.status() == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the API recovers when Redis is back");
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let queued: usize = conn.llen(app.key("queue")).await.unwrap();
    assert_eq!(queued, 2, "the order accepted before the crash survived it");
    app.cleanup().await;
    redis_server.kill().unwrap();
    let _ = redis_server.wait();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!("orders-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

async fn wait_for_redis(url: &str) {
    for _ in 0..100 {
        if let Ok(client) = redis::Client::open(url) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis at {url} did not start");
}
