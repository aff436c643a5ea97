//! Runs one node: identity files, ledger files, the core's event loop and the HTTPS listener.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use charter_core::{
    Action, HardStateRecord, Input, Node, NodeConfig, Request, RequestId, Response, Restored,
    StartMode,
};
use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
use serde::{Deserialize, Serialize};

use crate::files::LedgerFiles;
use crate::http::{Handler, HttpLimits};

/// A node's configuration file (`charter node --config FILE`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFileConfig {
    /// Directory of the node: keys, sealed secrets, `ledger/`.
    pub node_dir: PathBuf,
    /// Address to serve clients on, e.g. `127.0.0.1:8000`.
    pub rpc_address: SocketAddr,
    /// Where to write (at genesis) the service certificate for clients.
    pub service_cert_out: Option<PathBuf>,
    /// For a new network: certificates of the initial members and users. Ignored on restart.
    #[serde(default)]
    pub members: Vec<PathBuf>,
    /// Initial users' certificates.
    #[serde(default)]
    pub users: Vec<PathBuf>,
    /// Signature every N transactions (default 5,000).
    #[serde(default = "default_signature_txs")]
    pub signature_interval_txs: u64,
    /// Signature every T milliseconds (default 100).
    #[serde(default = "default_signature_ms")]
    pub signature_interval_ms: u64,
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
/// Inputs the core takes in one batch before it writes and syncs.
const BATCH_INPUTS_MAX: usize = 4_096;

struct Identity {
    node_key: SigningKey,
    node_cert: Certificate,
    service_cert: Certificate,
    ledger_secret: LedgerSecret,
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

/// Creates (at genesis) or loads (on restart) the node's keys, certificates and sealed ledger
/// secret. On the `virtual` platform "sealed" means a 0600 file in the node directory.
fn identity(config: &NodeFileConfig, genesis: bool) -> Result<Identity, NodeError> {
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
        let mut names = vec![config.rpc_address.ip().to_string(), "localhost".to_owned()];
        names.dedup();
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
        let ledger_secret = LedgerSecret::generate(&mut rng);
        write_private(&sealed.join("service_privk.pem"), &service_key.to_pem())?;
        write_private(
            &sealed.join("ledger_secret"),
            &hex::encode(ledger_secret.as_bytes()),
        )?;
        write_private(&dir.join("node_privk.pem"), &node_key.to_pem())?;
        std::fs::write(dir.join("node_cert.pem"), node_cert.to_pem())
            .map_err(|error| error.to_string())?;
        std::fs::write(dir.join("service_cert.pem"), service_cert.to_pem())
            .map_err(|error| error.to_string())?;
        Ok(Identity {
            node_key,
            node_cert,
            service_cert,
            ledger_secret,
        })
    } else {
        let node_key = SigningKey::from_pem(&read(&dir.join("node_privk.pem"))?)
            .map_err(|error| error.to_string())?;
        let node_cert = Certificate::from_pem(&read(&dir.join("node_cert.pem"))?)
            .map_err(|error| error.to_string())?;
        let service_cert = Certificate::from_pem(&read(&dir.join("service_cert.pem"))?)
            .map_err(|error| error.to_string())?;
        let secret_hex = read(&sealed.join("ledger_secret"))?;
        let secret: [u8; 32] = hex::decode(secret_hex.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("sealed ledger secret is damaged")?;
        Ok(Identity {
            node_key,
            node_cert,
            service_cert,
            ledger_secret: LedgerSecret::from_bytes(secret),
        })
    }
}

enum HostMessage {
    Request(Request, tokio::sync::oneshot::Sender<Response>),
    Shutdown,
}

struct CoreHandler {
    sender: mpsc::SyncSender<HostMessage>,
}

impl Handler for CoreHandler {
    fn handle(
        &self,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
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
                Ok(()) => wait.await.unwrap_or_else(|_| {
                    Response::error(500, "InternalError", "the node stopped before answering")
                }),
            }
        })
    }
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
struct CoreLoop {
    node: Node,
    files: LedgerFiles,
    pending: HashMap<RequestId, tokio::sync::oneshot::Sender<Response>>,
    next_request: u64,
    hard_state: HardStateRecord,
    started: Instant,
}

impl CoreLoop {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Carries out actions; syncs once per batch and feeds durability back. Bounded rounds.
    fn perform(&mut self, mut actions: Vec<Action>) -> Result<(), NodeError> {
        for _ in 0..64 {
            let mut sync = None;
            let mut reads = Vec::new();
            for action in actions.drain(..) {
                match action {
                    Action::Respond { id, response } => {
                        if let Some(reply) = self.pending.remove(&id) {
                            let _ = reply.send(response);
                        }
                    }
                    Action::Append { seqno, bytes } => self
                        .files
                        .append(seqno, &bytes)
                        .map_err(|e| e.to_string())?,
                    Action::Truncate { from_seqno } => {
                        self.files.truncate(from_seqno).map_err(|e| e.to_string())?
                    }
                    Action::SaveHardState(state) => {
                        // The commit index is recomputed from signatures at restart; only term
                        // and vote must be durable.
                        if (state.term, state.vote) != (self.hard_state.term, self.hard_state.vote)
                        {
                            self.files
                                .save_hard_state(state)
                                .map_err(|e| e.to_string())?;
                        }
                        self.hard_state = state;
                    }
                    Action::Send { .. } => {
                        // A single-node network has no peers to send to; the node channels
                        // (`peers`) carry these once nodes can join.
                    }
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
                    // A lost snapshot costs only a later one: report, do not stop the node.
                    Action::WriteSnapshot { seqno, bytes } => {
                        if let Err(error) = self.files.write_snapshot(seqno, &bytes) {
                            tracing::warn!(seqno, %error, "cannot write the snapshot");
                        }
                    }
                    Action::CommitSnapshot { seqno, evidence } => {
                        if let Err(error) = self.files.commit_snapshot(seqno, &evidence) {
                            tracing::warn!(seqno, %error, "cannot commit the snapshot");
                        }
                    }
                }
            }
            for entries in reads {
                self.node
                    .step(Input::EntriesRead { entries }, &mut actions)
                    .map_err(|e| e.to_string())?;
            }
            let Some(token) = sync else {
                if actions.is_empty() {
                    return Ok(());
                }
                continue;
            };
            self.files.sync().map_err(|e| e.to_string())?;
            self.node
                .step(Input::Durable { token }, &mut actions)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn run(mut self, receiver: mpsc::Receiver<HostMessage>) -> Result<(), NodeError> {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut actions = Vec::new();
            let mut stop = false;
            let mut inputs = 0;
            let first = receiver.recv_timeout(wait);
            let mut message = match first {
                Ok(message) => Some(message),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stop = true;
                    None
                }
            };
            while let Some(current) = message.take() {
                match current {
                    HostMessage::Shutdown => {
                        stop = true;
                        break;
                    }
                    HostMessage::Request(request, reply) => {
                        self.next_request += 1;
                        let id = RequestId(self.next_request);
                        self.pending.insert(id, reply);
                        self.node
                            .step(Input::Client { id, request }, &mut actions)
                            .map_err(|e| e.to_string())?;
                    }
                }
                inputs += 1;
                if inputs >= BATCH_INPUTS_MAX {
                    break;
                }
                message = receiver.try_recv().ok();
            }
            if Instant::now() >= next_tick {
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
                next_tick = Instant::now() + tick;
            }
            self.perform(actions)?;
            if stop {
                self.files.sync().map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
    }
}

/// Starts a node from `config` and runs it until `shutdown` resolves.
///
/// # Errors
/// A message naming what failed: unreadable configuration, keys or ledger, a port in use,
/// or a fatal storage error while running.
pub fn run_node(
    config: NodeFileConfig,
    ready: impl FnOnce(&Certificate) + Send,
) -> Result<(), NodeError> {
    crate::tls::install_crypto_provider();
    let ledger_dir = config.node_dir.join("ledger");
    std::fs::create_dir_all(&ledger_dir)
        .map_err(|error| format!("{}: {error}", ledger_dir.display()))?;
    let (mut files, mut loaded) =
        LedgerFiles::open(&ledger_dir).map_err(|error| error.to_string())?;
    let genesis = loaded.entries.is_empty() && !config.node_dir.join("node_privk.pem").exists();
    let identity = identity(&config, genesis)?;
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
        identity.ledger_secret.clone(),
        evidence,
    );
    node_config.signature_interval_txs = config.signature_interval_txs.max(1);
    node_config.signature_interval_ms = config.signature_interval_ms.max(1);
    node_config.chunk_bytes_max = config.chunk_bytes_max;
    node_config.rpc_address = config.rpc_address.to_string();
    node_config.gov_request_window_s = config.gov_request_window_s;
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
        StartMode::Genesis {
            members: load(&config.members)?,
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
    let mut actions = Vec::new();
    let mut node = Node::new(node_config, mode, &mut actions).map_err(|error| error.to_string())?;
    for app in charter_apps::all() {
        node.register_app(app);
    }
    let hard_state = loaded.hard_state;
    let mut core = CoreLoop {
        node,
        files,
        pending: HashMap::new(),
        next_request: 0,
        hard_state,
        started: Instant::now(),
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
    let (sender, receiver) = mpsc::sync_channel(16_384);
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let limits = HttpLimits {
        body_bytes_max: config.body_bytes_max,
        ..HttpLimits::default()
    };
    let handler = Arc::new(CoreHandler {
        sender: sender.clone(),
    });
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.rpc_address)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", config.rpc_address))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(crate::http::serve(listener, tls, limits, handler, stopped));
        ready(&identity.service_cert);
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
        Ok::<(), NodeError>(())
    });
    let _ = sender.send(HostMessage::Shutdown);
    let core_result = core_thread
        .join()
        .map_err(|_| "the core thread panicked".to_owned())?;
    served?;
    core_result
}
