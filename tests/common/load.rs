//! Load as a careful client sends it across a fault: one order per `POST /orders`, each with an
//! `Idempotency-Key` of its own, sent again with the same key after a 503 or a connection error
//! until it gets its 202, from several clients at once.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a client waits for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before sending an order again.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// How long an order in its retries may take once the load is asked to stop.
const FINISH_RETRIES: Duration = Duration::from_secs(30);

/// One order that got its 202.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_id: Uuid,
    /// When the request that got the 202 was sent, and when it was answered.
    pub sent: Instant,
    pub answered: Instant,
    /// Requests it took, the 202 included.
    pub tries: u32,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted: Vec<Accepted>,
    /// Answers by status, each try counted.
    pub statuses: BTreeMap<u16, usize>,
    /// Error codes of the answers that were not 202, e.g. `unavailable`, `not_replicated`.
    pub error_codes: BTreeMap<String, usize>,
    /// Tries that got no answer (refused, reset, timed out).
    pub transport_errors: usize,
    /// Orders given up: an answer that is not 202 or 503, or retries past the stop.
    pub given_up: Vec<String>,
}

impl LoadResult {
    /// The ids of the accepted orders.
    pub fn ids(&self) -> Vec<Uuid> {
        self.accepted.iter().map(|a| a.order_id).collect()
    }

    /// Orders that took more than one try.
    pub fn retried(&self) -> usize {
        self.accepted.iter().filter(|a| a.tries > 1).count()
    }

    /// The first 202 to a request sent at or after `since`: how long after `since` posting
    /// worked again.
    pub fn first_accepted_after(&self, since: Instant) -> Option<Duration> {
        self.accepted
            .iter()
            .filter(|a| a.sent >= since)
            .map(|a| a.answered - since)
            .min()
    }

    /// Prints what the clients saw, and fails if any order was given up.
    pub fn report(&self) {
        println!("clients: {}", self.summary());
        assert!(
            self.given_up.is_empty(),
            "orders given up: {:?}",
            self.given_up
        );
    }

    /// The longest wait for a 202 (of the try that got it).
    pub fn slowest(&self) -> Duration {
        let waits = self.accepted.iter().map(|a| a.answered - a.sent);
        waits.max().unwrap_or_default()
    }

    /// One line for the scenario's output.
    pub fn summary(&self) -> String {
        format!(
            "202s {} ({} after retries, slowest {:?}), answers {:?}, error codes {:?}, no answer {}",
            self.accepted.len(),
            self.retried(),
            self.slowest(),
            self.statuses,
            self.error_codes,
            self.transport_errors
        )
    }
}

/// Clients posting orders until `total` are accepted or they are stopped.
pub struct KeyedLoad {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    result: Arc<Mutex<LoadResult>>,
}

impl KeyedLoad {
    /// Starts `clients` clients sending orders round robin to `urls` (each `…/orders`), at most
    /// `total` orders in all (`None`: until stopped), each client pausing `pause` between its
    /// orders.
    pub fn start(
        urls: Vec<String>,
        clients: usize,
        total: Option<usize>,
        pause: Duration,
    ) -> KeyedLoad {
        let stop = CancellationToken::new();
        let result = Arc::new(Mutex::new(LoadResult::default()));
        let next = Arc::new(AtomicUsize::new(0));
        let http = super::http::client();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, result, next) = (stop.clone(), result.clone(), next.clone());
                let (http, urls) = (http.clone(), urls.clone());
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if total.is_some_and(|t| i >= t) {
                            break;
                        }
                        let url = &urls[i % urls.len()];
                        send_until_accepted(&http, url, i, &stop, &result).await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        KeyedLoad {
            stop,
            tasks,
            result,
        }
    }

    /// Orders accepted so far.
    pub fn accepted(&self) -> usize {
        self.result.lock().unwrap().accepted.len()
    }

    /// Waits until `n` orders are accepted (for up to 30 s).
    pub async fn wait_accepted(&self, n: usize) {
        let what = format!("{n} orders accepted");
        super::wait_until(&what, Duration::from_secs(30), async || {
            self.accepted() >= n
        })
        .await;
    }

    /// [`LoadResult::first_accepted_after`], so far.
    pub fn first_accepted_after(&self, since: Instant) -> Option<Duration> {
        self.result.lock().unwrap().first_accepted_after(since)
    }

    /// Waits for every client to finish its orders (with a `total`), or stops them first (each
    /// finishes the order it is retrying); what they saw.
    pub async fn finish(self, stop: bool) -> LoadResult {
        if stop {
            self.stop.cancel();
        }
        for task in self.tasks {
            task.await.expect("a load client");
        }
        std::mem::take(&mut *self.result.lock().unwrap())
    }
}

/// Sends order `i` with its own key until it gets a 202, retrying a 503 or no answer.
async fn send_until_accepted(
    http: &reqwest::Client,
    url: &str,
    i: usize,
    stop: &CancellationToken,
    result: &Mutex<LoadResult>,
) {
    let key = Uuid::new_v4().to_string();
    let body = json!({"customer_id": format!("load-{}", i % 50), "items": ["sku-1", "sku-2"], "total": 12.34});
    let mut tries = 0;
    let mut stopped_at = None;
    loop {
        tries += 1;
        let sent = Instant::now();
        let answer = http
            .post(url)
            .header("idempotency-key", &key)
            .json(&body)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        match answer {
            Err(_) => result.lock().unwrap().transport_errors += 1,
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut result = result.lock().unwrap();
                *result.statuses.entry(status).or_default() += 1;
                if status == 202 {
                    let order_id = value["order_id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("a 202 names its order: {text}"));
                    result.accepted.push(Accepted {
                        order_id,
                        sent,
                        answered: Instant::now(),
                        tries,
                    });
                    return;
                }
                let code = value["error"]["code"].as_str().unwrap_or("not JSON");
                *result.error_codes.entry(code.to_string()).or_default() += 1;
                if status != 503 {
                    result.given_up.push(format!("{status} {text}"));
                    return;
                }
            }
        }
        if stop.is_cancelled() {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() > FINISH_RETRIES {
                let why = format!("still no 202 after {tries} tries, key {key}");
                result.lock().unwrap().given_up.push(why);
                return;
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}
