//! The route table and the router built from it. [`ROUTES`] is the one list of the API's paths
//! and methods: the router checks its branches against it, the access log takes its metric labels
//! and the `Allow` header of a 405 from it, and `tests/openapi.rs` holds the served document to it.

use super::auth::admin;
use super::body::json_body;
use super::console::{self, Asset};
use super::error::answer;
use super::request_id::request_id;
use super::{admin as ops, handlers, openapi, sse, Api, ApiError, MAX_BATCH_BODY, MAX_BODY};
use futures_util::future;
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::{HeaderValue, Method};
use warp::path::FullPath;
use warp::reply::{json, with_header, Response};
use warp::{Filter, Rejection, Reply};
use Access::{Admin, Public};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Only a caller that sends `Authorization: Bearer <admin token>`.
    Admin,
}

/// One path of the API and the operations on it.
#[derive(Debug)]
pub struct Route {
    /// The path; `{id}` stands for any one non-empty segment.
    pub template: &'static str,
    /// The methods it answers, in the order the `Allow` header names them, and who may call each.
    pub methods: &'static [(Method, Access)],
}

static ORDERS: Route = Route::new("/orders", &[(Method::GET, Public), (Method::POST, Public)]);
static ORDERS_BATCH: Route = Route::new("/orders/batch", &[(Method::POST, Public)]);
static ORDER: Route = Route::new(
    "/orders/{id}",
    &[(Method::GET, Public), (Method::DELETE, Admin)],
);
static ORDER_STATUS: Route = Route::new("/orders/{id}/status", &[(Method::PUT, Public)]);
static ORDER_HISTORY: Route = Route::new("/orders/{id}/history", &[(Method::GET, Public)]);
static DEAD_LETTERS: Route = Route::new(
    "/dead-letters",
    &[(Method::GET, Admin), (Method::DELETE, Admin)],
);
static DEAD_LETTERS_RETRY: Route = Route::new("/dead-letters/retry", &[(Method::POST, Admin)]);
static DEAD_LETTER: Route = Route::new("/dead-letters/{id}", &[(Method::DELETE, Admin)]);
static DEAD_LETTER_RETRY: Route = Route::new("/dead-letters/{id}/retry", &[(Method::POST, Admin)]);
static SCHEDULED: Route = Route::new("/scheduled", &[(Method::GET, Admin)]);
static SCHEDULED_RETRY: Route = Route::new("/scheduled/{id}/retry", &[(Method::POST, Admin)]);
static WORKERS: Route = Route::new("/workers", &[(Method::GET, Public)]);
static WORKERS_PAUSE: Route = Route::new("/workers/pause", &[(Method::POST, Admin)]);
static WORKERS_RESUME: Route = Route::new("/workers/resume", &[(Method::POST, Admin)]);
static STATS_HISTORY: Route = Route::new("/stats/history", &[(Method::GET, Public)]);
static HEALTHZ: Route = Route::new("/healthz", &[(Method::GET, Public)]);
static READYZ: Route = Route::new("/readyz", &[(Method::GET, Public)]);
static STATS: Route = Route::new("/stats", &[(Method::GET, Public)]);
static METRICS: Route = Route::new("/metrics", &[(Method::GET, Public)]);
static EVENTS: Route = Route::new("/events", &[(Method::GET, Public)]);
static OPENAPI: Route = Route::new("/openapi.json", &[(Method::GET, Public)]);
static FRONT_PAGE: Route = Route::new("/", &[(Method::GET, Public)]);
static CONSOLE: Route = Route::new("/console", &[(Method::GET, Public)]);
static CONSOLE_SCRIPT: Route = Route::new("/console/console.js", &[(Method::GET, Public)]);
static CONSOLE_STYLE: Route = Route::new("/console/console.css", &[(Method::GET, Public)]);

/// Every route of the API, in the order a path is tried against them: the first that fits is
/// the path's route, so `/orders/batch` comes before the `/orders/{id}` that it also fits.
pub static ROUTES: &[&Route] = &[
    &ORDERS,
    &ORDERS_BATCH,
    &ORDER,
    &ORDER_STATUS,
    &ORDER_HISTORY,
    &DEAD_LETTERS,
    &DEAD_LETTERS_RETRY,
    &DEAD_LETTER,
    &DEAD_LETTER_RETRY,
    &SCHEDULED,
    &SCHEDULED_RETRY,
    &WORKERS,
    &WORKERS_PAUSE,
    &WORKERS_RESUME,
    &HEALTHZ,
    &READYZ,
    &STATS,
    &STATS_HISTORY,
    &METRICS,
    &EVENTS,
    &OPENAPI,
    &FRONT_PAGE,
    &CONSOLE,
    &CONSOLE_SCRIPT,
    &CONSOLE_STYLE,
];

impl Route {
    const fn new(template: &'static str, methods: &'static [(Method, Access)]) -> Route {
        Route { template, methods }
    }

    /// Whether `path` fits the template, and its `{id}` segment if the template has one. Paths
    /// are read as warp reads them: one leading slash, at most one trailing slash, no empty
    /// segment.
    fn fit<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        let mut rest = path.strip_prefix('/').unwrap_or(path);
        let mut id = None;
        for expected in self.template.trim_start_matches('/').split('/') {
            let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if expected == "{id}" {
                if segment.is_empty() {
                    return None;
                }
                id = Some(segment);
            } else if segment != expected {
                return None;
            }
            rest = tail;
        }
        rest.is_empty().then_some(id)
    }

    /// The `Allow` header of a 405 on this route: its methods, and HEAD where GET is.
    pub fn allow(&self) -> Option<HeaderValue> {
        let mut names = Vec::with_capacity(self.methods.len() + 1);
        for (m, _) in self.methods {
            names.push(m.as_str());
            if *m == Method::GET {
                names.push("HEAD");
            }
        }
        HeaderValue::from_str(&names.join(", ")).ok()
    }
}

/// The route of a path: the first of [`ROUTES`] that it fits.
pub fn resolve(path: &str) -> Option<&'static Route> {
    ROUTES.iter().copied().find(|r| r.fit(path).is_some())
}

/// The route template of a path, for metric labels (ids would make one series per order).
pub fn route_of(path: &str) -> &'static str {
    resolve(path).map_or("other", |r| r.template)
}

/// The rejection of a request whose path is this branch's but whose method is not. Like warp's
/// own method filters, it ranks below the errors of a branch that did match (see `recover`).
#[derive(Debug)]
pub(super) struct OtherMethod;

impl warp::reject::Reject for OtherMethod {}

/// Requests for `method` on `route`; others are not found (another path) or [`OtherMethod`].
/// Panics when the table does not list `method` on `route` with `access`: the router and the
/// table must agree, and every start of the service checks that they do.
pub(super) fn gate(
    route: &'static Route,
    method: Method,
    access: Access,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    assert!(
        route.methods.contains(&(method.clone(), access)),
        "{method} {} as {access:?} is not in ROUTES",
        route.template
    );
    warp::path::full()
        .and(warp::method())
        .and_then(move |path: FullPath, actual: Method| {
            let path = path.as_str();
            // This route alone first keeps a miss cheap; a fit needs the table, to see that no
            // earlier route takes the path.
            let ours =
                route.fit(path).is_some() && resolve(path).is_some_and(|r| std::ptr::eq(r, route));
            // HEAD is GET without the body (hyper leaves the body out).
            let served = |m: &Method| *m == actual || (*m == Method::GET && actual == Method::HEAD);
            future::ready(if !ours {
                Err(warp::reject::not_found())
            } else if served(&method) {
                Ok(())
            } else if route.methods.iter().any(|(m, _)| served(m)) {
                // Another branch serves this method: its own rejection (a bad header, say) is
                // the answer, not a 405 from this one.
                Err(warp::reject::not_found())
            } else {
                Err(warp::reject::custom(OtherMethod))
            })
        })
        .untuple_one()
}

/// Anyone's requests for `method` on `route`.
fn public(
    route: &'static Route,
    method: Method,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    gate(route, method, Public)
}

/// The `{id}` segment of the request's path (after a gate on a route that has one).
fn path_id() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::path::full().map(|path: FullPath| {
        let path = path.as_str();
        let id = resolve(path).and_then(|r| r.fit(path)).flatten();
        id.unwrap_or_default().to_string()
    })
}

/// The query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Every operation of [`ROUTES`] with its handler; what no branch takes is rejected for
/// `recover`. `POST /orders` comes first: it is the one that has to be cheap.
pub(super) fn router(
    api: Arc<Api>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let with_api = {
        let api = api.clone();
        warp::any().map(move || api.clone())
    };
    let create = public(&ORDERS, Method::POST)
        .and(crate::trace::incoming())
        .and(json_body(MAX_BODY, &api.body_budget))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(request_id())
        .and(with_api.clone())
        .then(handlers::create_order);
    let batch = public(&ORDERS_BATCH, Method::POST)
        .and(crate::trace::incoming())
        .and(json_body(MAX_BATCH_BODY, &api.body_budget))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(request_id())
        .and(with_api.clone())
        .then(handlers::create_batch);
    let list = public(&ORDERS, Method::GET)
        .and(raw_query())
        .and(with_api.clone())
        .then(handlers::list_orders);
    let get = public(&ORDER, Method::GET)
        .and(path_id())
        .and(with_api.clone())
        .then(handlers::get_order);
    let cancel = public(&ORDER_STATUS, Method::PUT)
        .and(path_id())
        .and(json_body(MAX_BODY, &api.body_budget))
        .and(request_id())
        .and(with_api.clone())
        .then(handlers::set_status);
    let delete = admin(&ORDER, Method::DELETE, &api)
        .and(path_id())
        .and(with_api.clone())
        .then(handlers::delete_order);
    let history = public(&ORDER_HISTORY, Method::GET)
        .and(path_id())
        .and(with_api.clone())
        .then(ops::order_history);
    let dead_letters = admin(&DEAD_LETTERS, Method::GET, &api)
        .and(raw_query())
        .and(with_api.clone())
        .then(ops::list_dead_letters);
    let purge_dead_letters = admin(&DEAD_LETTERS, Method::DELETE, &api)
        .and(with_api.clone())
        .then(ops::purge_dead_letters);
    let retry_dead_letters = admin(&DEAD_LETTERS_RETRY, Method::POST, &api)
        .and(json_body(MAX_BODY, &api.body_budget))
        .and(with_api.clone())
        .then(ops::retry_dead_letters);
    let delete_dead_letter = admin(&DEAD_LETTER, Method::DELETE, &api)
        .and(path_id())
        .and(with_api.clone())
        .then(ops::delete_dead_letter);
    let retry_dead_letter = admin(&DEAD_LETTER_RETRY, Method::POST, &api)
        .and(path_id())
        .and(with_api.clone())
        .then(ops::retry_dead_letter);
    let scheduled = admin(&SCHEDULED, Method::GET, &api)
        .and(raw_query())
        .and(with_api.clone())
        .then(ops::list_scheduled);
    let run_scheduled = admin(&SCHEDULED_RETRY, Method::POST, &api)
        .and(path_id())
        .and(with_api.clone())
        .then(ops::run_scheduled_now);
    let workers = public(&WORKERS, Method::GET)
        .and(with_api.clone())
        .then(ops::workers);
    let pause = admin(&WORKERS_PAUSE, Method::POST, &api)
        .and(with_api.clone())
        .then(ops::pause);
    let resume = admin(&WORKERS_RESUME, Method::POST, &api)
        .and(with_api.clone())
        .then(ops::resume);
    let stats_history = public(&STATS_HISTORY, Method::GET)
        .and(with_api.clone())
        .then(ops::history);
    let healthz = public(&HEALTHZ, Method::GET)
        .map(|| Ok(json(&serde_json::json!({"status": "ok"})).into_response()));
    let readyz = public(&READYZ, Method::GET)
        .and(with_api.clone())
        .then(handlers::ready)
        .map(Ok);
    let stats = public(&STATS, Method::GET)
        .and(with_api.clone())
        .then(handlers::stats);
    let events = public(&EVENTS, Method::GET)
        .and(raw_query())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_api.clone())
        .then(sse::events);
    let metrics = public(&METRICS, Method::GET)
        .and(with_api)
        .then(handlers::metrics);
    let document = public(&OPENAPI, Method::GET).map(|| {
        Ok(with_header(openapi::DOCUMENT, "content-type", "application/json").into_response())
    });
    let console = console_routes();

    // `POST /orders` alone is tried first, unboxed; the others sit behind one box. warp clones
    // the second half of an `or` for every request it routes, and moves every future it makes:
    // boxed, that is one reference count and one pointer, not the whole table's filters. Inside
    // the box a tree, not one long chain, keeps the filter's type shallow enough for the
    // compiler; warp still tries the branches left to right.
    let orders = batch.or(list.or(get).unify()).unify();
    let changes = cancel.or(delete).unify();
    let dead_letter_ops = dead_letters
        .or(purge_dead_letters)
        .unify()
        .or(retry_dead_letters.or(delete_dead_letter).unify())
        .unify()
        .or(retry_dead_letter)
        .unify();
    let operator = scheduled
        .or(run_scheduled)
        .unify()
        .or(workers.or(pause).unify().or(resume).unify())
        .unify()
        .or(history.or(stats_history).unify())
        .unify();
    let probes = healthz
        .or(readyz)
        .unify()
        .or(stats.or(metrics).unify())
        .unify();
    let others = orders
        .or(changes)
        .unify()
        .or(dead_letter_ops.or(operator).unify())
        .unify()
        .or(probes.or(document).unify().or(events).unify())
        .unify()
        .or(console)
        .unify()
        .boxed();
    create.or(others).unify().and_then(answer)
}

/// The console's page, script and style sheet, and the front page that leads to it.
fn console_routes(
) -> impl Filter<Extract = (Result<Response, ApiError>,), Error = Rejection> + Clone {
    let file = |route: &'static Route, asset: Asset| {
        public(route, Method::GET).map(move || Ok(console::serve(asset)))
    };
    let front_page = public(&FRONT_PAGE, Method::GET).map(|| Ok(console::front_page()));
    front_page
        .or(file(&CONSOLE, Asset::Page))
        .unify()
        .or(file(&CONSOLE_SCRIPT, Asset::Script)
            .or(file(&CONSOLE_STYLE, Asset::Style))
            .unify())
        .unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_as_warp_reads_them() {
        let id = "0193a5b2-7c1e-7d2a-9f3b-2a6c1e0d4f5a";
        assert_eq!(ORDER.fit(&format!("/orders/{id}")), Some(Some(id)));
        assert_eq!(ORDER.fit(&format!("/orders/{id}/")), Some(Some(id)));
        assert_eq!(ORDER.fit("/orders//"), None);
        assert_eq!(ORDERS.fit("/orders//"), None);
        assert_eq!(ORDERS.fit("//orders"), None);
        assert_eq!(ORDER_STATUS.fit("/orders//status"), None);
        assert_eq!(route_of("/orders/batch"), "/orders/batch");
        assert_eq!(route_of("/orders/batch/status"), "/orders/{id}/status");
        assert_eq!(route_of("/"), "/");
        assert_eq!(route_of("/console/"), "/console");
        assert_eq!(route_of("/console/x"), "other");
    }

    #[test]
    fn the_table_is_well_formed() {
        let mut templates = std::collections::HashSet::new();
        for route in ROUTES {
            assert!(route.template.starts_with('/'), "{}", route.template);
            assert!(templates.insert(route.template), "{} twice", route.template);
            assert!(!route.methods.is_empty(), "{}", route.template);
            // Each template resolves to itself, so none is hidden behind an earlier one.
            let concrete = route.template.replace("{id}", "x");
            assert_eq!(route_of(&concrete), route.template);
        }
        assert_eq!(
            ORDERS.allow(),
            Some(HeaderValue::from_static("GET, HEAD, POST"))
        );
        assert_eq!(
            ORDER.allow(),
            Some(HeaderValue::from_static("GET, HEAD, DELETE"))
        );
    }
}
