//! The report of a run: percentiles, rates, and the table or JSON it is printed as.

use super::Hist;
use serde::Serialize;
use std::collections::BTreeMap;
use tokio::time::Instant;

/// p50/p90/p99/max in milliseconds.
#[derive(Serialize)]
pub(super) struct Percentiles {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
}

impl Percentiles {
    pub(super) fn of(h: &Hist) -> Self {
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        let q = |q| ms(h.0.value_at_quantile(q));
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: ms(h.0.max()),
        }
    }
}

/// The final report, printed as a table or as JSON.
#[derive(Serialize)]
pub(super) struct Report {
    pub(super) sent: u64,
    pub(super) accepted: u64,
    pub(super) rejected: BTreeMap<u16, u64>,
    pub(super) transport_errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) elapsed_s: f64,
    pub(super) accept_rate: f64,
    pub(super) http_latency_ms: Percentiles,
    pub(super) events_measured: bool,
    pub(super) completed: u64,
    pub(super) missing: u64,
    pub(super) duplicated: u64,
    pub(super) ignored_events: u64,
    pub(super) completion_rate: f64,
    /// Completions per second while the run is in full swing: between the 10th and the 90th
    /// percentile of completion times, so the fill at the start and the drain of the last
    /// orders (whose processing times no service can shorten) are left out.
    pub(super) sustained_completion_rate: f64,
    pub(super) end_to_end_ms: Percentiles,
}

impl Report {
    pub(super) fn print_table(&self) {
        let row = |name: &str, value: String| println!("{name:<20}{value}");
        let pct = |p: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms",
                p.p50, p.p90, p.p99, p.max
            )
        };
        let rejected: Vec<String> = self
            .rejected
            .iter()
            .map(|(c, n)| format!("{n} ({c})"))
            .collect();
        row("sent", self.sent.to_string());
        row("accepted", self.accepted.to_string());
        row(
            "rejected",
            if rejected.is_empty() {
                "0".into()
            } else {
                rejected.join(", ")
            },
        );
        row("transport errors", self.transport_errors.to_string());
        if let Some(e) = &self.first_error {
            row("  first error", e.clone());
        }
        row("elapsed", format!("{:.2} s", self.elapsed_s));
        row("accept rate", format!("{:.1} orders/s", self.accept_rate));
        row("HTTP latency", pct(&self.http_latency_ms));
        if !self.events_measured {
            return row("events", "not measured (--no-events)".into());
        }
        row("completed events", self.completed.to_string());
        row("missing", self.missing.to_string());
        row("duplicated", self.duplicated.to_string());
        if self.ignored_events > 0 {
            row(
                "ignored events",
                format!("{} (not a completed event)", self.ignored_events),
            );
        }
        row(
            "completion rate",
            format!("{:.1} orders/s", self.completion_rate),
        );
        row(
            "  sustained",
            format!(
                "{:.1} orders/s (10th to 90th percentile of completions)",
                self.sustained_completion_rate
            ),
        );
        row("end-to-end", pct(&self.end_to_end_ms));
    }
}

/// Completions per second between the 10th and the 90th percentile of completion times.
pub(super) fn sustained_rate(completions: &mut [Instant]) -> f64 {
    completions.sort_unstable();
    let n = completions.len();
    if n < 10 {
        return 0.0;
    }
    let (from, to) = (n / 10, n - 1 - n / 10);
    let span = completions[to].saturating_duration_since(completions[from]);
    if span.is_zero() {
        return 0.0;
    }
    (to - from) as f64 / span.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_sustained_rate_leaves_out_the_fill_and_the_tail() {
        let start = Instant::now();
        // 100 completions, one every 10 ms, then a straggler 5 s later.
        let mut at: Vec<Instant> = (0..100)
            .map(|i| start + Duration::from_millis(10 * i))
            .collect();
        at.push(start + Duration::from_secs(6));
        at.reverse();
        let rate = sustained_rate(&mut at);
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
        assert_eq!(sustained_rate(&mut at[..5].to_vec()), 0.0);
    }
}
