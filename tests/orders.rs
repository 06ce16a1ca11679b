//! Placing and following orders: one order from `POST /orders` to completed, `GET
//! /orders/{id}` while it is queued, batches, cancelling, `Idempotency-Key`, money exact to the
//! cent end to end, and accepting orders after Redis forgot the scripts.

mod common;

use common::events::Events;
use common::http::{order_body, JSON};
use common::{api_only, scalar, wait_until, Sent, TestApp};
use orders::Roles;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_from_post_to_completed_event_and_one_notification() {
    let app = TestApp::spawn().await;
    // Subscribe before posting, as a user with redis-cli would. The test app's channel is the
    // default one, shared with other tests: the event is picked by order id.
    let events = Events::subscribe(&common::redis_url(), "order.completed").await;

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

    let event = events
        .of_order(order_id.parse().unwrap(), Duration::from_secs(10))
        .await;
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
    let total: String = scalar(&app.db, "SELECT total::text FROM orders", &[]).await;
    assert_eq!(total, "123.45");

    wait_until("one notification", Duration::from_secs(10), || async {
        app.count_rows("notifications").await == 1
    })
    .await;
    // Nothing is left in flight.
    assert_eq!(app.list_len("queue").await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_order_is_visible_as_queued_before_any_worker_has_it() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let id = app.accept_order("c-queued").await;
    let response = app.get(&format!("/orders/{id}")).await;
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "queued");
    assert_eq!(order["customer_id"], "c-queued");
    assert_eq!(order["total"], json!(19.99));
    assert_eq!(app.list_len("queue").await, 1);

    // A worker process started later picks it up.
    let worker = app.sibling(Roles::parse("worker,notifier").unwrap()).await;
    wait_until("completion", Duration::from_secs(10), || async {
        app.count_status("completed").await == 1
    })
    .await;
    let order: Value = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "completed");
    worker.cleanup().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_accepted_whole_or_not_at_all() {
    let app = TestApp::spawn().await;
    let good = json!({"customer_id": "b", "items": ["x"], "total": 1.5});
    let bad = json!({"customer_id": "b", "items": ["x"], "total": 1.555});
    let response = app
        .post_json("/orders/batch", &json!([good, good, bad]))
        .await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "[2].total");
    assert_eq!(app.list_len("queue").await, 0);

    let response = app
        .post_json("/orders/batch", &json!([good, good, good]))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_ids"].as_array().unwrap().len(), 3);
    wait_until("batch completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 3
    })
    .await;
    assert_eq!(app.count_rows("orders").await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_is_never_completed() {
    // A long processing time, so the second order is caught while processing; a cancelled
    // channel of its own, which no other service on this Redis publishes on.
    let channel = format!("cancelled-{}", Uuid::new_v4().simple());
    let app = TestApp::spawn_with(
        Roles::parse("api,notifier").unwrap(),
        &[
            ("ORDERS_PROCESSING_DELAY_MS", "3000"),
            ("ORDERS_CANCELLED_CHANNEL", &channel),
        ],
    )
    .await;
    let events = Events::subscribe(&common::redis_url(), &channel).await;
    let queued = app.accept_order("cancel-queued").await;
    let cancel = |id: Uuid| app.put_status(id, r#"{"status": "cancelled"}"#);
    // Cancelled while still on the queue.
    let response = cancel(queued).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    // Cancelled while processing.
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    let processing = app.accept_order("cancel-processing").await;
    wait_until("processing", Duration::from_secs(10), || async {
        app.count_status("processing").await == 1
    })
    .await;
    assert_eq!(cancel(processing).await.status(), 200);
    // Cancelling again is an illegal transition.
    assert_eq!(cancel(processing).await.status(), 409);

    // Both orders are let go by the worker without completing them.
    wait_until(
        "the queue and processing lists to empty",
        Duration::from_secs(15),
        || async { app.list_len("queue").await == 0 && app.hash_len("pending").await == 0 },
    )
    .await;
    assert_eq!(app.count_status("cancelled").await, 2);
    assert_eq!(app.count_status("completed").await, 0);
    for id in [queued, processing] {
        let event = events.of_order(id, Duration::from_secs(5)).await;
        assert_eq!(event["status"], "cancelled", "{event}");
    }
    assert_eq!(app.count_rows("notifications").await, 0);
    worker.cleanup().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_order_and_refuses_another_body() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let post = |key: &str, body: Value| {
        app.request(Method::POST, "/orders")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
            )
            .json(&body)
            .sent()
    };
    let body = json!({"customer_id": "idem", "items": ["a"], "total": 5});
    let first = post("key-1", body.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Same order, written differently: same id, nothing new enqueued.
    let same = json!({"total": 5.00, "items": ["a"], "customer_id": " idem "});
    let second = post("key-1", same).await;
    assert_eq!(second.status(), 202);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["order_id"], second["order_id"]);
    assert_eq!(app.list_len("queue").await, 1);

    let other = post(
        "key-1",
        json!({"customer_id": "idem", "items": ["b"], "total": 5}),
    )
    .await;
    assert_eq!(other.status(), 409);
    assert_eq!(app.list_len("queue").await, 1);

    // Another key is another order.
    assert_eq!(post("key-2", body.clone()).await.status(), 202);
    assert_eq!(app.list_len("queue").await, 2);

    // A key that is not printable ASCII, or too long, is refused (a non-ASCII one used to be a
    // 405, the rejection of the path's other method outranking it).
    let long = "k".repeat(256);
    for bad in ["a b", long.as_str(), "café"] {
        let response = post(bad, body.clone()).await;
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

/// Requests made at the same moment go to Redis in one script call; each must still be judged
/// on its own: one key, one order, whatever else shares its call; the depth limit counts every
/// order accepted before it in the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_each_judged_alone() {
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_MAX_QUEUE_DEPTH", "30")]).await;
    let body = json!({"customer_id": "same", "items": ["a"], "total": 5});
    let keyed = (0..20).map(|_| {
        app.request(Method::POST, "/orders")
            .header("idempotency-key", "shared")
            .json(&body)
            .sent()
    });
    let plain = (0..40).map(|i| {
        app.request(Method::POST, "/orders")
            .json(&json!({"customer_id": format!("c{i}"), "items": ["a"], "total": 1}))
            .sent()
    });
    let (keyed, plain) = tokio::join!(
        futures_util::future::join_all(keyed),
        futures_util::future::join_all(plain)
    );
    let mut ids = HashSet::new();
    let mut keyed_full = 0;
    for response in keyed {
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
        match response.status().as_u16() {
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

/// The text of the `total` member of a compact JSON object.
fn raw_total(text: &str) -> &str {
    let start = text.find("\"total\":").expect("a total") + "\"total\":".len();
    let len = text[start..]
        .find([',', '}'])
        .expect("the end of the total");
    &text[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_exact_from_request_to_database_to_response() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    // (as sent, as the service writes it back, the same value as a JSON number)
    let totals = [
        ("0.1", "0.10"),
        ("0.07", "0.07"),
        ("99999999.99", "99999999.99"),
        ("1e2", "100.00"),
        ("123.45", "123.45"),
        ("0", "0.00"),
        ("-0", "0.00"),
        ("0.30", "0.30"),
        ("12.300", "12.30"),
        ("1.5e1", "15.00"),
        ("1234E-2", "12.34"),
        ("0.10e1", "1.00"),
        ("1E+3", "1000.00"),
        ("19.99", "19.99"),
    ];
    let mut ids = Vec::new();
    for (sent, _) in totals {
        let body = order_body(&json!("c-money"), &json!(["a"]), sent);
        let response = app.send(Method::POST, "/orders", JSON, body).await;
        assert_eq!(response.status(), 202, "total {sent}");
        let body: Value = response.json().await.unwrap();
        ids.push(body["order_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }

    let check = |sent: &str, written: &str, text: &str, when: &str| {
        let raw = raw_total(text);
        assert_eq!(raw, written, "total {sent} {when}: {text}");
        let order: Value = serde_json::from_str(text).unwrap();
        let expected: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(
            order["total"].as_f64(),
            expected.as_f64(),
            "total {sent} {when} is the same JSON number"
        );
    };
    // While queued (only in Redis).
    for ((sent, written), id) in totals.iter().zip(&ids) {
        let response = app.get(&format!("/orders/{id}")).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.contains("\"queued\""), "{text}");
        check(sent, written, &text, "while queued");
    }

    // After a worker has stored and completed them.
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    wait_until("all completed", Duration::from_secs(15), || async {
        app.count_status("completed").await == totals.len() as i64
    })
    .await;
    for ((sent, written), id) in totals.iter().zip(&ids) {
        let text = app.get_text(&format!("/orders/{id}")).await;
        assert!(text.contains("\"completed\""), "{text}");
        check(sent, written, &text, "when completed");
        let stored: String = scalar(
            &app.db,
            "SELECT total::text FROM orders WHERE order_id = $1",
            &[id],
        )
        .await;
        assert_eq!(&stored, written, "total {sent} in PostgreSQL");
    }
    // And in the list, which holds every one of them.
    let text = app.get_text("/orders?limit=500").await;
    let list: Value = serde_json::from_str(&text).unwrap();
    let listed = list["orders"].as_array().unwrap();
    let listed_ids: HashSet<Uuid> = listed
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed.len(), ids.len(), "each order listed once: {text}");
    assert_eq!(listed_ids, ids.iter().copied().collect(), "{text}");
    for order in listed {
        let id: Uuid = order["order_id"].as_str().unwrap().parse().unwrap();
        let i = ids.iter().position(|x| *x == id).unwrap();
        let (sent, _) = totals[i];
        let expected: Value = serde_json::from_str(sent).unwrap();
        assert_eq!(
            order["total"].as_f64(),
            expected.as_f64(),
            "{sent} in the list"
        );
    }
    worker.cleanup().await;
    app.cleanup().await;
}

/// A Redis that forgot the scripts (restarted, or `SCRIPT FLUSH`) is sent each one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_accepted_after_redis_forgot_the_scripts() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
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
