//! Latency statistics and the commit-time join for Charter writes.

use serde::Serialize;

/// The value at `fraction` (0.0 to 1.0) of `sorted` (ascending), by the nearest-rank method:
/// the smallest value such that at least `fraction` of the values are at or below it.
/// NaN for an empty slice.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    assert!(
        (0.0..=1.0).contains(&fraction),
        "fraction {fraction} out of range"
    );
    if sorted.is_empty() {
        return f64::NAN;
    }
    debug_assert!(sorted.windows(2).all(|pair| pair[0] <= pair[1]));
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency figures of one run, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Operations measured.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarizes `latencies_ms` (any order; sorted in place).
    pub fn from_ms(latencies_ms: &mut [f64]) -> Self {
        latencies_ms.sort_by(f64::total_cmp);
        let count = latencies_ms.len();
        let mean_ms = if count == 0 {
            f64::NAN
        } else {
            latencies_ms.iter().sum::<f64>() / count as f64
        };
        Self {
            count,
            mean_ms,
            p50_ms: percentile(latencies_ms, 0.50),
            p99_ms: percentile(latencies_ms, 0.99),
            p99_9_ms: percentile(latencies_ms, 0.999),
            max_ms: latencies_ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One Charter write as the client saw it. Times are nanoseconds since the run's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSample {
    /// When the request was sent.
    pub sent_ns: u64,
    /// When its reply (with the transaction ID) arrived.
    pub replied_ns: u64,
    /// The transaction's view.
    pub view: u64,
    /// The transaction's seqno.
    pub seqno: u64,
}

/// One observation of the service's commit point by the commit watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitObservation {
    /// When the reply of `/node/commit` arrived, nanoseconds since the run's origin.
    pub at_ns: u64,
    /// The committed TxID's view.
    pub view: u64,
    /// The committed TxID's seqno.
    pub seqno: u64,
}

/// Latencies to global commit of Charter writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitJoin {
    /// Send to "client knows it is committed", in milliseconds, for each committed write.
    pub latencies_ms: Vec<f64>,
    /// Writes whose commit the watcher never saw before it stopped.
    pub uncommitted: u64,
    /// Writes whose view differs from the view at which the commit point covered them (a view
    /// change happened: the write may have been rolled back, so it is not counted).
    pub view_changed: u64,
}

/// Joins writes with the commit watcher's observations (in the order observed; the commit point
/// never moves back). A write is known committed at the first observation, made after it was
/// sent, whose seqno covers it in the same view, and not before its reply arrived (the client
/// learns its TxID only then).
pub fn join_commits(samples: &[WriteSample], observations: &[CommitObservation]) -> CommitJoin {
    assert!(observations
        .windows(2)
        .all(|pair| pair[0].at_ns <= pair[1].at_ns && pair[0].seqno <= pair[1].seqno));
    let mut join = CommitJoin::default();
    for sample in samples {
        assert!(sample.sent_ns <= sample.replied_ns);
        // Observations at or after the send are a suffix; among them the covering ones are a
        // suffix too, because seqnos never decrease.
        let after_send = observations.partition_point(|seen| seen.at_ns < sample.sent_ns);
        let rest = &observations[after_send..];
        let covering = rest.partition_point(|seen| seen.seqno < sample.seqno);
        match rest.get(covering) {
            None => join.uncommitted += 1,
            Some(seen) if seen.view != sample.view => join.view_changed += 1,
            Some(seen) => {
                let known_ns = seen.at_ns.max(sample.replied_ns);
                join.latencies_ms
                    .push((known_ns - sample.sent_ns) as f64 / 1e6);
            }
        }
    }
    join
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 500.0);
        assert_eq!(percentile(&values, 0.99), 990.0);
        assert_eq!(percentile(&values, 0.999), 999.0);
        assert_eq!(percentile(&values, 1.0), 1000.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.999), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn summary_sorts_and_summarizes() {
        let mut values = vec![3.0, 1.0, 2.0, 4.0];
        let summary = LatencySummary::from_ms(&mut values);
        assert_eq!(values, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(summary.count, 4);
        assert_eq!(summary.mean_ms, 2.5);
        assert_eq!(summary.p50_ms, 2.0);
        assert_eq!(summary.p99_ms, 4.0);
        assert_eq!(summary.max_ms, 4.0);
        assert!(LatencySummary::from_ms(&mut []).p50_ms.is_nan());
    }

    fn observation(at_ms: u64, view: u64, seqno: u64) -> CommitObservation {
        CommitObservation {
            at_ns: at_ms * 1_000_000,
            view,
            seqno,
        }
    }

    fn sample(sent_ms: u64, replied_ms: u64, view: u64, seqno: u64) -> WriteSample {
        WriteSample {
            sent_ns: sent_ms * 1_000_000,
            replied_ns: replied_ms * 1_000_000,
            view,
            seqno,
        }
    }

    #[test]
    fn join_takes_first_covering_observation_after_send() {
        let observations = [
            observation(1, 2, 10),
            observation(5, 2, 20),
            observation(9, 2, 30),
        ];
        // Seqno 10 was already committed at 1 ms, but the write was sent at 2 ms: a later
        // observation must confirm it (the 1 ms one says nothing about a write not yet sent).
        let samples = [
            sample(2, 3, 2, 10),
            sample(2, 4, 2, 21),
            sample(4, 8, 2, 15),
            sample(4, 4, 2, 31),
            sample(4, 4, 1, 12),
        ];
        let join = join_commits(&samples, &observations);
        // 10 -> seen at 5 (3 ms); 21 -> 9 (7 ms); 15 -> 5, but the reply came at 8 (4 ms).
        assert_eq!(join.latencies_ms, vec![3.0, 7.0, 4.0]);
        assert_eq!(join.uncommitted, 1);
        assert_eq!(join.view_changed, 1);
    }

    #[test]
    fn join_with_no_observations_counts_all_uncommitted() {
        let join = join_commits(&[sample(0, 1, 2, 3)], &[]);
        assert!(join.latencies_ms.is_empty());
        assert_eq!(join.uncommitted, 1);
    }
}
