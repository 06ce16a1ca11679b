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
    let cases: [(Method, String, Option<Value>); 3] = [
        (Method::GET, "/dead-letters".to_string(), None),
        (Method::POST, format!("/dead-letters/{id}/retry"), None),
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
    // With the token the same reads answer.
    let response = app
        .request(Method::GET, "/dead-letters")
        .header("authorization", admin_bearer())
        .sent()
        .await;
    assert_eq!(response.status(), 200);
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
    browser.screenshot("overview").await;
    browser.close().await;
    workers.cleanup().await;
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
            vec![json!(format!("/dead-letters/{id}/retry"))],
        )
        .await;
    let status = forged["status"].as_u64().unwrap_or_default();
    assert!(
        status == 401 || status == 403,
        "a forged admin call answered {forged}"
    );
    assert!(forged["body"]["error"]["code"].is_string(), "{forged}");

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
        app.list_len("dead").await == 1
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
