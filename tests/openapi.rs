//! The OpenAPI document the service serves and the router list the same routes: the document
//! names exactly the operations of the route table (`orders::http::ROUTES`), with the admin token
//! on exactly its admin ones; every documented operation is routed, every other method on a
//! documented path is a 405 naming the documented ones, and paths the document does not name are
//! unknown routes.

mod common;

use common::{TestApp, ADMIN_TOKEN};
use orders::http::{Access, ROUTES};
use reqwest::Method;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

async fn spawn() -> TestApp {
    // `GET /events` is an endless stream: ended after half a second, its answer can be read
    // whole like any other.
    let env = [
        ("ORDERS_ADMIN_TOKEN", ADMIN_TOKEN),
        ("ORDERS_SSE_MAX_STREAM_MS", "500"),
    ];
    TestApp::spawn_with(orders::Roles::ALL, &env).await
}

/// The document, as the running service serves it.
async fn served_document(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("application/json"), "{kind}");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    doc
}

/// Documented paths with their methods (upper case).
/// The methods a path answers: the documented ones, and HEAD wherever GET is.
fn with_head(methods: &BTreeSet<String>) -> BTreeSet<String> {
    let mut all = methods.clone();
    if all.contains("GET") {
        all.insert("HEAD".into());
    }
    all
}

fn documented(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| k.as_str() != "parameters")
                .map(|k| k.to_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// A path template with its parameters filled in with a fresh UUID.
fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::new_v4().to_string())
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).unwrap()),
        None => value,
    }
}

async fn send(app: &TestApp, method: &str, path: &str, body: Option<&Value>) -> reqwest::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// The error code and message of an error response.
async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
    (status, code, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_names_the_operations_of_the_route_table() {
    let app = spawn().await;
    let doc = served_document(&app).await;
    let table: BTreeMap<String, BTreeSet<String>> = ROUTES
        .iter()
        .map(|route| {
            let methods = route.methods.iter().map(|(m, _)| m.to_string()).collect();
            (route.template.to_string(), methods)
        })
        .collect();
    let paths: BTreeMap<String, BTreeSet<String>> = documented(&doc).into_iter().collect();
    assert_eq!(paths, table);
    for route in ROUTES {
        for (method, access) in route.methods {
            let operation = &doc["paths"][route.template][method.as_str().to_lowercase()];
            let secured = operation["security"][0].get("adminToken").is_some();
            assert_eq!(
                secured,
                *access == Access::Admin,
                "{method} {}: security",
                route.template
            );
        }
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_nothing_else_is() {
    let app = spawn().await;
    let doc = served_document(&app).await;
    let paths = documented(&doc);
    assert!(paths.len() >= 11, "{paths:?}");

    for (path, methods) in &paths {
        for method in methods {
            let operation = &doc["paths"][path][method.to_lowercase()];
            let body = operation
                .get("requestBody")
                .map(|b| resolve(&doc, b)["content"]["application/json"]["example"].clone());
            assert!(
                body.as_ref().is_none_or(|b| !b.is_null()),
                "{method} {path}: its request body has no example"
            );
            let response = send(&app, method, &concrete(path), body.as_ref()).await;
            let status = response.status().as_u16();
            assert!(
                response.headers().contains_key("x-request-id"),
                "{method} {path}: no X-Request-Id"
            );
            let documented_statuses: Vec<&String> =
                operation["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented_statuses
                    .iter()
                    .any(|s| s.as_str() == status.to_string()),
                "{method} {path} answered {status}, not among {documented_statuses:?}"
            );
            let (status, code, message) = error_of(response).await;
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !(status == 404 && code == "not_found" && message == "no such route"),
                "{method} {path} is documented but not routed"
            );
        }
    }

    // (warp reads a trailing slash as none: `/orders/` is `/orders`.)
    for path in [
        "/console/x",
        "/order",
        "/orderss",
        "/orders/batch/x",
        "/orders/0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a/status/x",
        "/orders/0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a/items",
        "/dead-letters/0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a/x",
        "/workers/x",
        "/scheduled/0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a",
        "/healthz/x",
        "/openapi.yaml",
        "/stats/orders",
        "/stats/history/x",
    ] {
        for method in METHODS {
            let (status, code, message) = error_of(send(&app, method, path, None).await).await;
            assert_eq!(
                (status, code.as_str(), message.as_str()),
                (404, "not_found", "no such route"),
                "{method} {path} is not documented"
            );
        }
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_on_documented_paths_are_405_naming_the_documented_ones() {
    let app = spawn().await;
    let doc = served_document(&app).await;
    let mut wrong = Vec::new();
    for (path, methods) in documented(&doc) {
        for method in METHODS.iter().filter(|m| !methods.contains(**m)) {
            let response = send(&app, method, &concrete(&path), None).await;
            let allow: Option<BTreeSet<String>> = response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').map(|m| m.trim().to_uppercase()).collect());
            let (status, code, message) = error_of(response).await;
            if status != 405 || code != "method_not_allowed" {
                wrong.push(format!(
                    "{method} {path}: {status} {code} {message:?}, not 405"
                ));
            } else if allow.as_ref() != Some(&with_head(&methods)) {
                wrong.push(format!(
                    "{method} {path}: 405 with Allow {allow:?}, not {methods:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    app.cleanup().await;
}
