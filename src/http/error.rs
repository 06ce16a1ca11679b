//! One error type for the API; each variant knows its HTTP status. The internal cause of a 503 is
//! logged, never sent to the client.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    InvalidBody {
        message: String,
        field: Option<String>,
    },
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    InvalidHeader(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("missing bearer token: send Authorization: Bearer <admin token>")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the queue is full, retry later")]
    QueueFull,
    #[error("a backing service is unavailable, retry later")]
    Unavailable(String),
}

impl warp::reject::Reject for ApiError {}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// The status and the machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidBody { .. } => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            ApiError::InvalidHeader(_) => (StatusCode::BAD_REQUEST, "invalid_header"),
            ApiError::QueueFull => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::InvalidBody { field, .. } => field.as_deref(),
            ApiError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<crate::order::InvalidOrder> for ApiError {
    fn from(e: crate::order::InvalidOrder) -> Self {
        use crate::order::InvalidOrder::*;
        match e {
            Malformed(m) => ApiError::MalformedJson(m),
            WrongShape { message, field } => ApiError::InvalidBody { message, field },
            Rule { field, message } => ApiError::InvalidField {
                field: field.to_string(),
                message,
            },
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = Body {
            error: Detail {
                code,
                message: self.to_string(),
                field: self.field(),
            },
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if let ApiError::PayloadTooLarge(_) = self {
            response
                .headers_mut()
                .insert("connection", warp::http::HeaderValue::from_static("close"));
        }
        if let ApiError::Unavailable(_) | ApiError::QueueFull = self {
            response
                .headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from_static("1"));
        }
        response
    }
}
