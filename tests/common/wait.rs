//! Waiting for a condition: the one polling loop of the tests.

use std::time::{Duration, Instant};

/// How often [`wait_until`] checks.
const EVERY: Duration = Duration::from_millis(50);

/// Checks `check` every `every` until it holds or `timeout` has passed; whether it held.
pub async fn poll_until(
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> bool {
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `check` holds, for up to `timeout`; panics naming `what` otherwise.
pub async fn wait_until(what: &str, timeout: Duration, check: impl AsyncFnMut() -> bool) {
    assert!(
        poll_until(timeout, EVERY, check).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}
