//! Charter: a sandbox network started with the release `charter` binary, its write and read
//! workers over HTTPS with client certificates, and the commit watcher.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use charter_bench_core::args::SignatureInterval;
use charter_bench_core::stats::CommitObservation;

use crate::https::{parse_tx_id, Https};
use crate::load::{since, Worker};
use crate::process;

/// How long the sandbox may take to open the service.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A node of the running sandbox.
pub struct Node {
    pub address: SocketAddr,
    pub pid: Option<u32>,
}

/// A running `charter sandbox`.
pub struct Sandbox {
    child: Child,
    dir: PathBuf,
    keep: bool,
    /// The nodes, in sandbox.json's order.
    pub nodes: Vec<Node>,
    /// Index of the primary in `nodes`.
    pub primary: usize,
    /// TLS settings of user0 (trusting the service certificate).
    pub tls: Arc<rustls::ClientConfig>,
}

impl Sandbox {
    /// Starts `nodes` nodes from `port`, with their workspace `dir` (emptied first) on disk, and
    /// waits until the service is open.
    pub async fn start(
        bin: &Path,
        nodes: usize,
        port: u16,
        dir: &Path,
        signature: SignatureInterval,
        snapshot_interval_txs: u64,
        keep: bool,
    ) -> Result<Self, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let log = dir.join("sandbox.log");
        let mut command = Command::new(bin);
        command
            .arg("sandbox")
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--workspace")
            .arg(dir)
            .arg("--port")
            .arg(port.to_string())
            .arg("--signature-interval-txs")
            .arg(signature.txs.to_string())
            .arg("--signature-interval-ms")
            .arg(signature.ms.to_string())
            .args(signature.when_idle.then_some("--signature-when-idle"))
            .arg("--snapshot-interval-txs")
            .arg(snapshot_interval_txs.to_string());
        let mut child = process::spawn_logged(&mut command, &log)?;
        let sandbox_json = dir.join("sandbox.json");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !sandbox_json.exists() {
            process::check_alive(&mut child, "charter sandbox", &log)?;
            if Instant::now() > deadline {
                process::terminate(&mut child, Duration::from_secs(20));
                return Err(format!(
                    "the sandbox did not open within {} s; log tail:\n{}",
                    STARTUP_TIMEOUT.as_secs(),
                    process::log_tail(&log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
        };
        let json: serde_json::Value =
            serde_json::from_str(&read("sandbox.json")?).map_err(|error| error.to_string())?;
        let mut listed = Vec::new();
        let mut node_ids = Vec::new();
        for node in json["nodes"].as_array().into_iter().flatten() {
            let address = node["rpc_address"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .ok_or("sandbox.json: a node has no rpc_address")?;
            listed.push(Node {
                address,
                pid: node["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()),
            });
            node_ids.push(node["node_id"].as_str().unwrap_or_default().to_owned());
        }
        if listed.len() != nodes {
            return Err(format!(
                "sandbox.json lists {} nodes, not {nodes}",
                listed.len()
            ));
        }
        let tls = crate::https::tls_config(
            &read("service_cert.pem")?,
            Some((&read("user0_cert.pem")?, &read("user0_privk.pem")?)),
        )?;
        let mut sandbox = Self {
            child,
            dir: dir.to_owned(),
            keep,
            nodes: listed,
            primary: 0,
            tls,
        };
        let mut client = Https::connect(sandbox.nodes[0].address, sandbox.tls.clone()).await?;
        let reply = client.request("GET", "/node/network", Bytes::new()).await?;
        let network: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|error| format!("/node/network: {error}"))?;
        let primary_id = network["primary_id"].as_str().unwrap_or_default();
        sandbox.primary = node_ids
            .iter()
            .position(|id| id == primary_id)
            .ok_or("no node of sandbox.json is the primary")?;
        Ok(sandbox)
    }

    /// The primary's client address.
    pub fn primary_address(&self) -> SocketAddr {
        self.nodes[self.primary].address
    }

    /// The nodes' process IDs (from sandbox.json).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|node| node.pid).collect()
    }

    /// The followers' client addresses.
    pub fn follower_addresses(&self) -> Vec<SocketAddr> {
        (0..self.nodes.len())
            .filter(|index| *index != self.primary)
            .map(|index| self.nodes[index].address)
            .collect()
    }

    /// `charter --version`-like identification: the binary's path and modification time.
    pub fn version(bin: &Path) -> String {
        let modified = std::fs::metadata(bin)
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |elapsed| elapsed.as_secs());
        format!("{} (modified at unix {modified})", bin.display())
    }

    /// Stops the sandbox (which stops its nodes) and removes the workspace unless asked to keep
    /// it.
    pub fn stop(mut self) {
        process::terminate(&mut self.child, Duration::from_secs(30));
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens `count` connections to `address`.
pub async fn connect(
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    count: usize,
) -> Result<Vec<Https>, String> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Https::connect(address, tls.clone()).await?);
    }
    Ok(clients)
}

/// PUTs `client`'s keys to /app/kv, one at a time; returns each write's TxID.
pub struct Writer {
    pub https: Https,
    pub client: usize,
    pub value: Bytes,
}

impl Worker for Writer {
    async fn send(&mut self, counter: u64) -> Result<Option<(u64, u64)>, String> {
        let key = charter_bench_core::args::key(self.client, counter);
        let reply = self
            .https
            .request("PUT", &format!("/app/kv/{key}"), self.value.clone())
            .await?;
        if reply.status != 200 {
            return Err(format!(
                "PUT: status {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
        let tx_id = reply
            .tx_id
            .as_deref()
            .and_then(parse_tx_id)
            .ok_or("PUT: no transaction ID in the reply")?;
        Ok(Some(tx_id))
    }
}

/// GETs keys `client` wrote (1..=`written`), in turn.
pub struct Reader {
    pub https: Https,
    pub client: usize,
    pub written: u64,
}

impl Worker for Reader {
    async fn send(&mut self, counter: u64) -> Result<Option<(u64, u64)>, String> {
        let key = charter_bench_core::args::key(self.client, 1 + counter % self.written.max(1));
        let reply = self
            .https
            .request("GET", &format!("/app/kv/{key}"), Bytes::new())
            .await?;
        if reply.status != 200 {
            return Err(format!("GET: status {}", reply.status));
        }
        Ok(None)
    }
}

/// Follows `/node/commit` until `stop`, recording each advance of the commit point with the
/// time its reply arrived. One watcher for all clients: no per-request polling. With `poll`
/// zero it long-polls (`?after_seqno=` the last seqno seen: the node answers as soon as the
/// commit point passes it, or after a second); otherwise it reads every `poll`.
pub async fn watch_commits(
    mut https: Https,
    origin: Instant,
    poll: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<CommitObservation> {
    let mut observations: Vec<CommitObservation> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let path = match observations.last() {
            Some(last) if poll.is_zero() => format!("/node/commit?after_seqno={}", last.seqno),
            _ => "/node/commit".to_owned(),
        };
        if let Ok(reply) = https.request("GET", &path, Bytes::new()).await {
            let at_ns = since(origin);
            let tx_id = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|json| json["transaction_id"].as_str().and_then(parse_tx_id));
            if let Some((view, seqno)) = tx_id {
                if observations.last().is_none_or(|last| last.seqno < seqno) {
                    observations.push(CommitObservation { at_ns, view, seqno });
                }
            }
        }
        if !poll.is_zero() {
            tokio::time::sleep(poll).await;
        }
    }
    observations
}
