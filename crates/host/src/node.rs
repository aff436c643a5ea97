//! Runs one node: identity files, ledger files, the core's event loop, the node-to-node
//! channels and the HTTPS listener.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use charter_core::{
    raft_id, Action, HardStateRecord, Input, Node, NodeConfig, Request, RequestId, Response,
    Restored, StartMode, FORWARDED_HEADER,
};
use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
use charter_ledger::{LedgerSecrets, NodeStatus, TxId};
use serde::{Deserialize, Serialize};

use crate::files::{LedgerFiles, PendingSync};
use crate::http::{Handler, HttpLimits};
use crate::join::{BootstrapPeer, JoinConfig};
use crate::metrics::HostMetrics;
use crate::peers::{PeerIdentity, Peers, TrustFn};
use crate::wire::PeerMessage;

/// How a node with an empty node directory starts; a node whose directory holds an identity
/// and a ledger always restarts from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Start a new network (genesis) with the configured members.
    #[default]
    Start,
    /// Join the network named by `join`.
    Join,
    /// Recover a service whose nodes are all lost, from the old ledger `recover` names: a new
    /// service identity, endorsed by the previous one when its key is given.
    Recover,
}

/// Where a recovering node finds the lost service (`mode: recover`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverConfig {
    /// The old ledger directory (of a node that holds it from seqno 1); its files are copied.
    pub previous_ledger_dir: PathBuf,
    /// The previous service certificate.
    pub previous_service_cert: PathBuf,
    /// The previous service key, if at hand (an old node's `sealed/service_privk.pem`): it
    /// endorses the new service identity.
    #[serde(default)]
    pub previous_service_key: Option<PathBuf>,
}

/// An initial member: its certificate, and optionally its recovery encryption key (PEM,
/// `charter keys --recovery`), which makes it a recovery member.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemberEntry {
    /// Path of the member's certificate.
    Cert(PathBuf),
    /// Certificate and recovery key.
    WithRecoveryKey {
        /// Path of the member's certificate.
        cert: PathBuf,
        /// Path of the member's recovery public key.
        encryption_public_key: PathBuf,
    },
}

impl MemberEntry {
    fn cert(&self) -> &Path {
        match self {
            MemberEntry::Cert(path) | MemberEntry::WithRecoveryKey { cert: path, .. } => path,
        }
    }
}

/// A node's configuration file (`charter node --config FILE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFileConfig {
    /// Directory of the node: keys, sealed secrets, `ledger/`.
    pub node_dir: PathBuf,
    /// Address to serve clients on, e.g. `127.0.0.1:8000`.
    pub rpc_address: SocketAddr,
    /// Address of the node-to-node channel (default: the client address's port + 1000).
    #[serde(default)]
    pub node_address: Option<SocketAddr>,
    /// `start` (a new network) or `join` (an existing one, see `join`).
    #[serde(default)]
    pub mode: StartKind,
    /// Where to join, for `mode: join`.
    #[serde(default)]
    pub join: Option<JoinConfig>,
    /// What to recover, for `mode: recover`.
    #[serde(default)]
    pub recover: Option<RecoverConfig>,
    /// Where to write (at genesis) the service certificate for clients.
    pub service_cert_out: Option<PathBuf>,
    /// For a new network: certificates of the initial members and users. Ignored on restart.
    #[serde(default)]
    pub members: Vec<MemberEntry>,
    /// Initial users' certificates.
    #[serde(default)]
    pub users: Vec<PathBuf>,
    /// Signature every N transactions (default 5,000).
    #[serde(default = "default_signature_txs")]
    pub signature_interval_txs: u64,
    /// Signature every T milliseconds (default 100).
    #[serde(default = "default_signature_ms")]
    pub signature_interval_ms: u64,
    /// Also sign whenever no signature awaits commit (default false): writes commit about one
    /// replication round after they are written instead of after the interval, for more
    /// signatures (and their CPU) under load. See `charter_core::NodeConfig`.
    #[serde(default)]
    pub signature_when_idle: bool,
    /// Milliseconds per Raft tick (default 100): heartbeats go every 2 ticks and a follower
    /// starts an election after 10 to 20 ticks without hearing from the primary.
    #[serde(default = "default_raft_tick_ms")]
    pub raft_tick_ms: u64,
    /// A snapshot every N committed transactions (default 10,000; 0 turns snapshots off).
    #[serde(default = "default_snapshot_txs")]
    pub snapshot_interval_txs: u64,
    /// Committed entries the in-memory Raft log keeps (default 50,000; 0 keeps them all):
    /// a node that becomes primary can bring a peer this far behind up to date without a
    /// snapshot. Older entries stay in the ledger files only, except those after the node's
    /// newest committed snapshot and, on the primary, those a peer still lacks.
    #[serde(default = "default_log_entries_kept")]
    pub log_entries_kept: u64,
    /// Chunk size at which a chunk is completed at the next signature (default 5 MB).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes_max: u64,
    /// Largest request body (default 1 MiB).
    #[serde(default = "default_body_bytes")]
    pub body_bytes_max: usize,
    /// Signed governance requests must be created within this many seconds of the node's
    /// clock (default 300).
    #[serde(default = "default_gov_window")]
    pub gov_request_window_s: u64,
    /// Other nodes' ledger directories (copies), read for historical queries about
    /// transactions this node's own ledger lacks because it started from a snapshot.
    #[serde(default)]
    pub read_only_ledger_dirs: Vec<PathBuf>,
    /// Genesis file of the Ethereum adapter's chain (chain ID and allocations, format in the
    /// README); absent, the development chain that funds the Hardhat/Anvil accounts. Every node
    /// of a network must name the same file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evm_genesis: Option<PathBuf>,
}

impl NodeFileConfig {
    /// The node-channel address: the configured one, or the client port + 1000.
    ///
    /// # Errors
    /// If no address is configured and the client port is above 64535.
    pub fn node_address(&self) -> Result<SocketAddr, NodeError> {
        if let Some(address) = self.node_address {
            return Ok(address);
        }
        let port = self
            .rpc_address
            .port()
            .checked_add(1_000)
            .ok_or("set node_address: the client port + 1000 is not a port")?;
        Ok(SocketAddr::new(self.rpc_address.ip(), port))
    }
}

fn default_raft_tick_ms() -> u64 {
    100
}

fn default_snapshot_txs() -> u64 {
    10_000
}

fn default_log_entries_kept() -> u64 {
    50_000
}

fn default_gov_window() -> u64 {
    300
}

fn default_signature_txs() -> u64 {
    5_000
}
fn default_signature_ms() -> u64 {
    100
}
fn default_chunk_bytes() -> u64 {
    5_000_000
}
fn default_body_bytes() -> usize {
    1 << 20
}

/// Why a node stopped or could not start.
pub type NodeError = String;

const TICK_MS: u64 = 10;
/// Least time between two ticks of a busy core (see `CoreLoop::run`).
const CLOCK_MS: u64 = 2;
/// Longest a moved commit index waits before it is written to the hard-state file (see
/// `CoreLoop::save_commit_if_due`).
const COMMIT_SAVE_INTERVAL_MS: u64 = 100;
/// How long a follower waits for the primary to answer a forwarded request.
const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// File (in the node directory) naming the nodes a joined node first talks to.
const BOOTSTRAP_PEERS_FILE: &str = "bootstrap_peers.json";
/// Inputs the core takes in one batch before it writes and syncs.
const BATCH_INPUTS_MAX: usize = 4_096;
/// Rounds in a row that may serve consensus messages before the client requests queued with
/// them (see `take_round`); the next takes everything in order, so that a stream of consensus
/// messages cannot starve the clients.
const DEFERRED_ROUNDS_MAX: u32 = 8;

struct Identity {
    node_key: SigningKey,
    node_cert: Certificate,
    service_cert: Certificate,
    service_key: SigningKey,
    ledger_secrets: LedgerSecrets,
}

/// The sealed ledger secrets: JSON `{"FIRST SEQNO": "HEX SECRET"}`.
const SEALED_SECRETS_FILE: &str = "ledger_secrets.json";

fn seal_secrets(sealed: &Path, secrets: &LedgerSecrets) -> Result<(), NodeError> {
    write_private(
        &sealed.join(SEALED_SECRETS_FILE),
        &secrets.to_json().to_string(),
    )
}

/// Replaces the sealed secrets (a recovery changed them), atomically.
fn reseal_secrets(sealed: &Path, secrets: &serde_json::Value) -> Result<(), NodeError> {
    let path = sealed.join(SEALED_SECRETS_FILE);
    let temporary = sealed.join(format!("{SEALED_SECRETS_FILE}.new"));
    let _ = std::fs::remove_file(&temporary);
    write_private(&temporary, &secrets.to_string())?;
    std::fs::rename(&temporary, &path).map_err(|error| format!("{}: {error}", path.display()))
}

fn unseal_secrets(sealed: &Path) -> Result<LedgerSecrets, NodeError> {
    let path = sealed.join(SEALED_SECRETS_FILE);
    if !path.exists() {
        // Written by versions before rekeys: one hex secret.
        let secret_hex = read(&sealed.join("ledger_secret"))?;
        let secret: [u8; 32] = hex::decode(secret_hex.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("sealed ledger secret is damaged")?;
        return Ok(LedgerSecrets::new(LedgerSecret::from_bytes(secret)));
    }
    let json: serde_json::Value = serde_json::from_str(&read(&path)?)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    LedgerSecrets::from_json(&json).map_err(|error| format!("{}: {error}", path.display()))
}

fn read(path: &Path) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("{}: {error}", path.display()))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// Copies the ledger files (`ledger_*`) of `from` into the empty directory `to`.
fn copy_ledger(from: &Path, to: &Path) -> Result<(), NodeError> {
    let listing =
        std::fs::read_dir(from).map_err(|error| format!("{}: {error}", from.display()))?;
    let mut copied = 0;
    for item in listing {
        let item = item.map_err(|error| format!("{}: {error}", from.display()))?;
        let name = item.file_name();
        if name.to_string_lossy().starts_with("ledger_") && item.path().is_file() {
            std::fs::copy(item.path(), to.join(&name))
                .map_err(|error| format!("{}: {error}", item.path().display()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        return Err(format!("{} holds no ledger files", from.display()));
    }
    Ok(())
}

/// Creates (at genesis) or loads (on restart) the node's keys, certificates and sealed ledger
/// secret. On the `virtual` platform "sealed" means a 0600 file in the node directory.
fn identity(config: &NodeFileConfig, genesis: bool) -> Result<Identity, NodeError> {
    let names = vec![config.rpc_address.ip().to_string(), "localhost".to_owned()];
    let dir = &config.node_dir;
    let sealed = dir.join("sealed");
    if genesis {
        std::fs::create_dir_all(&sealed)
            .map_err(|error| format!("{}: {error}", sealed.display()))?;
        let mut rng = rand_core::OsRng;
        let validity = Validity {
            not_before_unix: now_unix() - 86_400,
            days: 3_650,
        };
        let service_key = SigningKey::generate(&mut rng);
        let spec = CertificateSpec {
            common_name: "Charter service",
            is_ca: true,
            subject_alt_names: &[],
            validity,
        };
        let service_cert =
            Certificate::self_signed(&service_key, &spec).map_err(|error| error.to_string())?;
        let node_key = SigningKey::generate(&mut rng);
        let spec = CertificateSpec {
            common_name: "Charter node",
            is_ca: false,
            subject_alt_names: &names,
            validity,
        };
        let node_cert = Certificate::issue(
            &node_key.verifying_key(),
            &spec,
            &service_key,
            &service_cert,
        )
        .map_err(|error| error.to_string())?;
        let ledger_secrets = LedgerSecrets::new(LedgerSecret::generate(&mut rng));
        write_private(&sealed.join("service_privk.pem"), &service_key.to_pem())?;
        seal_secrets(&sealed, &ledger_secrets)?;
        write_private(&dir.join("node_privk.pem"), &node_key.to_pem())?;
        std::fs::write(dir.join("node_cert.pem"), node_cert.to_pem())
            .map_err(|error| error.to_string())?;
        std::fs::write(dir.join("service_cert.pem"), service_cert.to_pem())
            .map_err(|error| error.to_string())?;
        Ok(Identity {
            node_key,
            node_cert,
            service_cert,
            service_key,
            ledger_secrets,
        })
    } else {
        let node_key = SigningKey::from_pem(&read(&dir.join("node_privk.pem"))?)
            .map_err(|error| error.to_string())?;
        let node_cert = Certificate::from_pem(&read(&dir.join("node_cert.pem"))?)
            .map_err(|error| error.to_string())?;
        let service_cert = Certificate::from_pem(&read(&dir.join("service_cert.pem"))?)
            .map_err(|error| error.to_string())?;
        let ledger_secrets = unseal_secrets(&sealed)?;
        let service_key = SigningKey::from_pem(&read(&sealed.join("service_privk.pem"))?)
            .map_err(|error| format!("sealed service key: {error}"))?;
        Ok(Identity {
            node_key,
            node_cert,
            service_cert,
            service_key,
            ledger_secrets,
        })
    }
}

/// Joins the network `config.join` names, then keeps what it receives as this node's identity.
/// The node key is written first, so that a node restarted while governance decides asks again
/// with the same key.
fn join_identity(
    config: &NodeFileConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<Identity, NodeError> {
    let join = config
        .join
        .as_ref()
        .ok_or("mode \"join\" needs a \"join\" section (target, service_cert)")?;
    let dir = &config.node_dir;
    let sealed = dir.join("sealed");
    std::fs::create_dir_all(&sealed).map_err(|error| format!("{}: {error}", sealed.display()))?;
    let key_path = dir.join("node_privk.pem");
    let node_key = if key_path.exists() {
        SigningKey::from_pem(&read(&key_path)?).map_err(|error| error.to_string())?
    } else {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        write_private(&key_path, &key.to_pem())?;
        key
    };
    let names = vec![config.rpc_address.ip().to_string(), "localhost".to_owned()];
    let spec = CertificateSpec {
        common_name: "Charter node (joining)",
        is_ca: false,
        subject_alt_names: &names,
        validity: Validity {
            not_before_unix: now_unix() - 86_400,
            days: 30,
        },
    };
    let self_signed =
        Certificate::self_signed(&node_key, &spec).map_err(|error| error.to_string())?;
    let evidence = own_evidence(&node_key)?;
    let request = serde_json::json!({
        "certificate": self_signed.to_pem(),
        "evidence": evidence,
        "rpc_address": config.rpc_address.to_string(),
        "node_address": config.node_address()?.to_string(),
    });
    tracing::info!(
        node_id = %node_key.verifying_key().id_hex(),
        target = %join.target,
        "asking to join the network"
    );
    let key_pem = node_key.to_pem();
    let cert_pem = self_signed.to_pem();
    let admission = runtime.block_on(async {
        tokio::select! {
            admitted = crate::join::request_admission(join, &request, (&cert_pem, &key_pem), &node_key) => admitted,
            _ = tokio::signal::ctrl_c() => Err("interrupted while joining".to_owned()),
        }
    })?;
    tracing::info!("trusted by the network; received the service identity and ledger secret");
    write_private(
        &sealed.join("service_privk.pem"),
        &admission.service_key.to_pem(),
    )?;
    seal_secrets(&sealed, &admission.ledger_secrets)?;
    let peers = serde_json::to_string_pretty(&admission.peers).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(BOOTSTRAP_PEERS_FILE), peers).map_err(|error| error.to_string())?;
    std::fs::write(
        dir.join("service_cert.pem"),
        admission.service_cert.to_pem(),
    )
    .map_err(|error| error.to_string())?;
    // Written last: its presence marks a complete identity.
    std::fs::write(dir.join("node_cert.pem"), admission.endorsed_cert.to_pem())
        .map_err(|error| error.to_string())?;
    Ok(Identity {
        node_key,
        node_cert: admission.endorsed_cert,
        service_cert: admission.service_cert,
        service_key: admission.service_key,
        ledger_secrets: admission.ledger_secrets,
    })
}

/// The latest committed snapshot of the node at `join.target`, if it keeps any (404 means none).
async fn fetch_snapshot(
    join: &JoinConfig,
    identity: &Identity,
) -> Result<Option<(u64, Vec<u8>)>, NodeError> {
    let service_pem = identity.service_cert.to_pem();
    let cert_pem = identity.node_cert.to_pem();
    let key_pem = identity.node_key.to_pem();
    let tls = crate::tls::client_config(&service_pem, Some((&cert_pem, &key_pem)))
        .map_err(|error| format!("TLS configuration: {error}"))?;
    let mut last_error = String::new();
    for _ in 0..10 {
        let attempt = async {
            let mut client = crate::client::Client::connect(
                join.target,
                &join.target.ip().to_string(),
                tls.clone(),
            )
            .await
            .map_err(|error| error.to_string())?;
            client
                .request("GET", SNAPSHOT_PATH, &[], Vec::new())
                .await
                .map_err(|error| error.to_string())
        };
        match attempt.await {
            Ok(response) if response.status == 404 => return Ok(None),
            Ok(response) if response.status == 200 => {
                let seqno = response
                    .header(SNAPSHOT_SEQNO_HEADER)
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or("the snapshot response names no seqno")?;
                return Ok(Some((seqno, response.body)));
            }
            Ok(response) => {
                last_error = format!(
                    "{}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                )
            }
            Err(error) => last_error = error,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "cannot fetch the latest snapshot from {}: {last_error}",
        join.target
    ))
}

/// Path on which a node serves its latest committed snapshot to nodes of the service.
pub const SNAPSHOT_PATH: &str = "/node/snapshot";
/// Response header naming the seqno of the served snapshot.
pub const SNAPSHOT_SEQNO_HEADER: &str = "x-charter-snapshot-seqno";

enum HostMessage {
    Request(Request, tokio::sync::oneshot::Sender<Response>),
    /// A node-channel message, decoded on its connection's task.
    Peer {
        from: String,
        message: Result<PeerMessage, crate::wire::WireError>,
    },
    /// The ledger writes up to this sync token are durable (from the [`Syncer`]).
    Durable(u64),
    /// The [`Syncer`] could not make the ledger durable: the node must stop.
    SyncFailed(String),
    Shutdown,
}

impl HostMessage {
    /// A client's request (the rest are consensus, disk and control messages).
    fn is_request(&self) -> bool {
        matches!(self, HostMessage::Request(..))
    }
}

/// Where the answer to a request the core handles goes.
enum Reply {
    /// A client of this node.
    Local(tokio::sync::oneshot::Sender<Response>),
    /// A request another node forwarded.
    Remote { node_id: String, forward_id: u64 },
}

/// A request this node forwarded to the primary, waiting for its answer.
struct Forwarded {
    reply: tokio::sync::oneshot::Sender<Response>,
    to: String,
    to_raft_id: u64,
    since: Instant,
}

/// The node channels as the core loop uses them: who the peers are and which may connect.
struct PeerBook {
    peers: Peers,
    own_id: String,
    /// Node IDs allowed to connect, shared with the listener's trust check.
    trusted: Arc<RwLock<HashSet<String>>>,
    /// Node IDs by Raft ID.
    by_raft_id: HashMap<u64, String>,
    /// Nodes dialed now.
    dialed: HashSet<String>,
    /// What a joined node talks to before its nodes table arrives.
    bootstrap: Vec<BootstrapPeer>,
    /// (nodes table version, voters) last applied.
    seen: Option<(u64, Vec<u64>)>,
}

impl PeerBook {
    /// Keeps the dialed peers and the trusted set equal to the nodes the ledger says take part:
    /// trusted nodes, and retired nodes until they have left the configuration.
    fn refresh(&mut self, node: &Node) {
        let voters = node.voters();
        let version = (node.nodes_version(), voters.clone());
        if self.seen.as_ref() == Some(&version) {
            return;
        }
        let nodes = node.nodes();
        let mut wanted: HashMap<String, Option<String>> = HashMap::new();
        if nodes.is_empty() {
            for peer in &self.bootstrap {
                wanted.insert(peer.node_id.clone(), peer.node_address.clone());
            }
        } else {
            let own_retired = nodes.iter().any(|(id, info)| {
                id == &self.own_id
                    && info.status == NodeStatus::Retired
                    && !voters.contains(&raft_id(id))
            });
            for (id, info) in nodes {
                let active = info.status == NodeStatus::Trusted
                    || (info.status == NodeStatus::Retired && voters.contains(&raft_id(&id)));
                if active && !own_retired {
                    wanted.insert(id, info.node_address);
                }
            }
            if own_retired && self.seen.is_some() {
                tracing::warn!("this node is retired from the service; it no longer takes part");
            }
        }
        wanted.remove(&self.own_id);
        for (id, address) in &wanted {
            self.by_raft_id.insert(raft_id(id), id.clone());
            match address.as_deref().map(str::parse::<SocketAddr>) {
                Some(Ok(address)) => {
                    self.peers.set_peer(id, address);
                    self.dialed.insert(id.clone());
                }
                Some(Err(_)) | None => {
                    tracing::warn!(node = %id, "node has no usable node-channel address")
                }
            }
        }
        let gone: Vec<String> = self
            .dialed
            .iter()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.peers.remove_peer(&id);
            self.dialed.remove(&id);
        }
        let trusted: HashSet<String> = wanted.into_keys().collect();
        match self.trusted.write() {
            Ok(mut guard) => *guard = trusted,
            Err(poisoned) => *poisoned.into_inner() = trusted,
        }
        self.seen = Some(version);
    }
}

struct CoreHandler {
    sender: mpsc::SyncSender<HostMessage>,
    /// Where committed snapshots are, served at [`SNAPSHOT_PATH`].
    snapshot_dir: PathBuf,
    /// The service identity's key: only nodes it endorsed get snapshots.
    service_key: charter_crypto::VerifyingKey,
    /// Senders of Ethereum transactions, recovered here before the core executes them.
    ethereum_senders: Arc<charter_evm::senders::SenderCache>,
    /// The host's timings, added to the core's answer at [`METRICS_PATH`].
    metrics: Arc<HostMetrics>,
    /// The commit point as of the core's last round: answers `GET /node/commit` here.
    commit: Arc<PublishedCommit>,
}

/// The core's commit point, published by the core thread after each round so that connection
/// threads answer `GET /node/commit` at once. Asking the core instead queued each such read
/// behind every request waiting for the core: under a write load the answer came up to
/// 10 ms after the commit point had moved. Waiters of `GET /node/commit?after_seqno=N` are
/// woken when it changes.
struct PublishedCommit {
    tx_id: tokio::sync::watch::Sender<Option<TxId>>,
}

impl Default for PublishedCommit {
    fn default() -> PublishedCommit {
        PublishedCommit {
            tx_id: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// Longest a `GET /node/commit?after_seqno=N` waits for the commit point to pass N before it
/// answers with the commit point as it is.
pub const COMMIT_WAIT_MAX: Duration = Duration::from_secs(1);

impl PublishedCommit {
    fn get(&self) -> Option<TxId> {
        *self.tx_id.borrow()
    }

    fn set(&self, tx_id: Option<TxId>) {
        self.tx_id.send_if_modified(|published| {
            let changed = *published != tx_id;
            *published = tx_id;
            changed
        });
    }

    /// The commit point once its seqno is past `after`, or as it is after
    /// [`COMMIT_WAIT_MAX`]; `None` if the core stopped publishing meanwhile.
    async fn after(&self, after: u64) -> Option<TxId> {
        let mut receiver = self.tx_id.subscribe();
        let passed = |tx_id: &Option<TxId>| tx_id.is_none_or(|tx_id| tx_id.seqno > after);
        let waited = tokio::time::timeout(COMMIT_WAIT_MAX, receiver.wait_for(passed)).await;
        match waited {
            Ok(Ok(tx_id)) => *tx_id,
            // Timed out (or the sender is gone, which this struct's lifetime rules out).
            _ => self.get(),
        }
    }
}

/// The core's Prometheus metrics, to which the host adds its own ([`HostMetrics`]).
const METRICS_PATH: &str = "/node/metrics";

impl CoreHandler {
    /// `GET /node/snapshot`: the latest committed snapshot, for a caller presenting a node
    /// certificate endorsed by the service (snapshots hold the encrypted private state and the
    /// public state, which only members of the service may copy).
    fn serve_snapshot(
        &self,
        request: &Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
        let endorsed = request
            .caller_cert_der
            .as_deref()
            .and_then(|der| Certificate::from_der(der).ok())
            .is_some_and(|cert| cert.verify_signed_by(&self.service_key).is_ok());
        if !endorsed {
            return Box::pin(async {
                Response::error(
                    403,
                    "Forbidden",
                    "snapshots are served only to nodes with a certificate endorsed by the service",
                )
            });
        }
        let dir = self.snapshot_dir.clone();
        Box::pin(async move {
            let read =
                tokio::task::spawn_blocking(move || crate::files::latest_committed_snapshot(&dir))
                    .await;
            match read {
                Ok(Ok(Some((seqno, bytes)))) => Response {
                    status: 200,
                    headers: vec![
                        (
                            "content-type".to_owned(),
                            "application/octet-stream".to_owned(),
                        ),
                        (SNAPSHOT_SEQNO_HEADER.to_owned(), seqno.to_string()),
                    ],
                    body: bytes,
                },
                Ok(Ok(None)) => {
                    Response::error(404, "NoSnapshot", "this node holds no committed snapshot")
                }
                Ok(Err(error)) => Response::error(500, "InternalError", error.to_string()),
                Err(error) => Response::error(500, "InternalError", error.to_string()),
            }
        })
    }
}

/// Delivers peer messages from the connections' tasks straight to the core's queue, decoded
/// there. Each connection delivers in order; a full queue (a busy core) holds the connection's
/// task, so the peer slows down (its TCP window fills) instead of messages being lost. It waits
/// with `block_in_place`, so it needs a multi-threaded runtime, as the node's is.
#[derive(Clone)]
struct CoreInbox {
    core: mpsc::SyncSender<HostMessage>,
    ethereum_senders: Arc<charter_evm::senders::SenderCache>,
}

impl crate::peers::Inbox for CoreInbox {
    async fn deliver(&self, from: &str, bytes: Vec<u8>) -> bool {
        let message = PeerMessage::decode(&bytes);
        if let Ok(PeerMessage::ForwardRequest { request, .. }) = &message {
            // A write a follower forwards has its Ethereum senders recovered here, as a
            // local one has on its connection's task, not on the core thread.
            prepare_ethereum_senders(&self.ethereum_senders, request);
        }
        let message = HostMessage::Peer {
            from: from.to_owned(),
            message,
        };
        match self.core.try_send(message) {
            Ok(()) => true,
            // Rare: wait without holding up the other tasks of this runtime thread.
            Err(mpsc::TrySendError::Full(message)) => {
                tokio::task::block_in_place(|| self.core.send(message).is_ok())
            }
            Err(mpsc::TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Recovers the senders of the signed Ethereum transactions in `request`, if it is a JSON-RPC
/// call, off the core thread: the core then only executes them (`charter_evm::senders` says why
/// the core stays deterministic).
fn prepare_ethereum_senders(senders: &charter_evm::senders::SenderCache, request: &Request) {
    if request.method == charter_core::Method::Post && request.path == charter_evm::RPC_FULL_PATH {
        senders.prepare(&request.body);
    }
}

impl Handler for CoreHandler {
    fn handle(
        &self,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
        if request.path == SNAPSHOT_PATH && request.method == charter_core::Method::Get {
            return self.serve_snapshot(&request);
        }
        if charter_core::is_commit_query(&request) {
            let after = match charter_core::commit_wait_after(&request) {
                Ok(after) => after,
                Err(refusal) => return Box::pin(async move { refusal }),
            };
            if let Some(tx_id) = self.commit.get() {
                let Some(after) = after.filter(|after| tx_id.seqno <= *after) else {
                    return Box::pin(async move { charter_core::commit_response(tx_id) });
                };
                let commit = Arc::clone(&self.commit);
                return Box::pin(async move {
                    match commit.after(after).await {
                        Some(tx_id) => charter_core::commit_response(tx_id),
                        None => Response::error(503, "NodeStopping", "the node is stopping")
                            .with_header("retry-after", "1"),
                    }
                });
            }
        }
        // Recovers the senders of signed Ethereum transactions on this connection's thread, in
        // parallel with the core and other connections.
        prepare_ethereum_senders(&self.ethereum_senders, &request);
        let metrics = (request.method == charter_core::Method::Get && request.path == METRICS_PATH)
            .then(|| Arc::clone(&self.metrics));
        let (reply, wait) = tokio::sync::oneshot::channel();
        let sent = self.sender.try_send(HostMessage::Request(request, reply));
        Box::pin(async move {
            match sent {
                Err(mpsc::TrySendError::Full(_)) => {
                    Response::error(503, "ServiceBusy", "the node is overloaded; retry later")
                        .with_header("retry-after", "1")
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    Response::error(503, "NodeStopping", "the node is stopping")
                }
                Ok(()) => {
                    let mut response = wait.await.unwrap_or_else(|_| {
                        Response::error(500, "InternalError", "the node stopped before answering")
                    });
                    if let Some(metrics) = metrics.filter(|_| response.status == 200) {
                        response.body.extend(metrics.render().into_bytes());
                    }
                    response
                }
            }
        })
    }
}

/// The Ethereum adapter for the chain in `genesis` (a file), or for the development chain.
fn ethereum_app(genesis: Option<&Path>) -> Result<charter_evm::EthereumApp, NodeError> {
    let Some(path) = genesis else {
        return Ok(charter_evm::EthereumApp::dev());
    };
    let bytes = std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let config = charter_evm::chain::ChainConfig::from_genesis_json(&bytes)
        .map_err(|error| format!("{}: {error}", path.display()))?;
    Ok(charter_evm::EthereumApp::new(config))
}

fn unix_time_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// This node's attestation evidence on the `virtual` platform: the measurement is the SHA-256
/// of the running binary, and the report binds the node's public key.
fn own_evidence(node_key: &SigningKey) -> Result<charter_attest::Evidence, NodeError> {
    let exe = std::env::current_exe()
        .map_err(|error| format!("cannot locate the node binary: {error}"))?;
    let binary = std::fs::read(&exe).map_err(|error| format!("{}: {error}", exe.display()))?;
    let measurement = hex::encode(charter_crypto::sha256(&binary));
    let report_data = charter_crypto::sha256(&node_key.verifying_key().to_spki_der());
    Ok(charter_attest::virtual_evidence(&measurement, &report_data))
}

/// The core's event loop: owns the node and the ledger files.
/// Snapshot files waiting for the snapshot thread; more are dropped (a lost snapshot costs
/// only a later one).
const SNAPSHOT_JOBS_MAX: usize = 4;

/// Work for the snapshot thread.
enum SnapshotJob {
    Encode(Box<charter_core::SnapshotWork>),
    Commit { seqno: u64, evidence: Vec<u8> },
}

/// Largest snapshot buffer the snapshot thread keeps for the next snapshot.
const SNAPSHOT_BUFFER_KEPT_MAX: usize = 64 << 20;

/// Nice value of the snapshot thread: on a loaded machine the core thread and the connections
/// go first, and the snapshot (background work whose only deadline is the next snapshot)
/// takes what is left instead of delaying commits by the length of an encoding.
const SNAPSHOT_THREAD_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to [`SNAPSHOT_THREAD_NICE`] (Linux: the
/// nice value is per thread). Failing to is harmless: the thread runs at normal priority.
fn lower_this_threads_priority() {
    // SAFETY: gettid has no preconditions; setpriority only reads its integer arguments.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, SNAPSHOT_THREAD_NICE)
    };
    if result != 0 {
        tracing::debug!("cannot lower the snapshot thread's priority");
    }
}

/// Makes ledger writes durable on a thread of its own. The core thread writes entries to the
/// page cache and goes on (executing requests, sending appends to followers, applying theirs)
/// while fsync runs; an fsync took 1-7 ms under load and stalled all of that when the core
/// made it. Requests that queue up during one fsync share the next, and each answer goes back
/// to the core as [`HostMessage::Durable`] with the highest token covered.
struct Syncer {
    requests: Option<mpsc::Sender<SyncRequest>>,
}

/// A sync token, what to sync for it, and when the core asked.
type SyncRequest = (u64, Option<PendingSync>, Instant);

impl Syncer {
    fn start(
        core: mpsc::SyncSender<HostMessage>,
        metrics: Arc<HostMetrics>,
    ) -> Result<Syncer, NodeError> {
        let (requests, receiver) = mpsc::channel::<SyncRequest>();
        std::thread::Builder::new()
            .name("charter-sync".to_owned())
            .spawn(move || {
                // Ends when the core loop drops the sender.
                while let Ok(first) = receiver.recv() {
                    let mut batch = vec![first];
                    batch.extend(receiver.try_iter());
                    let token = batch.iter().map(|(token, ..)| *token).max().unwrap_or(0);
                    let mut synced: Vec<&PendingSync> = Vec::new();
                    for pending in batch.iter().filter_map(|(_, pending, _)| pending.as_ref()) {
                        if synced.iter().any(|done| done.same_chunk(pending)) {
                            continue;
                        }
                        let started = Instant::now();
                        if let Err(error) = pending.sync() {
                            let _ = core.send(HostMessage::SyncFailed(error.to_string()));
                            return;
                        }
                        metrics.ledger_fsync.observe(started.elapsed());
                        synced.push(pending);
                    }
                    for (_, _, asked) in &batch {
                        metrics.ledger_sync.observe(asked.elapsed());
                    }
                    if core.send(HostMessage::Durable(token)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|error| error.to_string())?;
        Ok(Syncer {
            requests: Some(requests),
        })
    }

    /// Asks for everything written so far (`pending`) to be made durable, answered with
    /// `token`.
    fn submit(&self, token: u64, pending: Option<PendingSync>) -> Result<(), NodeError> {
        self.requests
            .as_ref()
            .and_then(|requests| requests.send((token, pending, Instant::now())).ok())
            .ok_or_else(|| "the ledger sync thread has stopped".to_owned())
    }

    /// Lets the thread end after what was submitted. It is not waited for: it may be blocked
    /// handing an answer to a core that no longer reads them, and the core's own final sync
    /// covers everything.
    fn stop(&mut self) {
        self.requests = None;
    }
}

/// Encodes and writes snapshot files on a thread of its own, in the order submitted: encoding
/// a snapshot covers the whole history and state, and encoding, writing and syncing it took
/// the core thread away for 100-200 ms, which stalled every commit behind it. Each encoded
/// snapshot's digest goes back to the core.
struct SnapshotWriter {
    jobs: Option<mpsc::SyncSender<SnapshotJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Digests of the snapshots encoded and written, for [`Input::SnapshotEncoded`].
    encoded: mpsc::Receiver<(u64, charter_crypto::Digest)>,
}

impl SnapshotWriter {
    fn start(files: crate::files::SnapshotFiles) -> Result<SnapshotWriter, NodeError> {
        let (jobs, receiver) = mpsc::sync_channel::<SnapshotJob>(SNAPSHOT_JOBS_MAX);
        let (encoded_sender, encoded) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("charter-snapshots".to_owned())
            .spawn(move || {
                lower_this_threads_priority();
                // One buffer for every snapshot: a fresh one per snapshot cost page faults,
                // and a growing one copies. Kept between snapshots only up to a bound, so that
                // a large state is not held in memory twice. A buffer made afresh is sized
                // from the previous snapshot (states grow, so with some room): growing one by
                // doubling copied it and touched fresh memory twice over, which was most of
                // the cost of a snapshot of tens of megabytes.
                let mut buffer = Vec::new();
                let mut previous_len = 0usize;
                // Ends when the core loop drops the sender.
                for job in receiver {
                    // A lost snapshot costs only a later one: report, do not stop the node.
                    match job {
                        SnapshotJob::Encode(work) => {
                            let seqno = work.seqno;
                            buffer.clear();
                            buffer.reserve(previous_len.saturating_add(previous_len / 8));
                            let digest = work.encode_into(&mut buffer);
                            previous_len = buffer.len();
                            drop(work);
                            match files.write(seqno, &buffer) {
                                Ok(()) => {
                                    let _ = encoded_sender.send((seqno, digest));
                                }
                                Err(error) => {
                                    tracing::warn!(seqno, %error, "cannot write the snapshot");
                                }
                            }
                            if buffer.capacity() > SNAPSHOT_BUFFER_KEPT_MAX {
                                buffer = Vec::new();
                            }
                        }
                        SnapshotJob::Commit { seqno, evidence } => {
                            if let Err(error) = files.commit(seqno, &evidence) {
                                tracing::warn!(seqno, %error, "cannot commit the snapshot");
                            }
                        }
                    }
                }
            })
            .map_err(|error| format!("cannot start the snapshot thread: {error}"))?;
        Ok(SnapshotWriter {
            jobs: Some(jobs),
            thread: Some(thread),
            encoded,
        })
    }

    fn submit(&self, job: SnapshotJob) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        if let Err(error) = jobs.try_send(job) {
            let job = match error {
                mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job) => job,
            };
            let seqno = match job {
                SnapshotJob::Encode(work) => work.seqno,
                SnapshotJob::Commit { seqno, .. } => seqno,
            };
            tracing::warn!(seqno, "snapshot thread busy or gone: snapshot work dropped");
        }
    }

    /// Waits for the submitted snapshot files to be written.
    fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A stopped core answers nothing more: the commit point is no longer published, and
/// `GET /node/commit` goes to the core's queue, which answers that the node is stopping.
impl Drop for CoreLoop {
    fn drop(&mut self) {
        self.commit.set(None);
    }
}

struct CoreLoop {
    node: Node,
    files: LedgerFiles,
    syncer: Syncer,
    metrics: Arc<HostMetrics>,
    /// Where connection threads read the commit point.
    commit: Arc<PublishedCommit>,
    snapshots: SnapshotWriter,
    pending: HashMap<RequestId, Reply>,
    next_request: u64,
    hard_state: HardStateRecord,
    /// The commit index last written to the hard-state file, and when.
    commit_saved: u64,
    commit_saved_at: Instant,
    started: Instant,
    book: PeerBook,
    forwarded: HashMap<u64, Forwarded>,
    next_forward: u64,
    /// Directory of the sealed secrets.
    sealed_dir: PathBuf,
    /// Seqnos of the configuration-change entries in the ledger.
    conf_change_seqnos: std::collections::BTreeSet<u64>,
}

impl CoreLoop {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn answer(&mut self, reply: Reply, response: Response) {
        match reply {
            Reply::Local(sender) => {
                let _ = sender.send(response);
            }
            Reply::Remote {
                node_id,
                forward_id,
            } => {
                let message = PeerMessage::ForwardResponse {
                    forward_id,
                    response,
                };
                self.book.peers.send(&node_id, message.encode());
            }
        }
    }

    fn forward(&mut self, id: RequestId, to: u64, request: Request) {
        let Some(reply) = self.pending.remove(&id) else {
            return;
        };
        let target = self.book.by_raft_id.get(&to).cloned();
        match (reply, target) {
            (Reply::Local(reply), Some(node_id)) => {
                self.next_forward += 1;
                let forward_id = self.next_forward;
                let message = PeerMessage::ForwardRequest {
                    forward_id,
                    request,
                };
                self.book.peers.send(&node_id, message.encode());
                self.forwarded.insert(
                    forward_id,
                    Forwarded {
                        reply,
                        to: node_id,
                        to_raft_id: to,
                        since: Instant::now(),
                    },
                );
            }
            (reply, _) => self.answer(
                reply,
                Response::error(
                    503,
                    "NotPrimary",
                    "this node cannot reach the primary; retry, or ask another node",
                )
                .with_header("retry-after", "1"),
            ),
        }
    }

    /// Answers forwarded requests the primary has not answered in time, or that went to a
    /// node that is no longer primary (which may or may not have executed them).
    fn expire_forwarded(&mut self) {
        let timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
        let primary = self.node.primary_raft_id();
        let expired: Vec<(u64, bool)> = self
            .forwarded
            .iter()
            .filter_map(|(id, forwarded)| {
                if forwarded.since.elapsed() >= timeout {
                    Some((*id, false))
                } else if primary.is_some_and(|primary| primary != forwarded.to_raft_id) {
                    Some((*id, true))
                } else {
                    None
                }
            })
            .collect();
        for (id, primary_changed) in expired {
            if let Some(forwarded) = self.forwarded.remove(&id) {
                let response = if primary_changed {
                    Response::error(
                        504,
                        "PrimaryChanged",
                        "the primary changed while it handled the forwarded request; it may or may not have been executed (check /node/tx)",
                    )
                } else {
                    Response::error(
                        504,
                        "ForwardTimeout",
                        "the primary did not answer the forwarded request in time; it may or may not have been executed (check /node/tx)",
                    )
                };
                let _ = forwarded.reply.send(response);
            }
        }
    }

    fn peer_message(
        &mut self,
        from: String,
        message: Result<PeerMessage, crate::wire::WireError>,
        actions: &mut Vec<Action>,
    ) -> Result<(), NodeError> {
        match message {
            Ok(PeerMessage::Raft(bytes)) => self
                .node
                .step(
                    Input::Peer {
                        from: raft_id(&from),
                        bytes,
                    },
                    actions,
                )
                .map_err(|e| e.to_string()),
            Ok(PeerMessage::ForwardRequest {
                forward_id,
                mut request,
            }) => {
                request
                    .headers
                    .push((FORWARDED_HEADER.to_owned(), from.clone()));
                self.next_request += 1;
                let id = RequestId(self.next_request);
                self.pending.insert(
                    id,
                    Reply::Remote {
                        node_id: from,
                        forward_id,
                    },
                );
                self.node
                    .step(Input::Client { id, request }, actions)
                    .map_err(|e| e.to_string())
            }
            Ok(PeerMessage::ForwardResponse {
                forward_id,
                response,
            }) => {
                // Only the node a request went to may answer it.
                if self
                    .forwarded
                    .get(&forward_id)
                    .is_some_and(|forwarded| forwarded.to == from)
                {
                    if let Some(forwarded) = self.forwarded.remove(&forward_id) {
                        let _ = forwarded.reply.send(response);
                    }
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(peer = %from, %error, "dropped a malformed node-channel message");
                Ok(())
            }
        }
    }

    /// Writes a moved commit index to the hard-state file (without waiting for the disk) when
    /// `force` or at most every [`COMMIT_SAVE_INTERVAL_MS`]. (An index that passes a
    /// configuration change is saved at once, with fsync, where the hard state arrives.) A stale
    /// index otherwise only makes a restarted replica learn its commit point from the primary
    /// again; writing it for every batch (a file created and renamed each time) cost about a
    /// fifth of the core thread under load.
    fn save_commit_if_due(&mut self, force: bool) -> Result<(), NodeError> {
        if self.hard_state.commit == self.commit_saved {
            return Ok(());
        }
        let due = force
            || self.commit_saved_at.elapsed() >= Duration::from_millis(COMMIT_SAVE_INTERVAL_MS);
        if !due {
            return Ok(());
        }
        self.files
            .save_commit(self.hard_state)
            .map_err(|e| e.to_string())?;
        self.commit_saved = self.hard_state.commit;
        self.commit_saved_at = Instant::now();
        Ok(())
    }

    /// Carries out actions; asks the [`Syncer`] for one sync per batch. Bounded rounds.
    fn perform(&mut self, mut actions: Vec<Action>) -> Result<(), NodeError> {
        for _ in 0..64 {
            let mut sync = None;
            let mut reads = Vec::new();
            for action in actions.drain(..) {
                match action {
                    Action::Respond { id, response } => {
                        if let Some(reply) = self.pending.remove(&id) {
                            self.answer(reply, response);
                        }
                    }
                    Action::Forward { id, to, request } => self.forward(id, to, request),
                    Action::Append { seqno, bytes } => {
                        if charter_ledger::decode_entry(&bytes)
                            .is_ok_and(|entry| entry.kind == charter_ledger::EntryKind::ConfChange)
                        {
                            self.conf_change_seqnos.insert(seqno);
                        }
                        self.files
                            .append(seqno, &bytes)
                            .map_err(|e| e.to_string())?
                    }
                    Action::Truncate { from_seqno } => {
                        let _ = self.conf_change_seqnos.split_off(&from_seqno);
                        self.files.truncate(from_seqno).map_err(|e| e.to_string())?
                    }
                    Action::SaveHardState(state) => {
                        // Term and vote must be durable before the messages that depend on
                        // them leave (the sync that follows); the commit index is kept lazily.
                        if (state.term, state.vote) != (self.hard_state.term, self.hard_state.vote)
                        {
                            self.files
                                .save_hard_state(state)
                                .map_err(|e| e.to_string())?;
                            self.hard_state = state;
                            self.commit_saved = state.commit;
                        } else if state.commit != self.hard_state.commit {
                            // A restarting replica applies the configuration changes up to the
                            // saved commit index: a stale one would leave it with an old
                            // configuration (e.g. the genesis node alone, able to elect itself).
                            // So a commit index that passes a configuration change is saved
                            // with fsync before anything acts on the new configuration, even
                            // across a power loss; other advances are saved lazily.
                            let passes_change = state.commit > self.commit_saved
                                && self
                                    .conf_change_seqnos
                                    .range(self.commit_saved + 1..=state.commit)
                                    .next()
                                    .is_some();
                            self.hard_state = state;
                            if passes_change {
                                self.files
                                    .save_hard_state(state)
                                    .map_err(|e| e.to_string())?;
                                self.commit_saved = state.commit;
                                self.commit_saved_at = Instant::now();
                            } else {
                                self.save_commit_if_due(false)?;
                            }
                        }
                        self.hard_state = state;
                    }
                    Action::Send { to, bytes } => match self.book.by_raft_id.get(&to) {
                        Some(node_id) => self
                            .book
                            .peers
                            .send(node_id, PeerMessage::Raft(bytes).encode()),
                        None => tracing::debug!(to, "message for an unknown node dropped"),
                    },
                    Action::ReadEntries {
                        from_seqno,
                        to_seqno,
                    } => {
                        let entries = self
                            .files
                            .read_range(from_seqno, to_seqno)
                            .map_err(|e| e.to_string())?;
                        reads.push(entries);
                    }
                    Action::Sync { token } => {
                        sync = Some(sync.map_or(token, |t: u64| t.max(token)))
                    }
                    Action::CloseChunk { last_seqno } => self
                        .files
                        .close_chunk(last_seqno)
                        .map_err(|e| e.to_string())?,
                    // Snapshot files are written by the snapshot thread, in order, so that
                    // the core does not wait for megabytes to reach the disk.
                    Action::EncodeSnapshot(work) => {
                        self.snapshots.submit(SnapshotJob::Encode(work))
                    }
                    Action::SealLedgerSecrets { secrets } => {
                        reseal_secrets(&self.sealed_dir, &secrets)?;
                    }
                    Action::CommitSnapshot { seqno, evidence } => self
                        .snapshots
                        .submit(SnapshotJob::Commit { seqno, evidence }),
                }
            }
            for entries in reads {
                self.node
                    .step(Input::EntriesRead { entries }, &mut actions)
                    .map_err(|e| e.to_string())?;
            }
            if let Some(token) = sync {
                // Answered by a `HostMessage::Durable` in a later round.
                let pending = self.files.write_for_sync().map_err(|e| e.to_string())?;
                self.syncer.submit(token, pending)?;
            }
            if actions.is_empty() {
                self.book.refresh(&self.node);
                return Ok(());
            }
        }
        Ok(())
    }

    fn run(mut self, receiver: mpsc::Receiver<HostMessage>) -> Result<(), NodeError> {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        let mut last_tick = Instant::now();
        // Inputs taken off the queue and not yet stepped: client requests wait here while a
        // round serves consensus messages first.
        let mut backlog: VecDeque<HostMessage> = VecDeque::new();
        // Rounds in a row that left client requests for later.
        let mut deferred_rounds = 0;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut actions = Vec::new();
            let mut stop = false;
            let mut inputs = 0;
            let mut round_ends = false;
            if backlog.is_empty() {
                match receiver.recv_timeout(wait) {
                    Ok(message) => backlog.push_back(message),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => stop = true,
                }
            }
            let round_started = Instant::now();
            while backlog.len() < BATCH_INPUTS_MAX {
                match receiver.try_recv() {
                    Ok(message) => backlog.push_back(message),
                    Err(_) => break,
                }
            }
            let control_first = deferred_rounds < DEFERRED_ROUNDS_MAX;
            let mut round = take_round(&mut backlog, control_first).into_iter();
            deferred_rounds = if backlog.is_empty() {
                0
            } else {
                deferred_rounds + 1
            };
            for current in round.by_ref() {
                match current {
                    HostMessage::Shutdown => {
                        stop = true;
                        break;
                    }
                    HostMessage::Peer { from, message } => {
                        self.peer_message(from, message, &mut actions)?;
                    }
                    HostMessage::Durable(token) => {
                        self.node
                            .step(Input::Durable { token }, &mut actions)
                            .map_err(|e| e.to_string())?;
                        // What waited for the disk (a follower's answers to appends) goes out
                        // now, not after the inputs queued behind it.
                        round_ends = true;
                    }
                    HostMessage::SyncFailed(error) => {
                        return Err(format!("cannot make the ledger durable: {error}"));
                    }
                    HostMessage::Request(request, reply) => {
                        self.next_request += 1;
                        let id = RequestId(self.next_request);
                        self.pending.insert(id, Reply::Local(reply));
                        self.node
                            .step(Input::Client { id, request }, &mut actions)
                            .map_err(|e| e.to_string())?;
                    }
                }
                inputs += 1;
                if round_ends {
                    break;
                }
            }
            // Inputs a round ended before go back to the front, in order.
            for message in round.rev() {
                backlog.push_front(message);
            }
            // Snapshots the snapshot thread encoded since the last round.
            while let Ok((seqno, digest)) = self.snapshots.encoded.try_recv() {
                self.node
                    .step(Input::SnapshotEncoded { seqno, digest }, &mut actions)
                    .map_err(|e| e.to_string())?;
            }
            // Ticks at least every TICK_MS, and after any round of inputs once CLOCK_MS have
            // passed: the core emits a signature when its interval has passed, so a busy node
            // signs on time rather than up to a tick late.
            let now = Instant::now();
            if now >= next_tick
                || (inputs > 0 && now >= last_tick + Duration::from_millis(CLOCK_MS))
            {
                last_tick = now;
                let now_ms = self.now_ms();
                self.node
                    .step(
                        Input::Tick {
                            now_ms,
                            unix_time_s: unix_time_s(),
                        },
                        &mut actions,
                    )
                    .map_err(|e| e.to_string())?;
                self.expire_forwarded();
                self.save_commit_if_due(false)?;
                next_tick = Instant::now() + tick;
            }
            self.node.flush(&mut actions).map_err(|e| e.to_string())?;
            let busy = inputs > 0 || !actions.is_empty();
            self.perform(actions)?;
            self.commit.set(Some(self.node.commit_tx_id()));
            if busy {
                self.metrics.core_round.observe(round_started.elapsed());
            }
            if stop {
                self.save_commit_if_due(true)?;
                self.syncer.stop();
                self.files.sync().map_err(|e| e.to_string())?;
                self.snapshots.finish();
                return Ok(());
            }
        }
    }
}

/// The inputs a core round steps, taken from `backlog` (what the core took off its queue).
/// With `control_first`, the consensus, disk and control messages if there are any, in their
/// order, leaving the client requests for the next round; otherwise everything in order. What
/// such messages release (commits, a primary's next signature, a follower's acknowledgement)
/// then goes out without waiting for the requests queued with them to execute; the requests
/// keep their order.
fn take_round(backlog: &mut VecDeque<HostMessage>, control_first: bool) -> Vec<HostMessage> {
    if !control_first || backlog.iter().all(HostMessage::is_request) {
        return backlog.drain(..).collect();
    }
    let (control, requests): (Vec<_>, Vec<_>) = std::mem::take(backlog)
        .into_iter()
        .partition(|message| !message.is_request());
    *backlog = requests.into();
    control
}

/// Serves the client API on `address` from `rpc_runtime`, calls `ready`, and waits (on
/// `runtime`) for SIGTERM or Ctrl-C; then stops accepting and lets open connections finish
/// for a few seconds.
fn serve_clients(
    runtime: &tokio::runtime::Runtime,
    rpc_runtime: &tokio::runtime::Runtime,
    address: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: HttpLimits,
    handler: Arc<CoreHandler>,
    ready: impl FnOnce(),
) -> Result<(), NodeError> {
    let cannot_listen = |error: std::io::Error| format!("cannot listen on {address}: {error}");
    let listener = std::net::TcpListener::bind(address)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(cannot_listen)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = {
        // Registers the listener with the client runtime's reactor.
        let _entered = rpc_runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).map_err(cannot_listen)?;
        rpc_runtime.spawn(crate::http::serve(listener, tls, limits, handler, stopped))
    };
    ready();
    runtime.block_on(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|error| error.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        Ok(())
    })
}

/// Starts a node from `config` and runs it until SIGTERM or Ctrl-C. `ready` is called with the
/// service certificate once the node serves clients.
///
/// # Errors
/// A message naming what failed: unreadable configuration, keys or ledger, a port in use, a
/// refused join, or a fatal storage error while running.
pub fn run_node(
    config: NodeFileConfig,
    ready: impl FnOnce(&Certificate) + Send,
) -> Result<(), NodeError> {
    crate::tls::install_crypto_provider();
    // Node-to-node traffic and the client API have runtimes of their own, so that an append
    // or an acknowledgement is never queued behind client connections' work on the same
    // threads. (In the 3-node benchmark the signature's replication round went from a median
    // of 4.8-5.3 ms to 4.3-4.9 ms, and p99 to commit from 27-30 to 25-29 ms.)
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("charter-peers")
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let rpc_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("charter-rpc")
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let ledger_dir = config.node_dir.join("ledger");
    std::fs::create_dir_all(&ledger_dir)
        .map_err(|error| format!("{}: {error}", ledger_dir.display()))?;
    let node_address = config.node_address()?;
    let (mut files, mut loaded) =
        LedgerFiles::open(&ledger_dir).map_err(|error| error.to_string())?;
    let has_identity = config.node_dir.join("node_cert.pem").exists()
        && config.node_dir.join("node_privk.pem").exists();
    let bootstrap_path = config.node_dir.join(BOOTSTRAP_PEERS_FILE);
    let joined = bootstrap_path.exists();
    let (identity, joining) = if has_identity {
        let has_snapshot = files
            .snapshots()
            .latest_committed()
            .map_err(|error| error.to_string())?
            .is_some();
        (
            identity(&config, false)?,
            joined && loaded.entries.is_empty() && !has_snapshot,
        )
    } else {
        match config.mode {
            StartKind::Start => {
                if !loaded.entries.is_empty() {
                    return Err(format!(
                        "{} holds a ledger but no node identity; restore node_privk.pem and node_cert.pem or use an empty directory",
                        config.node_dir.display()
                    ));
                }
                (identity(&config, true)?, false)
            }
            StartKind::Join => (join_identity(&config, &runtime)?, true),
            StartKind::Recover => {
                if !loaded.entries.is_empty() {
                    return Err(format!(
                        "{} already holds a ledger: recover into an empty node directory",
                        config.node_dir.display()
                    ));
                }
                let recover = config
                    .recover
                    .as_ref()
                    .ok_or("mode \"recover\" needs a \"recover\" section (previous_ledger_dir, previous_service_cert)")?;
                copy_ledger(&recover.previous_ledger_dir, &ledger_dir)?;
                (files, loaded) =
                    LedgerFiles::open(&ledger_dir).map_err(|error| error.to_string())?;
                if loaded.entries.first().map(|entry| entry.seqno) != Some(1) {
                    return Err(format!(
                        "{} does not hold the ledger from seqno 1 (its node started from a snapshot); recover from another node's ledger",
                        recover.previous_ledger_dir.display()
                    ));
                }
                (identity(&config, true)?, false)
            }
        }
    };
    let recovering = !has_identity && config.mode == StartKind::Recover;
    let genesis = !has_identity && config.mode == StartKind::Start;
    let bootstrap: Vec<BootstrapPeer> = if joined || joining {
        let text = read(&bootstrap_path)?;
        serde_json::from_str(&text)
            .map_err(|error| format!("{}: {error}", bootstrap_path.display()))?
    } else {
        Vec::new()
    };
    if loaded.torn_tail_bytes > 0 {
        tracing::warn!(
            bytes = loaded.torn_tail_bytes,
            "discarded a torn tail at the end of the ledger"
        );
    }
    let evidence = own_evidence(&identity.node_key)?;
    let mut node_config = NodeConfig::new(
        identity.node_key.clone(),
        identity.node_cert.clone(),
        identity.service_cert.clone(),
        identity.ledger_secrets.latest().1.clone(),
        evidence,
    );
    node_config.ledger_secrets = identity.ledger_secrets.clone();
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut node_config.entropy);
    node_config.signature_interval_txs = config.signature_interval_txs.max(1);
    node_config.signature_interval_ms = config.signature_interval_ms.max(1);
    node_config.signature_when_idle = config.signature_when_idle;
    node_config.chunk_bytes_max = config.chunk_bytes_max;
    node_config.snapshot_interval_txs = config.snapshot_interval_txs;
    node_config.log_entries_kept = config.log_entries_kept;
    node_config.raft_tick_ms = config.raft_tick_ms.max(1);
    node_config.rpc_address = config.rpc_address.to_string();
    node_config.node_address = node_address.to_string();
    node_config.service_key = Some(identity.service_key.clone());
    node_config.gov_request_window_s = config.gov_request_window_s;
    // Election timeouts differ between nodes even when they start together.
    node_config.seed = charter_core::raft_id(&identity.node_key.verifying_key().id_hex());
    // Seqnos of configuration-change entries: a commit index that passes one is made durable.
    let conf_change_seqnos: std::collections::BTreeSet<u64> = loaded
        .entries
        .iter()
        .filter(|entry| entry.kind == charter_core::LogKind::ConfChange)
        .map(|entry| entry.seqno)
        .collect();
    let mode = if genesis {
        let load = |paths: &[PathBuf]| -> Result<Vec<Certificate>, NodeError> {
            paths
                .iter()
                .map(|path| {
                    Certificate::from_pem(&read(path)?)
                        .map_err(|error| format!("{}: {error}", path.display()))
                })
                .collect()
        };
        if !config.users.is_empty() {
            tracing::warn!(
                "`users` in the configuration is ignored: users are added by governance proposals"
            );
        }
        let certs: Vec<PathBuf> = config
            .members
            .iter()
            .map(|member| member.cert().to_path_buf())
            .collect();
        let members = load(&certs)?;
        for (member, cert) in config.members.iter().zip(&members) {
            if let MemberEntry::WithRecoveryKey {
                encryption_public_key,
                ..
            } = member
            {
                let pem = read(encryption_public_key)?;
                charter_crypto::RecoveryPublicKey::from_pem(&pem)
                    .map_err(|error| format!("{}: {error}", encryption_public_key.display()))?;
                node_config
                    .genesis_recovery_keys
                    .insert(cert.fingerprint_hex(), pem);
            }
        }
        StartMode::Genesis { members }
    } else if recovering {
        let recover = config
            .recover
            .as_ref()
            .ok_or("mode \"recover\" needs a \"recover\" section")?;
        let previous_service_cert =
            Certificate::from_pem(&read(&recover.previous_service_cert)?)
                .map_err(|error| format!("{}: {error}", recover.previous_service_cert.display()))?;
        let endorsement = match &recover.previous_service_key {
            Some(path) => {
                let previous_key = SigningKey::from_pem(&read(path)?)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                let spec = CertificateSpec {
                    common_name: "Charter service",
                    is_ca: true,
                    subject_alt_names: &[],
                    validity: Validity {
                        not_before_unix: now_unix() - 86_400,
                        days: 3_650,
                    },
                };
                let endorsed = Certificate::issue(
                    &identity.service_key.verifying_key(),
                    &spec,
                    &previous_key,
                    &previous_service_cert,
                )
                .map_err(|error| format!("endorsing the new service identity: {error}"))?;
                Some(endorsed.to_pem())
            }
            None => None,
        };
        tracing::info!(
            entries = loaded.entries.len(),
            "recovering the service from the previous ledger"
        );
        StartMode::Recover {
            entries: std::mem::take(&mut loaded.entries),
            previous_service_cert,
            endorsement,
        }
    } else if joining {
        // A node joining a network that keeps snapshots starts from the latest one and
        // replicates only the ledger after it; the core checks the snapshot's evidence.
        let snapshot = match &config.join {
            Some(join) => runtime.block_on(fetch_snapshot(join, &identity))?,
            None => None,
        };
        if let Some((seqno, bytes)) = &snapshot {
            files
                .snapshots()
                .save_committed(*seqno, bytes)
                .map_err(|error| error.to_string())?;
            files.start_after(*seqno);
            tracing::info!(
                seqno,
                bytes = bytes.len(),
                "joining from a committed snapshot"
            );
        }
        StartMode::Join {
            snapshot: snapshot.map(|(_, bytes)| bytes),
        }
    } else {
        // A node that started from a snapshot holds the ledger only after it: it restarts
        // from its newest committed snapshot and the entries after that.
        let snapshot = files
            .restart_snapshot(&mut loaded)
            .map_err(|error| error.to_string())?;
        if snapshot.is_some() {
            tracing::info!(
                first_seqno = loaded.first_seqno,
                "restarting from a committed snapshot"
            );
        }
        StartMode::Restart(Restored {
            entries: loaded.entries,
            hard_state: loaded.hard_state,
            snapshot,
        })
    };
    files.set_read_only_dirs(config.read_only_ledger_dirs.clone());
    let mut actions = Vec::new();
    let mut node = Node::new(node_config, mode, &mut actions).map_err(|error| error.to_string())?;
    for app in charter_apps::all() {
        node.register_app(app);
    }
    let ethereum = ethereum_app(config.evm_genesis.as_deref())?;
    let ethereum_senders = ethereum.senders();
    node.register_app(Box::new(ethereum));

    // Node channels: only nodes the ledger trusts may connect.
    let trusted: Arc<RwLock<HashSet<String>>> = Arc::default();
    let trust: TrustFn = {
        let trusted = Arc::clone(&trusted);
        Arc::new(move |node_id: &str| match trusted.read() {
            Ok(set) => set.contains(node_id),
            Err(poisoned) => poisoned.into_inner().contains(node_id),
        })
    };
    let (sender, receiver) = mpsc::sync_channel(16_384);
    let inbox = CoreInbox {
        core: sender.clone(),
        ethereum_senders: Arc::clone(&ethereum_senders),
    };
    let peer_identity = PeerIdentity {
        node_cert_pem: identity.node_cert.to_pem(),
        node_key_pem: identity.node_key.to_pem(),
        service_cert_pem: identity.service_cert.to_pem(),
    };
    let peers = runtime
        .block_on(Peers::start(peer_identity, node_address, trust, inbox))
        .map_err(|error| format!("node channel on {node_address}: {error}"))?;
    let own_id = peers.node_id().to_owned();
    let hard_state = loaded.hard_state;
    let snapshots = SnapshotWriter::start(files.snapshot_files())?;
    let metrics = Arc::new(HostMetrics::default());
    let syncer = Syncer::start(sender.clone(), Arc::clone(&metrics))?;
    let commit = Arc::new(PublishedCommit::default());
    let mut core = CoreLoop {
        node,
        files,
        syncer,
        metrics: Arc::clone(&metrics),
        commit: Arc::clone(&commit),
        snapshots,
        pending: HashMap::new(),
        next_request: 0,
        hard_state,
        commit_saved: hard_state.commit,
        commit_saved_at: Instant::now(),
        started: Instant::now(),
        book: PeerBook {
            peers: peers.clone(),
            own_id,
            trusted,
            by_raft_id: HashMap::new(),
            dialed: HashSet::new(),
            bootstrap,
            seen: None,
        },
        forwarded: HashMap::new(),
        next_forward: 0,
        sealed_dir: config.node_dir.join("sealed"),
        conf_change_seqnos,
    };
    // A first tick gives the core the wall clock before any request arrives.
    core.node
        .step(
            Input::Tick {
                now_ms: core.now_ms(),
                unix_time_s: unix_time_s(),
            },
            &mut actions,
        )
        .map_err(|error| error.to_string())?;
    core.perform(actions)?;
    core.book.refresh(&core.node);
    if let Some(path) = &config.service_cert_out {
        std::fs::write(path, identity.service_cert.to_pem())
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }

    let chain = format!(
        "{}{}",
        identity.node_cert.to_pem(),
        identity.service_cert.to_pem()
    );
    let tls = crate::tls::server_config(&chain, &identity.node_key.to_pem())
        .map_err(|error| error.to_string())?;
    let core_thread = std::thread::Builder::new()
        .name("charter-core".to_owned())
        .spawn(move || {
            let result = core.run(receiver);
            if let Err(error) = &result {
                // A storage or core failure makes the node inoperable: stop at once rather
                // than answer from a state that may not match the disk.
                eprintln!("fatal: {error}");
                std::process::exit(2);
            }
            result
        })
        .map_err(|error| error.to_string())?;
    let limits = HttpLimits {
        body_bytes_max: config.body_bytes_max,
        ..HttpLimits::default()
    };
    let handler = Arc::new(CoreHandler {
        sender: sender.clone(),
        snapshot_dir: crate::files::snapshot_dir_for(&ledger_dir),
        service_key: identity
            .service_cert
            .public_key()
            .map_err(|error| format!("service certificate: {error}"))?,
        ethereum_senders,
        metrics,
        commit,
    });
    let served = serve_clients(
        &runtime,
        &rpc_runtime,
        config.rpc_address,
        tls,
        limits,
        handler,
        || ready(&identity.service_cert),
    );
    peers.shutdown();
    // The server drained its connections above (or gave up on them); what is left is dropped.
    rpc_runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = sender.send(HostMessage::Shutdown);
    let core_result = core_thread
        .join()
        .map_err(|_| "the core thread panicked".to_owned())?;
    served?;
    core_result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durable(receiver: &mpsc::Receiver<HostMessage>) -> u64 {
        match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(HostMessage::Durable(token)) => token,
            Ok(_) => panic!("the syncer sends only durability"),
            Err(error) => panic!("no answer from the syncer: {error}"),
        }
    }

    #[test]
    fn the_core_inbox_delivers_in_order_waits_when_full_and_stops_when_the_core_is_gone() {
        use crate::peers::Inbox;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let (sender, receiver) = mpsc::sync_channel(1);
        let inbox = CoreInbox {
            core: sender,
            ethereum_senders: Arc::default(),
        };
        let raft = |byte: u8| PeerMessage::Raft(vec![byte; 3]).encode();
        // The queue holds one message: the second delivery waits until the core reads.
        let consumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut seen = Vec::new();
            while let Ok(message) = receiver.recv_timeout(Duration::from_secs(5)) {
                match message {
                    HostMessage::Peer { from, message } => seen.push((from, message.ok())),
                    _ => panic!("only peer messages were delivered"),
                }
                if seen.len() == 3 {
                    break;
                }
            }
            seen
        });
        let delivered = runtime.block_on(async {
            let started = Instant::now();
            let first = inbox.deliver("a", raft(1)).await;
            let second = inbox.deliver("a", raft(2)).await;
            let waited = started.elapsed();
            // Bytes that do not decode reach the core as an error, not dropped silently.
            let third = inbox.deliver("b", vec![0xff]).await;
            (first, second, third, waited)
        });
        let seen = consumer.join().unwrap();
        assert!(delivered.0 && delivered.1 && delivered.2);
        assert!(
            delivered.3 >= Duration::from_millis(150),
            "{:?}",
            delivered.3
        );
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, "a");
        assert_eq!(seen[0].1, Some(PeerMessage::Raft(vec![1; 3])));
        assert_eq!(seen[1].1, Some(PeerMessage::Raft(vec![2; 3])));
        assert_eq!(seen[2].0, "b");
        assert_eq!(seen[2].1, None);
        // The core is gone: delivery says so, and the connection closes.
        assert!(!runtime.block_on(inbox.deliver("a", raft(3))));
    }

    #[test]
    fn a_round_takes_consensus_messages_before_the_requests_queued_with_them() {
        let request = |path: &str| {
            let request = Request {
                method: charter_core::Method::Put,
                path: path.to_owned(),
                query: Vec::new(),
                headers: Vec::new(),
                body: Vec::new(),
                caller_cert_der: None,
            };
            HostMessage::Request(request, tokio::sync::oneshot::channel().0)
        };
        let peer = |byte: u8| HostMessage::Peer {
            from: "n".to_owned(),
            message: Ok(PeerMessage::Raft(vec![byte])),
        };
        let describe = |message: &HostMessage| match message {
            HostMessage::Request(request, _) => request.path.clone(),
            HostMessage::Peer {
                message: Ok(PeerMessage::Raft(bytes)),
                ..
            } => format!("peer {}", bytes[0]),
            HostMessage::Durable(token) => format!("durable {token}"),
            _ => "other".to_owned(),
        };
        let take = |backlog: &mut VecDeque<HostMessage>, control_first: bool| -> Vec<String> {
            take_round(backlog, control_first)
                .iter()
                .map(describe)
                .collect()
        };
        let mut backlog: VecDeque<HostMessage> = VecDeque::from(vec![
            request("/a"),
            peer(1),
            request("/b"),
            HostMessage::Durable(7),
            peer(2),
            request("/c"),
        ]);
        let round = take(&mut backlog, true);
        assert_eq!(round, ["peer 1", "durable 7", "peer 2"]);
        let left: Vec<String> = backlog.iter().map(describe).collect();
        assert_eq!(left, ["/a", "/b", "/c"]);
        // Only requests left: a round takes them all, in order.
        let round = take(&mut backlog, true);
        assert_eq!(round, ["/a", "/b", "/c"]);
        assert!(backlog.is_empty());
        assert!(take_round(&mut backlog, true).is_empty());
        // After rounds that deferred requests, one takes everything in order, so a stream of
        // consensus messages cannot starve the clients.
        backlog.extend([request("/d"), peer(3), request("/e")]);
        let round = take(&mut backlog, false);
        assert_eq!(round, ["/d", "peer 3", "/e"]);
        assert!(backlog.is_empty());
    }

    #[test]
    fn the_syncer_answers_every_token_in_order_sharing_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = LedgerFiles::open(dir.path()).unwrap();
        let (sender, receiver) = mpsc::sync_channel(16);
        let metrics = Arc::new(HostMetrics::default());
        let mut syncer = Syncer::start(sender, Arc::clone(&metrics)).unwrap();
        // Nothing written yet: answered at once.
        syncer.submit(1, files.write_for_sync().unwrap()).unwrap();
        assert_eq!(durable(&receiver), 1);
        let noop = |seqno| charter_ledger::encode_noop(charter_ledger::TxId::new(1, seqno));
        let mut last = 1;
        for token in 2..=20u64 {
            files.append(token - 1, &noop(token - 1)).unwrap();
            syncer
                .submit(token, files.write_for_sync().unwrap())
                .unwrap();
        }
        // Requests that queued up share an fsync and are answered with the highest token.
        while last < 20 {
            let token = durable(&receiver);
            assert!(token > last, "{token} after {last}");
            last = token;
        }
        syncer.stop();
        // Every request is timed; the first had nothing to sync.
        assert_eq!(metrics.ledger_sync.count(), 20);
        let fsyncs = metrics.ledger_fsync.count();
        assert!((1..=19).contains(&fsyncs), "{fsyncs}");
        drop(files);
        let (_, loaded) = LedgerFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.entries.len(), 19);
        // A stopped syncer refuses work rather than losing it silently.
        assert!(syncer.submit(21, None).is_err());
    }
}
