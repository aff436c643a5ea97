//! `charter load`: a closed-loop write load against a running network, reporting throughput
//! and latency from send until the write is known committed.
//!
//! Commit is observed without per-request polling: one poller reads `/node/commit` in a loop,
//! and a write counts as committed at the first poll whose committed seqno covers it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charter_host::client::Client;
use charter_ledger::TxId;

/// Arguments of `charter load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Sandbox workspace (reads sandbox.json, service_cert.pem, user0_*).
    #[arg(long, default_value = "workspace/sandbox")]
    pub workspace: PathBuf,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Write the figures as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Sample {
    sent: Instant,
    seqno: u64,
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs the load and prints the figures.
pub fn run(args: LoadArgs) -> Result<(), String> {
    let read = |name: &str| {
        let path = args.workspace.join(name);
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
    };
    let sandbox: serde_json::Value = serde_json::from_str(&read("sandbox.json")?)
        .map_err(|error| format!("sandbox.json: {error}"))?;
    let address: SocketAddr = sandbox["nodes"][0]["rpc_address"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or("sandbox.json names no node address")?;
    let service = read("service_cert.pem")?;
    let (cert, key) = (read("user0_cert.pem")?, read("user0_privk.pem")?);
    charter_host::tls::install_crypto_provider();
    let tls = charter_host::tls::client_config(&service, Some((&cert, &key)))
        .map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
        let commits: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for client_index in 0..args.clients {
            let mut client = Client::connect(address, "127.0.0.1", tls.clone()).await.map_err(|error| error.to_string())?;
            let (stop, measuring, errors, samples) = (stop.clone(), measuring.clone(), errors.clone(), samples.clone());
            let value = vec![b'v'; args.value_bytes];
            tasks.push(tokio::spawn(async move {
                let mut counter = 0u64;
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    counter += 1;
                    // 16-byte keys: client index and counter in hex.
                    let path = format!("/app/kv/{client_index:06x}{counter:010x}");
                    let sent = Instant::now();
                    match client.request("PUT", &path, &[], value.clone()).await {
                        Ok(response) if response.status == 200 => {
                            let tx_id = response
                                .header("x-ms-ccf-transaction-id")
                                .and_then(|text| text.parse::<TxId>().ok());
                            if let (Some(tx_id), true) = (tx_id, measuring.load(Ordering::Relaxed)) {
                                local.push(Sample { sent, seqno: tx_id.seqno });
                            }
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut all) = samples.lock() {
                    all.extend(local);
                }
            }));
        }
        {
            let (stop, commits) = (stop.clone(), commits.clone());
            let mut poller = Client::connect(address, "127.0.0.1", tls.clone()).await.map_err(|error| error.to_string())?;
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(response) = poller.request("GET", "/node/commit", &[], Vec::new()).await {
                        let seqno = response
                            .json()
                            .ok()
                            .and_then(|json| json["transaction_id"].as_str().and_then(|text| text.parse::<TxId>().ok()));
                        if let (Some(tx_id), Ok(mut all)) = (seqno, commits.lock()) {
                            all.push((Instant::now(), tx_id.seqno));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.warmup_s)).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
        measuring.store(false, Ordering::Relaxed);
        let measured = started.elapsed().as_secs_f64();
        // Let the last writes commit before stopping the poller.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let samples = std::mem::take(&mut *samples.lock().map_err(|_| "poisoned")?);
        let commits = std::mem::take(&mut *commits.lock().map_err(|_| "poisoned")?);
        let mut latencies_ms = Vec::with_capacity(samples.len());
        let mut uncommitted = 0u64;
        for sample in &samples {
            // First commit observation after the send that covers the seqno.
            let index = commits.partition_point(|(_, seqno)| *seqno < sample.seqno);
            match commits[index..].iter().find(|(at, _)| *at >= sample.sent) {
                Some((at, _)) => latencies_ms.push(at.duration_since(sample.sent).as_secs_f64() * 1e3),
                None => uncommitted += 1,
            }
        }
        latencies_ms.sort_by(|a, b| a.total_cmp(b));
        let throughput = latencies_ms.len() as f64 / measured;
        let figures = serde_json::json!({
            "clients": args.clients,
            "value_bytes": args.value_bytes,
            "duration_s": measured,
            "committed_writes": latencies_ms.len(),
            "committed_writes_per_s": throughput,
            "uncommitted_at_end": uncommitted,
            "errors": errors.load(Ordering::Relaxed),
            "latency_to_commit_ms": {
                "p50": percentile(&latencies_ms, 0.50),
                "p99": percentile(&latencies_ms, 0.99),
                "p99_9": percentile(&latencies_ms, 0.999),
            },
        });
        println!(
            "{} clients, {} B values, {:.1} s: {:.0} committed writes/s; latency to commit p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms; {} errors, {} not committed",
            args.clients,
            args.value_bytes,
            measured,
            throughput,
            percentile(&latencies_ms, 0.50),
            percentile(&latencies_ms, 0.99),
            percentile(&latencies_ms, 0.999),
            errors.load(Ordering::Relaxed),
            uncommitted,
        );
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&figures).map_err(|error| error.to_string())?)
                .map_err(|error| format!("{}: {error}", path.display()))?;
        }
        Ok(())
    })
}
