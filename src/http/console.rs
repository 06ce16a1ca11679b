//! The operator console: one HTML page, its script and its style sheet, compiled into the binary
//! (`console/`, beside this file). The page holds no data: its script reads the API from the
//! browser, with the admin token the operator pastes (kept in `sessionStorage`, sent as a bearer
//! token). Every answer here carries a Content-Security-Policy that lets the page load only its
//! own script and style and talk only to this origin.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// The policy of every console response: nothing but this origin's script, style and API, no
/// inline script or style, no forms posted anywhere, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The page.
const INDEX: &str = include_str!("console/index.html");
/// Its script.
const SCRIPT: &str = include_str!("console/console.js");
/// Its style sheet.
const STYLE: &str = include_str!("console/console.css");

/// One of the console's files.
#[derive(Debug, Clone, Copy)]
pub(super) enum Asset {
    Page,
    Script,
    Style,
}

impl Asset {
    fn body_and_type(self) -> (&'static str, &'static str) {
        match self {
            Asset::Page => (INDEX, "text/html; charset=utf-8"),
            Asset::Script => (SCRIPT, "text/javascript; charset=utf-8"),
            Asset::Style => (STYLE, "text/css; charset=utf-8"),
        }
    }
}

/// The file with its content type and the console's headers. `no-cache`: the browser may keep
/// it but asks again each time, so a new build's page and script are never mixed.
pub(super) fn serve(asset: Asset) -> Response {
    let (body, kind) = asset.body_and_type();
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(kind));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /`: the console is the front page.
pub(super) fn front_page() -> Response {
    let mut response = Response::new("".into());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response
        .headers_mut()
        .insert("location", HeaderValue::from_static("/console"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX.contains(r#"src="/console/console.js""#));
        assert!(INDEX.contains(r#"href="/console/console.css""#));
        // The policy forbids inline script and style: none may be in the page.
        for forbidden in [
            "<script>",
            "style=",
            "<style",
            "onclick=",
            "javascript:",
            "http://",
        ] {
            assert!(!INDEX.contains(forbidden), "{forbidden} in index.html");
        }
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "https://",
        ] {
            assert!(!SCRIPT.contains(forbidden), "{forbidden} in console.js");
        }
        assert!(!STYLE.contains("@import") && !STYLE.contains("url(http"));
    }

    #[test]
    fn every_file_has_its_type_and_the_policy() {
        for asset in [Asset::Page, Asset::Script, Asset::Style] {
            let response = serve(asset);
            let headers = response.headers();
            assert!(headers["content-security-policy"]
                .to_str()
                .is_ok_and(|v| v.contains("script-src 'self'")));
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["cache-control"], "no-cache");
        }
        let redirect = front_page();
        assert_eq!(redirect.status(), 308);
        assert_eq!(redirect.headers()["location"], "/console");
    }
}
