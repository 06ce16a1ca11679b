//! An order's way from POST to completed, its event and its one notification.

mod common;

use common::TestApp;
use futures_util::StreamExt;
use orders::Roles;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_post_to_completed_event_and_one_notification() {
    let app = TestApp::spawn().await;
    // Subscribe before posting, as a user with redis-cli would.
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    // The test app's channel is the default one, shared with other tests: filter by order id.
    pubsub.subscribe("order.completed").await.unwrap();

    let response = app
        .post_order(
            &json!({"customer_id": "cust-42", "items": ["sku-1", "sku-2"], "total": 123.45}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let order_id = body["order_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/orders/{order_id}"));

    let mut messages = pubsub.on_message();
    let event: Value = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let message = messages.next().await.expect("subscription open");
            let event: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
            if event["order_id"] == order_id.as_str() {
                return event;
            }
        }
    })
    .await
    .expect("the order.completed event arrives");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["customer_id"], "cust-42");
    assert_eq!(event["total"], json!(123.45));
    assert_eq!(event["items"], json!(["sku-1", "sku-2"]));
    assert!(event["event_id"].is_string());
    assert!(event["accepted_at"].is_string());
    assert!(event["completed_at"].is_string());

    let order: Value = app.get_json(&location).await;
    assert_eq!(order["status"], "completed");
    assert_eq!(order["total"], json!(123.45));
    assert_eq!(order["items"], json!(["sku-1", "sku-2"]));
    assert_eq!(order["attempts"], 1);

    // Money is exact in the database too.
    let total: String = app
        .db
        .query_one("SELECT total::text FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "123.45");

    app.wait_for("one notification", Duration::from_secs(10), || async {
        app.count_rows("notifications").await == 1
    })
    .await;
    // Nothing is left in flight.
    assert_eq!(app.list_len("queue").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_is_visible_as_queued_before_any_worker_has_it() {
    let app = TestApp::spawn_with(Roles::parse("api").unwrap(), &[]).await;
    let id = app.accept_order("c-queued").await;
    let response = app
        .http
        .get(app.url(&format!("/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "queued");
    assert_eq!(order["customer_id"], "c-queued");
    assert_eq!(order["total"], json!(19.99));
    assert_eq!(app.list_len("queue").await, 1);

    // A worker process started later picks it up.
    let worker = app.sibling(Roles::parse("worker,notifier").unwrap()).await;
    app.wait_for("completion", Duration::from_secs(10), || async {
        app.count_status("completed").await == 1
    })
    .await;
    let order: Value = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "completed");
    worker.cleanup().await;
    app.cleanup().await;
}

/// The order ids of every page of `list` (a path ending in `?` or `&`), `limit` a page, following
/// the cursor until there is none.
async fn page_through(app: &TestApp, list: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("{list}limit={limit}");
        if let Some(c) = &cursor {
            path += &format!("&cursor={c}");
        }
        let page: Value = app.get_json(&path).await;
        let orders = page["orders"].as_array().unwrap();
        assert!(orders.len() <= limit);
        seen.extend(
            orders
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return seen,
        }
    }
}

/// Without a filter the list merges the newest of each status (there is no index on the time
/// alone): every status in, pages newest first across them, nothing twice or left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unfiltered_list_pages_newest_first_across_statuses() {
    let app = TestApp::spawn_with(Roles::parse("api").unwrap(), &[]).await;
    let statuses = ["queued", "processing", "completed", "failed", "cancelled"];
    // 23 orders a millisecond apart, the statuses in turn; two share a time (the id decides).
    let mut expected: Vec<(i64, uuid::Uuid)> = Vec::new();
    for i in 0..23i64 {
        let id = uuid::Uuid::new_v4();
        let ms = if i == 11 { 10 } else { i };
        app.db
            .execute(
                "INSERT INTO orders (order_id, customer_id, total, status, accepted_at)
                 VALUES ($1, 'merge', 1, $2, timestamptz '2026-01-01' + $3 * interval '1 ms')",
                &[&id, &statuses[i as usize % 5], &(ms as f64)],
            )
            .await
            .unwrap();
        expected.push((ms, id));
    }
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.iter().map(|(_, id)| id.to_string()).collect();

    let seen = page_through(&app, "/orders?", 4).await;
    assert_eq!(seen, expected);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_and_customer_and_pages_newest_first() {
    let app = TestApp::spawn_with(Roles::ALL, &[]).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            app.accept_order(if i % 2 == 0 { "even" } else { "odd" })
                .await,
        );
    }
    app.wait_for("all completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 7
    })
    .await;

    // Pages of 3, newest first, through the cursor.
    let seen = page_through(&app, "/orders?status=completed&", 3).await;
    let newest_first: Vec<String> = ids.iter().rev().map(|id| id.to_string()).collect();
    assert_eq!(seen, newest_first);

    let odd: Value = app.get_json("/orders?customer_id=odd").await;
    assert_eq!(odd["orders"].as_array().unwrap().len(), 3);
    assert!(odd["orders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["customer_id"] == "odd"));

    let queued: Value = app.get_json("/orders?status=queued").await;
    assert_eq!(queued["orders"], json!([]));
    assert_eq!(queued["next_cursor"], Value::Null);

    // A page writes each total with its cents, as GET /orders/{id} does.
    let response = app
        .post_order(&json!({"customer_id": "cents", "items": ["x"], "total": 2.5}))
        .await;
    assert_eq!(response.status(), 202);
    app.wait_for("the eighth completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 8
    })
    .await;
    let text = app.get_text("/orders?customer_id=cents").await;
    assert!(text.contains(r#""total":2.50"#), "{text}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_accepted_whole_or_not_at_all() {
    let app = TestApp::spawn().await;
    let good = json!({"customer_id": "b", "items": ["x"], "total": 1.5});
    let bad = json!({"customer_id": "b", "items": ["x"], "total": 1.555});
    let response = app
        .http
        .post(app.url("/orders/batch"))
        .json(&json!([good, good, bad]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "[2].total");
    assert_eq!(app.list_len("queue").await, 0);

    let response = app
        .http
        .post(app.url("/orders/batch"))
        .json(&json!([good, good, good]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_ids"].as_array().unwrap().len(), 3);
    app.wait_for("batch completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 3
    })
    .await;
    assert_eq!(app.count_rows("orders").await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_is_never_completed() {
    // A long processing time, so the second order is caught while processing.
    let app = TestApp::spawn_with(
        Roles::parse("api,notifier").unwrap(),
        &[("ORDERS_PROCESSING_DELAY_MS", "3000")],
    )
    .await;
    let queued = app.accept_order("cancel-queued").await;
    let cancel = |id: uuid::Uuid| {
        app.http
            .put(app.url(&format!("/orders/{id}/status")))
            .json(&json!({"status": "cancelled"}))
            .send()
    };
    // Cancelled while still on the queue.
    let response = cancel(queued).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    // Cancelled while processing.
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    let processing = app.accept_order("cancel-processing").await;
    app.wait_for("processing", Duration::from_secs(10), || async {
        app.count_status("processing").await == 1
    })
    .await;
    assert_eq!(cancel(processing).await.unwrap().status(), 200);
    // Cancelling again is an illegal transition.
    assert_eq!(cancel(processing).await.unwrap().status(), 409);

    // Both orders are let go by the worker without completing them.
    app.wait_for(
        "the queue and processing lists to empty",
        Duration::from_secs(15),
        || async {
            app.list_len("queue").await == 0 && {
                let mut redis = app.redis.clone();
                let pending: usize = redis::AsyncCommands::hlen(&mut redis, app.key("pending"))
                    .await
                    .unwrap();
                pending == 0
            }
        },
    )
    .await;
    assert_eq!(app.count_status("cancelled").await, 2);
    assert_eq!(app.count_status("completed").await, 0);
    assert_eq!(app.count_rows("notifications").await, 0);
    worker.cleanup().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_orders_complete_exactly_once_with_one_event_each() {
    let channel = format!("test.completed.{}", uuid::Uuid::new_v4().simple());
    // Give this test a channel of its own, so the count of events is exact.
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_EVENT_CHANNEL", &channel)]).await;
    let client = redis::Client::open(common::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let counter = tokio::spawn(async move {
        let mut events = std::collections::HashMap::<String, usize>::new();
        let mut messages = pubsub.on_message();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        {
            let event: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
            *events
                .entry(event["order_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        events
    });

    // 2,000 orders: 20 batches of 50 and 1,000 single POSTs, 50 at a time.
    let order = json!({"customer_id": "bulk", "items": ["a"], "total": 0.01});
    let batch: Vec<Value> = (0..50).map(|_| order.clone()).collect();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let body: Value = app
            .http
            .post(app.url("/orders/batch"))
            .json(&batch)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for id in body["order_ids"].as_array().unwrap() {
            ids.insert(id.as_str().unwrap().to_string());
        }
    }
    let singles = futures_util::stream::iter(0..1000)
        .map(|_| app.post_order(&order))
        .buffer_unordered(50)
        .then(|r| async move { r.json::<Value>().await.unwrap() })
        .collect::<Vec<Value>>()
        .await;
    for body in singles {
        ids.insert(body["order_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 2000);

    app.wait_for("2,000 completed", Duration::from_secs(60), || async {
        app.count_status("completed").await == 2000
    })
    .await;
    app.wait_for("2,000 notifications", Duration::from_secs(30), || async {
        app.count_rows("notifications").await == 2000
    })
    .await;
    let events = counter.await.unwrap();
    assert_eq!(events.len(), 2000, "one event per order");
    assert!(events.values().all(|&n| n == 1), "no order published twice");
    assert!(events.keys().all(|id| ids.contains(id)));
    assert_eq!(app.count_rows("orders").await, 2000);
    assert_eq!(app.count_rows("order_items").await, 2000);
    let attempts: i64 = app
        .db
        .query_one("SELECT count(*) FROM orders WHERE attempts <> 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0);
    app.cleanup().await;
}

/// The completion makes a notification due in PostgreSQL; a notifier that was not running when
/// the event went out finds it there and sends it once, and a due order deleted meanwhile is
/// dropped without sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_event_was_missed_is_sent_once_from_the_database() {
    let app = TestApp::spawn_with(
        Roles::parse("api,worker").unwrap(),
        &[("ORDERS_ADMIN_TOKEN", "t")],
    )
    .await;
    let kept = app.accept_order("due-kept").await;
    let deleted = app.accept_order("due-deleted").await;
    app.wait_for(
        "both completed and due",
        Duration::from_secs(10),
        || async {
            app.count_status("completed").await == 2
                && app.count_rows("notifications_due").await == 2
        },
    )
    .await;
    assert_eq!(app.count_rows("notifications").await, 0, "no notifier ran");
    let response = app
        .http
        .delete(app.url(&format!("/orders/{deleted}")))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    // The events are long gone; the catch-up (500 ms in tests) finds what is due.
    let notifier = app.sibling(Roles::parse("notifier").unwrap()).await;
    app.wait_for("nothing due any more", Duration::from_secs(10), || async {
        app.count_rows("notifications_due").await == 0
    })
    .await;
    let sent: Vec<uuid::Uuid> = app
        .db
        .query("SELECT order_id FROM notifications", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sent, vec![kept]);
    notifier.cleanup().await;
    app.cleanup().await;
}

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
        .for_worker("w", "unused");
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
    assert!(queue.claim_waiting(0).await.unwrap().is_empty());
    assert_eq!(
        text(queue.claim_waiting(3).await.unwrap()),
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
    assert_eq!(text(queue.claim_waiting(10).await.unwrap()), ["o4", "o5"]);
    assert!(range(queue_key.clone()).await.is_empty());
    assert_eq!(
        range(processing.clone()).await,
        ["o5", "o4", "o3", "o2", "o1"]
    );
    assert!(queue.claim_waiting(10).await.unwrap().is_empty());
    let _: () = redis::AsyncCommands::del(&mut redis, &[&queue_key, &processing])
        .await
        .unwrap();
}
