//! Charter's deterministic simulator (DESIGN.md §2, STYLE.md §6): three unmodified cores over a
//! simulated network, disk and clock, every fault drawn from one 64-bit seed, invariants checked
//! after every step. A failing seed replays exactly.
//!
//! The network is opened once per process as the core's cluster test does (a genesis node, two
//! joiners admitted by attestation and a governance vote); each seed then restarts all three
//! nodes from that network's durable ledgers with seed-derived consensus RNGs, so a seed costs
//! only its own steps.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use charter_core::{
    raft_id, Action, HardStateRecord, Input, LogEntry, LogKind, Method, Node, NodeConfig, Request,
    RequestId, Restored, StartMode, TxStatus,
};
use charter_crypto::{
    cose_sign1, Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity,
};
use charter_ledger::TxId;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const VALIDITY: Validity = Validity {
    not_before_unix: 1_700_000_000,
    days: 365,
};
/// The wall clock at simulated time zero (governance requests are signed at this time).
const UNIX_TIME_S: u64 = 1_800_000_000;
/// Keys the client load writes, so that writes overwrite each other.
const KEYS: u64 = 6;
const TRACE_TAIL: usize = 30;
const SIGNATURE_INTERVAL_MS: u64 = 300;

/// A deliberate corruption of the checker's inputs, to show the checker can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Check honestly.
    None,
    /// Flip a byte of node 2's committed ledger as the checker reads it.
    FlipCommittedByte,
    /// Record an acknowledged write as Committed while it is still Pending.
    PendingAsCommitted,
}

/// Knobs of a run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Steps of the run; the last fifth is fault-free and fully connected.
    pub steps: u64,
    /// Steps allowed after the run for a new write to commit on every node.
    pub liveness_budget_steps: u64,
    /// Test-only corruption of the checker's inputs.
    pub corruption: Corruption,
    /// When a drawn crash may happen.
    pub crash_point: CrashPoint,
    /// Nodes take a snapshot every this many seqnos (0: never, the default, which keeps the
    /// traces of seeds recorded before snapshots existed).
    pub snapshot_interval_txs: u64,
}

/// When a node the seed chose to crash actually crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// At once, whatever its disk holds.
    Anywhere,
    /// Only once its durable ledger ends at its committed signature (a crash is dropped if
    /// that takes more than 50 steps). This steers clear of two known core bugs on restart:
    /// replay truncates a durable unsigned tail the primary counted as replicated (raft-rs
    /// then panics `to_commit N is out of range`), and replayed uncommitted entries keep no
    /// rollback state (`no state kept for seqno N to roll back to`).
    CommittedSignature,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            steps: 300,
            liveness_budget_steps: 400,
            corruption: Corruption::None,
            crash_point: CrashPoint::CommittedSignature,
            snapshot_interval_txs: 0,
        }
    }
}

/// What a passing seed did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Steps taken, liveness probe included.
    pub steps: u64,
    /// FNV-1a hash of the whole trace: equal seeds give equal hashes.
    pub trace_hash: u64,
    /// Client writes acknowledged / seen committed.
    pub writes_acked: usize,
    /// Acknowledged writes observed committed.
    pub writes_committed: usize,
    /// Last commit seqno of the primary.
    pub commit_seqno: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Committed snapshot files checked (all nodes together).
    pub snapshots_committed: usize,
}

/// A violated invariant.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Step at which the violation was seen.
    pub step: u64,
    /// What was violated.
    pub message: String,
    /// The last trace events.
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(f, "last {} trace events:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// One step of a node's disk.
#[derive(Clone, Debug)]
enum DiskOp {
    Append(LogEntry, Vec<u8>),
    Truncate(u64),
    HardState(HardStateRecord),
}

/// A ledger and Raft state as a host keeps them, and its snapshot files (written durably at
/// once, as the host does).
#[derive(Clone, Debug, Default)]
struct Disk {
    entries: Vec<LogEntry>,
    files: Vec<Vec<u8>>,
    hard_state: HardStateRecord,
    snapshots: BTreeMap<u64, Vec<u8>>,
    committed_snapshots: BTreeMap<u64, Vec<u8>>,
}

impl Disk {
    fn apply(&mut self, op: DiskOp) {
        match op {
            DiskOp::Append(entry, bytes) => {
                self.entries.push(entry);
                self.files.push(bytes);
            }
            DiskOp::Truncate(from_seqno) => {
                let keep = (from_seqno as usize).saturating_sub(1);
                self.entries.truncate(keep);
                self.files.truncate(keep);
            }
            DiskOp::HardState(state) => self.hard_state = state,
        }
    }
}

/// The log entry the consensus layer restores from ledger bytes, as the host's files do.
fn log_entry(seqno: u64, bytes: &[u8]) -> Result<LogEntry, String> {
    let entry = charter_ledger::decode_entry(bytes).map_err(|e| format!("seqno {seqno}: {e}"))?;
    let (data, kind) = match entry.kind {
        charter_ledger::EntryKind::Noop => (Vec::new(), LogKind::Normal),
        charter_ledger::EntryKind::ConfChange => (entry.public.to_vec(), LogKind::ConfChange),
        _ => (bytes.to_vec(), LogKind::Normal),
    };
    Ok(LogEntry {
        view: entry.tx_id.view,
        seqno,
        data,
        kind,
    })
}

/// Runs a core call, turning its error or panic into a violation.
fn guarded<T>(
    raft: u64,
    call: impl FnOnce() -> Result<T, charter_core::CoreError>,
) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("node {raft:x}: {error}")),
        Err(panic) => Err(format!(
            "node {raft:x} panicked: {}",
            panic_message(&*panic)
        )),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// A node and its host: what it wrote (volatile), what survives a crash (durable).
struct SimNode {
    config: NodeConfig,
    raft: u64,
    node: Option<Node>,
    volatile: Disk,
    durable: Disk,
    unsynced: Vec<DiskOp>,
    responses: Vec<(RequestId, charter_core::Response)>,
    outbox: Vec<(u64, Vec<u8>)>,
    /// Seqno up to which this node's committed ledger was compared with the canonical one.
    checked_upto: u64,
}

impl SimNode {
    fn start(config: NodeConfig, mode: StartMode, disk: Disk) -> Result<SimNode, String> {
        let raft = raft_id(&config.node_key.verifying_key().id_hex());
        let mut out = Vec::new();
        let node = Node::new(config.clone(), mode, &mut out).map_err(|e| e.to_string())?;
        let mut sim = SimNode {
            config,
            raft,
            node: Some(node),
            volatile: disk.clone(),
            durable: disk,
            unsynced: Vec::new(),
            responses: Vec::new(),
            outbox: Vec::new(),
            checked_upto: 0,
        };
        sim.host(out)?;
        Ok(sim)
    }

    /// Feeds one input to the node and plays the host for what follows.
    fn step(&mut self, input: Input) -> Result<(), String> {
        let Some(node) = self.node.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        guarded(self.raft, || node.step(input, &mut out))?;
        self.host(out)
    }

    /// Applies actions in order; a sync makes everything before it durable at once.
    fn host(&mut self, mut actions: Vec<Action>) -> Result<(), String> {
        for _ in 0..1000 {
            let mut inputs = Vec::new();
            for action in actions.drain(..) {
                match action {
                    Action::Append { seqno, bytes } => {
                        if seqno != self.volatile.entries.len() as u64 + 1 {
                            return Err(format!(
                                "node {:x}: append of seqno {seqno} after {}",
                                self.raft,
                                self.volatile.entries.len()
                            ));
                        }
                        let op = DiskOp::Append(log_entry(seqno, &bytes)?, bytes);
                        self.volatile.apply(op.clone());
                        self.unsynced.push(op);
                    }
                    Action::Truncate { from_seqno } => {
                        if let Some(node) = &self.node {
                            let commit = node.commit_tx_id().seqno;
                            if from_seqno <= commit {
                                return Err(format!(
                                    "node {:x}: truncates from {from_seqno}, at or below its commit {commit}",
                                    self.raft
                                ));
                            }
                        }
                        self.volatile.apply(DiskOp::Truncate(from_seqno));
                        self.unsynced.push(DiskOp::Truncate(from_seqno));
                    }
                    Action::SaveHardState(state) => {
                        self.volatile.apply(DiskOp::HardState(state));
                        self.unsynced.push(DiskOp::HardState(state));
                    }
                    Action::Sync { token } => {
                        for op in self.unsynced.drain(..) {
                            self.durable.apply(op);
                        }
                        inputs.push(Input::Durable { token });
                    }
                    Action::Send { to, bytes } => self.outbox.push((to, bytes)),
                    Action::Respond { id, response } => self.responses.push((id, response)),
                    // This host has no node channel to forward on; the client sees what a
                    // node without forwarding would answer.
                    Action::Forward { id, .. } => self.responses.push((
                        id,
                        charter_core::Response::error(503, "NotPrimary", "not the primary"),
                    )),
                    Action::CloseChunk { .. } => {}
                    Action::WriteSnapshot { seqno, bytes } => {
                        if let Some(earlier) = self.durable.snapshots.get(&seqno) {
                            if *earlier != bytes {
                                return Err(format!(
                                    "node {:x}: wrote snapshot {seqno} again with other bytes",
                                    self.raft
                                ));
                            }
                        }
                        self.volatile.snapshots.insert(seqno, bytes.clone());
                        self.durable.snapshots.insert(seqno, bytes);
                    }
                    Action::CommitSnapshot { seqno, evidence } => {
                        let Some(bytes) = self.durable.snapshots.get(&seqno) else {
                            return Err(format!(
                                "node {:x}: commits snapshot {seqno} it never wrote",
                                self.raft
                            ));
                        };
                        let file = charter_ledger::encode_committed_snapshot(bytes, &evidence);
                        self.volatile
                            .committed_snapshots
                            .insert(seqno, file.clone());
                        self.durable.committed_snapshots.insert(seqno, file);
                    }
                    Action::ReadEntries {
                        from_seqno,
                        to_seqno,
                    } => {
                        let entries = (from_seqno..=to_seqno)
                            .map(|seqno| {
                                let bytes = self.volatile.files.get(seqno as usize - 1).cloned();
                                (seqno, bytes)
                            })
                            .collect();
                        inputs.push(Input::EntriesRead { entries });
                    }
                }
            }
            if inputs.is_empty() {
                return Ok(());
            }
            let node = self.node.as_mut().expect("a live node");
            for input in inputs {
                guarded(self.raft, || node.step(input, &mut actions))?;
            }
        }
        Err(format!("node {:x}: host loop did not settle", self.raft))
    }

    /// Loses everything not synced.
    fn crash(&mut self) {
        self.node = None;
        self.volatile = self.durable.clone();
        self.unsynced.clear();
        self.outbox.clear();
        self.responses.clear();
        self.checked_upto = 0;
    }

    fn restart(&mut self) -> Result<(), String> {
        // The simulated disk always holds the whole ledger: a restart replays it.
        let restored = Restored {
            entries: self.durable.entries.clone(),
            hard_state: self.durable.hard_state,
            snapshot: None,
        };
        let mut out = Vec::new();
        let config = self.config.clone();
        let node = guarded(self.raft, || {
            Node::new(config, StartMode::Restart(restored), &mut out)
        })?;
        self.node = Some(node);
        self.host(out)
    }

    fn request(
        &mut self,
        id: RequestId,
        request: Request,
    ) -> Result<charter_core::Response, String> {
        self.step(Input::Client { id, request })?;
        let index = self
            .responses
            .iter()
            .position(|(rid, _)| *rid == id)
            .ok_or_else(|| format!("node {:x}: no response to request {}", self.raft, id.0))?;
        Ok(self.responses.remove(index).1)
    }
}

fn cert(seed: u8, name: &str, ca: bool) -> (SigningKey, Certificate) {
    let key = SigningKey::from_seed(&[seed; 32]).expect("key");
    let spec = CertificateSpec {
        common_name: name,
        is_ca: ca,
        subject_alt_names: &[],
        validity: VALIDITY,
    };
    let cert = Certificate::self_signed(&key, &spec).expect("certificate");
    (key, cert)
}

/// The key and service-endorsed certificate of the node with key seed `seed`.
fn node_identity(seed: u8) -> (SigningKey, Certificate) {
    let (service_key, service) = cert(1, "service", true);
    let node_key = SigningKey::from_seed(&[seed; 32]).expect("key");
    let spec = CertificateSpec {
        common_name: "node",
        is_ca: false,
        subject_alt_names: &[],
        validity: VALIDITY,
    };
    let node_cert = Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service)
        .expect("node certificate");
    (node_key, node_cert)
}

fn node_config(seed: u8) -> NodeConfig {
    let (_, service) = cert(1, "service", true);
    let (node_key, node_cert) = node_identity(seed);
    let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &[7; 32]);
    NodeConfig::new(
        node_key,
        node_cert,
        service,
        LedgerSecret::from_bytes([3; 32]),
        evidence,
    )
}

/// The opened three-node network every seed restarts from.
struct Baseline {
    nodes: Vec<(NodeConfig, Disk)>,
    user: Certificate,
    now_ms: u64,
}

/// Opens the network as the core's cluster test does, with immediate delivery and durability.
struct Setup {
    nodes: Vec<SimNode>,
    now_ms: u64,
    next_id: u64,
    member_key: SigningKey,
    member: Certificate,
}

impl Setup {
    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn gov(
        &mut self,
        path: &str,
        msg_type: &str,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> serde_json::Value {
        let body = cose_sign1(
            &self.member_key,
            &self.member.fingerprint_hex(),
            msg_type,
            proposal_id,
            UNIX_TIME_S,
            payload,
        );
        let request = Request {
            method: Method::Post,
            path: path.to_owned(),
            query: Vec::new(),
            headers: vec![("content-type".to_owned(), "application/cose".to_owned())],
            body,
            caller_cert_der: None,
        };
        let id = self.id();
        let response = self.nodes[0]
            .request(id, request)
            .expect("governance request");
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        serde_json::from_slice(&response.body).expect("json")
    }

    fn propose_and_accept(&mut self, actions: serde_json::Value) {
        let member_id = self.member.fingerprint_hex();
        let proposal = serde_json::json!({ "actions": actions }).to_string();
        let created = self.gov(
            "/gov/members/proposals:create",
            "proposal",
            None,
            proposal.as_bytes(),
        );
        let id = created["proposalId"]
            .as_str()
            .expect("proposal id")
            .to_owned();
        let ballot = serde_json::json!({"ballot": "export function vote(p, id) { return true; }"})
            .to_string();
        let voted = self.gov(
            &format!("/gov/members/proposals/{id}/ballots/{member_id}:submit"),
            "ballot",
            Some(&id),
            ballot.as_bytes(),
        );
        assert_eq!(voted["proposalState"], "Accepted", "{voted}");
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        for node in &mut self.nodes {
            node.step(Input::Tick {
                now_ms: self.now_ms,
                unix_time_s: UNIX_TIME_S,
            })
            .expect("tick");
        }
        for _ in 0..10_000 {
            let mut messages = Vec::new();
            for (index, node) in self.nodes.iter_mut().enumerate() {
                for (to, bytes) in node.outbox.drain(..) {
                    messages.push((index, to, bytes));
                }
            }
            if messages.is_empty() {
                return;
            }
            for (from, to, bytes) in messages {
                let from = self.nodes[from].raft;
                if let Some(to) = self.nodes.iter_mut().find(|n| n.raft == to) {
                    to.step(Input::Peer { from, bytes }).expect("peer message");
                }
            }
        }
        panic!("the setup network did not quiesce");
    }

    fn admit(&mut self, seed: u8) {
        let (key, cert) = node_identity(seed);
        let report_data = charter_attest::node_report_data(&key.verifying_key().to_spki_der());
        let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &report_data);
        let body = serde_json::json!({
            "certificate": cert.to_pem(),
            "evidence": evidence,
            "rpc_address": format!("127.0.0.1:80{seed:02}"),
        })
        .to_string();
        let request = Request {
            method: Method::Post,
            path: "/node/join".to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
            body: body.into_bytes(),
            caller_cert_der: Some(cert.der().to_vec()),
        };
        let id = self.id();
        let response = self.nodes[0].request(id, request).expect("join");
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let node_id = key.verifying_key().id_hex();
        self.propose_and_accept(serde_json::json!([
            {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
        ]));
    }

    fn run() -> Baseline {
        let (member_key, member) = cert(5, "member0", false);
        let (_, user) = cert(4, "user0", false);
        let genesis = SimNode::start(
            node_config(2),
            StartMode::Genesis {
                members: vec![member.clone()],
            },
            Disk::default(),
        )
        .expect("genesis");
        let mut setup = Setup {
            nodes: vec![genesis],
            now_ms: 1,
            next_id: 0,
            member_key,
            member,
        };
        setup.tick(1);
        let member_id = setup.member.fingerprint_hex();
        let digest = setup.gov(
            &format!("/gov/members/state-digests/{member_id}:update"),
            "state_digest",
            None,
            b"",
        );
        let ack = serde_json::json!({"stateDigest": digest["stateDigest"]}).to_string();
        setup.gov(
            &format!("/gov/members/state-digests/{member_id}:ack"),
            "ack",
            None,
            ack.as_bytes(),
        );
        setup.propose_and_accept(serde_json::json!([
            {"name": "set_user", "args": {"cert": user.to_pem(), "user_data": {"role": "Administrator"}}},
            {"name": "transition_service_to_open", "args": {}},
        ]));
        setup.tick(150);
        setup.admit(11);
        setup.admit(12);
        for seed in [11, 12] {
            let joiner = SimNode::start(
                node_config(seed),
                StartMode::Join { snapshot: None },
                Disk::default(),
            )
            .expect("joiner");
            setup.nodes.push(joiner);
        }
        for _ in 0..300 {
            let primary = setup.nodes[0].node.as_ref().expect("primary");
            let commit = primary.commit_tx_id();
            if primary.voters().len() == 3
                && setup.nodes[1..].iter().all(|n| {
                    n.node
                        .as_ref()
                        .is_some_and(|node| node.commit_tx_id() == commit)
                })
            {
                return Baseline {
                    nodes: setup
                        .nodes
                        .into_iter()
                        .map(|n| (n.config, n.durable))
                        .collect(),
                    user,
                    now_ms: setup.now_ms,
                };
            }
            setup.tick(60);
        }
        panic!("the joiners did not become voters");
    }
}

fn baseline() -> &'static Baseline {
    static BASELINE: OnceLock<Baseline> = OnceLock::new();
    BASELINE.get_or_init(Setup::run)
}

/// A message in flight.
struct Message {
    deliver_at_ms: u64,
    /// Send order, to break ties deterministically.
    serial: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// A client write the primary acknowledged.
#[derive(Clone, Debug)]
struct Write {
    tx_id: TxId,
    key: String,
    value: Vec<u8>,
}

/// A simulated three-node network driven by one seed.
pub struct Simulation {
    seed: u64,
    options: Options,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    user: Certificate,
    start_ms: u64,
    now_ms: u64,
    step: u64,
    next_request: u64,
    next_serial: u64,
    network: Vec<Message>,
    /// Isolated node and the time the partition heals.
    partition: Option<(usize, u64)>,
    /// Crashed nodes and when they restart.
    restart_at: BTreeMap<usize, u64>,
    /// A crash drawn but waiting for its crash point: node, restart delay, steps left.
    pending_crash: Option<(usize, u64, u64)>,
    /// Crashes done.
    crashes: u64,
    writes: Vec<Write>,
    /// Writes observed committed, by seqno.
    committed: BTreeMap<u64, TxId>,
    /// The committed ledger all nodes must agree on.
    canonical: Vec<Vec<u8>>,
    /// The snapshot every node must write for each seqno.
    canonical_snapshots: BTreeMap<u64, Vec<u8>>,
    /// Committed snapshot files already verified: (node, seqno).
    committed_snapshots_checked: std::collections::BTreeSet<(usize, u64)>,
    /// The primary seen in each view.
    primaries: BTreeMap<u64, u64>,
    flipped: bool,
    trace_hash: u64,
    trace_tail: Vec<String>,
}

impl Simulation {
    /// A network of three nodes restarted from the opened baseline, faults drawn from `seed`.
    pub fn new(seed: u64, options: Options) -> Result<Simulation, Failure> {
        let baseline = baseline();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut nodes = Vec::new();
        for (config, disk) in &baseline.nodes {
            let mut config = config.clone();
            config.seed = rng.next_u64();
            // Fewer signatures than CCF's 100 ms default: ECDSA P-384 dominates a debug run.
            config.signature_interval_ms = SIGNATURE_INTERVAL_MS;
            config.snapshot_interval_txs = options.snapshot_interval_txs;
            let restored = Restored {
                entries: disk.entries.clone(),
                hard_state: disk.hard_state,
                snapshot: None,
            };
            let node = SimNode::start(config, StartMode::Restart(restored), disk.clone()).map_err(
                |message| Failure {
                    seed,
                    step: 0,
                    message,
                    trace_tail: Vec::new(),
                },
            )?;
            nodes.push(node);
        }
        Ok(Simulation {
            seed,
            options,
            rng,
            nodes,
            user: baseline.user.clone(),
            start_ms: baseline.now_ms,
            now_ms: baseline.now_ms,
            step: 0,
            next_request: 0,
            next_serial: 0,
            network: Vec::new(),
            partition: None,
            restart_at: BTreeMap::new(),
            pending_crash: None,
            crashes: 0,
            writes: Vec::new(),
            committed: BTreeMap::new(),
            canonical: Vec::new(),
            canonical_snapshots: BTreeMap::new(),
            committed_snapshots_checked: std::collections::BTreeSet::new(),
            primaries: BTreeMap::new(),
            flipped: false,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace_tail: Vec::new(),
        })
    }

    fn trace(&mut self, event: String) {
        let line = format!("[{} t={}] {event}", self.step, self.now_ms - self.start_ms);
        for byte in line.bytes().chain([b'\n']) {
            self.trace_hash ^= u64::from(byte);
            self.trace_hash = self.trace_hash.wrapping_mul(0x100_0000_01b3);
        }
        if self.trace_tail.len() == TRACE_TAIL {
            self.trace_tail.remove(0);
        }
        self.trace_tail.push(line);
    }

    fn fail(&self, message: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.step,
            message,
            trace_tail: self.trace_tail.clone(),
        }
    }

    /// A uniform draw from `low..=high`.
    fn draw(&mut self, low: u64, high: u64) -> u64 {
        low + self.rng.next_u64() % (high - low + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.next_u64() % 1000 < per_mille
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        match self.partition {
            Some((isolated, _)) => a != isolated && b != isolated,
            None => true,
        }
    }

    /// Runs every step, then the liveness probe.
    pub fn run(mut self) -> Result<Report, Failure> {
        let fault_steps = self.options.steps - self.options.steps / 5;
        while self.step < self.options.steps {
            let faults = self.step < fault_steps;
            if self.step == fault_steps {
                self.heal()?;
            }
            self.step_once(faults).map_err(|m| self.fail(m))?;
            self.check().map_err(|m| self.fail(m))?;
            self.step += 1;
        }
        self.heal()?;
        self.liveness()?;
        let commit_seqno = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .map(|n| n.commit_tx_id().seqno)
            .max()
            .unwrap_or(0);
        Ok(Report {
            seed: self.seed,
            steps: self.step,
            trace_hash: self.trace_hash,
            writes_acked: self.writes.len(),
            writes_committed: self.committed.len(),
            commit_seqno,
            crashes: self.crashes,
            snapshots_committed: self.committed_snapshots_checked.len(),
        })
    }

    /// Ends the partition and restarts every crashed node.
    fn heal(&mut self) -> Result<(), Failure> {
        self.pending_crash = None;
        if self.partition.take().is_some() {
            self.trace("heal partition".to_owned());
        }
        let crashed: Vec<usize> = self.restart_at.keys().copied().collect();
        for index in crashed {
            self.restart(index).map_err(|m| self.fail(m))?;
        }
        Ok(())
    }

    fn restart(&mut self, index: usize) -> Result<(), String> {
        self.restart_at.remove(&index);
        let durable = self.nodes[index].durable.entries.len();
        self.trace(format!("restart n{index} from {durable} durable entries"));
        self.nodes[index].restart()
    }

    /// After the faults: a new write must commit on every node within the budget.
    fn liveness(&mut self) -> Result<(), Failure> {
        let mut probe: Option<TxId> = None;
        for _ in 0..self.options.liveness_budget_steps {
            if probe.is_none() {
                let key = format!("probe{}", self.step);
                probe = self.client_write(key).map_err(|m| self.fail(m))?;
            }
            self.step_once(false).map_err(|m| self.fail(m))?;
            self.check().map_err(|m| self.fail(m))?;
            self.step += 1;
            if let Some(tx_id) = probe {
                let statuses: Vec<TxStatus> = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.node.as_ref())
                    .map(|n| n.tx_status(tx_id))
                    .collect();
                if statuses.iter().all(|s| *s == TxStatus::Committed) {
                    self.trace(format!("liveness: probe {tx_id} committed everywhere"));
                    return Ok(());
                }
                if statuses.contains(&TxStatus::Invalid) {
                    // Rolled back by an election: write again.
                    probe = None;
                }
            }
        }
        Err(self.fail(format!(
            "liveness: no new write committed on every node within {} steps of healing (probe {probe:?})",
            self.options.liveness_budget_steps
        )))
    }

    fn step_once(&mut self, faults: bool) -> Result<(), String> {
        self.now_ms += self.draw(10, 100);
        if faults {
            self.inject_faults()?;
        }
        let due: Vec<usize> = self
            .restart_at
            .iter()
            .filter(|(_, at)| **at <= self.now_ms)
            .map(|(index, _)| *index)
            .collect();
        for index in due {
            self.restart(index)?;
        }
        self.deliver(faults)?;
        let unix_time_s = UNIX_TIME_S + (self.now_ms - self.start_ms) / 1000;
        for index in 0..self.nodes.len() {
            self.nodes[index].step(Input::Tick {
                now_ms: self.now_ms,
                unix_time_s,
            })?;
            self.collect_sends(index, faults);
        }
        if self.chance(400) {
            let key = format!("k{}", self.draw(0, KEYS - 1));
            self.client_write(key)?;
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let start_partition = self.chance(15);
        match self.partition {
            Some((isolated, until)) if until <= self.now_ms => {
                self.partition = None;
                self.trace(format!("heal partition of n{isolated}"));
            }
            None if start_partition => {
                let isolated = self.draw(0, 2) as usize;
                let until = self.now_ms + self.draw(200, 4000);
                self.partition = Some((isolated, until));
                self.trace(format!(
                    "partition isolates n{isolated} until t={}",
                    until - self.start_ms
                ));
            }
            _ => {}
        }
        if self.restart_at.is_empty() && self.pending_crash.is_none() && self.chance(10) {
            let index = self.draw(0, 2) as usize;
            let delay = self.draw(100, 3000);
            self.pending_crash = Some((index, delay, 50));
        }
        if let Some((index, delay, left)) = self.pending_crash.take() {
            if self.crash_point_reached(index) {
                self.crash(index, delay);
            } else if left > 0 {
                self.pending_crash = Some((index, delay, left - 1));
            }
        }
        Ok(())
    }

    fn crash_point_reached(&self, index: usize) -> bool {
        let sim = &self.nodes[index];
        match self.options.crash_point {
            CrashPoint::Anywhere => true,
            CrashPoint::CommittedSignature => sim.node.as_ref().is_some_and(|node| {
                let commit = node.commit_tx_id().seqno;
                sim.durable.entries.len() as u64 == commit
            }),
        }
    }

    fn crash(&mut self, index: usize, delay: u64) {
        let at = self.now_ms + delay;
        let node = &self.nodes[index];
        let (volatile, durable) = (node.volatile.entries.len(), node.durable.entries.len());
        self.trace(format!(
            "crash n{index} (volatile {volatile} entries, durable {durable}), restart at t={}",
            at - self.start_ms
        ));
        self.nodes[index].crash();
        self.network.retain(|m| m.to != index);
        self.restart_at.insert(index, at);
        self.crashes += 1;
    }

    /// Moves what `index` sent into the network, with delay, loss and duplication.
    fn collect_sends(&mut self, index: usize, faults: bool) {
        let sent: Vec<(u64, Vec<u8>)> = self.nodes[index].outbox.drain(..).collect();
        for (to_raft, bytes) in sent {
            let Some(to) = self.nodes.iter().position(|n| n.raft == to_raft) else {
                continue;
            };
            if faults && (self.chance(50) || !self.connected(index, to)) {
                continue;
            }
            let copies = if faults && self.chance(20) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = self.draw(1, 150);
                self.next_serial += 1;
                self.network.push(Message {
                    deliver_at_ms: self.now_ms + delay,
                    serial: self.next_serial,
                    from: index,
                    to,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    fn deliver(&mut self, faults: bool) -> Result<(), String> {
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at_ms <= self.now_ms {
                due.push(self.network.swap_remove(index));
            } else {
                index += 1;
            }
        }
        due.sort_by_key(|m| (m.deliver_at_ms, m.serial));
        let mut delivered = 0;
        for message in due {
            if faults && !self.connected(message.from, message.to) {
                continue;
            }
            if self.nodes[message.to].node.is_none() {
                continue;
            }
            let from = self.nodes[message.from].raft;
            self.nodes[message.to].step(Input::Peer {
                from,
                bytes: message.bytes,
            })?;
            delivered += 1;
            self.collect_sends(message.to, faults);
        }
        if delivered > 0 {
            self.trace(format!("delivered {delivered} messages"));
        }
        Ok(())
    }

    /// A PUT as user0 to the current primary, if there is one; its TxID if acknowledged.
    fn client_write(&mut self, key: String) -> Result<Option<TxId>, String> {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].node.as_ref().is_some_and(Node::is_primary))
            .collect();
        if primaries.is_empty() {
            return Ok(None);
        }
        let index = primaries[self.draw(0, primaries.len() as u64 - 1) as usize];
        let value = format!("v{}-{}", self.step, self.rng.next_u64() % 1000).into_bytes();
        self.next_request += 1;
        let request = Request {
            method: Method::Put,
            path: format!("/app/kv/{key}"),
            query: Vec::new(),
            headers: Vec::new(),
            body: value.clone(),
            caller_cert_der: Some(self.user.der().to_vec()),
        };
        let response = self.nodes[index].request(RequestId(self.next_request), request)?;
        let faults = self.step < self.options.steps - self.options.steps / 5;
        self.collect_sends(index, faults);
        if response.status != 200 {
            self.trace(format!("PUT {key} to n{index}: {}", response.status));
            return Ok(None);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| format!("PUT response: {e}"))?;
        let tx_id: TxId = json["transaction_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("PUT response without a transaction ID: {json}"))?;
        self.trace(format!("PUT {key} to n{index}: acknowledged {tx_id}"));
        self.writes.push(Write { tx_id, key, value });
        if self.options.corruption == Corruption::PendingAsCommitted {
            self.committed.insert(tx_id.seqno, tx_id);
        }
        Ok(Some(tx_id))
    }

    /// Every invariant, on every live node.
    fn check(&mut self) -> Result<(), String> {
        // At most one primary per view (Raft's Election Safety, §5.2).
        for index in 0..self.nodes.len() {
            let Some(node) = &self.nodes[index].node else {
                continue;
            };
            if !node.is_primary() {
                continue;
            }
            let (view, raft) = (node.view(), self.nodes[index].raft);
            match self.primaries.get(&view) {
                Some(other) if *other != raft => {
                    return Err(format!(
                        "two primaries in view {view}: {other:x} and {raft:x}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.primaries.insert(view, raft);
                    self.trace(format!("n{index} is primary of view {view}"));
                }
            }
        }
        // Committed prefixes never diverge (State Machine Safety, §5.4.3): each node's
        // committed entries match the canonical committed ledger byte for byte.
        for index in 0..self.nodes.len() {
            let Some(node) = &self.nodes[index].node else {
                continue;
            };
            let commit = node.commit_tx_id().seqno;
            let sim = &self.nodes[index];
            if commit as usize > sim.volatile.files.len() {
                return Err(format!(
                    "n{index} commits {commit} but holds {} entries",
                    sim.volatile.files.len()
                ));
            }
            for seqno in sim.checked_upto + 1..=commit {
                let mut bytes = sim.volatile.files[seqno as usize - 1].clone();
                if self.options.corruption == Corruption::FlipCommittedByte
                    && index == 2
                    && !self.flipped
                {
                    bytes[0] ^= 1;
                    self.flipped = true;
                }
                match self.canonical.get(seqno as usize - 1) {
                    Some(expected) if *expected != bytes => {
                        return Err(format!(
                            "n{index}'s committed entry {seqno} differs from the committed ledger"
                        ));
                    }
                    Some(_) => {}
                    None => self.canonical.push(bytes),
                }
            }
            self.nodes[index].checked_upto = self.nodes[index].checked_upto.max(commit);
        }
        // Every node writes the same snapshot for a seqno, and every committed snapshot file
        // verifies against the service certificate.
        for index in 0..self.nodes.len() {
            let disk = &self.nodes[index].durable;
            for (seqno, bytes) in &disk.snapshots {
                match self.canonical_snapshots.get(seqno) {
                    Some(expected) if expected != bytes => {
                        return Err(format!(
                            "n{index}'s snapshot at {seqno} differs from another node's"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.canonical_snapshots.insert(*seqno, bytes.clone());
                    }
                }
            }
            for (seqno, file) in &disk.committed_snapshots {
                if !self.committed_snapshots_checked.insert((index, *seqno)) {
                    continue;
                }
                let service_cert = &self.nodes[index].config.service_cert;
                let verified = charter_ledger::verify_committed_snapshot(file, service_cert)
                    .map_err(|error| {
                        format!("n{index}'s committed snapshot {seqno} is invalid: {error}")
                    })?;
                if verified.snapshot.seqno != *seqno {
                    return Err(format!(
                        "n{index}'s committed snapshot {seqno} holds seqno {}",
                        verified.snapshot.seqno
                    ));
                }
            }
        }
        // Writes seen committed on one node stay committed on every node whose commit covers them.
        for write in &self.writes {
            if self.committed.contains_key(&write.tx_id.seqno) {
                continue;
            }
            if self
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .any(|n| n.tx_status(write.tx_id) == TxStatus::Committed)
            {
                self.committed.insert(write.tx_id.seqno, write.tx_id);
            }
        }
        for (index, sim) in self.nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            let commit = node.commit_tx_id().seqno;
            for (seqno, tx_id) in self.committed.range(..=commit) {
                let status = node.tx_status(*tx_id);
                if status != TxStatus::Committed {
                    return Err(format!(
                        "{tx_id} was committed, but n{index} (commit {commit}) reports it {} at seqno {seqno}",
                        status.as_str()
                    ));
                }
            }
        }
        // Every node's value of each key is the last write to it in that node's ledger, and
        // the last committed write if nothing later is in its ledger.
        let keys: std::collections::BTreeSet<&str> =
            self.writes.iter().map(|w| w.key.as_str()).collect();
        for (index, sim) in self.nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            for key in &keys {
                let expected = self
                    .writes
                    .iter()
                    .filter(|w| w.key == *key)
                    .filter(|w| {
                        matches!(
                            node.tx_status(w.tx_id),
                            TxStatus::Pending | TxStatus::Committed
                        )
                    })
                    .max_by_key(|w| w.tx_id.seqno);
                let actual = node.store().get("kv", key.as_bytes());
                if actual != expected.map(|w| w.value.as_slice()) {
                    return Err(format!(
                        "n{index} holds {:?} for {key}, expected {:?} from {:?}",
                        actual.map(String::from_utf8_lossy),
                        expected.map(|w| String::from_utf8_lossy(&w.value)),
                        expected.map(|w| w.tx_id),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs one seed, turning a panic in a core into a failure.
pub fn run_seed(seed: u64, options: Options) -> Result<Report, Failure> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Simulation::new(seed, options)?.run()
    }));
    match result {
        Ok(result) => result,
        Err(panic) => Err(Failure {
            seed,
            step: 0,
            message: format!("panic: {}", panic_message(&*panic)),
            trace_tail: Vec::new(),
        }),
    }
}
