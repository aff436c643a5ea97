//! The etcd baseline: a 3-member cluster on loopback (data on disk, fsync on as by default) and
//! the workers that write and read through its gRPC API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use etcd_client::{Client, KvClient};

use crate::load::Worker;
use crate::process;

/// How long the cluster may take to elect a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running etcd cluster.
pub struct EtcdCluster {
    children: Vec<(Child, PathBuf)>,
    dir: PathBuf,
    /// Client URLs, member by member.
    pub endpoints: Vec<String>,
    /// Index of the leader in `endpoints`.
    pub leader: usize,
    keep: bool,
}

impl EtcdCluster {
    /// Starts `members` members with client ports from `port` and peer ports from `port + 100`,
    /// each with its data directory under `dir` (emptied first), and waits for a leader.
    pub async fn start(
        bin: &Path,
        members: usize,
        port: u16,
        dir: &Path,
        keep: bool,
    ) -> Result<Self, String> {
        assert!((1..=3).contains(&members));
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let peer_url = |index: usize| format!("http://127.0.0.1:{}", port as usize + 100 + index);
        let client_url = |index: usize| format!("http://127.0.0.1:{}", port as usize + index);
        let initial_cluster = (0..members)
            .map(|index| format!("m{index}={}", peer_url(index)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            children: Vec::new(),
            dir: dir.to_owned(),
            endpoints: (0..members).map(client_url).collect(),
            leader: 0,
            keep,
        };
        for index in 0..members {
            let log = dir.join(format!("m{index}.log"));
            let mut command = Command::new(bin);
            command
                .arg("--name")
                .arg(format!("m{index}"))
                .arg("--data-dir")
                .arg(dir.join(format!("m{index}")))
                .arg("--listen-client-urls")
                .arg(client_url(index))
                .arg("--advertise-client-urls")
                .arg(client_url(index))
                .arg("--listen-peer-urls")
                .arg(peer_url(index))
                .arg("--initial-advertise-peer-urls")
                .arg(peer_url(index))
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--initial-cluster-token")
                .arg("charter-bench")
                .arg("--logger")
                .arg("zap")
                .arg("--log-level")
                .arg("warn");
            let child = process::spawn_logged(&mut command, &log)?;
            cluster.children.push((child, log));
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            for (index, (child, log)) in cluster.children.iter_mut().enumerate() {
                process::check_alive(child, &format!("etcd member m{index}"), log)?;
            }
            if let Some(leader) = cluster.find_leader().await {
                cluster.leader = leader;
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                return Err("etcd elected no leader within 60 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the member that every member names as leader, once they agree.
    async fn find_leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for endpoint in &self.endpoints {
            let mut client = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect([endpoint.as_str()], None),
            )
            .await
            .ok()?
            .ok()?;
            let status = tokio::time::timeout(Duration::from_secs(2), client.status())
                .await
                .ok()?
                .ok()?;
            ids.push(status.header()?.member_id());
            leaders.push(status.leader());
        }
        let leader = *leaders.first()?;
        if leader == 0 || leaders.iter().any(|other| *other != leader) {
            return None;
        }
        ids.iter().position(|id| *id == leader)
    }

    /// The server version string (from `etcd --version`).
    pub fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// The members' process IDs.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(child, _)| child.id()).collect()
    }

    /// Stops every member and removes the data unless asked to keep it.
    pub fn stop(mut self) {
        for (child, _) in &mut self.children {
            process::terminate(child, Duration::from_secs(10));
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens `connections` gRPC connections to `endpoint` (one HTTP/2 channel each).
pub async fn connect(endpoint: &str, connections: usize) -> Result<Vec<KvClient>, String> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = Client::connect([endpoint], None)
            .await
            .map_err(|error| format!("etcd {endpoint}: {error}"))?;
        clients.push(client.kv_client());
    }
    Ok(clients)
}

/// Puts `client`'s keys, one at a time.
pub struct Writer {
    pub kv: KvClient,
    pub client: usize,
    pub value: Vec<u8>,
}

impl Worker for Writer {
    async fn send(&mut self, counter: u64) -> Result<Option<(u64, u64)>, String> {
        let key = charter_bench_core::args::key(self.client, counter);
        self.kv
            .put(key, self.value.clone(), None)
            .await
            .map_err(|error| error.to_string())?;
        Ok(None)
    }
}

/// Gets keys `client` wrote (1..=`written`), in turn; linearizable reads, etcd's default.
pub struct Reader {
    pub kv: KvClient,
    pub client: usize,
    pub written: u64,
}

impl Worker for Reader {
    async fn send(&mut self, counter: u64) -> Result<Option<(u64, u64)>, String> {
        let key = charter_bench_core::args::key(self.client, 1 + counter % self.written.max(1));
        let response = self
            .kv
            .get(key, None)
            .await
            .map_err(|error| error.to_string())?;
        if response.kvs().is_empty() {
            return Err("key not found".to_owned());
        }
        Ok(None)
    }
}
