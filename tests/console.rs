//! The operator console (`/console`): its page, script and style sheet are served with their
//! types and the Content-Security-Policy, `/` leads to it, and admin routes refuse a caller
//! without the token; then, in a real headless Chromium (`common::browser`): the overview shows
//! what `/stats` says, an order looked up by id shows its timeline, a dead letter retried from the
//! page leaves the list and completes, pausing from the page stops completions while orders are
//! still accepted and resuming drains them, without a token no action control is shown and a
//! forged admin call is refused, and no view scrolls sideways at 375 px. Each view is saved as a
//! PNG under `target/console-screenshots/`.

mod common;

use common::browser::{screenshot_dir, Browser};
use common::http::accept_batch;
use common::{admin_bearer, api_only, wait_until, Sent, TestApp, ADMIN_TOKEN};
use orders::Roles;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// The policy of every console response, as the contract states it.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The viewport of the wide tests.
const WIDE: (u32, u32) = (1280, 900);

/// Every view of the console, by its hash.
const VIEWS: [&str; 5] = ["overview", "workers", "orders", "dead", "scheduled"];

/// All roles, with the admin token.
async fn spawn(overrides: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN)];
    settings.extend_from_slice(overrides);
    TestApp::spawn_with(Roles::ALL, &settings).await
}

/// Fails every try of the orders of customer `boom` while the database stays up.
async fn break_customer_boom(app: &TestApp) {
    app.db
        .batch_execute(
            "ALTER TABLE orders ADD CONSTRAINT test_fault
             CHECK (status <> 'processing' OR customer_id <> 'boom')",
        )
        .await
        .unwrap();
}

async fn mend_customer_boom(app: &TestApp) {
    app.db
        .batch_execute("ALTER TABLE orders DROP CONSTRAINT test_fault")
        .await
        .unwrap();
}

/// Digits only: "1,234" (or "1 234", "1.234") is 1234.
fn digits(text: &str) -> Option<i64> {
    let only: String = text.chars().filter(char::is_ascii_digit).collect();
    only.parse().ok()
}

/// Waits until the service is idle: nothing queued, in flight or processing.
async fn wait_idle(app: &TestApp) -> Value {
    let mut stats = Value::Null;
    wait_until(
        "the pipeline to be idle",
        Duration::from_secs(30),
        async || {
            stats = app.get_json("/stats").await;
            stats["queue_depth"] == 0
                && stats["in_flight"] == 0
                && stats["orders"]["queued"] == 0
                && stats["orders"]["processing"] == 0
        },
    )
    .await;
    stats
}

// --- route tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_its_script_and_its_style_are_served_with_the_policy() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let files = [
        (
            "/console",
            "text/html",
            include_str!("../src/http/console/index.html"),
        ),
        (
            "/console/console.js",
            "text/javascript",
            include_str!("../src/http/console/console.js"),
        ),
        (
            "/console/console.css",
            "text/css",
            include_str!("../src/http/console/console.css"),
        ),
    ];
    for (path, kind, file) in files {
        for method in [Method::GET, Method::HEAD] {
            let response = app.request(method.clone(), path).sent().await;
            assert_eq!(response.status(), 200, "{method} {path}");
            let headers = response.headers().clone();
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(
                header("content-type").starts_with(kind),
                "{path}: {headers:?}"
            );
            assert_eq!(header("content-security-policy"), POLICY, "{path}");
            assert_eq!(header("cache-control"), "no-cache", "{path}");
            assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
            assert!(headers.contains_key("x-request-id"), "{path}");
            let body = response.text().await.unwrap();
            if method == Method::GET {
                assert_eq!(body, file, "{path} serves the file of the repository");
            } else {
                assert!(body.is_empty(), "HEAD {path}");
            }
        }
        // Only GET and HEAD.
        let response = app.request(Method::POST, path).sent().await;
        assert_eq!(response.status(), 405, "POST {path}");
    }

    // The front page leads to the console.
    let response = app.get("/").await;
    assert_eq!(response.status(), 308);
    assert_eq!(response.headers()["location"], "/console");

    // The page names nothing outside this origin: every src and href is a console path, a
    // fragment or data.
    let page = app.get_text("/console").await;
    for attribute in ["src=\"", "href=\""] {
        for (i, _) in page.match_indices(attribute) {
            let value = &page[i + attribute.len()..];
            let value = &value[..value.find('"').unwrap()];
            assert!(
                value.starts_with("/console/") || value.starts_with('#') || value == "data:,",
                "{attribute}{value}\" in the page"
            );
        }
    }
    // Unknown console paths are unknown routes.
    let response = app.get("/console/other.js").await;
    assert_eq!(response.status(), 404);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_a_caller_without_the_token() {
    let app = spawn(&[("ORDERS_ADMIN_AUTH_MAX_FAILURES", "1000")]).await;
    let id = app.accept_order("c-refused").await;
    let some = uuid::Uuid::new_v4();
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/dead-letters".to_string(), None),
        (Method::POST, format!("/dead-letters/{id}/retry"), None),
        (Method::DELETE, format!("/dead-letters/{id}"), None),
        (
            Method::POST,
            "/dead-letters/retry".to_string(),
            Some(json!({"filter": {}})),
        ),
        (Method::DELETE, "/dead-letters".to_string(), None),
        (Method::GET, "/scheduled".to_string(), None),
        (Method::POST, format!("/scheduled/{id}/retry"), None),
        (Method::POST, "/workers/pause".to_string(), None),
        (Method::POST, "/workers/resume".to_string(), None),
        (Method::DELETE, format!("/orders/{some}"), None),
    ];
    for (method, path, body) in &cases {
        for authorization in [None, Some("Bearer forged-token-0123456789".to_string())] {
            let mut request = app.request(method.clone(), path);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.sent().await;
            let status = response.status().as_u16();
            let error: Value = response.json().await.unwrap();
            let code = error["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                (status, code.as_str()) == (401, "unauthorized")
                    || (authorization.is_some() && (status, code.as_str()) == (403, "forbidden")),
                "{method} {path} with {authorization:?}: {status} {error}"
            );
        }
    }
    // Nothing was done: claiming runs, the order is still there.
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["claiming"], "running", "{stats}");
    assert_eq!(app.get(&format!("/orders/{id}")).await.status(), 200);
    // With the token the same reads answer.
    for path in ["/dead-letters", "/scheduled"] {
        let response = app
            .request(Method::GET, path)
            .header("authorization", admin_bearer())
            .sent()
            .await;
        assert_eq!(response.status(), 200, "{path}");
    }
    app.cleanup().await;
}

// --- browser tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_what_stats_says_after_a_load() {
    // Orders accepted while nothing takes them, three of them cancelled, then a worker drains the
    // rest: over a thousand completions, so the counts need their thousands separator.
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let batch_url = app.url("/orders/batch");
    let mut ids = accept_batch(&app.http, &batch_url, "c-load", 700).await;
    ids.extend(accept_batch(&app.http, &batch_url, "c-load", 500).await);
    for id in &ids[..3] {
        let response = app.put_status(*id, r#"{"status": "cancelled"}"#).await;
        assert_eq!(response.status(), 200);
    }
    let workers = app.sibling(Roles::parse("worker,notifier").unwrap()).await;
    let stats = wait_idle(&app).await;
    assert_eq!(stats["orders"]["completed"], 1197, "{stats}");
    assert_eq!(stats["orders"]["cancelled"], 3, "{stats}");

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.open(&app.url("/console")).await;
    let stats: Value = app.get_json("/stats").await;
    for key in [
        "queue_depth",
        "in_flight",
        "scheduled_retries",
        "dead_letters",
        "live_workers",
        "completed_last_minute",
    ] {
        let css = format!("[data-stat='{key}']");
        let expected = stats[key].as_i64().unwrap();
        browser
            .wait_for(&format!("{key} = {expected}"), || async {
                browser.text_of(&css).await.as_deref().and_then(digits) == Some(expected)
            })
            .await;
    }
    for status in [
        "queued",
        "processing",
        "completed",
        "failed",
        "cancelled",
        "total",
    ] {
        let css = format!("[data-count='{status}']");
        let expected = stats["orders"][status].as_i64().unwrap();
        browser
            .wait_for(&format!("{status} = {expected}"), || async {
                browser.text_of(&css).await.as_deref().and_then(digits) == Some(expected)
            })
            .await;
    }
    // With the separator of the browser's locale (en-US).
    assert_eq!(
        browser.text_of("[data-count='completed']").await.as_deref(),
        Some("1,197")
    );
    // Timings of the completions are shown, not dashes.
    for cell in [
        "end_to_end_ms.p50",
        "end_to_end_ms.p99",
        "processing_ms.p95",
    ] {
        let text = browser
            .text_of(&format!("[data-timing='{cell}']"))
            .await
            .unwrap_or_default();
        assert!(text.chars().any(|c| c.is_ascii_digit()), "{cell}: {text:?}");
    }
    assert!(!browser.shown("#paused-banner").await);
    // The chart of the last 10 minutes holds every completion.
    browser
        .wait_for("the chart", || async {
            browser
                .text_of("[data-test='history-completed']")
                .await
                .as_deref()
                == Some("1,197")
        })
        .await;
    assert_eq!(
        browser
            .text_of("[data-test='history-failed']")
            .await
            .as_deref(),
        Some("0")
    );
    browser.screenshot("overview").await;
    browser.close().await;
    workers.cleanup().await;
    app.cleanup().await;
}

/// The events of the order's timeline on its page, in order.
async fn timeline(browser: &Browser) -> Vec<String> {
    let events = browser
        .eval(
            "return [...document.querySelectorAll('#order-timeline li[data-event]')]
               .map((li) => li.getAttribute('data-event'));",
            vec![],
        )
        .await;
    serde_json::from_value(events).unwrap_or_default()
}

/// The errors of the order on its page.
async fn order_errors(browser: &Browser) -> Vec<String> {
    let errors = browser
        .eval(
            "return [...document.querySelectorAll('#order-errors li:not(.muted)')]
               .map((li) => li.textContent);",
            vec![],
        )
        .await;
    serde_json::from_value(errors).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_looked_up_by_id_shows_its_timeline() {
    let app = spawn(&[]).await;
    let request_id = format!("console-{}", uuid::Uuid::new_v4().simple());
    let response = app
        .request(Method::POST, "/orders")
        .header("x-request-id", &request_id)
        .json(&json!({"customer_id": "c-timeline", "items": ["sku-1", "sku-2"], "total": 1234.5}))
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["order_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Others of the same customer, so the list and the lookup have something to tell apart.
    for _ in 0..3 {
        app.accept_order("c-timeline").await;
    }
    wait_until("four notifications", Duration::from_secs(20), || async {
        app.count_rows("notifications").await == 4
    })
    .await;

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.open(&app.url("/console#orders")).await;
    // Listed by status and customer.
    browser
        .find("#list-status")
        .await
        .select_by_value("completed")
        .await
        .unwrap();
    browser.type_into("#list-customer", "c-timeline").await;
    browser.click("#list-go").await;
    browser
        .find(&format!("#orders-body tr[data-order='{id}']"))
        .await;
    let rows = browser
        .eval(
            "return document.querySelectorAll('#orders-body tr[data-order]').length;",
            vec![],
        )
        .await;
    assert_eq!(rows, json!(4));
    browser.screenshot("orders").await;

    // Looked up by id.
    browser.type_into("#lookup-id", &id).await;
    browser.click("#lookup-go").await;
    browser.wait_for_text("#order-id", &id).await;
    browser
        .wait_for("the timeline of the order", || async {
            timeline(&browser).await == ["accepted", "processing", "completed", "notified"]
        })
        .await;
    browser
        .wait_for_text("[data-field='status']", "completed")
        .await;
    browser
        .wait_for_text("[data-field='request-id']", &request_id)
        .await;
    browser
        .wait_for_text("[data-field='total']", "1,234.50")
        .await;
    browser.wait_for_text("[data-field='attempts']", "1").await;
    let notification = browser
        .text_of("[data-field='notification']")
        .await
        .unwrap_or_default();
    assert!(notification.starts_with("sent"), "{notification:?}");
    assert!(order_errors(&browser).await.is_empty());
    // Every time reads relative, with the exact time in its title.
    let times = browser
        .eval(
            "return [...document.querySelectorAll('#order-timeline time')]
               .map((t) => [t.textContent, t.title, t.getAttribute('datetime')]);",
            vec![],
        )
        .await;
    for time in times.as_array().unwrap() {
        assert!(
            time[0].as_str().unwrap().ends_with("ago") || time[0] == "just now",
            "{time}"
        );
        assert!(
            time[1]
                .as_str()
                .unwrap()
                .contains(time[2].as_str().unwrap()),
            "{time}"
        );
    }
    browser.screenshot("order").await;

    // An unknown id says so, on the page.
    let unknown = uuid::Uuid::new_v4();
    browser.view(&format!("order/{unknown}")).await;
    browser
        .wait_for("the unknown order to be reported", || async {
            browser.shown("#order-missing").await
        })
        .await;
    assert!(!browser.shown("#order-detail").await);
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_retried_from_the_page_leaves_the_list_and_completes() {
    let app = spawn(&[("ORDERS_MAX_ATTEMPTS", "2"), ("ORDERS_RETRY_BASE_MS", "50")]).await;
    break_customer_boom(&app).await;
    let id = app.accept_order("boom").await.to_string();
    accept_batch(&app.http, &app.url("/orders/batch"), "c-fine", 40).await;
    wait_until(
        "the order to be dead-lettered",
        Duration::from_secs(20),
        || async { app.get_json("/stats").await["dead_letters"] == 1 },
    )
    .await;
    wait_idle(&app).await;

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.open(&app.url("/console")).await;
    browser.use_token(ADMIN_TOKEN).await;
    browser.view("dead").await;
    let row = format!("#dead-body tr[data-order='{id}']");
    browser.find(&row).await;
    browser.wait_for_text("#dead-total", "1 in all").await;
    let errors = browser
        .eval(
            "return document.querySelectorAll(arguments[0] + ' ul.errors li').length;",
            vec![json!(row)],
        )
        .await;
    assert_eq!(errors, json!(2), "both tries' errors");
    browser.screenshot("dead").await;
    // Its page tells the story so far: failed, dead-lettered, both errors.
    browser.view(&format!("order/{id}")).await;
    browser
        .wait_for_text("[data-field='status']", "failed")
        .await;
    browser
        .wait_for("the timeline to show the dead letter", || async {
            let events = timeline(&browser).await;
            events.first().map(String::as_str) == Some("accepted")
                && events.iter().any(|e| e == "failed")
                && events.iter().any(|e| e == "dead_lettered")
        })
        .await;
    assert_eq!(order_errors(&browser).await.len(), 2);
    assert!(browser.shown("#order-retry-dead").await);
    browser.screenshot("order-dead").await;

    // Mended, then retried from its row in the list.
    mend_customer_boom(&app).await;
    browser.view("dead").await;
    browser.find(&row).await;
    browser
        .click(&format!("{row} [data-test='dead-retry']"))
        .await;
    browser
        .wait_for("the dead letter to leave the list", || async {
            !browser.shown(&row).await
        })
        .await;
    browser.wait_for_text("#dead-total", "0 in all").await;
    wait_until(
        "the retried order to complete",
        Duration::from_secs(20),
        || async { app.get_json(&format!("/orders/{id}")).await["status"] == "completed" },
    )
    .await;
    // Its page: completed (the errors of the tries before: see the test after this one).
    browser.view(&format!("order/{id}")).await;
    browser
        .wait_for_text("[data-field='status']", "completed")
        .await;
    browser
        .wait_for("the timeline to show the completion", || async {
            let events = timeline(&browser).await;
            events.first().map(String::as_str) == Some("accepted")
                && events.iter().any(|e| e == "completed")
        })
        .await;
    assert!(!order_errors(&browser).await.is_empty());
    assert!(!browser.shown("#order-retry-dead").await);
    browser.screenshot("order-retried").await;
    // The other views, for the record.
    for view in ["workers", "scheduled"] {
        browser.view(view).await;
        let ready = match view {
            "workers" => "#workers-body tr[data-worker]",
            _ => "#scheduled-body tr",
        };
        browser.find(ready).await;
        browser.screenshot(view).await;
    }
    browser.close().await;
    app.cleanup().await;
}

/// What the order page shows as its errors: every failed try's, kept across a retry (the
/// contract of `GET /orders/{id}/history`). Fails on ab254cf: a retried dead letter is revived
/// from the payload of its last try, whose errors lack that try's own, and storing it as
/// processing overwrites the stored errors with that shorter list (2 tries, 1 error after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_history_of_an_order_survives_a_dead_letter_retry() {
    let app = spawn(&[("ORDERS_MAX_ATTEMPTS", "2"), ("ORDERS_RETRY_BASE_MS", "50")]).await;
    break_customer_boom(&app).await;
    let id = app.accept_order("boom").await;
    wait_until(
        "the order to be dead-lettered",
        Duration::from_secs(20),
        || async { app.get_json("/stats").await["dead_letters"] == 1 },
    )
    .await;
    let history = app.get_json(&format!("/orders/{id}/history")).await;
    assert_eq!(
        history["errors"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );
    mend_customer_boom(&app).await;
    let response = app
        .request(Method::POST, &format!("/dead-letters/{id}/retry"))
        .header("authorization", admin_bearer())
        .sent()
        .await;
    assert_eq!(response.status(), 202);
    wait_until(
        "the retried order to complete",
        Duration::from_secs(20),
        || async { app.get_json(&format!("/orders/{id}")).await["status"] == "completed" },
    )
    .await;
    let history = app.get_json(&format!("/orders/{id}/history")).await;
    assert_eq!(
        history["errors"].as_array().map(Vec::len),
        Some(2),
        "both failed tries' errors, after the retry: {history}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_from_the_page_stops_completions_and_resuming_drains_them() {
    let app = spawn(&[]).await;
    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.open(&app.url("/console")).await;
    browser.use_token(ADMIN_TOKEN).await;
    browser.click("#pause-claiming").await;
    browser.confirm("Pause claiming").await;
    browser
        .wait_for("the paused banner", || async {
            browser.shown("#paused-banner").await
        })
        .await;
    assert!(!browser.shown("#pause-claiming").await);
    assert_eq!(app.get_json("/stats").await["claiming"], "paused");
    // Every worker obeys within about a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let before = app.count_status("completed").await;
    let ids = accept_batch(&app.http, &app.url("/orders/batch"), "c-paused", 20).await;
    assert_eq!(ids.len(), 20, "orders are accepted while paused");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.count_status("completed").await,
        before,
        "nothing completes while paused"
    );
    assert_eq!(app.get_json("/stats").await["queue_depth"], 20);
    browser
        .wait_for_text("[data-stat='queue_depth']", "20")
        .await;
    // The banner is on every view.
    for view in VIEWS {
        browser.view(view).await;
        assert!(browser.shown("#paused-banner").await, "{view}: no banner");
    }
    browser.view("overview").await;
    browser.screenshot("paused").await;

    browser.click("#resume-claiming").await;
    browser
        .wait_for("the banner to go", || async {
            !browser.shown("#paused-banner").await
        })
        .await;
    wait_until(
        "the queued orders to complete",
        Duration::from_secs(20),
        || async { app.count_status("completed").await == before + 20 },
    )
    .await;
    browser
        .wait_for_text("[data-stat='queue_depth']", "0")
        .await;
    assert!(browser.shown("#pause-claiming").await);
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_no_action_is_shown_and_a_forged_call_is_refused() {
    let app = spawn(&[("ORDERS_ADMIN_AUTH_MAX_FAILURES", "1000")]).await;
    let id = app.accept_order("c-read-only").await;
    wait_idle(&app).await;

    let browser = Browser::start(WIDE.0, WIDE.1).await;
    browser.open(&app.url("/console")).await;
    browser.wait_for_text("#auth-state", "read-only").await;
    for view in VIEWS {
        browser.view(view).await;
        let shown = browser.visible_actions().await;
        assert!(shown.is_empty(), "{view}: action controls shown: {shown:?}");
    }
    // An order's page offers no cancel either.
    browser.view(&format!("order/{id}")).await;
    browser.wait_for_text("#order-id", &id.to_string()).await;
    browser
        .wait_for("the order's details", || async {
            browser.shown("#order-detail").await
        })
        .await;
    assert!(browser.visible_actions().await.is_empty());
    // The admin lists say they need the token.
    browser.view("dead").await;
    assert!(browser.shown("#view-dead .needs-token").await);
    assert!(!browser.shown("#dead-table").await);
    browser.screenshot("read-only-dead").await;

    // A call forged from the page's own context, with a wrong token, is refused.
    let forged = browser
        .eval_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {method: 'POST', headers: {Authorization: 'Bearer forged-token-0123456789'}})
               .then(async (r) => done({status: r.status, body: await r.json()}))
               .catch((e) => done({error: String(e)}));",
            vec![json!("/workers/pause")],
        )
        .await;
    // 403 `forbidden` for a wrong token (401 `unauthorized` for none), as the README says.
    assert_eq!(
        forged["status"], 403,
        "a forged admin call answered {forged}"
    );
    assert_eq!(forged["body"]["error"]["code"], "forbidden", "{forged}");
    let unsigned = browser
        .eval_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0], {method: 'POST'})
               .then(async (r) => done({status: r.status, body: await r.json()}))
               .catch((e) => done({error: String(e)}));",
            vec![json!("/workers/pause")],
        )
        .await;
    assert_eq!(unsigned["status"], 401, "{unsigned}");
    assert_eq!(
        unsigned["body"]["error"]["code"], "unauthorized",
        "{unsigned}"
    );
    assert_eq!(app.get_json("/stats").await["claiming"], "running");

    // A wrong token pasted into the page is refused, forgotten, and the page says so.
    browser
        .type_into("#token-input", "not-the-admin-token-012345")
        .await;
    browser.click("#token-save").await;
    browser
        .wait_for("the refusal to be shown", || async {
            browser
                .text_of("#error-text")
                .await
                .is_some_and(|t| t.contains("refused"))
        })
        .await;
    browser.wait_for_text("#auth-state", "read-only").await;
    assert!(browser.visible_actions().await.is_empty());
    let kept = browser.eval("return sessionStorage.length;", vec![]).await;
    assert_eq!(kept, json!(0), "the refused token is not kept");
    // And no cookie was ever set.
    assert_eq!(
        browser.eval("return document.cookie;", vec![]).await,
        json!("")
    );
    browser.close().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_view_scrolls_sideways_at_375_px() {
    let app = spawn(&[("ORDERS_MAX_ATTEMPTS", "1")]).await;
    break_customer_boom(&app).await;
    let dead = app.accept_order("boom").await;
    accept_batch(&app.http, &app.url("/orders/batch"), "c-narrow", 30).await;
    wait_until("a dead letter", Duration::from_secs(20), || async {
        app.get_json("/stats").await["dead_letters"] == 1
    })
    .await;
    wait_idle(&app).await;

    let browser = Browser::start(375, 812).await;
    browser.open(&app.url("/console")).await;
    let width = browser.eval("return window.innerWidth;", vec![]).await;
    assert_eq!(width, json!(375), "the viewport is 375 px wide");
    browser.use_token(ADMIN_TOKEN).await;
    // Every view with something in it: the list of orders is listed, the dead letter is shown.
    let ready = [
        ("overview", "[data-count='total']"),
        ("workers", "#workers-body tr"),
        ("orders", "#orders-body tr[data-order]"),
        ("dead", "#dead-body tr[data-order]"),
        ("scheduled", "#scheduled-body tr"),
    ];
    for (view, css) in ready {
        browser.view(view).await;
        if view == "orders" {
            browser.click("#list-go").await;
        }
        browser.find(css).await;
        assert_no_sideways_scroll(&browser, view).await;
        browser.screenshot(&format!("{view}-375")).await;
    }
    browser.view(&format!("order/{dead}")).await;
    browser
        .wait_for("the order's details", || async {
            browser.shown("#order-detail").await
        })
        .await;
    assert_no_sideways_scroll(&browser, "order").await;
    browser.screenshot("order-375").await;
    // The confirmation dialog fits too.
    browser.view("dead").await;
    browser.click("#dead-purge").await;
    browser
        .wait_for("the dialog", || async {
            browser.shown("#confirm-dialog").await
        })
        .await;
    assert_no_sideways_scroll(&browser, "dialog").await;
    browser.screenshot("confirm-375").await;
    browser.click("#confirm-cancel").await;
    browser.close().await;
    assert!(screenshot_dir().join("overview-375.png").exists());
    app.cleanup().await;
}

async fn assert_no_sideways_scroll(browser: &Browser, view: &str) {
    let sizes = browser
        .eval(
            "const d = document.documentElement;
             return {scroll: d.scrollWidth, client: d.clientWidth};",
            vec![],
        )
        .await;
    assert!(
        sizes["scroll"].as_u64() <= sizes["client"].as_u64(),
        "{view} scrolls sideways at 375 px: {sizes}"
    );
}
