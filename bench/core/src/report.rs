//! Figures of every run, the stdout table with Charter/etcd ratios, and the JSON report.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::LatencySummary;

/// Narrowest run column of the table.
const RUN_COLUMN_MIN: usize = 34;
/// Width of the table's columns after the run column, with their separating spaces.
const NUMBER_COLUMNS_WIDTH: usize = 6 + 11 + 9 * 3 + 8 + 9 + 11 + 10;

/// Which system a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// The etcd baseline.
    Etcd,
    /// Charter.
    Charter,
}

/// What a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Writes, timed to global commit.
    Write,
    /// Reads, timed to their reply.
    Read,
}

/// Why a run is in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The etcd baseline or Charter's figure compared with it.
    Comparison,
    /// Charter on one node with the comparison's signature setting.
    SingleNode,
    /// One point of the signature-interval sweep (3 nodes).
    Sweep,
    /// Reads.
    Reads,
}

/// Everything measured in one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunFigures {
    /// Short name shown in the table, unique within a report.
    pub label: String,
    /// The system measured.
    pub system: System,
    /// Writes or reads.
    pub workload: Workload,
    /// Why the run is there.
    pub role: Role,
    /// Nodes (Charter) or members (etcd).
    pub nodes: usize,
    /// Where the clients sent their requests (`leader`, `primary`, `followers`).
    pub target: String,
    /// Charter's signature interval in transactions, if Charter.
    pub signature_interval_txs: Option<u64>,
    /// Charter's signature interval in milliseconds, if Charter.
    pub signature_interval_ms: Option<u64>,
    /// Whether Charter also signed whenever no signature awaited commit, if Charter.
    pub signature_when_idle: Option<bool>,
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// Operations sent in the window and completed (for writes: known committed).
    pub operations: usize,
    /// `operations / measured_s`.
    pub operations_per_s: f64,
    /// Failed requests (in the window or out of it).
    pub errors: u64,
    /// Writes never seen committed before the watcher stopped (Charter).
    pub uncommitted: u64,
    /// Writes whose view changed before commit (Charter; not counted as committed).
    pub view_changed: u64,
    /// Latency to global commit (writes) or to reply (reads).
    pub latency: LatencySummary,
    /// CPU seconds the servers (all nodes or members) used in the measured window.
    pub server_cpu_s: f64,
    /// Server CPU milliseconds per operation: a cost that, unlike throughput, barely depends
    /// on what else the shared machine runs.
    pub server_cpu_ms_per_operation: f64,
    /// Charter's host timings per node over the write phase, warm-up included (empty for etcd
    /// and reads).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_timings: Vec<crate::metrics::NodeTimings>,
}

/// Charter against etcd: ratio of throughputs (higher is better) and of p99 latencies (lower is
/// better).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ratio {
    /// The Charter run's label.
    pub label: String,
    /// Charter's operations/s over etcd's.
    pub throughput: f64,
    /// Charter's p99 over etcd's.
    pub p99: f64,
}

/// The whole report, as written to bench.json.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The exact configuration: arguments after `--quick`, binaries and their versions.
    pub configuration: serde_json::Value,
    /// The machine and time of the run.
    pub environment: serde_json::Value,
    /// Every run in order.
    pub runs: Vec<RunFigures>,
    /// Charter/etcd ratios for every Charter run of the same workload.
    pub ratios: Vec<Ratio>,
    /// Whether the target holds: 3-node throughput at least twice etcd's with a p99 no
    /// worse (None without an etcd baseline).
    pub target_met: Option<bool>,
}

impl Report {
    /// Builds the report, computing ratios against the etcd run of each workload.
    ///
    /// # Panics
    /// If two runs have the same label.
    pub fn new(
        configuration: serde_json::Value,
        environment: serde_json::Value,
        runs: Vec<RunFigures>,
    ) -> Self {
        for (index, run) in runs.iter().enumerate() {
            assert!(
                runs[..index].iter().all(|other| other.label != run.label),
                "two runs labelled {:?}",
                run.label
            );
        }
        let baseline = |workload: Workload| {
            runs.iter()
                .find(|run| run.system == System::Etcd && run.workload == workload)
        };
        let mut ratios = Vec::new();
        let mut target_met = None;
        for run in runs.iter().filter(|run| run.system == System::Charter) {
            let Some(etcd) = baseline(run.workload) else {
                continue;
            };
            let ratio = Ratio {
                label: run.label.clone(),
                throughput: run.operations_per_s / etcd.operations_per_s,
                p99: run.latency.p99_ms / etcd.latency.p99_ms,
            };
            if run.role == Role::Comparison && run.workload == Workload::Write && run.nodes == 3 {
                target_met = Some(ratio.throughput >= 2.0 && ratio.p99 <= 1.0);
            }
            ratios.push(ratio);
        }
        Self {
            configuration,
            environment,
            runs,
            ratios,
            target_met,
        }
    }

    /// The stdout table: one row per run, with ratios to etcd where there is a baseline.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // The run column fits the longest label, so that the numbers line up.
        let width = self
            .runs
            .iter()
            .map(|run| run.label.len())
            .max()
            .unwrap_or(0)
            .max(RUN_COLUMN_MIN);
        let _ = writeln!(
            out,
            "{:<width$} {:>5} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>10} {:>9}",
            "run",
            "nodes",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
            "x etcd/s",
            "x etcd p99",
            "cpu ms/op"
        );
        let _ = writeln!(out, "{}", "-".repeat(width + NUMBER_COLUMNS_WIDTH));
        for run in &self.runs {
            let ratio = self.ratios.iter().find(|ratio| ratio.label == run.label);
            let (throughput, p99) = match ratio {
                Some(ratio) => (
                    format!("{:.2}", ratio.throughput),
                    format!("{:.2}", ratio.p99),
                ),
                None if run.system == System::Etcd => ("1.00".to_owned(), "1.00".to_owned()),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(
                out,
                "{:<width$} {:>5} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>8} {:>10} {:>9.3}",
                run.label,
                run.nodes,
                run.operations_per_s,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.latency.p99_9_ms,
                run.errors + run.uncommitted + run.view_changed,
                throughput,
                p99,
                run.server_cpu_ms_per_operation,
            );
        }
        match self.target_met {
            Some(met) => {
                let _ = writeln!(
                    out,
                    "Target (3-node Charter >= 2x etcd writes/s, p99 to commit <= etcd's): {}",
                    if met { "MET" } else { "NOT MET" }
                );
            }
            None => {
                let _ = writeln!(out, "Target: no etcd baseline in this run");
            }
        }
        out
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        // Serializing plain data to a string cannot fail (no maps with non-string keys).
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn run(label: &str, system: System, role: Role, ops: f64, p99: f64) -> RunFigures {
        RunFigures {
            label: label.to_owned(),
            system,
            workload: Workload::Write,
            role,
            nodes: 3,
            target: "leader".to_owned(),
            signature_interval_txs: None,
            signature_interval_ms: None,
            signature_when_idle: None,
            clients: 64,
            measured_s: 10.0,
            operations: (ops * 10.0) as usize,
            operations_per_s: ops,
            errors: 0,
            uncommitted: 0,
            view_changed: 0,
            latency: LatencySummary {
                count: 1,
                mean_ms: p99 / 2.0,
                p50_ms: p99 / 2.0,
                p99_ms: p99,
                p99_9_ms: p99 * 1.5,
                max_ms: p99 * 2.0,
            },
            server_cpu_s: 10.0,
            server_cpu_ms_per_operation: 10_000.0 / (ops * 10.0),
            host_timings: Vec::new(),
        }
    }

    #[test]
    fn ratios_and_target() {
        let runs = vec![
            run("etcd 3", System::Etcd, Role::Comparison, 3000.0, 60.0),
            run("charter 3", System::Charter, Role::Comparison, 7500.0, 30.0),
            run("charter sweep", System::Charter, Role::Sweep, 9000.0, 90.0),
        ];
        let report = Report::new(serde_json::json!({}), serde_json::json!({}), runs);
        assert_eq!(report.ratios.len(), 2);
        assert_eq!(report.ratios[0].throughput, 2.5);
        assert_eq!(report.ratios[0].p99, 0.5);
        assert_eq!(report.target_met, Some(true));
        let table = report.table();
        assert!(table.contains("charter 3"));
        assert!(table.contains("2.50"));
        assert!(table.contains("MET"));
        assert!(table.contains("cpu ms/op"));
        let json: serde_json::Value = serde_json::from_str(&report.json()).expect("valid JSON");
        assert_eq!(json["runs"][1]["operations_per_s"], 7500.0);
        assert_eq!(json["runs"][0]["system"], "etcd");
        assert_eq!(json["target_met"], true);
    }

    #[test]
    fn a_long_label_widens_the_run_column_and_keeps_the_columns_aligned() {
        let long = "Charter 3 nodes, sweep 5000:100:idle and then some";
        let runs = vec![
            run("etcd 3", System::Etcd, Role::Comparison, 3000.0, 60.0),
            run(long, System::Charter, Role::Sweep, 9000.0, 90.0),
        ];
        let report = Report::new(serde_json::json!({}), serde_json::json!({}), runs);
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        // Header, rule and both rows are as wide as one another.
        assert!(
            lines[..4].iter().all(|line| line.len() == lines[0].len()),
            "{table}"
        );
        assert_eq!(lines[0].len(), long.len() + NUMBER_COLUMNS_WIDTH);
        assert!(lines[3].starts_with(long));
    }

    #[test]
    fn target_not_met_when_p99_worse() {
        let runs = vec![
            run("etcd 3", System::Etcd, Role::Comparison, 3000.0, 60.0),
            run("charter 3", System::Charter, Role::Comparison, 7500.0, 61.0),
        ];
        let report = Report::new(serde_json::json!({}), serde_json::json!({}), runs);
        assert_eq!(report.target_met, Some(false));
        assert!(report.table().contains("NOT MET"));
    }

    #[test]
    #[should_panic(expected = "two runs labelled")]
    fn labels_are_unique() {
        let runs = vec![
            run("charter 3", System::Charter, Role::Comparison, 7500.0, 30.0),
            run("charter 3", System::Charter, Role::Sweep, 7500.0, 30.0),
        ];
        let _ = Report::new(serde_json::json!({}), serde_json::json!({}), runs);
    }

    #[test]
    fn no_baseline_no_ratios() {
        let runs = vec![run(
            "charter 3",
            System::Charter,
            Role::Comparison,
            7500.0,
            30.0,
        )];
        let report = Report::new(serde_json::json!({}), serde_json::json!({}), runs);
        assert!(report.ratios.is_empty());
        assert_eq!(report.target_met, None);
        assert!(report.table().contains("no etcd baseline"));
    }
}
