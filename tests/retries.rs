//! Retries through the schedule, dead letters and their replay, idempotency keys, backpressure.

mod common;

use common::TestApp;
use orders::Roles;
use redis::AsyncCommands;
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "s3cret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_keeps_failing_is_dead_lettered_then_replayed() {
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_MAX_ATTEMPTS", "3"),
            ("ORDERS_RETRY_BASE_MS", "50"),
            ("ORDERS_ADMIN_TOKEN", TOKEN),
        ],
    )
    .await;
    // A fault that hits every try of this customer's order, while the database stays up.
    app.db
        .batch_execute(
            "ALTER TABLE orders ADD CONSTRAINT test_fault
             CHECK (status <> 'processing' OR customer_id <> 'boom')",
        )
        .await
        .unwrap();
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("order.failed").await.unwrap();

    let id = app.accept_order("boom").await;
    app.wait_for("the order to fail", Duration::from_secs(20), || async {
        app.count_status("failed").await == 1
    })
    .await;
    let order: Value = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "failed");
    assert!(order["last_error"].as_str().unwrap().contains("test_fault"));

    // One order.failed event for it.
    let mut messages = pubsub.on_message();
    let event: Value = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = futures_util::StreamExt::next(&mut messages).await.unwrap();
            let e: Value = serde_json::from_slice(m.get_payload_bytes()).unwrap();
            if e["order_id"] == id.to_string() {
                return e;
            }
        }
    })
    .await
    .expect("an order.failed event");
    assert_eq!(event["status"], "failed");

    // Listed in the dead letters with its three errors.
    let dead: Value = app
        .http
        .get(app.url("/dead-letters"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["total"], 1);
    let entry = &dead["dead_letters"][0];
    assert_eq!(entry["order_id"], id.to_string());
    assert_eq!(entry["errors"].as_array().unwrap().len(), 3);
    assert_eq!(
        app.http
            .get(app.url("/dead-letters"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Mend the fault and replay it: it completes, once.
    app.db
        .batch_execute("ALTER TABLE orders DROP CONSTRAINT test_fault")
        .await
        .unwrap();
    let response = app
        .http
        .post(app.url(&format!("/dead-letters/{id}/retry")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.wait_for(
        "the replayed order to complete",
        Duration::from_secs(10),
        || async { app.count_status("completed").await == 1 },
    )
    .await;
    assert_eq!(app.count_rows("orders").await, 1);
    assert_eq!(app.list_len("dead").await, 0);
    // Replaying again finds nothing.
    let again = app
        .http
        .post(app.url(&format!("/dead-letters/{id}/retry")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    app.wait_for("one notification", Duration::from_secs(10), || async {
        app.count_rows("notifications").await == 1
    })
    .await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_wait_out_a_database_outage_and_complete() {
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_RETRY_BASE_MS", "100")]).await;
    let db_name = app
        .config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let admin = common::connect(&format!("{}/postgres", common::postgres_base())).await;
    // Cut this test's database off: no new connections, existing ones terminated.
    let block = format!(
        "ALTER DATABASE {db_name} ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{db_name}' AND pid <> pg_backend_pid();"
    );
    admin.batch_execute(&block).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.accept_order(&format!("outage-{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db_name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    // The app's observer connection was terminated too: use a new one.
    let db = common::connect(&app.config.database_url).await;
    let start = std::time::Instant::now();
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM orders WHERE status = 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{done} of 20 completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: i64 = db
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 20);
    let failed: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE status = 'failed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_order_and_refuses_another_body() {
    let app = TestApp::spawn_with(Roles::parse("api").unwrap(), &[]).await;
    let post = |key: &str, body: Value| {
        app.http
            .post(app.url("/orders"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let body = json!({"customer_id": "idem", "items": ["a"], "total": 5});
    let first = post("key-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Same order, written differently: same id, nothing new enqueued.
    let same = json!({"total": 5.00, "items": ["a"], "customer_id": " idem "});
    let second = post("key-1", same).await.unwrap();
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["order_id"], second["order_id"]);
    assert_eq!(app.list_len("queue").await, 1);

    let other = post(
        "key-1",
        json!({"customer_id": "idem", "items": ["b"], "total": 5}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(app.list_len("queue").await, 1);

    // Another key is another order.
    assert_eq!(post("key-2", body.clone()).await.unwrap().status(), 202);
    assert_eq!(app.list_len("queue").await, 2);

    // A key that is not printable ASCII, or too long, is refused.
    let long = "k".repeat(256);
    for bad in ["a b", long.as_str()] {
        let response = post(bad, body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_header");
    }
    assert_eq!(app.list_len("queue").await, 2);
    // The key is remembered for 24 hours.
    let mut redis = app.redis.clone();
    let ttl: i64 = redis.ttl(app.key("idempotency:key-1")).await.unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "ttl {ttl}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_enqueues_nothing() {
    let app = TestApp::spawn_with(
        Roles::parse("api").unwrap(),
        &[("ORDERS_MAX_QUEUE_DEPTH", "3")],
    )
    .await;
    for i in 0..3 {
        app.accept_order(&format!("c{i}")).await;
    }
    let response = app
        .post_order(&json!({"customer_id": "late", "items": ["a"], "total": 1}))
        .await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "queue_full");
    let batch = app
        .http
        .post(app.url("/orders/batch"))
        .json(&json!([{"customer_id": "b", "items": ["a"], "total": 1}]))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 429);
    assert_eq!(app.list_len("queue").await, 3);
    app.cleanup().await;
}

/// Requests made at the same moment go to Redis in one script call; each must still be judged
/// on its own: one key, one order, whatever else shares its call; the depth limit counts every
/// order accepted before it in the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_each_judged_alone() {
    let app = TestApp::spawn_with(
        Roles::parse("api").unwrap(),
        &[("ORDERS_MAX_QUEUE_DEPTH", "30")],
    )
    .await;
    let body = json!({"customer_id": "same", "items": ["a"], "total": 5});
    let keyed = (0..20).map(|_| {
        app.http
            .post(app.url("/orders"))
            .header("idempotency-key", "shared")
            .json(&body)
            .send()
    });
    let plain = (0..40).map(|i| {
        app.http
            .post(app.url("/orders"))
            .json(&json!({"customer_id": format!("c{i}"), "items": ["a"], "total": 1}))
            .send()
    });
    let (keyed, plain) = tokio::join!(
        futures_util::future::join_all(keyed),
        futures_util::future::join_all(plain)
    );
    let mut ids = std::collections::HashSet::new();
    let mut keyed_full = 0;
    for response in keyed {
        let response = response.unwrap();
        match response.status().as_u16() {
            202 => {
                let reply: Value = response.json().await.unwrap();
                ids.insert(reply["order_id"].as_str().unwrap().to_string());
            }
            429 => keyed_full += 1,
            other => panic!("keyed request answered {other}"),
        }
    }
    let mut plain_accepted = 0;
    for response in plain {
        match response.unwrap().status().as_u16() {
            202 => plain_accepted += 1,
            429 => {}
            other => panic!("request answered {other}"),
        }
    }
    // Every keyed request that got in names the same single order.
    assert!(ids.len() <= 1, "one key made {} orders", ids.len());
    let keyed_orders = ids.len();
    assert!(keyed_orders == 1 || keyed_full == 20);
    // Exactly the accepted orders are queued, and never more than the limit.
    let queued = app.list_len("queue").await;
    assert_eq!(queued, plain_accepted + keyed_orders);
    assert_eq!(queued, 30, "the limit is filled exactly");
    app.cleanup().await;
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
    app.wait_for(
        "both orphans completed",
        Duration::from_secs(15),
        || async { app.count_status("completed").await == 2 },
    )
    .await;
    let left: Vec<String> = redis.keys(app.key("processing:dead-worker")).await.unwrap();
    assert!(left.is_empty());
    app.cleanup().await;
}

/// A Redis that forgot the scripts (restarted, or `SCRIPT FLUSH`) is sent each one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_accepted_after_redis_forgot_the_scripts() {
    let app = TestApp::spawn_with(Roles::parse("api").unwrap(), &[]).await;
    app.accept_order("before").await;
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    app.accept_order("after").await;
    assert_eq!(app.list_len("queue").await, 2);
    app.cleanup().await;
}
