//! `charter-bench`: a 3-node Charter network against a 3-member etcd cluster on this machine, in
//! one run, with the same closed-loop load generator; a signature-interval sweep; one node versus
//! three; reads on the primary and on the followers. Prints a table with Charter/etcd ratios and
//! writes OUT_DIR/bench.json (every figure and the exact configuration) and OUT_DIR/sweep.svg.
//!
//! It builds nothing: it runs the release `charter` binary and Debian's `etcd` (installed by
//! scripts/bench-setup.sh if missing). See README.md, "Benchmark".

mod charter;
mod etcd;
mod https;
mod load;
mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use charter_bench_core::args::{BenchArgs, SignatureInterval};
use charter_bench_core::chart::{self, Point, Series};
use charter_bench_core::metrics::NodeTimings;
use charter_bench_core::report::{Report, Role, RunFigures, System, Workload};
use charter_bench_core::stats::{join_commits, LatencySummary, WriteSample};
use clap::Parser;

use crate::charter::Sandbox;
use crate::etcd::EtcdCluster;
use crate::load::{closed_loop, Outcome};

/// The repository root (the bench lives in `bench/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn default_charter_bin() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("release/charter"),
        None => repo_root().join("target/release/charter"),
    }
}

fn command_output(program: &str, arguments: &[&str], dir: Option<&Path>) -> String {
    let mut command = Command::new(program);
    command.args(arguments);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

/// Seconds the machine is left idle after a system stops, before the next one starts.
const SETTLE_S: u64 = 3;

/// Lets the machine settle after a system stopped: flushes what it left to the disk (`sync`)
/// and waits [`SETTLE_S`]. Without it the first Charter phase after etcd ran slower than the
/// same phase without etcd before it (13,005 against 20,101 writes/s, p99 74.5 against
/// 28.1 ms), paying for the writeback and memory reclaim etcd left behind.
async fn settle() {
    let _ = tokio::task::spawn_blocking(|| Command::new("sync").status()).await;
    tokio::time::sleep(Duration::from_secs(SETTLE_S)).await;
}

/// Installs etcd with the setup script if `bin` does not run.
fn ensure_etcd(bin: &Path) -> Result<(), String> {
    let runs = |bin: &Path| Command::new(bin).arg("--version").output().is_ok();
    if runs(bin) {
        return Ok(());
    }
    let script = repo_root().join("scripts/bench-setup.sh");
    eprintln!(
        "{} not found: running {} etcd",
        bin.display(),
        script.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .arg("etcd")
        .status()
        .map_err(|error| format!("{}: {error}", script.display()))?;
    if !status.success() || !runs(bin) {
        return Err(format!(
            "could not install etcd ({status}); run {}",
            script.display()
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn figures(
    label: String,
    system: System,
    workload: Workload,
    role: Role,
    nodes: usize,
    target: &str,
    signature: Option<SignatureInterval>,
    clients: usize,
    measured_s: f64,
    latencies_ms: &mut [f64],
    errors: u64,
    uncommitted: u64,
    view_changed: u64,
    server_cpu_s: f64,
) -> RunFigures {
    let latency = LatencySummary::from_ms(latencies_ms);
    RunFigures {
        label,
        system,
        workload,
        role,
        nodes,
        target: target.to_owned(),
        signature_interval_txs: signature.map(|s| s.txs),
        signature_interval_ms: signature.map(|s| s.ms),
        signature_when_idle: signature.map(|s| s.when_idle),
        clients,
        measured_s,
        operations: latency.count,
        operations_per_s: latency.count as f64 / measured_s,
        errors,
        uncommitted,
        view_changed,
        server_cpu_ms_per_operation: server_cpu_s * 1e3 / latency.count.max(1) as f64,
        host_timings: Vec::new(),
        server_cpu_s,
        latency,
    }
}

/// Each node's `GET /node/metrics` text; empty for a node that does not answer (its timings
/// are then left out).
async fn scrape_metrics(sandbox: &Sandbox) -> Vec<String> {
    let mut texts = Vec::with_capacity(sandbox.nodes.len());
    for node in &sandbox.nodes {
        let text = match https::Https::connect(node.address, sandbox.tls.clone()).await {
            Ok(mut client) => client
                .request("GET", "/node/metrics", Bytes::new())
                .await
                .map(|reply| String::from_utf8_lossy(&reply.body).into_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        texts.push(text);
    }
    texts
}

fn reply_latencies(outcome: &Outcome) -> Vec<f64> {
    outcome
        .samples
        .iter()
        .map(|sample| (sample.replied_ns - sample.sent_ns) as f64 / 1e6)
        .collect()
}

fn report_errors(label: &str, outcome: &Outcome) {
    if let Some(error) = &outcome.first_error {
        eprintln!("  {label}: {} errors, the first: {error}", outcome.errors);
    }
}

struct Bench {
    args: BenchArgs,
    charter_bin: PathBuf,
    origin: Instant,
    runs: Vec<RunFigures>,
    /// Keys each client wrote in the last write phase (for the reads that follow it).
    written: Vec<u64>,
}

impl Bench {
    fn warmup(&self) -> Duration {
        Duration::from_secs(self.args.warmup_s)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.args.duration_s)
    }

    fn read_duration(&self) -> Duration {
        Duration::from_secs(self.args.read_duration_s)
    }

    /// Runs a read phase with `readers` against the servers `pids` and records its figures
    /// (latency from send to reply).
    #[allow(clippy::too_many_arguments)]
    async fn measure_reads<W: load::Worker>(
        &mut self,
        readers: Vec<W>,
        pids: &[u32],
        label: String,
        system: System,
        nodes: usize,
        target: &str,
        signature: Option<SignatureInterval>,
    ) {
        let outcome = closed_loop(
            readers,
            pids,
            self.origin,
            &label,
            Duration::ZERO,
            self.read_duration(),
        )
        .await;
        report_errors(&label, &outcome);
        let mut latencies = reply_latencies(&outcome);
        self.runs.push(figures(
            label,
            system,
            Workload::Read,
            Role::Reads,
            nodes,
            target,
            signature,
            self.args.clients,
            outcome.measured_s,
            &mut latencies,
            outcome.errors,
            0,
            0,
            outcome.server_cpu_s,
        ));
    }

    async fn etcd(&mut self) -> Result<(), String> {
        let dir = self.args.work_dir.join("etcd");
        let cluster = EtcdCluster::start(
            &self.args.etcd_bin,
            3,
            self.args.etcd_port,
            &dir,
            self.args.keep,
        )
        .await?;
        let result = self.etcd_phases(&cluster).await;
        cluster.stop();
        settle().await;
        result
    }

    async fn etcd_phases(&mut self, cluster: &EtcdCluster) -> Result<(), String> {
        let args = self.args.clone();
        let endpoint = &cluster.endpoints[cluster.leader];
        let connections = if args.etcd_connections == 0 {
            args.clients
        } else {
            args.etcd_connections
        };
        let kvs = etcd::connect(endpoint, connections).await?;
        let writers = (0..args.clients)
            .map(|client| etcd::Writer {
                kv: kvs[client % kvs.len()].clone(),
                client,
                value: vec![b'v'; args.value_bytes],
            })
            .collect();
        let label = "etcd 3 members, writes".to_owned();
        let outcome = closed_loop(
            writers,
            &cluster.pids(),
            self.origin,
            &label,
            self.warmup(),
            self.duration(),
        )
        .await;
        report_errors(&label, &outcome);
        self.written = outcome.last_counters.clone();
        let mut latencies = reply_latencies(&outcome);
        self.runs.push(figures(
            label,
            System::Etcd,
            Workload::Write,
            Role::Comparison,
            3,
            "leader",
            None,
            args.clients,
            outcome.measured_s,
            &mut latencies,
            outcome.errors,
            0,
            0,
            outcome.server_cpu_s,
        ));
        if !args.no_reads {
            let readers = (0..args.clients)
                .map(|client| etcd::Reader {
                    kv: kvs[client % kvs.len()].clone(),
                    client,
                    written: self.written.get(client).copied().unwrap_or(0),
                })
                .collect();
            let label = "etcd 3 members, reads on leader".to_owned();
            self.measure_reads(
                readers,
                &cluster.pids(),
                label,
                System::Etcd,
                3,
                "leader",
                None,
            )
            .await;
        }
        Ok(())
    }

    async fn charter(
        &mut self,
        nodes: usize,
        signature: SignatureInterval,
        role: Role,
        reads: bool,
        perf: bool,
    ) -> Result<(), String> {
        let dir = self.args.work_dir.join(format!(
            "charter-{nodes}n-{}-{}{}",
            signature.txs,
            signature.ms,
            if signature.when_idle { "-idle" } else { "" }
        ));
        eprintln!(
            "starting Charter: {nodes} node(s), signature every {} txs or {} ms{}",
            signature.txs,
            signature.ms,
            if signature.when_idle {
                ", and whenever none awaits commit"
            } else {
                ""
            }
        );
        let sandbox = Sandbox::start(
            &self.charter_bin,
            nodes,
            self.args.charter_port,
            &dir,
            signature,
            self.args.snapshot_interval_txs,
            self.args.keep,
        )
        .await?;
        let result = self
            .charter_phases(&sandbox, nodes, signature, role, reads, perf)
            .await;
        sandbox.stop();
        settle().await;
        result
    }

    async fn charter_phases(
        &mut self,
        sandbox: &Sandbox,
        nodes: usize,
        signature: SignatureInterval,
        role: Role,
        reads: bool,
        perf: bool,
    ) -> Result<(), String> {
        let args = self.args.clone();
        let primary = sandbox.primary_address();
        let value = Bytes::from(vec![b'v'; args.value_bytes]);
        let writers = charter::connect(primary, &sandbox.tls, args.clients)
            .await?
            .into_iter()
            .enumerate()
            .map(|(client, https)| charter::Writer {
                https,
                client,
                value: value.clone(),
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(charter::watch_commits(
            https::Https::connect(primary, sandbox.tls.clone()).await?,
            self.origin,
            Duration::from_millis(args.commit_poll_ms),
            stop.clone(),
        ));
        let mut profiler = None;
        if perf {
            if let Some(pid) = sandbox.nodes[sandbox.primary].pid {
                let output = args.out_dir.join("perf.data");
                let seconds = args.warmup_s + args.duration_s;
                let mut command = Command::new("perf");
                command.args(["record", "-F", "499", "-g", "-p", &pid.to_string(), "-o"]);
                command
                    .arg(&output)
                    .args(["--", "sleep", &seconds.to_string()]);
                profiler = process::spawn_logged(&mut command, &args.out_dir.join("perf.log")).ok();
            }
        }
        // Labels are unique within a run: the table finds each run's ratio by label.
        let label = format!(
            "Charter {nodes} node{}, {} {}",
            if nodes == 1 { "" } else { "s" },
            if role == Role::Sweep {
                "sweep"
            } else {
                "writes"
            },
            signature
        );
        let metrics_before = scrape_metrics(sandbox).await;
        let outcome = closed_loop(
            writers,
            &sandbox.pids(),
            self.origin,
            &label,
            self.warmup(),
            self.duration(),
        )
        .await;
        report_errors(&label, &outcome);
        let metrics_after = scrape_metrics(sandbox).await;
        let host_timings: Vec<NodeTimings> = metrics_before
            .iter()
            .zip(&metrics_after)
            .enumerate()
            .filter_map(|(node, (before, after))| NodeTimings::between(node, before, after))
            .collect();
        for timings in &host_timings {
            eprintln!("  {}", timings.summary());
        }
        if let Some(mut profiler) = profiler {
            let _ = profiler.wait();
        }
        // Let the commit point pass the last measured write, then stop the watcher.
        let last_seqno = outcome
            .samples
            .iter()
            .filter_map(|s| s.tx_id.map(|t| t.1))
            .max()
            .unwrap_or(0);
        let mut checker = https::Https::connect(primary, sandbox.tls.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let reply = checker.request("GET", "/node/commit", Bytes::new()).await?;
            let committed = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|json| json["transaction_id"].as_str().and_then(https::parse_tx_id))
                .map_or(0, |(_, seqno)| seqno);
            if committed >= last_seqno {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        let observations = watcher.await.map_err(|error| error.to_string())?;
        let samples: Vec<WriteSample> = outcome
            .samples
            .iter()
            .filter_map(|sample| {
                let (view, seqno) = sample.tx_id?;
                Some(WriteSample {
                    sent_ns: sample.sent_ns,
                    replied_ns: sample.replied_ns,
                    view,
                    seqno,
                })
            })
            .collect();
        if let Some(dir) = std::env::var_os("CHARTER_BENCH_DUMP") {
            // Raw data for offline analysis: every commit observation and measured write.
            let dir = PathBuf::from(dir);
            let mut text = String::from("at_ms,view,seqno\n");
            for seen in &observations {
                text += &format!(
                    "{:.3},{},{}\n",
                    seen.at_ns as f64 / 1e6,
                    seen.view,
                    seen.seqno
                );
            }
            let _ = std::fs::write(dir.join(format!("commits-{nodes}n-{signature}.csv")), text);
            let mut text = String::from("sent_ms,replied_ms,view,seqno\n");
            for sample in &samples {
                text += &format!(
                    "{:.3},{:.3},{},{}\n",
                    sample.sent_ns as f64 / 1e6,
                    sample.replied_ns as f64 / 1e6,
                    sample.view,
                    sample.seqno
                );
            }
            let _ = std::fs::write(dir.join(format!("writes-{nodes}n-{signature}.csv")), text);
        }
        let mut join = join_commits(&samples, &observations);
        self.written = outcome.last_counters.clone();
        let mut run = figures(
            label,
            System::Charter,
            Workload::Write,
            role,
            nodes,
            "primary",
            Some(signature),
            args.clients,
            outcome.measured_s,
            &mut join.latencies_ms,
            outcome.errors,
            join.uncommitted,
            join.view_changed,
            outcome.server_cpu_s,
        );
        run.host_timings = host_timings;
        self.runs.push(run);
        if reads {
            let targets: Vec<(&str, Vec<std::net::SocketAddr>)> = vec![
                ("primary", vec![primary]),
                ("followers", sandbox.follower_addresses()),
            ];
            for (target, addresses) in targets {
                if addresses.is_empty() {
                    continue;
                }
                let mut readers = Vec::new();
                for client in 0..args.clients {
                    let address = addresses[client % addresses.len()];
                    readers.push(charter::Reader {
                        https: https::Https::connect(address, sandbox.tls.clone()).await?,
                        client,
                        written: self.written.get(client).copied().unwrap_or(0),
                    });
                }
                let label = format!("Charter {nodes} nodes, reads on {target}");
                self.measure_reads(
                    readers,
                    &sandbox.pids(),
                    label,
                    System::Charter,
                    nodes,
                    target,
                    Some(signature),
                )
                .await;
            }
        }
        Ok(())
    }
}

fn chart_svg(report: &Report) -> String {
    let point = |run: &RunFigures, label: String| Point {
        label,
        p99_ms: run.latency.p99_ms,
        operations_per_s: run.operations_per_s,
    };
    let writes = |system: System, role: Role| {
        report.runs.iter().filter(move |run| {
            run.system == system && run.role == role && run.workload == Workload::Write
        })
    };
    let signature_label = |run: &RunFigures| {
        format!(
            "{}:{}{}",
            run.signature_interval_txs.unwrap_or(0),
            run.signature_interval_ms.unwrap_or(0),
            if run.signature_when_idle == Some(true) {
                ":idle"
            } else {
                ""
            }
        )
    };
    // One series per kind of write run: (name, colour, points joined, system, role).
    let kinds = [
        (
            "Charter 3 nodes, sweep (txs:ms)",
            "#1f77b4",
            true,
            System::Charter,
            Role::Sweep,
        ),
        (
            "Charter 3 nodes vs etcd",
            "#2ca02c",
            false,
            System::Charter,
            Role::Comparison,
        ),
        (
            "Charter 1 node",
            "#ff7f0e",
            false,
            System::Charter,
            Role::SingleNode,
        ),
        (
            "etcd 3 members",
            "#d62728",
            false,
            System::Etcd,
            Role::Comparison,
        ),
    ];
    let series: Vec<Series> = kinds
        .into_iter()
        .map(|(name, colour, joined, system, role)| Series {
            name: name.to_owned(),
            colour: colour.to_owned(),
            joined,
            points: writes(system, role)
                .map(|run| {
                    let label = match system {
                        System::Etcd => "etcd".to_owned(),
                        System::Charter => signature_label(run),
                    };
                    point(run, label)
                })
                .collect(),
        })
        .collect();
    chart::svg(
        "Committed writes/s against p99 latency to global commit",
        &series,
    )
}

async fn run(args: BenchArgs) -> Result<bool, String> {
    let charter_bin = args.charter_bin.clone().unwrap_or_else(default_charter_bin);
    if !charter_bin.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p charter-cli` (or pass --charter-bin)",
            charter_bin.display()
        ));
    }
    if !args.no_etcd {
        ensure_etcd(&args.etcd_bin)?;
    }
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|error| format!("{}: {error}", args.out_dir.display()))?;
    std::fs::create_dir_all(&args.work_dir)
        .map_err(|error| format!("{}: {error}", args.work_dir.display()))?;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    eprintln!(
        "charter-bench: about {} s of load in all (plus network start-ups)",
        args.planned_seconds()
    );
    let mut bench = Bench {
        args: args.clone(),
        charter_bin: charter_bin.clone(),
        origin: Instant::now(),
        runs: Vec::new(),
        written: Vec::new(),
    };
    if !args.no_etcd {
        bench.etcd().await?;
    }
    bench
        .charter(
            3,
            args.signature_interval,
            Role::Comparison,
            !args.no_reads,
            args.perf,
        )
        .await?;
    if !args.no_single_node {
        bench
            .charter(1, args.signature_interval, Role::SingleNode, false, false)
            .await?;
    }
    if !args.no_sweep {
        for point in args.sweep.clone() {
            bench.charter(3, point, Role::Sweep, false, false).await?;
        }
    }
    let configuration = serde_json::json!({
        "arguments": args,
        "charter_bin": charter_bin,
        "charter_version": Sandbox::version(&charter_bin),
        "etcd_version": if args.no_etcd { String::new() } else { EtcdCluster::version(&args.etcd_bin) },
        "git_commit": command_output("git", &["rev-parse", "HEAD"], Some(&repo_root())),
        "key_bytes": charter_bench_core::args::KEY_BYTES,
        "charter_client": "HTTPS/1.1, TLS 1.3 with user0's client certificate, one keep-alive connection per client, to the primary",
        "charter_commit": "latency to the first /node/commit reply covering the write's seqno in its view (one watcher: a long-poll on ?after_seqno= when commit_poll_ms is 0, else a read every commit_poll_ms)",
        "etcd_client": "etcd-client (gRPC) Put to the leader; latency to the Put reply (etcd replies after commit and apply)",
        "etcd_setup": "3 members on loopback, data dirs under work_dir, default fsync",
        "charter_setup": "charter sandbox, nodes on loopback, ledgers under work_dir, default snapshot interval",
    });
    let environment = serde_json::json!({
        "started_unix_s": started_unix_s,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "kernel": command_output("uname", &["-sr"], None),
        "hostname": command_output("hostname", &[], None),
        "load_average_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let report = Report::new(configuration, environment, bench.runs);
    println!("{}", report.table());
    let json_path = args.out_dir.join("bench.json");
    std::fs::write(&json_path, report.json())
        .map_err(|error| format!("{}: {error}", json_path.display()))?;
    let svg_path = args.out_dir.join("sweep.svg");
    std::fs::write(&svg_path, chart_svg(&report))
        .map_err(|error| format!("{}: {error}", svg_path.display()))?;
    println!("Wrote {} and {}", json_path.display(), svg_path.display());
    Ok(report.target_met != Some(false))
}

fn main() -> ExitCode {
    let args = match BenchArgs::parse().resolve() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("charter-bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("charter-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        // The run itself succeeded; missing the target is reported in the table, not as a
        // failure of the tool.
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("charter-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
