//! The admin routes: deleting an order (the configured bearer token, or none configured) and what
//! a delete removes. The dead letters' listing and replay are in `retries.rs`, with the retries
//! that fill them.

mod common;

use common::http::{check_error, Field};
use common::{api_only, scalar, wait_until, TestApp, ONE_QUEUED};
use orders::Roles;
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
    const TOKEN: &str = "s3cret";
    let app = TestApp::spawn_with(Roles::ALL, &[("ORDERS_ADMIN_TOKEN", TOKEN)]).await;
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

    for (auth, status, code) in [
        (None, 401, "unauthorized"),
        (Some("Basic czNjcmV0"), 401, "unauthorized"),
        (Some(TOKEN), 401, "unauthorized"),
        (Some("Bearer"), 401, "unauthorized"),
        // HTTP drops the trailing space: this is "Bearer" with no token.
        (Some("Bearer "), 401, "unauthorized"),
        (Some("Bearer wrong"), 403, "forbidden"),
        (Some("Bearer s3cre"), 403, "forbidden"),
        (Some("Bearer s3cret2"), 403, "forbidden"),
        (Some("Bearer S3CRET"), 403, "forbidden"),
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

    let bearer = format!("Bearer {TOKEN}");
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
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_ADMIN_TOKEN", "s3cret")]).await;
    let id = app.accept_order("c-delete-queued").await;
    let keep = app.accept_order("c-keep-queued").await;
    let response = app
        .delete_order(&id.to_string(), Some("Bearer s3cret"))
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.state().await, ONE_QUEUED);
    assert_gone(&app, id).await;
    let response = app.get(&format!("/orders/{keep}")).await;
    assert_eq!(response.status(), 200);
    check_error(
        app.delete_order(&id.to_string(), Some("Bearer s3cret"))
            .await,
        404,
        "not_found",
        Field::Absent,
        "second DELETE",
    )
    .await;
    app.cleanup().await;
}
