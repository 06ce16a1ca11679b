//! The admin routes: deleting an order (the configured bearer token, or none configured) and what
//! a delete removes; the limit on failed attempts per client address. The dead letters' listing and replay are in `retries.rs`, with the retries
//! that fill them.

mod common;

use common::http::{check_error, Field};
use common::{admin_bearer, api_only, scalar, wait_until, Sent, TestApp, ADMIN_TOKEN, ONE_QUEUED};
use orders::Roles;
use reqwest::{Method, Response};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_is_refused_when_no_admin_token_is_configured() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let id = app.accept_order("c-admin").await;
    let before = app.state().await;
    for auth in [
        None,
        Some("Bearer "),
        Some("Bearer s3cret"),
        Some("Basic eDp5"),
    ] {
        check_error(
            app.delete_order(&id.to_string(), auth).await,
            403,
            "forbidden",
            Field::Absent,
            &format!("DELETE with {auth:?} and no token configured"),
        )
        .await;
        check_error(
            app.delete_order(&Uuid::new_v4().to_string(), auth).await,
            403,
            "forbidden",
            Field::Absent,
            &format!("DELETE of an unknown order with {auth:?}"),
        )
        .await;
    }
    assert_eq!(app.state().await, before);
    let response = app.get(&format!("/orders/{id}")).await;
    assert_eq!(response.status(), 200, "the order is still there");
    app.cleanup().await;
}

/// GET of a deleted order is a 404.
async fn assert_gone(app: &TestApp, id: Uuid) {
    let response = app.get(&format!("/orders/{id}")).await;
    check_error(
        response,
        404,
        "not_found",
        Field::Absent,
        "GET after DELETE",
    )
    .await;
}

/// Rows of order `id` in a table.
async fn rows_in(app: &TestApp, table: &str, id: Uuid) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE order_id = $1");
    scalar(&app.db, &sql, &[&id]).await
}

/// Rows of order `id`: (in orders, in order_items).
async fn rows_of(app: &TestApp, id: Uuid) -> (i64, i64) {
    (
        rows_in(app, "orders", id).await,
        rows_in(app, "order_items", id).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_needs_the_configured_token() {
    // Enough failed attempts allowed for every wrong header below.
    let app = TestApp::spawn_with(
        Roles::ALL,
        &[
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_ADMIN_AUTH_MAX_FAILURES", "100"),
        ],
    )
    .await;
    let id = app.accept_order("c-delete").await;
    let other = app.accept_order("c-keep").await;
    wait_until(
        "both completed and notified",
        Duration::from_secs(10),
        || async {
            app.count_status("completed").await == 2 && app.count_rows("notifications").await == 2
        },
    )
    .await;
    assert_eq!(rows_of(&app, id).await, (1, 2));
    let before = app.state().await;

    let shorter = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let longer = format!("Bearer {ADMIN_TOKEN}2");
    let upper = format!("Bearer {}", ADMIN_TOKEN.to_uppercase());
    for (auth, status, code) in [
        (None, 401, "unauthorized"),
        (Some("Basic czNjcmV0"), 401, "unauthorized"),
        (Some(ADMIN_TOKEN), 401, "unauthorized"),
        (Some("Bearer"), 401, "unauthorized"),
        // HTTP drops the trailing space: this is "Bearer" with no token.
        (Some("Bearer "), 401, "unauthorized"),
        (Some("Bearer wrong"), 403, "forbidden"),
        (Some(&shorter), 403, "forbidden"),
        (Some(&longer), 403, "forbidden"),
        (Some(&upper), 403, "forbidden"),
    ] {
        for target in [id.to_string(), Uuid::new_v4().to_string(), "abc".into()] {
            check_error(
                app.delete_order(&target, auth).await,
                status,
                code,
                Field::Absent,
                &format!("DELETE /orders/{target} with {auth:?}"),
            )
            .await;
        }
    }
    assert_eq!(app.state().await, before, "refused deletes changed nothing");

    let bearer = admin_bearer();
    let response = app.delete_order(&id.to_string(), Some(&bearer)).await;
    assert_eq!(response.status(), 204);
    assert!(
        response.bytes().await.unwrap().is_empty(),
        "204 has no body"
    );
    assert_eq!(
        rows_of(&app, id).await,
        (0, 0),
        "the order and its items are gone"
    );
    let notified = rows_in(&app, "notifications", id).await;
    assert_eq!(notified, 0, "its notification is gone");
    assert_eq!(
        rows_of(&app, other).await,
        (1, 2),
        "the other order is kept"
    );
    assert_gone(&app, id).await;
    let after = app.state().await;
    for target in [
        id.to_string(),
        Uuid::new_v4().to_string(),
        "abc".into(),
        "%FF".into(),
    ] {
        check_error(
            app.delete_order(&target, Some(&bearer)).await,
            404,
            "not_found",
            Field::Absent,
            &format!("DELETE /orders/{target} with the right token"),
        )
        .await;
    }
    assert_eq!(app.state().await, after);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_takes_a_queued_order_off_the_queue() {
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let bearer = admin_bearer();
    let id = app.accept_order("c-delete-queued").await;
    let keep = app.accept_order("c-keep-queued").await;
    let response = app.delete_order(&id.to_string(), Some(&bearer)).await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.state().await, ONE_QUEUED);
    assert_gone(&app, id).await;
    let response = app.get(&format!("/orders/{keep}")).await;
    assert_eq!(response.status(), 200);
    check_error(
        app.delete_order(&id.to_string(), Some(&bearer)).await,
        404,
        "not_found",
        Field::Absent,
        "second DELETE",
    )
    .await;
    app.cleanup().await;
}

/// Every admin request from one client, with `authorization` (or none): each admin operation.
async fn every_admin_operation(app: &TestApp, id: Uuid, authorization: &str) -> Vec<Response> {
    let mut answers = Vec::new();
    for (method, path) in [
        (Method::DELETE, format!("/orders/{id}")),
        (Method::GET, "/dead-letters".to_string()),
        (Method::POST, format!("/dead-letters/{id}/retry")),
    ] {
        let request = app
            .request(method, &path)
            .header("authorization", authorization);
        answers.push(request.sent().await);
    }
    answers
}

/// Past the failed attempts allowed, every admin request from the client is a 429 with
/// `Retry-After`, even with the right token, until the window ends; the failures are logged, the
/// requests refused meanwhile are not. Every request here comes from 127.0.0.1, one client
/// whether the server records client addresses or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_the_admin_token_is_stopped_per_client() {
    let app = TestApp::spawn_with(
        api_only(),
        &[
            ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
            ("ORDERS_ADMIN_AUTH_MAX_FAILURES", "5"),
            ("ORDERS_ADMIN_AUTH_WINDOW_MS", "3000"),
        ],
    )
    .await;
    let id = app.accept_order("c-guess").await;
    let before = app.state().await;
    for auth in [
        None,
        Some("Bearer guess-1"),
        Some("Basic eDp5"),
        Some("Bearer guess-3"),
        Some("Bearer guess-4"),
    ] {
        let status = app.delete_order(&id.to_string(), auth).await.status();
        assert!(matches!(status.as_u16(), 401 | 403), "{auth:?}: {status}");
    }

    let right = admin_bearer();
    let mut refused = every_admin_operation(&app, id, &right).await;
    refused.extend(every_admin_operation(&app, id, "Bearer guess-5").await);
    for response in refused {
        let what = format!("{} after the failures", response.url().path());
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=3).contains(&retry_after),
            "{what}: Retry-After {retry_after}"
        );
        check_error(response, 429, "too_many_requests", Field::Absent, &what).await;
    }
    assert_eq!(
        app.state().await,
        before,
        "refused requests changed nothing"
    );
    let response = app.get(&format!("/orders/{id}")).await;
    assert_eq!(response.status(), 200, "public routes are not limited");

    let failed = app.log.all("admin authentication failed");
    let blocked = app
        .log
        .all("admin authentication blocked: too many failures");
    assert_eq!(failed.len(), 3, "the first failures are logged: {failed:?}");
    assert_eq!(blocked.len(), 1, "the block is logged once: {blocked:?}");
    for line in failed.iter().chain(&blocked) {
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["route"], "/orders/{id}", "{line}");
        assert_eq!(line["client"], "127.0.0.1", "{line}");
    }
    assert_eq!(blocked[0]["failures"], 5);

    // Another address (all of 127/8 is this machine's) is not blocked.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let response = elsewhere
        .get(app.url("/dead-letters"))
        .header("authorization", &right)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "another client address is not blocked"
    );

    wait_until("the window to end", Duration::from_secs(15), || async {
        app.delete_order(&id.to_string(), Some(&right))
            .await
            .status()
            == 204
    })
    .await;
    assert_gone(&app, id).await;
    app.cleanup().await;
}
