//! Every error class of the HTTP API: each answers its documented status with the one JSON error
//! shape `{"error": {"code", "message", "field"?}}`, and a rejected request changes nothing (no
//! row in PostgreSQL, nothing on the Redis queue or in the pending hash). Malformed JSON, wrong
//! shapes, broken rules (and the edges of each rule, which are accepted), body limits, content
//! types, unknown routes and methods, illegal status changes, bad list queries, whole batches,
//! a full queue, hostile input, and an unreachable Redis or PostgreSQL.

mod common;

use common::http::{check_error, order_body, valid_order, Field, JSON};
use common::proxy::{host_port, Proxy};
use common::{api_only, db, scalar, wait_until, Sent, TestApp, NOTHING, ONE_QUEUED};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// One error case: a request and the error it must answer.
struct Case {
    name: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Field,
}

impl Case {
    fn post(name: impl Into<String>, path: &str, body: impl Into<Vec<u8>>) -> Case {
        Case {
            name: name.into(),
            method: Method::POST,
            path: path.into(),
            content_type: JSON,
            body: body.into(),
            status: 400,
            code: "malformed_json",
            field: Field::Absent,
        }
    }

    fn expect(mut self, status: u16, code: &'static str, field: Field) -> Case {
        self.status = status;
        self.code = code;
        self.field = field;
        self
    }
}

/// Runs every case, then checks nothing changed.
async fn run_cases(app: &TestApp, cases: Vec<Case>) {
    let before = app.state().await;
    for case in cases {
        let what = format!("{} {} [{}]", case.method, case.path, case.name);
        let response = app
            .send(
                case.method.clone(),
                &case.path,
                case.content_type,
                case.body,
            )
            .await;
        check_error(response, case.status, case.code, case.field, &what).await;
        assert_eq!(app.state().await, before, "{what} changed something");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400_and_changes_nothing() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let status_path = format!("/orders/{}/status", Uuid::new_v4());
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        (
            "truncated",
            br#"{"customer_id": "c", "items": ["a"], "tot"#.to_vec(),
        ),
        (
            "truncated after a value",
            br#"{"customer_id": "c""#.to_vec(),
        ),
        ("not JSON", b"customer_id=c&total=1".to_vec()),
        ("plain word", b"hello".to_vec()),
        ("empty body", Vec::new()),
        ("only whitespace", b"  \n\t ".to_vec()),
        ("non-UTF-8 bytes", vec![0xff, 0xfe, 0xfd, 0x00, 0x80]),
        (
            "non-UTF-8 inside a string",
            b"{\"customer_id\": \"c\xff\xfe\", \"items\": [\"a\"], \"total\": 1}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            br#"{"customer_id": "\ud800", "items": ["a"], "total": 1}"#.to_vec(),
        ),
        (
            "a byte-order mark",
            [&b"\xEF\xBB\xBF"[..], valid_order().as_bytes()].concat(),
        ),
        (
            "trailing garbage",
            format!("{} x", valid_order()).into_bytes(),
        ),
        (
            "two documents",
            format!("{0}{0}", valid_order()).into_bytes(),
        ),
        (
            "single quotes",
            br#"{'customer_id': 'c', 'items': ['a'], 'total': 1}"#.to_vec(),
        ),
        (
            "a trailing comma",
            br#"{"customer_id": "c", "items": ["a"], "total": 1,}"#.to_vec(),
        ),
        (
            "NaN",
            br#"{"customer_id": "c", "items": ["a"], "total": NaN}"#.to_vec(),
        ),
        (
            "a bare minus",
            br#"{"customer_id": "c", "items": ["a"], "total": -}"#.to_vec(),
        ),
        (
            "a leading zero",
            br#"{"customer_id": "c", "items": ["a"], "total": 012}"#.to_vec(),
        ),
        (
            "a control character in a string",
            b"{\"customer_id\": \"a\x01b\", \"items\": [\"a\"], \"total\": 1}".to_vec(),
        ),
    ];
    let mut cases = Vec::new();
    for (name, body) in bodies {
        cases.push(Case::post(name, "/orders", body));
    }
    // PUT /orders/{id}/status: bodies broken before any field can be judged.
    for (name, body) in [
        ("truncated", br#"{"status": "cancel"#.to_vec()),
        ("truncated after the key", br#"{"status""#.to_vec()),
        ("not JSON", b"status=cancelled".to_vec()),
        ("empty body", Vec::new()),
        ("non-UTF-8 bytes", vec![0xff, 0xfe, 0xfd]),
        (
            "non-UTF-8 inside a string",
            b"{\"status\": \"c\xff\"}".to_vec(),
        ),
        (
            "a lone surrogate escape",
            br#"{"status": "\udc00"}"#.to_vec(),
        ),
        ("trailing garbage", br#"{"status": "cancelled"} x"#.to_vec()),
        ("single quotes", br#"{'status': 'cancelled'}"#.to_vec()),
    ] {
        let mut put = Case::post(name, &status_path, body);
        put.method = Method::PUT;
        cases.push(put);
    }
    // The batch route reads an array of raw orders first; broken JSON is broken there too.
    for (name, body) in [
        ("truncated", b"[{\"customer_id\": \"c\"".to_vec()),
        ("not JSON", b"orders".to_vec()),
        ("empty body", Vec::new()),
        ("non-UTF-8 bytes", vec![0xff, 0xfe, 0xfd]),
        (
            "trailing garbage",
            format!("[{}]]", valid_order()).into_bytes(),
        ),
    ] {
        cases.push(Case::post(name, "/orders/batch", body));
    }
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_missing_and_unknown_fields_are_400s_naming_the_field() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let bad = |name: &str, body: &str, field: Field| {
        Case::post(name, "/orders", body).expect(400, "invalid_body", field)
    };
    let cases = vec![
        bad(
            "missing customer_id",
            r#"{"items": ["a"], "total": 1}"#,
            Field::Is("customer_id"),
        ),
        bad(
            "missing items",
            r#"{"customer_id": "c", "total": 1}"#,
            Field::Is("items"),
        ),
        bad(
            "missing total",
            r#"{"customer_id": "c", "items": ["a"]}"#,
            Field::Is("total"),
        ),
        bad(
            "unknown field",
            r#"{"customer_id": "c", "items": ["a"], "total": 1, "coupon": "x"}"#,
            Field::Is("coupon"),
        ),
        bad(
            "unknown field first",
            r#"{"id": 5, "customer_id": "c", "items": ["a"], "total": 1}"#,
            Field::Is("id"),
        ),
        bad(
            "duplicate field",
            r#"{"customer_id": "c", "customer_id": "d", "items": ["a"], "total": 1}"#,
            Field::Is("customer_id"),
        ),
        bad(
            "customer_id null",
            r#"{"customer_id": null, "items": ["a"], "total": 1}"#,
            Field::AbsentOr("customer_id"),
        ),
        bad(
            "customer_id an array",
            r#"{"customer_id": ["c"], "items": ["a"], "total": 1}"#,
            Field::AbsentOr("customer_id"),
        ),
        bad(
            "items a string",
            r#"{"customer_id": "c", "items": "a", "total": 1}"#,
            Field::AbsentOr("items"),
        ),
        bad(
            "items an object",
            r#"{"customer_id": "c", "items": {"a": 1}, "total": 1}"#,
            Field::AbsentOr("items"),
        ),
        bad(
            "items null",
            r#"{"customer_id": "c", "items": null, "total": 1}"#,
            Field::AbsentOr("items"),
        ),
        bad(
            "total a string",
            r#"{"customer_id": "c", "items": ["a"], "total": "12.50"}"#,
            Field::Is("total"),
        ),
        bad(
            "total null",
            r#"{"customer_id": "c", "items": ["a"], "total": null}"#,
            Field::Is("total"),
        ),
        bad(
            "total a boolean",
            r#"{"customer_id": "c", "items": ["a"], "total": true}"#,
            Field::Is("total"),
        ),
        bad(
            "total an object",
            r#"{"customer_id": "c", "items": ["a"], "total": {"amount": 1}}"#,
            Field::Is("total"),
        ),
        bad(
            "total an array",
            r#"{"customer_id": "c", "items": ["a"], "total": [1]}"#,
            Field::Is("total"),
        ),
        bad("an empty object", "{}", Field::Is("customer_id")),
        bad("null", "null", Field::Absent),
        bad("a string", r#""order""#, Field::Absent),
        bad("an empty array", "[]", Field::Absent),
        bad(
            "an array of an order",
            &format!("[{}]", valid_order()),
            Field::Absent,
        ),
    ];
    run_cases(&app, cases).await;

    // PUT /orders/{id}/status has the same classes.
    let path = format!("/orders/{}/status", Uuid::new_v4());
    let put = |name: &str, body: &str, field: Field| {
        let mut case = Case::post(name, &path, body).expect(400, "invalid_body", field);
        case.method = Method::PUT;
        case
    };
    run_cases(
        &app,
        vec![
            put("missing status", "{}", Field::Is("status")),
            put(
                "unknown field",
                r#"{"status": "cancelled", "reason": "x"}"#,
                Field::Is("reason"),
            ),
            put(
                "status null",
                r#"{"status": null}"#,
                Field::AbsentOr("status"),
            ),
            put(
                "status an array",
                r#"{"status": ["cancelled"]}"#,
                Field::AbsentOr("status"),
            ),
            put("a bare string", r#""cancelled""#, Field::Absent),
        ],
    )
    .await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

/// serde names a scalar it did not expect between backticks ("invalid type: integer `5`"); that
/// value is not a field name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_of_the_wrong_type_is_a_400_that_names_no_wrong_field() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let bad = |name: &str, body: &str, field: Field| {
        Case::post(name, "/orders", body).expect(400, "invalid_body", field)
    };
    let mut cases = vec![
        bad("a number as the body", "42", Field::Absent),
        bad(
            "customer_id a number",
            r#"{"customer_id": 5, "items": ["a"], "total": 1}"#,
            Field::AbsentOr("customer_id"),
        ),
        bad(
            "customer_id a boolean",
            r#"{"customer_id": true, "items": ["a"], "total": 1}"#,
            Field::AbsentOr("customer_id"),
        ),
        bad(
            "an item a number",
            r#"{"customer_id": "c", "items": [1], "total": 1}"#,
            Field::AbsentOr("items"),
        ),
        bad(
            "an item a float",
            r#"{"customer_id": "c", "items": ["a", 2.5], "total": 1}"#,
            Field::AbsentOr("items"),
        ),
    ];
    cases.push(
        Case::post("a batch of numbers", "/orders/batch", "[1, 2]").expect(
            400,
            "invalid_body",
            Field::AbsentOr("[0]"),
        ),
    );
    let mut put = bad(
        "status a number",
        r#"{"status": 3}"#,
        Field::AbsentOr("status"),
    );
    put.method = Method::PUT;
    put.path = format!("/orders/{}/status", Uuid::new_v4());
    cases.push(put);
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

/// A struct in serde also deserialises from a sequence of its fields; the API takes objects only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_written_as_an_array_is_a_400() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    // A queued order, for the status change.
    let id = app.accept_order("c-array").await;
    let mut put = Case::post(
        "a status as an array",
        &format!("/orders/{id}/status"),
        r#"["cancelled"]"#,
    )
    .expect(400, "invalid_body", Field::Absent);
    put.method = Method::PUT;
    run_cases(
        &app,
        vec![
            Case::post("an order as an array", "/orders", r#"["c", ["a"], 1]"#).expect(
                400,
                "invalid_body",
                Field::Absent,
            ),
            Case::post("a batch of arrays", "/orders/batch", r#"[["c", ["a"], 1]]"#).expect(
                400,
                "invalid_body",
                Field::AbsentOr("[0]"),
            ),
            put,
        ],
    )
    .await;
    assert_eq!(app.state().await, ONE_QUEUED);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_break_a_rule_are_422s_naming_the_field() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let items = json!(["sku-1"]);
    let customer = json!("c");
    let c = |v: Value| order_body(&v, &items, "1");
    let i = |v: Value| order_body(&customer, &v, "1");
    let t = |text: &str| order_body(&customer, &items, text);
    let many: Vec<String> = (0..101).map(|n| format!("sku-{n}")).collect();
    let rule = |name: &str, body: String, field: &'static str| {
        Case::post(name, "/orders", body).expect(422, "invalid_field", Field::Is(field))
    };
    let cases = vec![
        rule("customer_id empty", c(json!("")), "customer_id"),
        rule("customer_id blank", c(json!("   \t ")), "customer_id"),
        rule(
            "customer_id 65 chars",
            c(json!("x".repeat(65))),
            "customer_id",
        ),
        rule(
            "customer_id 65 chars after trimming",
            c(json!(format!("  {}  ", "é".repeat(65)))),
            "customer_id",
        ),
        rule(
            "customer_id with a bell",
            c(json!("a\u{7}b")),
            "customer_id",
        ),
        rule("customer_id with a NUL", c(json!("a\u{0}b")), "customer_id"),
        rule(
            "customer_id with a newline",
            c(json!("a\nb")),
            "customer_id",
        ),
        rule("customer_id with DEL", c(json!("a\u{7f}b")), "customer_id"),
        rule(
            "customer_id with a C1 control",
            c(json!("a\u{85}b")),
            "customer_id",
        ),
        rule(
            "customer_id with a right-to-left override",
            c(json!("evil\u{202E}gnp.exe")),
            "customer_id",
        ),
        rule(
            "customer_id with a line separator",
            c(json!("a\u{2028}b")),
            "customer_id",
        ),
        rule(
            "customer_id of zero-width characters only",
            c(json!("\u{200B}\u{200C}")),
            "customer_id",
        ),
        rule(
            "an item with a bidi isolate",
            i(json!(["a\u{2067}b"])),
            "items",
        ),
        rule("items empty", i(json!([])), "items"),
        rule("101 items", i(json!(many)), "items"),
        rule("an empty item", i(json!(["a", ""])), "items"),
        rule("a blank item", i(json!(["  "])), "items"),
        rule("a 129-char item", i(json!(["i".repeat(129)])), "items"),
        rule("an item with a NUL", i(json!(["a\u{0}"])), "items"),
        rule("total negative", t("-5"), "total"),
        rule("total a negative cent", t("-0.01"), "total"),
        rule("total with 3 decimals", t("1.001"), "total"),
        rule("total with 3 decimals under a cent", t("0.005"), "total"),
        rule("total with 3 decimals by exponent", t("1234.5E-2"), "total"),
        rule("total a tiny exponent", t("1e-400"), "total"),
        rule("total just over the max", t("99999999.991"), "total"),
        rule("total 100,000,000", t("100000000"), "total"),
        rule("total 1e9", t("1e9"), "total"),
        rule("total a huge exponent", t("1e400"), "total"),
        rule(
            "total an enormous exponent",
            t("1e99999999999999999999"),
            "total",
        ),
        rule("total 400 digits", t(&"9".repeat(400)), "total"),
    ];
    run_cases(&app, cases).await;

    // The same rules on the batch route name the order.
    let good = valid_order();
    let bad = c(json!(""));
    run_cases(
        &app,
        vec![Case::post(
            "batch with a blank customer",
            "/orders/batch",
            format!("[{good},{bad}]"),
        )
        .expect(422, "invalid_field", Field::Is("[1].customer_id"))],
    )
    .await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

/// The largest values each rule allows are accepted, so the 422s above are the rules' edges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_of_the_rules_are_accepted() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let hundred: Vec<String> = (0..100).map(|n| format!("sku-{n}")).collect();
    for (name, body) in [
        (
            "64 chars (multi-byte) after trimming",
            order_body(&json!(format!(" {} ", "é".repeat(64))), &json!(["a"]), "1"),
        ),
        ("100 items", order_body(&json!("c"), &json!(hundred), "1")),
        (
            "a 128-char item",
            order_body(&json!("c"), &json!(["i".repeat(128)]), "1"),
        ),
        ("total zero", order_body(&json!("c"), &json!(["a"]), "0")),
        (
            "total the max",
            order_body(&json!("c"), &json!(["a"]), "99999999.99"),
        ),
    ] {
        let response = app.send(Method::POST, "/orders", JSON, body).await;
        assert_eq!(response.status(), 202, "{name}");
    }
    assert_eq!(app.list_len("queue").await, 5);
    app.cleanup().await;
}

/// A valid order padded with leading whitespace to exactly `len` bytes.
fn padded_order(len: usize) -> Vec<u8> {
    let order = valid_order();
    assert!(len >= order.len());
    let mut body = vec![b' '; len - order.len()];
    body.extend_from_slice(order.as_bytes());
    body
}

/// A body sent with `Transfer-Encoding: chunked` (no content-length), in 8 KiB chunks.
fn chunked(body: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

const LIMIT: usize = 64 * 1024;

/// Sends on a connection of its own, so one request's closed connection cannot fail the next.
async fn send_alone(
    app: &TestApp,
    method: Method,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    client
        .request(method, app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .sent()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413s_with_or_without_a_content_length() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let status_path = format!("/orders/{}/status", Uuid::new_v4());
    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::PUT, status_path.as_str()),
    ] {
        for len in [LIMIT + 1, LIMIT + 8 * 1024, 100 * 1024] {
            let what = format!("{method} {path} with a content-length of {len}");
            let response = send_alone(&app, method.clone(), path, padded_order(len)).await;
            check_error(response, 413, "payload_too_large", Field::Absent, &what).await;
            let what = format!("{method} {path} chunked, {len} bytes");
            let response = send_alone(&app, method.clone(), path, chunked(padded_order(len))).await;
            check_error(response, 413, "payload_too_large", Field::Absent, &what).await;
        }
    }
    // The batch route's limit is larger (1,000 orders), but it has one.
    let response = send_alone(
        &app,
        Method::POST,
        "/orders/batch",
        chunked(padded_order(4 * 1024 * 1024 + 1)),
    )
    .await;
    check_error(
        response,
        413,
        "payload_too_large",
        Field::Absent,
        "batch over 4 MiB chunked",
    )
    .await;
    assert_eq!(app.state().await, NOTHING);

    // Exactly 64 KiB is accepted, both ways: the limit is the size, not the framing.
    let response = send_alone(&app, Method::POST, "/orders", padded_order(LIMIT)).await;
    assert_eq!(response.status(), 202, "64 KiB with a content-length");
    let response = send_alone(&app, Method::POST, "/orders", chunked(padded_order(LIMIT))).await;
    assert_eq!(response.status(), 202, "64 KiB chunked");
    assert_eq!(app.list_len("queue").await, 2);
    app.cleanup().await;
}

/// A client that sends a large body gets to read the 413 (not a reset connection), and the
/// connection it came on is not reused for the next request only to be closed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_for_a_large_body_reaches_the_client_and_spoils_no_later_request() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    for round in 0..20 {
        for (name, body) in [
            (
                "1 MiB with a content-length",
                reqwest::Body::from(padded_order(1024 * 1024)),
            ),
            ("1 MiB chunked", chunked(padded_order(1024 * 1024))),
            ("100 KiB chunked", chunked(padded_order(100 * 1024))),
        ] {
            let what = format!("round {round}: POST /orders, {name}");
            let response = app.send(Method::POST, "/orders", JSON, body).await;
            check_error(response, 413, "payload_too_large", Field::Absent, &what).await;
            let response = app.get("/healthz").await;
            assert_eq!(response.status(), 200, "{what}, then GET /healthz");
        }
    }
    let response = app
        .send(
            Method::POST,
            "/orders/batch",
            JSON,
            padded_order(4 * 1024 * 1024 + 1),
        )
        .await;
    check_error(
        response,
        413,
        "payload_too_large",
        Field::Absent,
        "batch over 4 MiB with a content-length",
    )
    .await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_application_json_is_a_415() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let status_path = format!("/orders/{}/status", Uuid::new_v4());
    let routes = [
        (Method::POST, "/orders", valid_order()),
        (
            Method::POST,
            "/orders/batch",
            format!("[{}]", valid_order()),
        ),
        (
            Method::PUT,
            status_path.as_str(),
            r#"{"status": "cancelled"}"#.to_string(),
        ),
    ];
    let mut cases = Vec::new();
    for (method, path, body) in &routes {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonp"),
            Some("application/xml"),
            Some(""),
        ] {
            let mut case = Case::post(format!("content-type {content_type:?}"), path, body.clone())
                .expect(415, "unsupported_media_type", Field::Absent);
            case.method = method.clone();
            case.content_type = content_type;
            cases.push(case);
        }
    }
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);

    // Parameters and case do not matter: these are JSON.
    for content_type in ["application/json; charset=utf-8", "Application/JSON"] {
        let response = app
            .send(Method::POST, "/orders", Some(content_type), valid_order())
            .await;
        assert_eq!(response.status(), 202, "{content_type}");
    }
    assert_eq!(app.list_len("queue").await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_unknown_or_malformed_order_ids_are_404s() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    // An order that exists (queued), so the 404s below are not just an empty service.
    let existing = app.accept_order("c-404").await;
    let unknown = Uuid::new_v4();
    let cancel = r#"{"status": "cancelled"}"#;
    let mut cases = Vec::new();
    let mut add = |method: Method, path: String, body: &str| {
        let mut case = Case::post("404", &path, body).expect(404, "not_found", Field::Absent);
        case.method = method;
        cases.push(case);
    };
    for path in [
        "/console/x",
        "/nope",
        "/order",
        "/v1/orders",
        "/orders/x/y/z",
        "/healthz/x",
    ] {
        add(Method::GET, path.to_string(), "");
    }
    add(Method::POST, "/nope".into(), &valid_order());
    add(Method::POST, "/orders/batch/x".into(), "[]");
    for id in [
        unknown.to_string(),
        "abc".to_string(),
        "123".to_string(),
        format!("{existing}x"),
        existing.to_string()[..35].to_string(),
        "%FF".to_string(),
        "%00".to_string(),
        "..".to_string(),
        "x".repeat(2000),
    ] {
        // (The client resolves `/orders/..` to `/`, the front page: a redirect, not a 404.)
        if id != ".." {
            add(Method::GET, format!("/orders/{id}"), "");
        }
        add(Method::PUT, format!("/orders/{id}/status"), cancel);
    }
    run_cases(&app, cases).await;
    // The existing order is untouched, still queued.
    let order: Value = app.get_json(&format!("/orders/{existing}")).await;
    assert_eq!(order["status"], "queued");
    assert_eq!(app.state().await, ONE_QUEUED);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_known_path_is_a_405() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let id = Uuid::new_v4();
    let mut cases = Vec::new();
    for (method, path) in [
        (Method::PATCH, "/orders".to_string()),
        (Method::DELETE, "/orders".to_string()),
        (Method::PUT, "/orders".to_string()),
        (Method::PUT, "/orders/batch".to_string()),
        (Method::PATCH, "/orders/batch".to_string()),
        (Method::POST, format!("/orders/{id}")),
        (Method::PATCH, format!("/orders/{id}")),
        (Method::PUT, format!("/orders/{id}")),
        (Method::GET, format!("/orders/{id}/status")),
        (Method::POST, format!("/orders/{id}/status")),
        (Method::PATCH, format!("/orders/{id}/status")),
        (Method::DELETE, format!("/orders/{id}/status")),
        (Method::POST, "/healthz".to_string()),
        (Method::DELETE, "/readyz".to_string()),
    ] {
        let mut case = Case::post("405", &path, valid_order()).expect(
            405,
            "method_not_allowed",
            Field::Absent,
        );
        case.method = method;
        cases.push(case);
    }
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_other_than_a_legal_cancel_are_refused() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let id = app.accept_order("c-409").await;
    let queued = ONE_QUEUED;
    assert_eq!(app.state().await, queued);

    // Not a status at all: 422 on the status field.
    for value in [
        "shipped",
        "CANCELLED",
        "Cancelled",
        "",
        " cancelled",
        "canceled",
    ] {
        let response = app
            .put_status(id, &json!({ "status": value }).to_string())
            .await;
        check_error(
            response,
            422,
            "invalid_field",
            Field::Is("status"),
            &format!("status {value:?}"),
        )
        .await;
    }
    // A status, but not one a client may set: an illegal change, 409.
    for value in ["queued", "processing", "completed", "failed"] {
        let response = app
            .put_status(id, &json!({ "status": value }).to_string())
            .await;
        check_error(
            response,
            409,
            "conflict",
            Field::Absent,
            &format!("status {value:?}"),
        )
        .await;
    }
    assert_eq!(app.state().await, queued, "refused changes changed nothing");
    let order: Value = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "queued");

    // Cancelling works once; cancelling again is an illegal transition.
    let response = app.put_status(id, r#"{"status": "cancelled"}"#).await;
    assert_eq!(response.status(), 200);
    let cancelled = app.state().await;
    assert_eq!(cancelled.orders, 1);
    let response = app.put_status(id, r#"{"status": "cancelled"}"#).await;
    check_error(response, 409, "conflict", Field::Absent, "cancelling twice").await;
    let response = app.put_status(id, r#"{"status": "completed"}"#).await;
    check_error(
        response,
        409,
        "conflict",
        Field::Absent,
        "completing a cancelled order",
    )
    .await;
    assert_eq!(app.state().await, cancelled);
    assert_eq!(app.count_status("cancelled").await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_queries_are_400_or_422() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let get = |query: &str, status: u16, code: &'static str, field: Field| {
        let mut case = Case::post(format!("query {query:?}"), &format!("/orders?{query}"), "")
            .expect(status, code, field);
        case.method = Method::GET;
        case.content_type = None;
        case
    };
    let mut cases = vec![
        get("foo=1", 400, "invalid_query", Field::Absent),
        get("limit=10&page=2", 400, "invalid_query", Field::Absent),
        get("Limit=10", 400, "invalid_query", Field::Absent),
        get("limit=1&limit=2", 400, "invalid_query", Field::Absent),
    ];
    for limit in [
        "0",
        "501",
        "abc",
        "-1",
        "",
        "1.5",
        "1e2",
        "99999999999999999999999",
    ] {
        cases.push(get(
            &format!("limit={limit}"),
            422,
            "invalid_field",
            Field::Is("limit"),
        ));
    }
    let id = Uuid::new_v4().simple();
    for cursor in [
        "abc".to_string(),
        "_".to_string(),
        "123".to_string(),
        format!("abc_{id}"),
        "1700000000000000_not-a-uuid".to_string(),
        format!("99999999999999999999999999999999999999999_{id}"),
        format!("999999999999999999999_{id}"),
        // Decodes, but before any order: PostgreSQL cannot even compare the earliest ones.
        format!("-377705116800000000_{id}"),
        format!("-1_{id}"),
    ] {
        cases.push(get(
            &format!("cursor={cursor}"),
            422,
            "invalid_field",
            Field::Is("cursor"),
        ));
    }
    for status in ["shipped", "QUEUED", "", "queued,completed"] {
        cases.push(get(
            &format!("status={status}"),
            422,
            "invalid_field",
            Field::Is("status"),
        ));
    }
    run_cases(&app, cases).await;

    // The edges that are fine.
    for query in [
        "limit=1",
        "limit=500",
        "status=queued&customer_id=x",
        "cursor=",
    ] {
        let response = app.get(&format!("/orders?{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
    }
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_refused_whole() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let good: Value = serde_json::from_str(&valid_order()).unwrap();
    let batch = |orders: Vec<Value>| serde_json::to_vec(&orders).unwrap();
    let mut with_bad_first = vec![good.clone(); 5];
    with_bad_first[0]["total"] = json!(-1);
    let mut with_bad_last = vec![good.clone(); 5];
    with_bad_last[4]["items"] = json!([]);
    let mut with_wrong_type = vec![good.clone(); 5];
    with_wrong_type[2]["total"] = json!("1");
    let mut with_unknown_field = vec![good.clone(); 3];
    with_unknown_field[1]["coupon"] = json!("x");
    let mut with_missing_field = vec![good.clone(); 3];
    with_missing_field[1]
        .as_object_mut()
        .unwrap()
        .remove("items");
    let post = |name: &str, body: Vec<u8>| Case::post(name, "/orders/batch", body);
    let cases = vec![
        post("empty", b"[]".to_vec()).expect(422, "invalid_field", Field::Is("orders")),
        post("1,001 orders", batch(vec![good.clone(); 1001])).expect(
            422,
            "invalid_field",
            Field::Is("orders"),
        ),
        post("a bad first order", batch(with_bad_first)).expect(
            422,
            "invalid_field",
            Field::Is("[0].total"),
        ),
        post("a bad last order", batch(with_bad_last)).expect(
            422,
            "invalid_field",
            Field::Is("[4].items"),
        ),
        post("a wrong type", batch(with_wrong_type)).expect(400, "invalid_body", Field::Any),
        post("an unknown field", batch(with_unknown_field)).expect(400, "invalid_body", Field::Any),
        post("a missing field", batch(with_missing_field)).expect(400, "invalid_body", Field::Any),
        post("not an array", valid_order().into_bytes()).expect(400, "invalid_body", Field::Absent),
        post("an array of numbers", b"[1, 2]".to_vec()).expect(400, "invalid_body", Field::Any),
        post("null", b"null".to_vec()).expect(400, "invalid_body", Field::Absent),
    ];
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);

    // 1,000 is the limit, not over it.
    let response = app
        .send(Method::POST, "/orders/batch", JSON, batch(vec![good; 1000]))
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.list_len("queue").await, 1000);
    app.cleanup().await;
}

/// A batch names the failing order in `field` for a wrong shape, as it does for a broken rule
/// (`[2].total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_names_the_order_of_a_wrong_shape_in_the_field() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let good: Value = serde_json::from_str(&valid_order()).unwrap();
    let mut unknown = vec![good.clone(); 3];
    unknown[1]["coupon"] = json!("x");
    let mut missing = vec![good.clone(); 3];
    missing[2].as_object_mut().unwrap().remove("items");
    let mut wrong_type = vec![good.clone(); 3];
    wrong_type[0]["total"] = json!("1");
    let cases = [
        ("an unknown field", unknown, "[1].coupon"),
        ("a missing field", missing, "[2].items"),
        ("a wrong type", wrong_type, "[0].total"),
    ]
    .into_iter()
    .map(|(name, orders, field)| {
        Case::post(name, "/orders/batch", serde_json::to_vec(&orders).unwrap()).expect(
            400,
            "invalid_body",
            Field::Is(field),
        )
    })
    .collect();
    run_cases(&app, cases).await;
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after_and_enqueues_nothing() {
    let app = TestApp::spawn_with(api_only(), &[("ORDERS_MAX_QUEUE_DEPTH", "3")]).await;
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
        .post_json(
            "/orders/batch",
            &json!([{"customer_id": "b", "items": ["a"], "total": 1}]),
        )
        .await;
    assert_eq!(batch.status(), 429);
    assert_eq!(app.list_len("queue").await, 3);
    app.cleanup().await;
}

/// Input built to hurt: none of it may produce a 500, a panic or a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_client_errors_never_500s() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let deep_arrays = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_objects = format!(
        r#"{{"customer_id": {}1{}, "items": ["a"], "total": 1}}"#,
        r#"{"a":"#.repeat(5_000),
        "}".repeat(5_000)
    );
    let deep_total = format!(
        r#"{{"customer_id": "c", "items": ["a"], "total": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let long_number = order_body(
        &json!("c"),
        &json!(["a"]),
        &format!("0.{}", "0".repeat(60_000)),
    );
    let escapes = order_body(&json!("\\".repeat(20_000)), &json!(["a"]), "1");
    let many_keys = format!(
        "{{{}\"customer_id\": \"c\", \"items\": [\"a\"], \"total\": 1}}",
        (0..3000)
            .map(|i| format!("\"k{i}\": 1, "))
            .collect::<String>()
    );
    let status_path = format!("/orders/{}/status", Uuid::new_v4());
    let before = app.state().await;
    for (name, body) in [
        ("deeply nested arrays", deep_arrays),
        ("deeply nested objects", deep_objects),
        ("a deeply nested total", deep_total),
        ("a 60,000-digit zero", long_number),
        ("20,000 backslashes", escapes),
        ("3,000 unknown keys", many_keys),
    ] {
        for (method, path) in [
            (Method::POST, "/orders"),
            (Method::POST, "/orders/batch"),
            (Method::PUT, status_path.as_str()),
        ] {
            let response = app.send(method.clone(), path, JSON, body.clone()).await;
            let status = response.status();
            let what = format!("{method} {path} with {name}");
            assert!(
                status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNPROCESSABLE_ENTITY
                    || status == StatusCode::PAYLOAD_TOO_LARGE
                    // a 60,000-digit zero is a valid order; 0.000… is 0
                    || (status == StatusCode::ACCEPTED && name.contains("zero")),
                "{what}: {status}"
            );
            if status != StatusCode::ACCEPTED {
                let codes: &[&str] = match status.as_u16() {
                    400 => &["malformed_json", "invalid_body"],
                    422 => &["invalid_field"],
                    _ => &["payload_too_large"],
                };
                let text = response.text().await.unwrap();
                let error: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("{what}: JSON error, got {text}"));
                let code = error["error"]["code"].as_str().unwrap_or_default();
                assert!(codes.contains(&code), "{what}: {text}");
                assert!(error["error"]["message"].is_string(), "{what}: {text}");
            }
        }
    }
    // The only acceptable change: the 60,000-digit zero, if it was accepted.
    let after = app.state().await;
    assert!(after.queue - before.queue <= 1, "{after:?}");
    assert_eq!(after.orders, 0);
    // The service still answers.
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    app.cleanup().await;
}

async fn with_timeout<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} answers within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_a_503_that_changes_nothing() {
    let redis_url = common::redis_url();
    let mut proxy = Proxy::start(&host_port(&redis_url)).await;
    let proxied = proxy.in_front_of(&redis_url);
    let app = TestApp::spawn_with(api_only(), &[("REDIS_URL", &proxied)]).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200, "ready through the proxy");

    proxy.cut().await;
    let id = Uuid::new_v4();
    for (method, path, body) in [
        (Method::POST, "/orders".to_string(), valid_order()),
        (
            Method::POST,
            "/orders/batch".to_string(),
            format!("[{}]", valid_order()),
        ),
        (Method::GET, format!("/orders/{id}"), String::new()),
        (
            Method::PUT,
            format!("/orders/{id}/status"),
            r#"{"status": "cancelled"}"#.to_string(),
        ),
    ] {
        let what = format!("{method} {path} with Redis unreachable");
        expect_unavailable(&app, method, &path, body, &what).await;
    }
    let response = with_timeout("readyz", app.get("/readyz")).await;
    assert_eq!(response.status(), 503, "not ready without Redis");
    assert_eq!(app.state().await, NOTHING);

    // Back again: the service reconnects by itself.
    proxy.restore().await;
    wait_until(
        "orders are accepted again once Redis is back",
        Duration::from_secs(30),
        async || {
            let response = with_timeout(
                "POST after Redis is back",
                app.send(Method::POST, "/orders", JSON, valid_order()),
            )
            .await;
            if response.status() != 202 {
                assert_eq!(response.status(), 503);
            }
            response.status() == 202
        },
    )
    .await;
    assert_eq!(app.list_len("queue").await, 1);
    proxy.cut().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_is_a_503_that_changes_nothing() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    let db_name: String = scalar(&app.db, "SELECT current_database()", &[]).await;
    assert!(db_name.starts_with("orders_test_"), "{db_name}");
    let response = app.get("/orders").await;
    assert_eq!(response.status(), 200);

    // Nobody may connect to this test's database, and its connections are closed: for the
    // service it is as if PostgreSQL were down. Nothing else on the server is touched.
    let admin = db::admin_client().await;
    db::cut_off(&admin, &db_name).await;

    let id = Uuid::new_v4();
    for (method, path, body) in [
        (Method::GET, "/orders".to_string(), String::new()),
        (Method::GET, format!("/orders/{id}"), String::new()),
        (
            Method::PUT,
            format!("/orders/{id}/status"),
            r#"{"status": "cancelled"}"#.to_string(),
        ),
    ] {
        let what = format!("{method} {path} with PostgreSQL unreachable");
        expect_unavailable(&app, method, &path, body, &what).await;
    }
    let response = with_timeout("readyz", app.get("/readyz")).await;
    assert_eq!(response.status(), 503, "not ready without PostgreSQL");
    // The API keeps accepting orders while the database is away: it only needs Redis.
    let response = with_timeout(
        "POST without PostgreSQL",
        app.send(Method::POST, "/orders", JSON, valid_order()),
    )
    .await;
    assert_eq!(response.status(), 202);

    db::let_in(&admin, &db_name).await;
    let db = db::connect(&app.config.database_url).await;
    assert_eq!(
        app.state_with(&db).await,
        ONE_QUEUED,
        "the refused requests changed nothing"
    );
    // And the service recovers by itself.
    wait_until(
        "the list answers again once PostgreSQL is back",
        Duration::from_secs(30),
        async || {
            with_timeout("GET /orders", app.get("/orders"))
                .await
                .status()
                == 200
        },
    )
    .await;
    app.cleanup().await;
}

/// Sends a request that needs a backing service that is down: a 503 `unavailable` with
/// `Retry-After: 1`.
async fn expect_unavailable(app: &TestApp, method: Method, path: &str, body: String, what: &str) {
    let response = with_timeout(what, app.send(method, path, JSON, body)).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1"),
        "{what}: Retry-After"
    );
    check_error(response, 503, "unavailable", Field::Absent, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_wherever_get_does_without_a_body() {
    let app = TestApp::spawn_with(api_only(), &[]).await;
    for path in ["/healthz", "/orders", "/openapi.json"] {
        let response = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "HEAD {path}"
        );
        assert!(response.bytes().await.unwrap().is_empty(), "HEAD {path}");
    }
    let response = app
        .http
        .head(app.url("/orders/batch"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = app.http.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_a_408_closes_the_connection_and_changes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(
        api_only(),
        &[
            ("ORDERS_HTTP_BODY_TIMEOUT_MS", "300"),
            ("ORDERS_HTTP_BODY_MIN_RATE", "1000000"),
        ],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let body = valid_order();
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the connection is closed after the 408")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""code":"body_timeout""#), "{reply}");
    assert_eq!(app.state().await, NOTHING);
    app.cleanup().await;
}
