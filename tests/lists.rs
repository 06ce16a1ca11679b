//! `GET /orders`: newest first, filtered by status and customer, paged with `limit` and the
//! opaque `next_cursor`. Bad list queries are in `errors.rs`, with the other errors.

mod common;

use common::{api_only, wait_until, TestApp};
use orders::Roles;
use serde_json::{json, Value};
use std::time::Duration;

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
    let app = TestApp::spawn_with(api_only(), &[]).await;
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
    wait_until("all completed", Duration::from_secs(10), || async {
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
    wait_until("the eighth completed", Duration::from_secs(10), || async {
        app.count_status("completed").await == 8
    })
    .await;
    let text = app.get_text("/orders?customer_id=cents").await;
    assert!(text.contains(r#""total":2.50"#), "{text}");
    app.cleanup().await;
}

/// A page stops short of its limit rather than grow past about 256 KiB (orders of 100 long items
/// would make a page of 500 a 6 MB response), and the cursor still reaches every order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_orders_stops_at_about_256_kib() {
    let app = TestApp::spawn_with(Roles::ALL, &[]).await;
    let items: Vec<String> = (0..100)
        .map(|i| format!("{i:03}{}", "x".repeat(125)))
        .collect();
    let order = json!({"customer_id": "c-large", "items": items, "total": 1});
    let batch = Value::Array(vec![order; 120]);
    let response = app.post_json("/orders/batch", &batch).await;
    assert_eq!(response.status(), 202);
    wait_until("the batch to complete", Duration::from_secs(30), || async {
        app.count_status("completed").await == 120
    })
    .await;
    let first: Value = app.get_json("/orders?limit=500").await;
    let shown = first["orders"].as_array().unwrap().len();
    assert!(
        (1..120).contains(&shown),
        "{shown} orders on the first page"
    );
    assert!(first["next_cursor"].is_string());
    let all = page_through(&app, "/orders?", 500).await;
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (120, 120));
    app.cleanup().await;
}
