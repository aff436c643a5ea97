//! Charter's host timings over a run, from two scrapes of each node's `GET /node/metrics`
//! (Prometheus text): how long fsyncs took, how long the core waited for its syncs and how long
//! its rounds were, while the benchmark's load ran. These say where latency to commit went.

use serde::Serialize;

/// Cumulative bucket counts of one Prometheus histogram: `(upper bound in seconds, count)`,
/// ascending, the last bound infinite.
pub type Buckets = Vec<(f64, u64)>;

/// The buckets of histogram `name` in `text`, or `None` if it is not there.
pub fn parse_histogram(text: &str, name: &str) -> Option<Buckets> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (bound, count) = rest.split_once("\"} ")?;
        let bound = if bound == "+Inf" {
            f64::INFINITY
        } else {
            bound.parse().ok()?
        };
        buckets.push((bound, count.trim().parse().ok()?));
    }
    (!buckets.is_empty()).then_some(buckets)
}

/// What `after` counted since `before` (same bounds; a node that restarted counts from zero).
pub fn since(before: &Buckets, after: &Buckets) -> Buckets {
    after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0, |(_, c)| *c);
            (*bound, count.saturating_sub(earlier))
        })
        .collect()
}

/// Observations in `buckets`.
pub fn count(buckets: &Buckets) -> u64 {
    buckets.last().map_or(0, |(_, count)| *count)
}

/// The upper bound, in milliseconds, of the bucket holding quantile `q` (so "at most"), or
/// `None` without observations or if it is in the infinite bucket.
pub fn quantile_ms(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = count(buckets);
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= rank)
        .filter(|(bound, _)| bound.is_finite())
        .map(|(bound, _)| bound * 1e3)
}

/// One node's host timings over a run. Quantiles are bucket bounds: "at most".
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeTimings {
    /// The node's index in the sandbox.
    pub node: usize,
    /// Fsyncs of ledger chunks.
    pub fsyncs: u64,
    /// Median fsync, ms.
    pub fsync_p50_ms: Option<f64>,
    /// 99th percentile fsync, ms.
    pub fsync_p99_ms: Option<f64>,
    /// 99th percentile wait from the core's sync request to the answer, ms.
    pub sync_p99_ms: Option<f64>,
    /// 99th percentile round of the core thread, ms.
    pub core_round_p99_ms: Option<f64>,
}

impl NodeTimings {
    /// The timings of node `node` between scrapes `before` and `after`; `None` if the node
    /// does not report them.
    pub fn between(node: usize, before: &str, after: &str) -> Option<NodeTimings> {
        let histogram = |name: &str| -> Option<Buckets> {
            let after = parse_histogram(after, name)?;
            let before = parse_histogram(before, name).unwrap_or_default();
            Some(since(&before, &after))
        };
        let fsync = histogram("charter_ledger_fsync_duration_seconds")?;
        let sync = histogram("charter_ledger_sync_duration_seconds")?;
        let round = histogram("charter_core_round_duration_seconds")?;
        Some(NodeTimings {
            node,
            fsyncs: count(&fsync),
            fsync_p50_ms: quantile_ms(&fsync, 0.5),
            fsync_p99_ms: quantile_ms(&fsync, 0.99),
            sync_p99_ms: quantile_ms(&sync, 0.99),
            core_round_p99_ms: quantile_ms(&round, 0.99),
        })
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        let ms = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("<={ms}"));
        format!(
            "node{}: {} fsyncs, p50 {} p99 {} ms; sync wait p99 {} ms; core round p99 {} ms",
            self.node,
            self.fsyncs,
            ms(self.fsync_p50_ms),
            ms(self.fsync_p99_ms),
            ms(self.sync_p99_ms),
            ms(self.core_round_p99_ms)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(fsync: [u64; 3]) -> String {
        let mut text = String::from("# HELP charter_commit_seqno x\ncharter_commit_seqno 9\n");
        for name in [
            "charter_ledger_fsync_duration_seconds",
            "charter_ledger_sync_duration_seconds",
            "charter_core_round_duration_seconds",
        ] {
            text += &format!("# TYPE {name} histogram\n");
            text += &format!("{name}_bucket{{le=\"0.0004\"}} {}\n", fsync[0]);
            text += &format!("{name}_bucket{{le=\"0.0032\"}} {}\n", fsync[1]);
            text += &format!("{name}_bucket{{le=\"+Inf\"}} {}\n", fsync[2]);
            text += &format!("{name}_sum 1.5\n{name}_count {}\n", fsync[2]);
        }
        text
    }

    #[test]
    fn timings_come_from_the_difference_of_two_scrapes() {
        let before = scrape([10, 10, 10]);
        // 100 fsyncs during the run: 90 within 0.4 ms, 9 more within 3.2 ms, 1 beyond.
        let after = scrape([100, 109, 110]);
        let timings = NodeTimings::between(2, &before, &after).unwrap();
        assert_eq!(timings.fsyncs, 100);
        assert_eq!(timings.fsync_p50_ms, Some(0.4));
        assert_eq!(timings.fsync_p99_ms, Some(3.2));
        assert!(timings
            .summary()
            .starts_with("node2: 100 fsyncs, p50 <=0.4 p99 <=3.2 ms"));
        // A quantile in the infinite bucket has no bound.
        let slow = since(
            &parse_histogram(&before, "charter_ledger_fsync_duration_seconds").unwrap(),
            &parse_histogram(
                &scrape([10, 10, 20]),
                "charter_ledger_fsync_duration_seconds",
            )
            .unwrap(),
        );
        assert_eq!(quantile_ms(&slow, 0.5), None);
        // Nothing observed, nothing reported; a node without the histograms gives None.
        assert_eq!(
            NodeTimings::between(0, &before, &before)
                .unwrap()
                .fsync_p99_ms,
            None
        );
        assert_eq!(
            NodeTimings::between(0, "", "charter_commit_seqno 1\n"),
            None
        );
    }

    #[test]
    fn malformed_lines_are_not_taken_for_buckets() {
        let name = "charter_ledger_fsync_duration_seconds";
        assert_eq!(
            parse_histogram(&format!("{name}_bucket{{le=\"x\"}} 3\n"), name),
            None
        );
        assert_eq!(
            parse_histogram(&format!("{name}_bucket{{le=\"0.1\"}} -\n"), name),
            None
        );
        assert_eq!(
            parse_histogram(&format!("{name}_bucket{{le=\"0.1\"}} 3\n"), name),
            Some(vec![(0.1, 3)])
        );
    }
}
