//! A multi-node network of real `charter` processes for end-to-end tests: started with
//! `charter sandbox --nodes N`, with helpers to reach each node, kill and restart nodes, add
//! nodes in join mode and pass governance proposals through the `charter gov` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use charter_host::client::{Client, ClientResponse};
use serde_json::Value;

use super::{children_of, free_port, path_str, signal, text};

/// How long a network may take to start (debug build, shared 2-core machine).
pub const NETWORK_START_TIMEOUT: Duration = Duration::from_secs(120);

/// A node of the network.
pub struct NetNode {
    /// `nodeN`.
    pub name: String,
    /// Its directory (config.json, ledger/, node.log).
    pub dir: PathBuf,
    /// Client address.
    pub rpc_address: SocketAddr,
    /// Node-channel address.
    pub node_address: SocketAddr,
    /// Its node ID.
    pub node_id: String,
    /// Its process: the sandbox's child at first, ours after a restart.
    pub pid: Option<i32>,
    /// A process we started (restarts and added nodes).
    pub own_child: Option<Child>,
}

/// A running sandbox network.
pub struct Network {
    /// The workspace.
    pub workspace: PathBuf,
    /// The sandbox process.
    pub sandbox: Option<Child>,
    /// Sandbox output file.
    pub output_path: PathBuf,
    /// Every node, in sandbox order, then added ones.
    pub nodes: Vec<NetNode>,
    /// Service certificate PEM.
    pub service_pem: String,
}

impl Network {
    /// Starts `charter sandbox --nodes count` in `workspace` with `extra` arguments.
    pub fn start(workspace: &Path, count: usize, extra: &[&str]) -> Network {
        charter_host::tls::install_crypto_provider();
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let port = free_port();
            let output_path = workspace
                .parent()
                .unwrap()
                .join(format!("sandbox-{port}-{attempt}.log"));
            let output = std::fs::File::create(&output_path).unwrap();
            let count_text = count.to_string();
            let port_text = port.to_string();
            let mut args = vec![
                "sandbox",
                "--nodes",
                &count_text,
                "--workspace",
                path_str(workspace),
                "--port",
                &port_text,
                "--signature-interval-ms",
                "20",
            ];
            args.extend_from_slice(extra);
            let child = Command::new(env!("CARGO_BIN_EXE_charter"))
                .args(&args)
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .expect("spawn charter sandbox");
            let mut network = Network {
                workspace: workspace.to_owned(),
                sandbox: Some(child),
                output_path,
                nodes: Vec::new(),
                service_pem: String::new(),
            };
            match network.wait_ready(port) {
                Ok(()) => return network,
                Err(error) => {
                    failures.push(error);
                    network.stop();
                    let _ = std::fs::remove_dir_all(workspace);
                }
            }
        }
        panic!("the network did not start:\n{}", failures.join("\n---\n"));
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + NETWORK_START_TIMEOUT;
        let json_path = self.workspace.join("sandbox.json");
        let expected = format!("127.0.0.1:{port}");
        loop {
            if let Ok(text) = std::fs::read_to_string(&json_path) {
                if let Ok(json) = serde_json::from_str::<Value>(&text) {
                    if json["nodes"][0]["rpc_address"] == expected.as_str() {
                        self.service_pem =
                            std::fs::read_to_string(self.workspace.join("service_cert.pem"))
                                .unwrap();
                        for entry in json["nodes"].as_array().unwrap() {
                            let rpc_address: SocketAddr =
                                entry["rpc_address"].as_str().unwrap().parse().unwrap();
                            self.nodes.push(NetNode {
                                name: entry["name"].as_str().unwrap().to_owned(),
                                dir: PathBuf::from(entry["dir"].as_str().unwrap()),
                                rpc_address,
                                node_address: SocketAddr::new(
                                    rpc_address.ip(),
                                    rpc_address.port() + 1000,
                                ),
                                node_id: entry["node_id"].as_str().unwrap().to_owned(),
                                pid: entry["pid"].as_i64().map(|pid| pid as i32),
                                own_child: None,
                            });
                        }
                        return Ok(());
                    }
                }
            }
            let child = self.sandbox.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "sandbox on {expected} exited ({status}):\n{}",
                    self.diagnostics()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no sandbox.json for {expected}:\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sandbox output and every node log's tail.
    pub fn diagnostics(&self) -> String {
        let mut out = format!(
            "sandbox output:\n{}\n",
            std::fs::read_to_string(&self.output_path).unwrap_or_default()
        );
        let mut index = 0;
        while let Ok(log) =
            std::fs::read_to_string(self.workspace.join(format!("node{index}/node.log")))
        {
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            out.push_str(&format!(
                "node{index}/node.log tail:\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
            index += 1;
        }
        out
    }

    /// Client addresses of the nodes `indexes`.
    pub fn addresses(&self, indexes: &[usize]) -> Vec<SocketAddr> {
        indexes
            .iter()
            .map(|index| self.nodes[*index].rpc_address)
            .collect()
    }

    /// TLS configuration for a workspace identity (`user0`, `member1`, ...), or none.
    pub fn tls(&self, identity: Option<&str>) -> Arc<rustls::ClientConfig> {
        let pems = identity.map(|name| {
            (
                std::fs::read_to_string(self.workspace.join(format!("{name}_cert.pem"))).unwrap(),
                std::fs::read_to_string(self.workspace.join(format!("{name}_privk.pem"))).unwrap(),
            )
        });
        charter_host::tls::client_config(
            &self.service_pem,
            pems.as_ref()
                .map(|(cert, key)| (cert.as_str(), key.as_str())),
        )
        .unwrap()
    }

    /// A client of node `index` as `identity`.
    pub async fn client(&self, index: usize, identity: Option<&str>) -> Client {
        Client::connect(
            self.nodes[index].rpc_address,
            "127.0.0.1",
            self.tls(identity),
        )
        .await
        .unwrap_or_else(|error| panic!("connect to {}: {error}", self.nodes[index].name))
    }

    /// `GET path` on node `index` as JSON, or `None` if the node does not answer.
    pub async fn get(&self, index: usize, path: &str) -> Option<Value> {
        let mut client =
            Client::connect(self.nodes[index].rpc_address, "127.0.0.1", self.tls(None))
                .await
                .ok()?;
        let response = tokio::time::timeout(
            Duration::from_secs(5),
            client.request("GET", path, &[], Vec::new()),
        )
        .await
        .ok()?
        .ok()?;
        response.json().ok()
    }

    /// Index of the node that says it is primary, among `candidates`.
    pub async fn primary_among(&self, candidates: &[usize]) -> Option<usize> {
        for &index in candidates {
            if let Some(json) = self.get(index, "/node/network").await {
                if json["primary_id"].is_string() {
                    return Some(index);
                }
            }
        }
        None
    }

    /// Waits for a primary among `candidates`; panics after `timeout`.
    pub async fn wait_for_primary(&self, candidates: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(index) = self.primary_among(candidates).await {
                return index;
            }
            assert!(
                Instant::now() < deadline,
                "no primary among {candidates:?} within {timeout:?}:\n{}",
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `index` with SIGKILL and waits until it is gone.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.own_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else if let Some(pid) = node.pid {
            signal(pid, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while super::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        node.pid = None;
    }

    /// Starts node `index` again from its directory (`charter node --config`).
    pub fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.pid.is_none(), "{} is running", node.name);
        let child = spawn_node(&node.dir);
        node.pid = Some(child.id() as i32);
        node.own_child = Some(child);
    }

    /// Adds a node in join mode (target: node 0's client address), returning its index. It
    /// asks to join at once and waits, Pending, for governance.
    pub fn add_joining_node(&mut self) -> usize {
        let index = self.nodes.len();
        let name = format!("node{index}");
        let dir = self.workspace.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let rpc_address: SocketAddr = ([127, 0, 0, 1], port).into();
        let node_port = free_port();
        let node_address: SocketAddr = ([127, 0, 0, 1], node_port).into();
        let target = self.nodes[0].rpc_address;
        let config = serde_json::json!({
            "node_dir": dir,
            "rpc_address": rpc_address.to_string(),
            "node_address": node_address.to_string(),
            "mode": "join",
            "join": {
                "target": target.to_string(),
                "service_cert": self.workspace.join("service_cert.pem"),
                "retry_interval_ms": 100,
            },
            "signature_interval_ms": 20,
        });
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        let child = spawn_node(&dir);
        self.nodes.push(NetNode {
            name,
            dir,
            rpc_address,
            node_address,
            node_id: String::new(),
            pid: Some(child.id() as i32),
            own_child: Some(child),
        });
        index
    }

    /// Runs `charter gov ARGS` against node `via` as `member`; returns its JSON output.
    pub fn gov(&self, via: usize, member: &str, args: &[&str]) -> Value {
        let address = self.nodes[via].rpc_address.to_string();
        let mut full = vec![
            "gov",
            "--workspace",
            path_str(&self.workspace),
            "--member",
            member,
            "--address",
            &address,
        ];
        full.extend_from_slice(args);
        let mut output = super::charter(&full);
        // 503: not executed (no primary right now, e.g. during a reconfiguration): ask again.
        for _ in 0..20 {
            if output.status.success() || !text(&output.stderr).contains(" 503 ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
            output = super::charter(&full);
        }
        assert!(
            output.status.success(),
            "charter {full:?} failed: {}\n{}",
            text(&output.stderr),
            self.diagnostics()
        );
        serde_json::from_slice(&output.stdout).expect("gov output is JSON")
    }

    /// Passes a proposal with `actions` through node `via`: member0 proposes, members vote
    /// until it is accepted.
    pub fn pass(&self, via: usize, actions: Value) -> Value {
        let path = self
            .workspace
            .join(format!("proposal-{}.json", free_port()));
        std::fs::write(&path, serde_json::json!({ "actions": actions }).to_string()).unwrap();
        let created = self.gov(via, "member0", &["propose", path_str(&path)]);
        let id = created["proposalId"].as_str().unwrap().to_owned();
        let mut state = created["proposalState"].clone();
        for member in ["member0", "member1", "member2"] {
            if state != "Open" {
                break;
            }
            state = self.gov(via, member, &["vote", &id, "--accept"])["proposalState"].clone();
        }
        assert_eq!(state, "Accepted", "proposal {id}");
        created
    }

    /// Stops every process: the sandbox (which stops its nodes) and the nodes we started.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.own_child.take() {
                if let Ok(pid) = i32::try_from(child.id()) {
                    signal(pid, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(mut sandbox) = self.sandbox.take() {
            let pid = sandbox.id() as i32;
            let children = children_of(pid);
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = sandbox.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = sandbox.kill();
            let _ = sandbox.wait();
            for child in children {
                signal(child, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_node(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(["node", "--config", path_str(&dir.join("config.json"))])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn charter node")
}

/// `PUT /app/kv/{key}` through `client`; the TxID on success. A 503 (not executed: no primary
/// at the moment) is retried for up to about 10 s.
pub async fn put(client: &mut Client, key: &str, value: &str) -> Result<String, String> {
    put_retrying(client, key, value, 100).await
}

async fn put_retrying(
    client: &mut Client,
    key: &str,
    value: &str,
    retries: u32,
) -> Result<String, String> {
    let response: ClientResponse = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(
            "PUT",
            &format!("/app/kv/{key}"),
            &[],
            value.as_bytes().to_vec(),
        ),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|error| error.to_string())?;
    if response.status == 503 && retries > 0 {
        // Not executed (no primary right now, e.g. during an election): ask again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Box::pin(put_retrying(client, key, value, retries - 1)).await;
    }
    if response.status != 200 {
        return Err(format!("{}: {}", response.status, text(&response.body)));
    }
    response
        .header("x-ms-ccf-transaction-id")
        .map(str::to_owned)
        .ok_or_else(|| "no transaction ID".to_owned())
}
