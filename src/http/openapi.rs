//! The OpenAPI document of this API, served at `GET /openapi.json`.
//!
//! It is written by hand in `openapi.json`, beside this file, and kept true to the routes by
//! tests: the unit tests below check that it is a well-formed OpenAPI 3 document naming only
//! routes the router knows, `tests/openapi.rs` checks against the running service that it names
//! exactly the operations of the route table (`ROUTES`) and that the router serves them, and
//! `just contract` (schemathesis) checks every response against it.

/// The document, kept beside this file (OpenAPI 3.0.3, JSON).
pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::DOCUMENT;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every (path, method, operation) of the document.
    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if METHODS.contains(&method.as_str()) {
                    out.push((path.clone(), method.clone(), operation.clone()));
                }
            }
        }
        out
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let pointer = reference.strip_prefix('#').expect("local $ref");
                let target = doc
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} does not resolve"));
                resolve(doc, target)
            }
            None => value,
        }
    }

    #[test]
    fn it_is_an_openapi_3_document() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi version");
        assert!(version.starts_with("3."), "OpenAPI 3.x, not {version}");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        assert!(!operations(&doc).is_empty());
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, value: &Value) {
            match value {
                Value::Object(map) => {
                    if map.contains_key("$ref") {
                        resolve(doc, value);
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        let doc = document();
        walk(&doc, &doc);
    }

    #[test]
    fn it_names_only_routes_the_router_knows() {
        let doc = document();
        for (path, _, _) in operations(&doc) {
            let concrete = path.replace("{id}", "0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a");
            assert_eq!(super::super::route_of(&concrete), path, "{path}");
        }
    }

    #[test]
    fn every_operation_documents_its_request_id_and_its_errors() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        for (path, method, operation) in operations(&doc) {
            let label = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(
                ids.insert(id.to_string()),
                "{label}: operationId {id} twice"
            );
            let takes_request_id = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&doc, p))
                .any(|p| p["in"] == "header" && p["name"] == "X-Request-Id");
            assert!(takes_request_id, "{label}: X-Request-Id parameter");
            let responses = operation["responses"].as_object().expect("responses");
            for status in ["404", "405"] {
                assert!(responses.contains_key(status), "{label}: no {status}");
            }
            for (status, response) in responses {
                let response = resolve(&doc, response);
                assert!(
                    response["headers"]["X-Request-Id"].is_object(),
                    "{label} {status}: X-Request-Id header"
                );
                let code: u16 = status.parse().expect("explicit status codes");
                // Every error uses the Error shape (readiness answers its own body when not ready).
                if code >= 400 && !(path == "/readyz" && code == 503) {
                    let schema = &response["content"]["application/json"]["schema"];
                    let error = schema["allOf"][0]["$ref"].as_str();
                    assert_eq!(
                        error,
                        Some("#/components/schemas/Error"),
                        "{label} {status}"
                    );
                }
            }
        }
    }

    #[test]
    fn admin_operations_need_the_bearer_token() {
        let doc = document();
        for (path, method, operation) in operations(&doc) {
            // Who may call it, as the route table says.
            let route = super::super::ROUTES.iter().find(|r| r.template == path);
            let admin = route.is_some_and(|r| {
                r.methods.iter().any(|(m, access)| {
                    m.as_str().eq_ignore_ascii_case(&method)
                        && *access == super::super::Access::Admin
                })
            });
            let secured = operation["security"][0].get("adminToken").is_some();
            assert_eq!(admin, secured, "{} {path}", method.to_uppercase());
            if admin {
                let responses = &operation["responses"];
                for status in ["401", "403", "429"] {
                    assert!(responses[status].is_object(), "{path}: no {status}");
                }
            }
        }
    }

    #[test]
    fn error_codes_are_the_ones_the_api_sends() {
        use super::super::ApiError;
        let doc = document();
        let documented: Vec<&str> = doc["components"]["schemas"]["ErrorDetail"]["properties"]
            ["code"]["enum"]
            .as_array()
            .expect("code enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let errors = [
            ApiError::MalformedJson(String::new()),
            ApiError::InvalidBody {
                message: String::new(),
                field: None,
            },
            ApiError::InvalidField {
                field: String::new(),
                message: String::new(),
            },
            ApiError::InvalidQuery(String::new()),
            ApiError::InvalidHeader(String::new()),
            ApiError::PayloadTooLarge(0),
            ApiError::UnsupportedMediaType,
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::Conflict(String::new()),
            ApiError::Gone(String::new()),
            ApiError::Unauthorized,
            ApiError::Forbidden(""),
            ApiError::QueueFull,
            ApiError::Overloaded(""),
            ApiError::BodyTimeout,
            ApiError::TooManyFailures(1),
            ApiError::Unavailable(String::new().into()),
            ApiError::NotReplicated {
                wanted: 1,
                acked: 0,
            },
        ];
        // Does not compile once a variant is added: add it to `errors` too.
        let _every_variant_is_listed = |e: &ApiError| match e {
            ApiError::MalformedJson(_)
            | ApiError::InvalidBody { .. }
            | ApiError::InvalidField { .. }
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidHeader(_)
            | ApiError::PayloadTooLarge(_)
            | ApiError::UnsupportedMediaType
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::Conflict(_)
            | ApiError::Gone(_)
            | ApiError::Unauthorized
            | ApiError::Forbidden(_)
            | ApiError::QueueFull
            | ApiError::Overloaded(_)
            | ApiError::BodyTimeout
            | ApiError::TooManyFailures(_)
            | ApiError::Unavailable(_)
            | ApiError::NotReplicated { .. } => (),
        };
        let sent: Vec<&str> = errors.iter().map(|e| e.status_and_code().1).collect();
        let mut a = documented.clone();
        let mut b = sent.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        // Each status's response lists exactly the codes sent with that status.
        for error in &errors {
            let (status, code) = error.status_and_code();
            let name = match (status.as_u16(), code) {
                (429, "too_many_requests") => "TooManyFailures",
                _ => match status.as_u16() {
                    400 => "BadRequest",
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    404 => "NotFound",
                    405 => "MethodNotAllowed",
                    408 => "RequestTimeout",
                    409 => "Conflict",
                    410 => "Gone",
                    413 => "PayloadTooLarge",
                    415 => "UnsupportedMediaType",
                    422 => "UnprocessableEntity",
                    429 => "QueueFull",
                    503 => "Unavailable",
                    other => panic!("undocumented status {other}"),
                },
            };
            let codes = &doc["components"]["responses"][name]["content"]["application/json"]
                ["schema"]["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"];
            assert!(
                codes
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == code)),
                "{code} in {name}"
            );
        }
    }
}
