//! The OpenAPI document of this API, served at `GET /openapi.json`.

/// The document, kept beside this file.
pub const DOCUMENT: &str = include_str!("openapi.json");
