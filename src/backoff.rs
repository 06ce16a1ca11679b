//! Exponential backoff with jitter: the one rule for every wait after a failure (reconnecting,
//! retrying a Redis step, scheduling an order's next try).

use crate::Shutdown;
use std::time::Duration;

/// `first × 2^failures`, at most `max`.
fn window(first: Duration, max: Duration, failures: u32) -> Duration {
    first.saturating_mul(2u32.saturating_pow(failures)).min(max)
}

/// The wait before an order's next try after `failures` failed ones (at least one): random
/// between zero and `base × 2^(failures − 1)`, at most `max` ("full jitter", which spreads the
/// retries of orders that failed together).
pub fn retry_delay(base: Duration, max: Duration, failures: u32) -> Duration {
    window(base, max, failures.saturating_sub(1)).mul_f64(rand::random_range(0.0..=1.0))
}

/// Waits that double after each failure, from `first` up to `max`, each between half and all of
/// its window; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// The next wait, and the one after it twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let window = window(self.first, self.max, self.failures);
        self.failures = self.failures.saturating_add(1);
        window.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// Sleeps the next wait, or until `shutdown`.
    pub async fn wait(&mut self, shutdown: &Shutdown) {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Starts again from `first`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_with_jitter_up_to_the_cap() {
        let (first, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut backoff = Backoff::new(first, max);
        for window_ms in [100, 200, 400, 800, 1000, 1000] {
            let d = backoff.next_delay().as_millis();
            assert!(
                (window_ms / 2..=window_ms).contains(&d),
                "{d} for {window_ms}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= first);
    }

    #[test]
    fn retry_delays_stay_within_their_window() {
        let (base, max) = (Duration::from_millis(1000), Duration::from_millis(3000));
        for _ in 0..100 {
            assert!(retry_delay(base, max, 1) <= base);
            assert!(retry_delay(base, max, 2) <= base * 2);
            assert!(retry_delay(base, max, 30) <= max);
        }
    }
}
