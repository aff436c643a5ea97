//! What the host measures about itself, for `GET /node/metrics` (Prometheus text format).
//!
//! The core's part of that endpoint reports the ledger and consensus state (commit, view,
//! replication lag); this module adds the timings only the host can see, because the core does
//! no I/O and reads no clock: how long fsync takes, how long a sync request waits for its answer
//! and how long the core thread spends on one round of inputs. Under load these are where
//! latency to commit goes (README, *Benchmark*), so an operator can see them on a live node, as
//! etcd's `etcd_disk_wal_fsync_duration_seconds` shows its disk.
//!
//! Histograms are lock-free (one atomic per bucket) and their bounds are fixed, so recording
//! costs a few nanoseconds on the hot paths.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram buckets in microseconds: 100 us doubling up to about 3.3 s
/// (the last bucket, `+Inf`, is implicit).
const BUCKET_BOUNDS_US: [u64; 16] = [
    100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400, 3_276_800,
];

/// A latency histogram with the buckets of `BUCKET_BOUNDS_US`.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BUCKET_BOUNDS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(BUCKET_BOUNDS_US.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// Appends the histogram as Prometheus text: cumulative `_bucket` lines, `_sum` and
    /// `_count`, in seconds.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match BUCKET_BOUNDS_US.get(index) {
                Some(bound) => {
                    let seconds = *bound as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The host's measurements of one node.
#[derive(Debug, Default)]
pub struct HostMetrics {
    /// One fsync of a ledger chunk on the sync thread.
    pub ledger_fsync: Histogram,
    /// From the core asking for a sync to the sync thread answering (queueing included).
    pub ledger_sync: Histogram,
    /// One round of the core thread: its inputs stepped and the resulting actions carried out.
    pub core_round: Histogram,
}

impl HostMetrics {
    /// Prometheus text for every measurement.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.ledger_fsync.render(
            "charter_ledger_fsync_duration_seconds",
            "One fsync of a ledger chunk on the node's sync thread.",
            &mut out,
        );
        self.ledger_sync.render(
            "charter_ledger_sync_duration_seconds",
            "From the core asking for ledger writes to be durable to the sync thread's answer.",
            &mut out,
        );
        self.core_round.render(
            "charter_core_round_duration_seconds",
            "One round of the core thread: a batch of inputs stepped and its actions carried out.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_every_observation() {
        let histogram = Histogram::default();
        for us in [50, 100, 101, 3_000, 10_000_000] {
            histogram.observe(Duration::from_micros(us));
        }
        assert_eq!(histogram.count(), 5);
        let mut text = String::new();
        histogram.render("x_seconds", "Test.", &mut text);
        assert!(text.starts_with("# HELP x_seconds Test.\n# TYPE x_seconds histogram\n"));
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0002\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0032\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"3.2768\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("x_seconds_count 5\n"), "{text}");
        assert!(text.contains("x_seconds_sum 10.003251\n"), "{text}");
        let lines = text
            .lines()
            .filter(|line| line.contains("_bucket{"))
            .count();
        assert_eq!(lines, BUCKET_BOUNDS_US.len() + 1);
    }
}
