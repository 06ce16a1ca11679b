//! `Idempotency-Key` beyond one order (whose basics are in `orders.rs`): one key for a whole
//! batch, a replay answering the orders' current status, and a replay of orders an admin deleted
//! answering 410 while `GET` of them stays 404.

mod common;

use common::http::{batch_ids, check_error, Field};
use common::{api_only, wait_until, Sent, TestApp};
use orders::Roles;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// Long enough for any rule on admin tokens.
const TOKEN: &str = "idempotency-admin-token";

/// POSTs `body` to `path` with this `Idempotency-Key`.
async fn post_keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> Response {
    let key = reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap();
    app.request(Method::POST, path)
        .header("idempotency-key", key)
        .json(body)
        .sent()
        .await
}

/// A 202 replay of a batch: its ids, its `status` and its `statuses`.
async fn batch_replay(response: Response) -> (Vec<Uuid>, String, Vec<String>) {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let ids = body["order_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().parse().unwrap())
        .collect();
    let statuses = body["statuses"]
        .as_array()
        .unwrap_or_else(|| panic!("a replay has statuses: {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (ids, body["status"].as_str().unwrap().to_string(), statuses)
}

/// The `status` of a 202 from `POST /orders` for order `id`.
async fn replayed_status(response: Response, id: Uuid) -> String {
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/orders/{id}"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["order_id"], id.to_string(), "{body}");
    body["status"].as_str().unwrap().to_string()
}

fn order(customer: &str, total: f64) -> Value {
    json!({"customer_id": customer, "items": ["a"], "total": total})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_covers_a_whole_batch() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let batch = json!([order("b1", 5.0), order("b2", 1.5), order("b3", 0.0)]);
    let first = post_keyed(&app, "/orders/batch", "batch-1", &batch).await;
    assert_eq!(first.status(), 202);
    let ids = batch_ids(first).await;
    assert_eq!(ids.len(), 3);
    assert_eq!(app.list_len("queue").await, 3);

    // The same batch, written differently: the same ids in the same order, nothing enqueued.
    let same = json!([
        {"total": 5.00, "items": ["a"], "customer_id": " b1 "},
        {"items": ["a"], "customer_id": "b2", "total": 1.50},
        {"customer_id": "b3", "total": 0, "items": ["a"]},
    ]);
    let (replayed, status, statuses) =
        batch_replay(post_keyed(&app, "/orders/batch", "batch-1", &same).await).await;
    assert_eq!(replayed, ids);
    assert_eq!(status, "queued");
    assert_eq!(statuses, ["queued"; 3]);
    assert_eq!(app.list_len("queue").await, 3);
    assert_eq!(app.hash_len("pending").await, 3);

    // Another batch under the key, and the key on the other route, are the conflict of one order.
    let fewer = json!([order("b1", 5.0), order("b2", 1.5)]);
    let reordered = json!([order("b2", 1.5), order("b1", 5.0), order("b3", 0.0)]);
    for (path, body) in [
        ("/orders/batch", &fewer),
        ("/orders/batch", &reordered),
        ("/orders", &order("b1", 5.0)),
    ] {
        check_error(
            post_keyed(&app, path, "batch-1", body).await,
            409,
            "conflict",
            Field::Absent,
            &format!("batch-1 reused on {path} with {body}"),
        )
        .await;
    }
    // A key of one order is another body for a batch of that one order.
    assert_eq!(
        post_keyed(&app, "/orders", "single-1", &order("s", 2.0))
            .await
            .status(),
        202
    );
    check_error(
        post_keyed(&app, "/orders/batch", "single-1", &json!([order("s", 2.0)])).await,
        409,
        "conflict",
        Field::Absent,
        "a key of POST /orders on a batch",
    )
    .await;
    assert_eq!(app.list_len("queue").await, 4);

    // The header is checked as on POST /orders.
    let long = "k".repeat(256);
    for bad in ["", "a b", long.as_str(), "café"] {
        check_error(
            post_keyed(&app, "/orders/batch", bad, &batch).await,
            400,
            "invalid_header",
            Field::Absent,
            &format!("Idempotency-Key {bad:?} on a batch"),
        )
        .await;
    }
    assert_eq!(app.list_len("queue").await, 4);

    // Processed, the batch is N rows, not 2N, and a replay says so.
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    wait_until("all completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 4
    })
    .await;
    let (replayed, status, statuses) =
        batch_replay(post_keyed(&app, "/orders/batch", "batch-1", &batch).await).await;
    assert_eq!(replayed, ids);
    assert_eq!(status, "completed");
    assert_eq!(statuses, ["completed"; 3]);
    assert_eq!(app.count_rows("orders").await, 4);
    assert_eq!(app.list_len("queue").await, 0);
    worker.cleanup().await;
    app.cleanup().await;
}

/// Identical keyed batches sent at once make one batch of orders, whichever of them got in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_with_one_key_make_one_batch() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let batch = json!([order("c1", 1.0), order("c2", 2.0)]);
    let sent = (0..10).map(|_| post_keyed(&app, "/orders/batch", "together", &batch));
    let mut answers = Vec::new();
    for response in futures_util::future::join_all(sent).await {
        assert_eq!(response.status(), 202);
        answers.push(batch_ids(response).await);
    }
    assert!(answers.iter().all(|ids| *ids == answers[0]), "{answers:?}");
    assert_eq!(app.list_len("queue").await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_answers_the_current_status() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let cancelled = order("to-cancel", 3.0);
    let id = order_id_of(post_keyed(&app, "/orders", "cancel-me", &cancelled).await).await;
    let replay = || post_keyed(&app, "/orders", "cancel-me", &cancelled);
    assert_eq!(replayed_status(replay().await, id).await, "queued");
    assert_eq!(
        app.put_status(id, r#"{"status": "cancelled"}"#)
            .await
            .status(),
        200
    );
    assert_eq!(replayed_status(replay().await, id).await, "cancelled");

    let completed = order("to-complete", 4.0);
    let done = order_id_of(post_keyed(&app, "/orders", "complete-me", &completed).await).await;
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    wait_until("completion", Duration::from_secs(10), || async {
        app.count_status("completed").await == 1
    })
    .await;
    let response = post_keyed(&app, "/orders", "complete-me", &completed).await;
    assert_eq!(replayed_status(response, done).await, "completed");
    assert_eq!(replayed_status(replay().await, id).await, "cancelled");
    assert_eq!(app.count_rows("orders").await, 2);
    worker.cleanup().await;
    app.cleanup().await;
}

/// The order id of a 202 from `POST /orders`.
async fn order_id_of(response: Response) -> Uuid {
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_deleted_orders_is_gone() {
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_ADMIN_TOKEN", TOKEN)]).await;
    let bearer = format!("Bearer {TOKEN}");
    let delete = |id: Uuid| {
        let bearer = bearer.clone();
        let app = &app;
        async move {
            let response = app.delete_order(&id.to_string(), Some(&bearer)).await;
            assert_eq!(response.status(), 204, "DELETE {id}");
        }
    };
    let gone = |response: Response, what: &'static str| async move {
        check_error(response, 410, "gone", Field::Absent, what).await;
    };

    // One order, deleted while queued: its replay is a 410, GET of it a 404.
    let body = order("deleted", 6.0);
    let id = order_id_of(post_keyed(&app, "/orders", "delete-me", &body).await).await;
    delete(id).await;
    gone(
        post_keyed(&app, "/orders", "delete-me", &body).await,
        "replay of a deleted order",
    )
    .await;
    check_error(
        app.get(&format!("/orders/{id}")).await,
        404,
        "not_found",
        Field::Absent,
        "GET of a deleted order",
    )
    .await;
    // Another body under the key is still the conflict, and nothing is enqueued.
    check_error(
        post_keyed(&app, "/orders", "delete-me", &order("other", 6.0)).await,
        409,
        "conflict",
        Field::Absent,
        "another body under a key whose order was deleted",
    )
    .await;
    assert_eq!(app.list_len("queue").await, 0);

    // A batch: one order deleted is `deleted` among the others; all of them, a 410.
    let batch = json!([order("d1", 1.0), order("d2", 2.0)]);
    let ids = batch_ids(post_keyed(&app, "/orders/batch", "delete-batch", &batch).await).await;
    delete(ids[0]).await;
    let (replayed, status, statuses) =
        batch_replay(post_keyed(&app, "/orders/batch", "delete-batch", &batch).await).await;
    assert_eq!(replayed, ids);
    assert_eq!(status, "mixed");
    assert_eq!(statuses, ["deleted", "queued"]);
    delete(ids[1]).await;
    gone(
        post_keyed(&app, "/orders/batch", "delete-batch", &batch).await,
        "replay of a deleted batch",
    )
    .await;

    // An order deleted after a worker stored and completed it.
    let stored = order("stored", 7.0);
    let id = order_id_of(post_keyed(&app, "/orders", "delete-stored", &stored).await).await;
    let worker = app.sibling(Roles::parse("worker").unwrap()).await;
    wait_until("completion", Duration::from_secs(10), || async {
        app.count_status("completed").await == 1 && app.hash_len("pending").await == 0
    })
    .await;
    let response = post_keyed(&app, "/orders", "delete-stored", &stored).await;
    assert_eq!(replayed_status(response, id).await, "completed");
    delete(id).await;
    gone(
        post_keyed(&app, "/orders", "delete-stored", &stored).await,
        "replay of an order deleted once stored",
    )
    .await;
    assert_eq!(app.state().await, common::NOTHING);
    worker.cleanup().await;
    app.cleanup().await;
}
