//! The domain: what an order is, the rules a valid one follows, and its lifecycle.
//!
//! Everything that crosses the HTTP edge or comes off the Redis list is parsed into these types
//! first, so an invalid order cannot exist past the edge.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

mod money;
pub use money::Money;

/// Largest accepted total, in cents (99,999,999.99).
pub const MAX_TOTAL_CENTS: i64 = 9_999_999_999;
/// Most items one order may hold.
pub const MAX_ITEMS: usize = 100;
/// Longest item id, in characters.
pub const MAX_ITEM_CHARS: usize = 128;
/// Longest customer id after trimming, in characters.
pub const MAX_CUSTOMER_CHARS: usize = 64;

/// Why a request body or a queued payload is not an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOrder {
    /// Not JSON at all (HTTP 400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON of the wrong shape: wrong type, missing or unknown field (HTTP 400).
    #[error("{message}")]
    WrongShape {
        message: String,
        field: Option<String>,
    },
    /// A value that breaks a rule (HTTP 422).
    #[error("{message}")]
    Rule {
        field: &'static str,
        message: String,
    },
}

impl InvalidOrder {
    fn rule(field: &'static str, message: impl Into<String>) -> Self {
        InvalidOrder::Rule {
            field,
            message: message.into(),
        }
    }

    /// Maps a serde_json error to malformed JSON (syntax) or the wrong shape (types, fields).
    pub fn from_json(err: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => {
                let message = err.to_string();
                let field = field_in_message(&message);
                InvalidOrder::WrongShape { message, field }
            }
            _ => InvalidOrder::Malformed(err.to_string()),
        }
    }
}

/// serde names the offending field between backticks ("unknown field `x`", "missing field `y`").
fn field_in_message(message: &str) -> Option<String> {
    // Only these messages quote a field; others quote the unexpected value ("integer `5`").
    if !["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .any(|p| message.starts_with(p))
    {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Reads a JSON object into `T`. serde's derived structs also accept a JSON array of their
/// fields (`["c", ["a"], 1]`); the API takes objects only, so an array is refused up front (a
/// look at the first byte, not a second parse).
pub fn from_json_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, InvalidOrder> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(InvalidOrder::WrongShape {
            message: "the body must be a JSON object".into(),
            field: None,
        });
    }
    serde_json::from_slice(body).map_err(InvalidOrder::from_json)
}

/// The order body as clients send it; unknown fields are rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody<'a> {
    customer_id: String,
    items: Vec<String>,
    #[serde(borrow)]
    total: &'a RawValue,
}

/// A valid order that has not been accepted yet. Its fields are private and it has no
/// `Deserialize`: the parse constructors are the only way to make one, so it is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewOrder {
    customer_id: String,
    items: Vec<String>,
    total: Money,
}

impl NewOrder {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<NewOrder, InvalidOrder> {
        let body: OrderBody = from_json_object(body)?;
        Self::from_body(body)
    }

    /// Parses a JSON array of order bodies (the batch route); the error names the index.
    pub fn parse_batch(body: &[u8]) -> Result<Vec<NewOrder>, (Option<usize>, InvalidOrder)> {
        let bodies: Vec<&RawValue> =
            serde_json::from_slice(body).map_err(|e| (None, InvalidOrder::from_json(e)))?;
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, raw)| NewOrder::parse(raw.get().as_bytes()).map_err(|e| (Some(i), e)))
            .collect()
    }

    /// The order as validated, in JSON with a fixed field order: what an `Idempotency-Key`
    /// compares, so the same order sent with other spacing or key order is the same body.
    pub fn canonical_json(&self) -> String {
        // Plain strings and a number: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn from_body(body: OrderBody<'_>) -> Result<NewOrder, InvalidOrder> {
        let total = Money::parse_json_number(body.total.get())?;
        Self::validated(body.customer_id, body.items, total)
    }

    fn validated(
        customer_id: String,
        items: Vec<String>,
        total: Money,
    ) -> Result<NewOrder, InvalidOrder> {
        let customer_id = parse_customer_id(&customer_id)?;
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(InvalidOrder::rule(
                "items",
                format!("items must hold 1 to {MAX_ITEMS} item ids"),
            ));
        }
        for item in &items {
            let chars = item.chars().count();
            if item.trim().is_empty() || chars > MAX_ITEM_CHARS {
                return Err(InvalidOrder::rule(
                    "items",
                    format!("each item must be a non-empty string of at most {MAX_ITEM_CHARS} characters"),
                ));
            }
            if let Some(problem) = unsafe_text(item) {
                return Err(InvalidOrder::rule(
                    "items",
                    format!("items must not {problem}"),
                ));
            }
        }
        Ok(NewOrder {
            customer_id: customer_id.to_string(),
            items,
            total,
        })
    }
}

/// A customer id as orders store it (trimmed), or the rule it breaks: also what a filter on
/// customers must be to match any order.
pub fn parse_customer_id(raw: &str) -> Result<&str, InvalidOrder> {
    let customer_id = raw.trim();
    let chars = customer_id.chars().count();
    if chars == 0 || chars > MAX_CUSTOMER_CHARS {
        return Err(InvalidOrder::rule(
            "customer_id",
            format!("customer_id must be 1 to {MAX_CUSTOMER_CHARS} characters"),
        ));
    }
    if let Some(problem) = unsafe_text(customer_id) {
        return Err(InvalidOrder::rule(
            "customer_id",
            format!("customer_id must not {problem}"),
        ));
    }
    let edges = [customer_id.chars().next(), customer_id.chars().last()];
    if edges.into_iter().flatten().any(invisible) {
        return Err(InvalidOrder::rule(
            "customer_id",
            "customer_id must begin and end with a visible character",
        ));
    }
    Ok(customer_id)
}

/// White space, or a character that shows nothing (soft hyphen, zero-width characters).
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(c, '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// What makes a customer id or an item unsafe to show or log, if anything: control characters,
/// bidirectional controls (which reorder the text around them), line and paragraph separators
/// (which start a new line in a log), or nothing visible at all (only zero-width characters).
fn unsafe_text(text: &str) -> Option<&'static str> {
    let bidi = |c: char| matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if text.chars().any(char::is_control) {
        Some("contain control characters")
    } else if text.chars().any(bidi) {
        Some("contain bidirectional control characters")
    } else if text.contains(['\u{2028}', '\u{2029}']) {
        Some("contain line or paragraph separators")
    } else if text.chars().all(invisible) {
        Some("be only invisible characters")
    } else {
        None
    }
}

/// An order's place in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    /// All statuses, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The name stored in PostgreSQL and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a stored or requested status name.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted order as it travels on the Redis list: the order plus its id and acceptance time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<String>,
    pub total: Money,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    /// Failed tries so far (transient failures that sent it to the retry schedule).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// The error of each failed try, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The `X-Request-Id` of the request that placed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C trace context of its enqueue span, when the API traced it (`crate::trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Job {
    /// Accepts a new order: gives it an id (UUIDv7, so ids sort by time) and a timestamp.
    pub fn accept(order: NewOrder, now: OffsetDateTime, request_id: Option<String>) -> Job {
        Job {
            order_id: Uuid::now_v7(),
            customer_id: order.customer_id,
            items: order.items,
            total: order.total,
            accepted_at: now,
            failures: 0,
            errors: Vec::new(),
            request_id,
            traceparent: None,
            tracestate: None,
        }
    }

    /// The same job carrying a trace context (`traceparent`, `tracestate`).
    pub fn traced(mut self, (traceparent, tracestate): (Option<String>, Option<String>)) -> Job {
        self.traceparent = traceparent;
        self.tracestate = tracestate;
        self
    }

    /// Parses a payload taken off the list and checks the order rules again: anything can be
    /// pushed on the list with redis-cli.
    pub fn parse(payload: &[u8]) -> Result<Job, InvalidOrder> {
        let job: Job = from_json_object(payload)?;
        let order = NewOrder::validated(job.customer_id, job.items, job.total)?;
        Ok(Job {
            order_id: job.order_id,
            customer_id: order.customer_id,
            items: order.items,
            total: order.total,
            accepted_at: job.accepted_at,
            failures: job.failures,
            errors: job.errors,
            request_id: job.request_id,
            traceparent: job.traceparent,
            tracestate: job.tracestate,
        })
    }

    /// The same order after one more failed try.
    pub fn failed_once(&self, error: String) -> Job {
        let mut next = self.clone();
        next.failures += 1;
        next.errors.push(error);
        next
    }

    /// The payload pushed on the list.
    pub fn to_payload(&self) -> String {
        // Serialising plain strings, numbers and a timestamp cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_order_parses() {
        let order =
            NewOrder::parse(br#"{"customer_id": " c1 ", "items": ["a", "b"], "total": 123.45}"#)
                .unwrap();
        assert_eq!(order.customer_id, "c1");
        assert_eq!(order.items, ["a", "b"]);
        assert_eq!(order.total.cents(), 12345);
    }

    #[test]
    fn bodies_of_the_wrong_shape_are_400s() {
        for body in [
            &br#"{"customer_id": "c", "items": ["a"], "total": 1, "x": 1}"#[..],
            br#"{"customer_id": "c", "items": ["a"]}"#,
            br#"{"customer_id": 5, "items": ["a"], "total": 1}"#,
            br#"{"customer_id": "c", "items": "a", "total": 1}"#,
            br#"{"customer_id": "c", "items": ["a"], "total": "1"}"#,
            br#"[]"#,
            br#" ["c", ["a"], 1]"#,
            br#"42"#,
        ] {
            let err = NewOrder::parse(body).unwrap_err();
            assert!(
                matches!(err, InvalidOrder::WrongShape { .. }),
                "{err:?} for {}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            NewOrder::parse(b"{not json"),
            Err(InvalidOrder::Malformed(_))
        ));
        let err = NewOrder::parse(br#"{"customer_id": "c", "items": ["a"], "total": 1, "x": 1}"#)
            .unwrap_err();
        assert!(matches!(err, InvalidOrder::WrongShape { field: Some(f), .. } if f == "x"));
    }

    #[test]
    fn values_that_break_a_rule_are_422s() {
        let long = "x".repeat(65);
        let long_item = "i".repeat(129);
        let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let cases = [
            (
                serde_json::json!({"customer_id": "  ", "items": ["a"], "total": 1}),
                "customer_id",
            ),
            (
                serde_json::json!({"customer_id": long, "items": ["a"], "total": 1}),
                "customer_id",
            ),
            (
                serde_json::json!({"customer_id": "a\u{7}b", "items": ["a"], "total": 1}),
                "customer_id",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": [], "total": 1}),
                "items",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": [""], "total": 1}),
                "items",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": [long_item], "total": 1}),
                "items",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": many, "total": 1}),
                "items",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": ["a"], "total": 1.001}),
                "total",
            ),
            (
                serde_json::json!({"customer_id": "c", "items": ["a"], "total": -5}),
                "total",
            ),
        ];
        for (body, expected) in cases {
            let err = NewOrder::parse(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(err, InvalidOrder::Rule { field, .. } if field == expected),
                "{err:?} for {body}"
            );
        }
    }

    #[test]
    fn text_that_hides_or_reorders_itself_is_refused() {
        for bad in [
            "a\u{202E}b",
            "a\u{2066}b",
            "\u{200F}",
            "a\u{2028}b",
            "a\u{2029}b",
            "\u{200B}\u{200D}",
            "\u{FEFF}",
        ] {
            let body = serde_json::json!({"customer_id": bad, "items": ["a"], "total": 1});
            let err = NewOrder::parse(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    InvalidOrder::Rule {
                        field: "customer_id",
                        ..
                    }
                ),
                "{err:?} for {bad:?}"
            );
            let body = serde_json::json!({"customer_id": "c", "items": [bad], "total": 1});
            let err = NewOrder::parse(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(err, InvalidOrder::Rule { field: "items", .. }),
                "{err:?} for {bad:?}"
            );
        }
        // A customer id begins and ends with something visible.
        for bad in ["\u{200B}a", "a\u{FEFF}"] {
            let body = serde_json::json!({"customer_id": bad, "items": ["a"], "total": 1});
            let err = NewOrder::parse(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(
                    err,
                    InvalidOrder::Rule {
                        field: "customer_id",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        // Visible text with a zero-width joiner (emoji sequences) or accents is fine.
        let fine =
            serde_json::json!({"customer_id": "Zoë 👩\u{200D}💻", "items": ["café"], "total": 1});
        assert!(NewOrder::parse(fine.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn a_job_round_trips_and_is_validated_again() {
        let order =
            NewOrder::parse(br#"{"customer_id": "c", "items": ["a"], "total": 0.3}"#).unwrap();
        let job = Job::accept(order, OffsetDateTime::now_utc(), None);
        let parsed = Job::parse(job.to_payload().as_bytes()).unwrap();
        assert_eq!(parsed.order_id, job.order_id);
        assert_eq!(parsed.total.cents(), 30);
        let bad = job.to_payload().replace("\"c\"", "\"\"");
        assert!(matches!(
            Job::parse(bad.as_bytes()),
            Err(InvalidOrder::Rule { .. })
        ));
        assert!(Job::parse(b"garbage").is_err());
    }

    #[test]
    fn statuses_parse_by_their_names() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("nope"), None);
        assert_eq!(Status::parse("Completed"), None);
    }
}
