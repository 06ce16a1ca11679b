//! Requests to a service and what its answers must look like: sending, order bodies, and the one
//! JSON error shape `{"error": {"code", "message", "field"?}}`.

use super::app::TestApp;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use std::future::Future;
use uuid::Uuid;

/// The HTTP client of the tests: it drops a pooled connection after 5 s idle, before the
/// service's own idle timeout (`http_header_timeout_ms`, 10 s) could close it under a request;
/// it follows no redirect, so a test sees the service's own answer (`GET /` is a 308).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// The content type of every JSON body.
pub const JSON: Option<&str> = Some("application/json");

/// Sending a request that must get an answer: a transport error fails the test, naming the
/// request.
pub trait Sent {
    fn sent(self) -> impl Future<Output = Response> + Send;
}

impl Sent for RequestBuilder {
    async fn sent(self) -> Response {
        let (client, request) = self.build_split();
        let request = request.expect("a well-formed request");
        let what = format!("{} {}", request.method(), request.url());
        client
            .execute(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }
}

impl TestApp {
    /// A request to `path` on this app.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).sent().await
    }

    /// The body of a GET, as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.expect("a body")
    }

    /// GETs `path` and returns its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        serde_json::from_str(&self.get_text(path).await).expect("a JSON body")
    }

    /// Sends `body` as it is, with this content type (or none).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self.request(method, path);
        if let Some(kind) = content_type {
            request = request.header("content-type", kind);
        }
        request.body(body).sent().await
    }

    /// Sends a value as JSON.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.request(method, path).json(body).sent().await
    }

    /// POSTs a value as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, body).await
    }

    /// POSTs a JSON value to /orders.
    pub async fn post_order(&self, body: &Value) -> Response {
        self.post_json("/orders", body).await
    }

    /// POSTs a valid order and returns its id.
    pub async fn accept_order(&self, customer: &str) -> Uuid {
        let response = self
            .post_order(
                &json!({"customer_id": customer, "items": ["sku-1", "sku-2"], "total": 19.99}),
            )
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    /// Asks for a status change of order `id`.
    pub async fn put_status(&self, id: Uuid, body: &str) -> Response {
        let path = format!("/orders/{id}/status");
        self.send(Method::PUT, &path, JSON, body.to_string()).await
    }

    /// DELETEs order `id`, with this `authorization` header (or none).
    pub async fn delete_order(&self, id: &str, authorization: Option<&str>) -> Response {
        let mut request = self.request(Method::DELETE, &format!("/orders/{id}"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.sent().await
    }
}

/// The order ids of a 202 from `POST /orders/batch`.
pub async fn batch_ids(response: Response) -> Vec<Uuid> {
    let body: Value = response.json().await.expect("a JSON body");
    body["order_ids"]
        .as_array()
        .expect("order_ids")
        .iter()
        .map(|v| v.as_str().and_then(|s| s.parse().ok()).expect("a uuid"))
        .collect()
}

/// POSTs `n` valid orders (customers `<customer>-0`, `<customer>-1`, ...) in one batch to
/// `batch_url` and returns their ids; anything but a 202 fails the test.
pub async fn accept_batch(
    http: &reqwest::Client,
    batch_url: &str,
    customer: &str,
    n: usize,
) -> Vec<Uuid> {
    let batch: Vec<Value> = (0..n)
        .map(|i| json!({"customer_id": format!("{customer}-{i}"), "items": ["sku-1"], "total": 1}))
        .collect();
    let response = http.post(batch_url).json(&batch).sent().await;
    assert_eq!(response.status(), 202, "POST {batch_url}");
    batch_ids(response).await
}

/// An order body with the total written exactly as given.
pub fn order_body(customer: &Value, items: &Value, total: &str) -> String {
    format!(r#"{{"customer_id":{customer},"items":{items},"total":{total}}}"#)
}

pub fn valid_order() -> String {
    order_body(&json!("cust-1"), &json!(["sku-1"]), "12.34")
}

/// What the `field` of an error must be.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// Exactly this field.
    Is(&'static str),
    /// No field.
    Absent,
    /// No field, or this one (where serde does not say which field it was).
    AbsentOr(&'static str),
    /// Not checked (a dedicated test checks it).
    Any,
}

/// Checks a response is the JSON error shape with this status, code and field; returns the body.
pub async fn check_error(
    response: Response,
    status: u16,
    code: &str,
    field: Field,
    what: &str,
) -> Value {
    let got = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(got.as_u16(), status, "{what}: status (body {text})");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the error is not JSON ({e}): {text}"));
    let top = body.as_object().expect("an object");
    assert_eq!(top.len(), 1, "{what}: only `error` at the top: {body}");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: `error` is an object: {body}"));
    for key in error.keys() {
        assert!(
            ["code", "message", "field"].contains(&key.as_str()),
            "{what}: unexpected key {key:?} in {body}"
        );
    }
    assert_eq!(error["code"], code, "{what}: code in {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: a message in {body}"
    );
    let actual = error.get("field");
    if let Some(f) = actual {
        assert!(f.is_string(), "{what}: field is a string in {body}");
    }
    match field {
        Field::Is(name) => assert_eq!(
            actual.and_then(Value::as_str),
            Some(name),
            "{what}: field in {body}"
        ),
        Field::Absent => assert!(actual.is_none(), "{what}: no field in {body}"),
        Field::AbsentOr(name) => assert!(
            actual.is_none() || actual == Some(&json!(name)),
            "{what}: field absent or {name:?} in {body}"
        ),
        Field::Any => {}
    }
    body
}
