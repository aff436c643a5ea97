//! The node state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use charter_consensus::{Consensus, ConsensusConfig, LogBase, LogEntry, LogKind, Output, Restored};
use charter_crypto::{Certificate, Digest, LedgerSecret, PrecomputedVerifyingKey, SigningKey};
use charter_kv::{Store, Tx, WriteSet};
use charter_ledger::merkle::MerkleTree;
use charter_ledger::snapshot::view_at;
use charter_ledger::tables::{
    LEDGER_SECRETS_MAP, NODES_MAP, SERVICE_KEY, SERVICE_MAP, SIGNATURES_MAP, SIGNATURE_KEY,
    SNAPSHOT_EVIDENCE_MAP,
};
use charter_ledger::{
    commit_evidence, decode_entry, encode_conf_change, encode_entry, encode_noop,
    encode_snapshot_into, verify_committed_snapshot, EntryKind, EntryParts, LedgerSecrets,
    NodeInfo, NodeStatus, Receipt, ServiceInfo, ServiceStatus, SignatureRecord, SnapshotContents,
    SnapshotEvidence, SnapshotLeaf, SnapshotLeaves, TxId,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

mod recovery;
mod secrets;

pub use recovery::{
    MemberShare, PreviousServiceIdentity, RecoveryShares, PREVIOUS_SERVICE_KEY,
    PREVIOUS_SERVICE_MAP, RECOVERED_AT_KEY, RECOVERY_REQUESTS_MAP, RECOVERY_SHARES_KEY,
    RECOVERY_SHARES_MAP, RECOVERY_SUBMISSIONS_MAP,
};

use crate::api::{Request, RequestId, Response};
use crate::CoreError;

/// An event for the core.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passes; `now_ms` is the host's monotonic clock in milliseconds.
    Tick {
        /// Milliseconds since an arbitrary fixed origin; never decreases.
        now_ms: u64,
        /// The host's wall clock in seconds since the Unix epoch, used to judge the freshness
        /// of signed governance requests and given to applications (block timestamps).
        unix_time_s: u64,
    },
    /// An authenticated client request.
    Client {
        /// Where the response goes.
        id: RequestId,
        /// The request.
        request: Request,
    },
    /// A consensus message from the peer with Raft ID `from`, over the authenticated node channel.
    Peer {
        /// Sender's Raft ID.
        from: u64,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Ledger entries the host read back for [`Action::ReadEntries`]: each seqno with its
    /// entry bytes, or `None` if the files do not hold it.
    EntriesRead {
        /// Seqnos and entry bytes.
        entries: FetchedEntries,
    },
    /// The snapshot of [`Action::EncodeSnapshot`] at `seqno` is encoded and saved; `digest` is
    /// the SHA-256 of its bytes.
    SnapshotEncoded {
        /// Seqno of the snapshot.
        seqno: u64,
        /// SHA-256 of the snapshot's bytes.
        digest: Digest,
    },
    /// Everything the host was asked to append or save before [`Action::Sync`] with this
    /// token is now durable.
    Durable {
        /// The token of the sync that completed.
        token: u64,
    },
}

/// Entries read back from the ledger files: each seqno with its bytes, or `None` if missing.
pub type FetchedEntries = Vec<(u64, Option<Vec<u8>>)>;

/// Work for the host, to be done in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer a client request.
    Respond {
        /// The request answered.
        id: RequestId,
        /// The answer.
        response: Response,
    },
    /// Append this ledger entry (framed with its seqno) to the open chunk.
    Append {
        /// Seqno of the entry; always one more than the previous append's.
        seqno: u64,
        /// Entry bytes.
        bytes: Vec<u8>,
    },
    /// Drop every ledger entry from `from_seqno` on (an unsigned or rolled-back tail).
    Truncate {
        /// First seqno to drop.
        from_seqno: u64,
    },
    /// Send a consensus message to the peer with Raft ID `to` (loss is tolerated).
    Send {
        /// Recipient's Raft ID.
        to: u64,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Hand a client request this node cannot serve (a write on a follower) to the primary
    /// with Raft ID `to` over the node channel; the primary's answer goes to the client as if
    /// the primary had been asked. The host answers `id` itself (with an error if the primary
    /// does not answer in time).
    Forward {
        /// The request being forwarded.
        id: RequestId,
        /// The primary's Raft ID.
        to: u64,
        /// The request, caller certificate included.
        request: Request,
    },
    /// Read the entries `from_seqno..=to_seqno` back from the ledger files and return them
    /// with [`Input::EntriesRead`] (historical queries).
    ReadEntries {
        /// First seqno.
        from_seqno: u64,
        /// Last seqno.
        to_seqno: u64,
    },
    /// Persist Raft's hard state.
    SaveHardState(charter_consensus::HardStateRecord),
    /// Make everything before this action durable, then send [`Input::Durable`] with `token`.
    Sync {
        /// Token to hand back.
        token: u64,
    },
    /// The open chunk ends at `last_seqno`, a signature just appended: once it is durable,
    /// complete the chunk (`ledger_FIRST-LAST.committed`) and start a new one. With a single
    /// voter a durable signature is a committed one; on a replica the signature may still be
    /// replaced, and the host then reopens the chunk to truncate it ([`Action::Truncate`]).
    CloseChunk {
        /// Seqno of the last entry of the chunk.
        last_seqno: u64,
    },
    /// Replace the sealed ledger secrets with these (a recovery restored or started them).
    SealLedgerSecrets {
        /// [`LedgerSecrets::to_json`] of every secret the node holds.
        secrets: serde_json::Value,
    },
    /// Encode this snapshot of the state at the committed signature `seqno` (off the core
    /// thread: it covers the whole history and state), save it as `snapshot_SEQNO`, and return
    /// its SHA-256 digest with [`Input::SnapshotEncoded`]. Every node that encodes a seqno
    /// produces the same bytes (the primary encodes every snapshot point, a follower one in
    /// [`FOLLOWER_SNAPSHOT_SPACING`] intervals). A lost snapshot only means a later one is used.
    EncodeSnapshot(Box<SnapshotWork>),
    /// The evidence transaction of the snapshot at `seqno` is committed: store the snapshot
    /// written for [`Action::EncodeSnapshot`] followed by `evidence` as the committed snapshot
    /// file (`charter_ledger::encode_committed_snapshot`, named `snapshot_SEQNO.committed`),
    /// durably.
    CommitSnapshot {
        /// Seqno of the snapshot.
        seqno: u64,
        /// JSON receipt of the evidence transaction (as `/app/receipt` returns it).
        evidence: Vec<u8>,
    },
}

/// The status of a transaction ID, as CCF reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// Not known to this node.
    Unknown,
    /// In the ledger, not yet committed.
    Pending,
    /// Committed: a signature at or after it is replicated to a majority.
    Committed,
    /// Will never be committed (replaced by another transaction in a later view).
    Invalid,
}

impl TxStatus {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Unknown => "Unknown",
            TxStatus::Pending => "Pending",
            TxStatus::Committed => "Committed",
            TxStatus::Invalid => "Invalid",
        }
    }
}

/// Configuration of a node's core.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's private key (signs Merkle roots).
    pub node_key: SigningKey,
    /// The node's certificate, endorsed by the service identity.
    pub node_cert: Certificate,
    /// The service identity certificate.
    pub service_cert: Certificate,
    /// The ledger secrets for private domains: the service's first one, plus those a joining
    /// node received or a restarting node sealed. Rekeys in the ledger add more.
    pub ledger_secrets: LedgerSecrets,
    /// Secret randomness from the host (fresh ledger secrets, recovery shares); the simulator
    /// passes a seeded value.
    pub entropy: [u8; 32],
    /// Emit a signature after this many transactions.
    pub signature_interval_txs: u64,
    /// Emit a signature when the oldest unsigned transaction is this old.
    pub signature_interval_ms: u64,
    /// Also emit a signature, before either interval is reached, when no earlier signature
    /// awaits commit: at the end of any round of inputs ([`Node::flush`]) and at a tick. One
    /// signature is in flight at a time: a write made while none is commits one replication
    /// round later, and one made while one is, when the next signature (sent as soon as that
    /// one commits) does. Under heavy load signatures space out by themselves to one per
    /// replication round, and the intervals remain the longest a write waits.
    pub signature_when_idle: bool,
    /// Complete a chunk at the first signature appended after it reaches this size.
    pub chunk_bytes_max: u64,
    /// Milliseconds per Raft tick.
    pub raft_tick_ms: u64,
    /// Seed of the consensus RNG.
    pub seed: u64,
    /// Address clients use for this node, recorded in the nodes table.
    pub rpc_address: String,
    /// Address of this node's node-to-node channel, recorded in the nodes table.
    pub node_address: String,
    /// The service identity's private key, held by every trusted node so that whichever is
    /// primary can endorse the certificate of a node governance admits. `None` on nodes that
    /// never answer join requests (tests).
    pub service_key: Option<SigningKey>,
    /// This node's attestation evidence (JSON of `charter_attest::Evidence`).
    pub evidence: charter_attest::Evidence,
    /// Signed governance requests must be created within this many seconds of the node's time.
    pub gov_request_window_s: u64,
    /// Take a snapshot at the first signature at least this many seqnos after the previous
    /// snapshot, and at least as many seqnos as the previous snapshot held keys (0: never).
    ///
    /// A snapshot is the whole state, so its cost grows with the state while the ledger it
    /// saves replaying grows with the transactions. The second condition keeps snapshot
    /// writing proportional to ledger writing when the state keeps growing (a snapshot of a
    /// million keys is not re-encoded every 10,000 transactions), and changes nothing while
    /// the state stays smaller than the interval.
    pub snapshot_interval_txs: u64,
    /// Entries the in-memory Raft log keeps at and below the commit point (0: keep them all).
    ///
    /// Older entries are dropped from memory (the ledger files keep them), but never those
    /// after this node's newest committed snapshot, which a joining node fetches and then
    /// needs the entries after, nor (on the primary) those a peer still lacks
    /// ([`charter_consensus::LAGGING_PEER_ENTRIES_MAX`]). A node that becomes primary can
    /// bring peers up to date from this many entries behind the commit point; one further
    /// behind must start again from a snapshot.
    pub log_entries_kept: u64,
    /// Recovery encryption keys (PEM, [`charter_crypto::RecoveryPublicKey`]) of genesis
    /// members, by member ID: the genesis transaction records them and deals recovery shares.
    pub genesis_recovery_keys: BTreeMap<String, String>,
    /// Deliberately wrong, for the simulator's self-test only: a primary counts each signature
    /// it appends as committed at once, before a majority holds it. Never set it elsewhere.
    #[doc(hidden)]
    pub unsafe_commit_before_majority: bool,
}

impl NodeConfig {
    /// A configuration with CCF's defaults: a signature every 5,000 transactions or 100 ms,
    /// 5 MB chunks, a snapshot every 10,000 transactions.
    pub fn new(
        node_key: SigningKey,
        node_cert: Certificate,
        service_cert: Certificate,
        ledger_secret: LedgerSecret,
        evidence: charter_attest::Evidence,
    ) -> NodeConfig {
        NodeConfig {
            evidence,
            gov_request_window_s: 300,
            node_key,
            node_cert,
            service_cert,
            ledger_secrets: LedgerSecrets::new(ledger_secret),
            entropy: [0; 32],
            signature_interval_txs: 5_000,
            signature_interval_ms: 100,
            signature_when_idle: false,
            chunk_bytes_max: 5_000_000,
            raft_tick_ms: 50,
            seed: 0,
            rpc_address: String::new(),
            node_address: String::new(),
            service_key: None,
            snapshot_interval_txs: 10_000,
            log_entries_kept: 50_000,
            genesis_recovery_keys: BTreeMap::new(),
            unsafe_commit_before_majority: false,
        }
    }
}

/// How a node starts.
#[derive(Clone, Debug)]
pub enum StartMode {
    /// Start a new network with these members (status Accepted until they acknowledge). The
    /// service starts Opening, under the default constitution; users come by proposal.
    Genesis {
        /// Members' certificates.
        members: Vec<Certificate>,
    },
    /// Restart from the ledger entries and Raft state on disk: from seqno 1, or from
    /// `Restored::snapshot` (a committed snapshot file) and the entries after it.
    Restart(Restored),
    /// Join an existing network: the primary adds the node to the configuration once
    /// governance trusts it, and replicates the ledger to it from seqno 1, or from the seqno
    /// after `snapshot`.
    Join {
        /// A committed snapshot file (`snapshot_SEQNO.committed`) to start from, checked
        /// against the service certificate and the ledger secret before it is used.
        snapshot: Option<Vec<u8>>,
    },
    /// Recover a service whose nodes are all lost, from one node's ledger (from seqno 1):
    /// replay its public state up to the last signature, start a new service identity
    /// (`NodeConfig::service_cert`) as the only node, and wait for governance to open it and
    /// for recovery members' shares to restore the private state.
    Recover {
        /// The old ledger's entries, from seqno 1.
        entries: Vec<LogEntry>,
        /// The previous service identity, which signed the old ledger's node certificates.
        previous_service_cert: Certificate,
        /// PEM of a certificate for the new service key issued by the previous service key,
        /// if the previous key was at hand.
        endorsement: Option<String>,
    },
}

/// Signature records by seqno, in a persistent map: a snapshot shares them instead of copying.
type SignatureRecords = imbl::OrdMap<u64, SignatureRecord>;

/// Everything a snapshot covers, owned, so that the host can encode it off the core thread
/// ([`Action::EncodeSnapshot`]).
#[derive(Clone)]
pub struct SnapshotWork {
    /// Seqno of the signature the snapshot is taken at.
    pub seqno: u64,
    view: u64,
    store: charter_kv::Snapshot,
    leaves: SnapshotLeaves,
    /// Every signature the node holds, shared with it (a clone is a pointer copy); those up
    /// to `seqno` are encoded, on the snapshot thread.
    signatures: SignatureRecords,
    views: Vec<(u64, u64)>,
    conf_changes: Vec<(u64, Vec<u8>)>,
    secret: LedgerSecret,
}

impl std::fmt::Debug for SnapshotWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWork")
            .field("seqno", &self.seqno)
            .field("view", &self.view)
            .field("leaves", &self.leaves.len())
            .finish_non_exhaustive()
    }
}

/// Two pieces of work are equal when they encode the same snapshot.
impl PartialEq for SnapshotWork {
    fn eq(&self, other: &SnapshotWork) -> bool {
        self.seqno == other.seqno && self.view == other.view && self.encode() == other.encode()
    }
}

impl Eq for SnapshotWork {}

impl SnapshotWork {
    /// The snapshot's bytes (`charter_ledger::snapshot` format); the same on every node.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the snapshot's bytes to `out` (a buffer the caller reuses); returns their
    /// SHA-256 digest.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Digest {
        let signatures: Vec<SignatureRecord> = self
            .signatures
            .range(..=self.seqno)
            .map(|(_, record)| record.clone())
            .collect();
        encode_snapshot_into(
            &SnapshotContents {
                seqno: self.seqno,
                view: self.view,
                store: &self.store,
                leaves: &self.leaves,
                signatures: &signatures,
                views: &self.views,
                conf_changes: &self.conf_changes,
            },
            &self.secret,
            out,
        )
    }
}

/// A snapshot point ingested but not yet committed: the state to serialize once it is.
#[derive(Clone, Debug)]
struct SnapshotPoint {
    view: u64,
    store: Store,
    /// Forced (after a recovery): every node encodes it.
    forced: bool,
}

/// A follower encodes a snapshot point only once this many snapshot intervals have passed
/// since the last one it encoded: it needs snapshots only for its own restarts, while joiners
/// fetch the primary's, which encodes every point. (Each snapshot is the whole state: on three
/// nodes under a write load, encoding one per interval on every node took a fifth of the
/// machine.)
pub const FOLLOWER_SNAPSHOT_SPACING: u64 = 4;

/// Most signing nodes whose precomputed keys a replica keeps (0.6 MB each):
/// primaries change rarely, so this is never reached in practice.
const SIGNER_KEYS_MAX: usize = 8;

/// Most snapshots a node remembers writing while their evidence is not yet committed.
pub const SNAPSHOTS_AWAITING_EVIDENCE_MAX: usize = 4;

/// Largest number of uncommitted entries a primary accepts before refusing writes.
pub const UNCOMMITTED_ENTRIES_MAX: u64 = 200_000;
/// Most entries between two rollback points of one run: a rollback replays at most this many
/// write sets onto a store clone (a few milliseconds, and rollbacks are rare). Points are
/// sparse because each one is a store clone, after which every write copies the B-tree nodes
/// it touches: at one point per 64 entries, those copies were a quarter of a node's core thread
/// under a write load.
pub const ROLLBACK_POINT_ENTRIES_MAX: u64 = 4096;
const _: () = assert!(
    ROLLBACK_POINT_ENTRIES_MAX >= 1 && ROLLBACK_POINT_ENTRIES_MAX <= UNCOMMITTED_ENTRIES_MAX
);

/// A Charter node's trusted core.
pub struct Node {
    config: NodeConfig,
    /// The ledger secrets known so far, by first seqno.
    pub(crate) secrets: LedgerSecrets,
    /// Randomness for fresh secrets, seeded from the host's entropy.
    pub(crate) rng: ChaCha20Rng,
    /// Committed snapshot evidence waiting for this node's snapshot digest: evidence seqno →
    /// (snapshot seqno, digest).
    evidence_committed: BTreeMap<u64, (u64, Digest)>,
    /// A recovery's old private entries and submitted partial decryptions.
    pub(crate) recovery: recovery::RecoveryProgress,
    /// The secrets changed in a way the host must seal.
    seal_secrets: bool,
    /// Take a snapshot at the next signature whatever the interval (a recovery restored the
    /// private state: nodes joining the recovered service start from that snapshot).
    force_snapshot_point: bool,
    node_id: String,
    consensus: Consensus,
    store: Store,
    tree: MerkleTree,
    /// What the node remembers of each transaction for receipts and snapshots (shared with
    /// the snapshots being encoded, so handing them over copies nothing).
    leaves: SnapshotLeaves,
    /// Seqno of the last entry ingested into store and tree.
    ingested: u64,
    /// Signature transactions by seqno.
    signatures: SignatureRecords,
    /// Raft's commit index.
    raft_commit: u64,
    /// Last committed signature's seqno: everything up to it is committed.
    commit_seqno: u64,
    /// Transactions since the last signature, and when the oldest of them was written.
    unsigned_txs: u64,
    unsigned_since_ms: Option<u64>,
    now_ms: u64,
    unix_time_s: u64,
    last_raft_tick_ms: u64,
    /// Bytes in the open chunk.
    chunk_bytes: u64,
    /// This node's Raft ID.
    raft_id: u64,
    /// Store states after each entry that is not yet committed, to roll back to. Kept only
    /// while other voters exist: a lone voter's log is never replaced, and keeping a snapshot
    /// per entry makes every later write copy the paths it touches.
    rollback_points: BTreeMap<u64, Store>,
    /// Write sets of the entries after the commit point that have no rollback point: a
    /// rollback replays them onto the nearest point before its target. Points are kept only
    /// at the start of a run and every [`ROLLBACK_POINT_ENTRIES_MAX`] entries, because a
    /// store clone per entry made every write copy the paths it touched (about a fifth of a
    /// replica's core thread under load).
    rollback_write_sets: BTreeMap<u64, WriteSet>,
    /// Whether the configuration has voters other than this node.
    replicated: bool,
    /// The service status as of the last ingested entry (cached: checked on every app request).
    service_status: Option<ServiceStatus>,
    /// Sign at the next opportunity (this node just became primary).
    sign_soon: bool,
    /// Leadership or term changes seen (for metrics).
    role_changes: u64,
    poisoned: Option<String>,
    /// Applications under `/app`, tried in order after the built-in key-value app's paths.
    apps: Vec<Box<dyn crate::app::Application>>,
    /// Historical transactions read back from the ledger files.
    historical: HistoricalCache,
    /// Keys of the nodes whose signatures this replica checked, by node ID, with the
    /// certificate they came from: precomputed, each verifies in a quarter of the time.
    signer_keys: BTreeMap<String, (String, PrecomputedVerifyingKey)>,
    /// Sequence of sync tokens handed to the host.
    pending_syncs: HashMap<u64, ()>,
    /// Seqno of the snapshot this node started from; 0 when it holds the ledger from seqno 1.
    base_seqno: u64,
    /// `(view, first seqno)` of every view in the ledger, increasing.
    views: Vec<(u64, u64)>,
    /// Raft configuration changes in the ledger (protobuf bytes) by seqno.
    conf_changes: BTreeMap<u64, Vec<u8>>,
    /// Snapshot points ingested and not yet committed, by seqno.
    snapshot_points: BTreeMap<u64, SnapshotPoint>,
    /// The last snapshot point written (or started from).
    snapshot_last: u64,
    /// Keys present in the state at `snapshot_last`.
    snapshot_last_keys: u64,
    /// The last snapshot point this node encoded (or started from), for
    /// [`FOLLOWER_SNAPSHOT_SPACING`].
    snapshot_encoded_last: Option<u64>,
    /// The seqno of this node's newest committed snapshot (the one it would hand a joiner),
    /// below which its Raft log may be compacted.
    snapshot_committed_last: Option<u64>,
    /// The write set of the entry this primary is proposing, for ingesting it without decoding.
    own_proposal: Option<(u64, WriteSet)>,
    /// Snapshots handed to the host for encoding whose digest has not come back yet.
    snapshots_encoding: BTreeSet<u64>,
    /// Snapshots this node wrote whose evidence is not yet committed: seqno to digest.
    snapshots_written: BTreeMap<u64, Digest>,
    /// Evidence transactions in the ledger by their seqno: (snapshot seqno, digest).
    snapshot_evidence: BTreeMap<u64, (u64, Digest)>,
    /// Replaying restored entries: only the newest snapshot point is kept.
    replaying: bool,
    /// Changes whenever the nodes table may have changed (hosts refresh their peers then).
    nodes_version: u64,
    /// Linearizable reads waiting for a signature written after them to commit in their view.
    pending_reads: Vec<PendingRead>,
}

/// A linearizable read: answered once a signature appended after the read, in the same view,
/// is committed. That proves this node was still primary when it read (a majority acknowledged
/// it afterwards) and that everything the read saw is committed.
#[derive(Debug)]
struct PendingRead {
    id: RequestId,
    response: Response,
    view: u64,
    /// The signature that must commit; `None` until the next signature is appended.
    barrier: Option<u64>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .field("ingested", &self.ingested)
            .field("commit_seqno", &self.commit_seqno)
            .finish()
    }
}

impl Node {
    /// Creates a node, emitting its first actions (genesis entries or truncation of an
    /// unsigned tail) into `out`.
    ///
    /// # Errors
    /// [`CoreError::Restore`] or [`CoreError::BadEntry`] if the restored ledger is unusable.
    pub fn new(
        config: NodeConfig,
        mode: StartMode,
        out: &mut Vec<Action>,
    ) -> Result<Node, CoreError> {
        let node_id = config.node_key.verifying_key().id_hex();
        let raft_id = raft_id(&node_id);
        let mut consensus_config = ConsensusConfig::single(raft_id, config.seed);
        let (mode, recover) = match mode {
            StartMode::Recover {
                entries,
                previous_service_cert,
                endorsement,
            } => (
                StartMode::Recover {
                    entries: Vec::new(),
                    previous_service_cert: previous_service_cert.clone(),
                    endorsement: None,
                },
                Some((entries, previous_service_cert, endorsement)),
            ),
            mode => (mode, None),
        };
        let (restored, genesis, joining, snapshot) = match mode {
            StartMode::Genesis { members } => (Restored::default(), Some(members), false, None),
            StartMode::Restart(mut restored) => {
                let snapshot = restored.snapshot.take();
                (restored, None, false, snapshot)
            }
            StartMode::Join { snapshot } => (Restored::default(), None, true, snapshot),
            StartMode::Recover { .. } => (Restored::default(), None, false, None),
        };
        let mut seed = config.entropy.to_vec();
        seed.extend_from_slice(node_id.as_bytes());
        let rng = ChaCha20Rng::from_seed(charter_crypto::sha256(&seed));
        let mut node = Node {
            secrets: config.ledger_secrets.clone(),
            rng,
            recovery: recovery::RecoveryProgress::default(),
            evidence_committed: BTreeMap::new(),
            seal_secrets: false,
            force_snapshot_point: false,
            node_id,
            consensus: Consensus::new(&ConsensusConfig::single(raft_id, 0), Restored::default())?,
            store: Store::new(),
            tree: MerkleTree::new(),
            leaves: SnapshotLeaves::new(),
            ingested: 0,
            signatures: SignatureRecords::new(),
            raft_commit: 0,
            commit_seqno: 0,
            unsigned_txs: 0,
            unsigned_since_ms: None,
            now_ms: 0,
            unix_time_s: 0,
            last_raft_tick_ms: 0,
            chunk_bytes: 0,
            raft_id,
            rollback_points: BTreeMap::new(),
            rollback_write_sets: BTreeMap::new(),
            replicated: false,
            service_status: None,
            sign_soon: false,
            role_changes: 0,
            poisoned: None,
            apps: Vec::new(),
            historical: HistoricalCache::default(),
            signer_keys: BTreeMap::new(),
            pending_syncs: HashMap::new(),
            nodes_version: 0,
            pending_reads: Vec::new(),
            base_seqno: 0,
            views: Vec::new(),
            conf_changes: BTreeMap::new(),
            snapshot_points: BTreeMap::new(),
            snapshot_last: 0,
            snapshot_last_keys: 0,
            snapshot_encoded_last: None,
            snapshot_committed_last: None,
            own_proposal: None,
            snapshots_encoding: BTreeSet::new(),
            snapshots_written: BTreeMap::new(),
            snapshot_evidence: BTreeMap::new(),
            replaying: false,
            config,
        };
        if let Some((entries, previous_service_cert, endorsement)) = recover {
            return Node::recover(node, entries, previous_service_cert, endorsement, out);
        }
        let mut base = match snapshot {
            Some(file) => Some(node.start_from_snapshot(&file)?),
            None => None,
        };
        let mut restored = node.replay(restored, out)?;
        if let Some(recovered_at) = node.recovered_at() {
            // A recovered service's Raft log starts after the old ledger it replayed.
            if !matches!(&base, Some(base) if base.seqno >= recovered_at) {
                restored.entries.retain(|entry| entry.seqno > recovered_at);
                node.base_seqno = node.base_seqno.max(recovered_at);
                base = Some(LogBase {
                    seqno: recovered_at,
                    view: view_at(&node.views, recovered_at).unwrap_or(0),
                    conf_changes: node.conf_changes.values().cloned().collect(),
                });
            }
        }
        // The network's first configuration is the genesis node alone, recorded in the ledger;
        // configuration changes in the log do the rest.
        consensus_config.voters = match node.store.get(RAFT_MAP, GENESIS_VOTERS_KEY) {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|error| CoreError::Restore(format!("genesis voters: {error}")))?,
            None if joining => Vec::new(),
            None => vec![raft_id],
        };
        // The voters at the base (if any) are the initial voters changed by its changes.
        consensus_config.base = base;
        let alone = consensus_config.voters == [raft_id] && node.conf_changes.is_empty();
        if alone {
            // A single voter committed everything up to its last durable signature.
            restored.hard_state.commit = node.ingested;
        }
        node.consensus = Consensus::new(&consensus_config, restored)?;
        node.replicated = node.consensus.voters() != [raft_id];
        node.raft_commit = node.consensus.commit_index();
        node.commit_seqno = node.last_signature_at_or_before(node.raft_commit);
        node.snapshots_on_commit(out);
        if alone {
            node.consensus.campaign()?;
        }
        node.drain_consensus(out)?;
        if let Some(members) = genesis {
            node.write_genesis(&members, out)?;
        }
        if node.consensus.is_leader() {
            // A new primary signs at once so that what it inherited commits promptly.
            node.emit_signature(out)?;
        }
        node.write_snapshot_evidence(out)?;
        Ok(node)
    }

    /// Checks a committed snapshot file and takes the state from it: the evidence receipt
    /// must verify against the service certificate, carry this service's commit evidence and
    /// the snapshot's digest, and the snapshot must decrypt under the ledger secret. Returns
    /// the Raft part, for consensus.
    fn start_from_snapshot(&mut self, file: &[u8]) -> Result<LogBase, CoreError> {
        let refuse = |reason: String| CoreError::Snapshot(reason);
        let verified = verify_committed_snapshot(file, &self.config.service_cert)
            .map_err(|error| refuse(error.to_string()))?;
        // Rekeys recorded in the snapshot's state may hold secrets wrapped for this node.
        if let Some(records) = verified.snapshot.public.maps.get(LEDGER_SECRETS_MAP) {
            for value in records.values().flatten() {
                self.learn_ledger_secret(value)
                    .map_err(|error| refuse(format!("rekey record: {error}")))?;
            }
        }
        let evidence = &verified.evidence.leaf_components.commit_evidence;
        let evidence_secret = self.secrets.for_seqno(verified.evidence_tx_id.seqno);
        if *evidence != commit_evidence(evidence_secret, verified.evidence_tx_id) {
            return Err(refuse(
                "the evidence transaction's commit evidence was not made with this service's \
                 ledger secret"
                    .to_owned(),
            ));
        }
        let snapshot = &verified.snapshot;
        let mut write_set = snapshot.public.clone();
        write_set.merge(
            snapshot
                .decrypt_private(self.secrets.for_seqno(snapshot.seqno))
                .map_err(|error| refuse(error.to_string()))?,
        );
        let seqno = snapshot.seqno;
        assert!(seqno > 0 && self.ingested == 0);
        let mut store = Store::new();
        // Decoding checked every name, key and value against the store's limits.
        store.apply(&write_set, seqno);
        self.store = store;
        self.tree = verified.tree.clone();
        self.leaves = snapshot.leaves.iter().copied().collect();
        self.signatures = snapshot
            .signatures
            .iter()
            .map(|(seqno, record)| (*seqno, record.clone()))
            .collect();
        self.views = snapshot.views.clone();
        self.conf_changes = snapshot.conf_changes.iter().cloned().collect();
        self.ingested = seqno;
        self.base_seqno = seqno;
        self.snapshot_last = seqno;
        self.snapshot_last_keys = self.store.present_keys();
        self.snapshot_encoded_last = Some(seqno);
        self.snapshot_committed_last = Some(seqno);
        // The base is committed; a rollback to it must find its state.
        self.rollback_points.insert(seqno, self.store.clone());
        self.refresh_service_status();
        assert_eq!(self.tree.len(), seqno);
        assert_eq!(self.leaves.len() as u64, seqno);
        Ok(LogBase {
            seqno,
            view: snapshot.view,
            conf_changes: snapshot
                .conf_changes
                .iter()
                .map(|(_, change)| change.clone())
                .collect(),
        })
    }

    /// Serializes the snapshot points that are now committed, and asks the host to commit the
    /// snapshots whose evidence transaction is now committed.
    fn snapshots_on_commit(&mut self, out: &mut Vec<Action>) {
        // Bounded by the number of points, one per snapshot interval of uncommitted entries.
        while let Some(entry) = self.snapshot_points.first_entry() {
            if *entry.key() > self.commit_seqno {
                break;
            }
            let (seqno, point) = entry.remove_entry();
            self.snapshot_last = seqno;
            self.snapshot_last_keys = point.store.present_keys();
            // The primary encodes every point (joiners fetch its snapshots, and it writes the
            // evidence); a follower only one in FOLLOWER_SNAPSHOT_SPACING, for its own
            // restarts.
            let spacing = self
                .config
                .snapshot_interval_txs
                .saturating_mul(FOLLOWER_SNAPSHOT_SPACING);
            let due = point.forced
                || self.consensus.is_leader()
                || self
                    .snapshot_encoded_last
                    .is_none_or(|last| seqno >= last.saturating_add(spacing));
            if !due {
                continue;
            }
            let work = self.snapshot_work(seqno, &point);
            self.snapshot_encoded_last = Some(seqno);
            self.snapshots_encoding.insert(seqno);
            while self.snapshots_encoding.len() > SNAPSHOTS_AWAITING_EVIDENCE_MAX {
                self.snapshots_encoding.pop_first();
            }
            out.push(Action::EncodeSnapshot(Box::new(work)));
        }
        let later = self.snapshot_evidence.split_off(&(self.commit_seqno + 1));
        let committed = std::mem::replace(&mut self.snapshot_evidence, later);
        // Evidence whose snapshot is still being encoded waits for its digest (bounded); that
        // of a snapshot this node did not encode is of no use to it.
        let ours = committed.into_iter().filter(|(_, (seqno, _))| {
            self.snapshots_encoding.contains(seqno) || self.snapshots_written.contains_key(seqno)
        });
        self.evidence_committed.extend(ours);
        while self.evidence_committed.len() > SNAPSHOTS_AWAITING_EVIDENCE_MAX {
            self.evidence_committed.pop_first();
        }
        self.commit_snapshots(out);
    }

    /// Commits the snapshots this node encoded whose evidence is committed.
    fn commit_snapshots(&mut self, out: &mut Vec<Action>) {
        let committed = std::mem::take(&mut self.evidence_committed);
        for (evidence_seqno, (seqno, digest)) in committed {
            if !self.snapshots_written.contains_key(&seqno) {
                // Not encoded here yet (or lost): keep waiting for the digest.
                self.evidence_committed
                    .insert(evidence_seqno, (seqno, digest));
                continue;
            }
            // Only a node holding the very bytes the evidence names commits its snapshot.
            if self.snapshots_written.get(&seqno) != Some(&digest) {
                continue;
            }
            let Some(view) = self.term_at(evidence_seqno) else {
                continue;
            };
            let Ok(receipt) = self.receipt(TxId::new(view, evidence_seqno)) else {
                continue;
            };
            // Serializing a JSON value cannot fail.
            let evidence = serde_json::to_vec(&receipt.to_json()).expect("receipt serializes");
            self.snapshots_written.remove(&seqno);
            self.snapshot_committed_last = self.snapshot_committed_last.max(Some(seqno));
            out.push(Action::CommitSnapshot { seqno, evidence });
        }
    }

    /// A snapshot encoded and saved by the host: remember its digest, commit it if its
    /// evidence is committed already, and (on the primary) write its evidence.
    fn snapshot_encoded(
        &mut self,
        seqno: u64,
        digest: Digest,
        out: &mut Vec<Action>,
    ) -> Result<(), CoreError> {
        self.snapshots_encoding.remove(&seqno);
        self.snapshots_written.insert(seqno, digest);
        while self.snapshots_written.len() > SNAPSHOTS_AWAITING_EVIDENCE_MAX {
            self.snapshots_written.pop_first();
        }
        self.commit_snapshots(out);
        self.write_snapshot_evidence(out)
    }

    /// What the host needs to encode the snapshot at the committed point `seqno`.
    fn snapshot_work(&self, seqno: u64, point: &SnapshotPoint) -> SnapshotWork {
        assert!(seqno <= self.commit_seqno && seqno <= self.ingested);
        let leaves = self.leaves.prefix(seqno as usize);
        // Shared, not copied: a service signs up to hundreds of times a second, and copying
        // every record since genesis took the core thread longer at each snapshot.
        let signatures = self.signatures.clone();
        let views: Vec<(u64, u64)> = self
            .views
            .iter()
            .copied()
            .filter(|(_, first)| *first <= seqno)
            .collect();
        let conf_changes: Vec<(u64, Vec<u8>)> = self
            .conf_changes
            .range(..=seqno)
            .map(|(at, change)| (*at, change.clone()))
            .collect();
        SnapshotWork {
            seqno,
            view: point.view,
            store: point.store.snapshot(),
            leaves,
            signatures,
            views,
            conf_changes,
            secret: self.secrets.for_seqno(seqno).clone(),
        }
    }

    /// The primary records the digest of every snapshot it (or an earlier primary) wrote and
    /// whose evidence is not in the ledger yet, with the digest as claims digest so that the
    /// transaction's receipt binds the snapshot.
    fn write_snapshot_evidence(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if !self.consensus.is_leader() {
            return Ok(());
        }
        let due: Vec<(u64, Digest)> = self
            .snapshots_written
            .iter()
            .filter(|(seqno, _)| {
                self.store
                    .get(SNAPSHOT_EVIDENCE_MAP, seqno.to_string().as_bytes())
                    .is_none()
            })
            .map(|(seqno, digest)| (*seqno, *digest))
            .collect();
        for (seqno, digest) in due {
            let record = SnapshotEvidence {
                seqno,
                digest: hex::encode(digest),
            };
            let mut write_set = WriteSet::new();
            // Serializing a struct of an integer and a string cannot fail.
            let value = serde_json::to_vec(&record).expect("evidence record serializes");
            write_set.put(SNAPSHOT_EVIDENCE_MAP, seqno.to_string().as_bytes(), &value);
            match self.write_transaction(EntryKind::Transaction, write_set, digest, out) {
                Ok(_) => {}
                // raft-rs drops proposals while leadership moves; the next primary (or this
                // one, at its next step) writes the evidence instead.
                Err(CoreError::Consensus(_)) => break,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The view of the entry at `seqno`: from the view history before the snapshot this node
    /// started from or the point its Raft log is compacted to, from consensus after.
    fn term_at(&self, seqno: u64) -> Option<u64> {
        if seqno != 0 && seqno < self.base_seqno.max(self.consensus.first_index()) {
            return view_at(&self.views, seqno);
        }
        self.consensus.term_at(seqno)
    }

    /// Raft IDs of peers that need entries this primary does not hold (it started from a
    /// snapshot); they must start from a snapshot too. Empty on followers.
    pub fn peers_needing_snapshot(&self) -> Vec<u64> {
        self.consensus.peers_needing_snapshot()
    }

    /// Seqno of the snapshot this node started from (0 if it holds the ledger from seqno 1).
    pub fn base_seqno(&self) -> u64 {
        self.base_seqno
    }

    /// The first seqno the in-memory Raft log still holds (earlier entries are only in the
    /// ledger files: before the snapshot this node started from, or compacted away, see
    /// [`NodeConfig::log_entries_kept`]).
    pub fn log_first_seqno(&self) -> u64 {
        self.consensus.first_index()
    }

    /// Replays restored entries up to the last signature into store and tree, truncating
    /// anything after it (never committed: a transaction commits only with a signature).
    fn replay(
        &mut self,
        mut restored: Restored,
        out: &mut Vec<Action>,
    ) -> Result<Restored, CoreError> {
        // Entries continue the snapshot the node started from, if any.
        let base = self.ingested;
        let last_signature = restored
            .entries
            .iter()
            .rposition(|entry| {
                !entry.data.is_empty()
                    && decode_entry(&entry.data)
                        .is_ok_and(|decoded| decoded.kind == EntryKind::Signature)
            })
            .map_or(0, |index| index + 1);
        // A lone voter's unsigned tail was never acknowledged to anyone, so it is dropped. A
        // replica (its log holds configuration changes) keeps every durable entry: it may have
        // acknowledged them, and Raft counts on acknowledged entries surviving a restart.
        let replica = !self.conf_changes.is_empty()
            || restored
                .entries
                .iter()
                .any(|entry| entry.kind == LogKind::ConfChange);
        if !replica && last_signature < restored.entries.len() {
            let from_seqno = base + last_signature as u64 + 1;
            out.push(Action::Truncate { from_seqno });
            restored.entries.truncate(last_signature);
        }
        self.replaying = true;
        for (index, entry) in restored.entries.iter().enumerate() {
            let expected = base + index as u64 + 1;
            if entry.seqno != expected {
                return Err(CoreError::Restore(format!(
                    "entry {} found where {expected} was expected",
                    entry.seqno
                )));
            }
            self.ingest(entry)?;
            // Entries from the saved commit point on may still be replaced by a new primary
            // (rolling back to the commit point itself needs the state after it).
            if entry.seqno >= restored.hard_state.commit {
                self.rollback_points.insert(entry.seqno, self.store.clone());
            }
        }
        self.replaying = false;
        restored.hard_state.commit = restored
            .hard_state
            .commit
            .min(base + restored.entries.len() as u64);
        Ok(restored)
    }

    /// A number that changes whenever the nodes table may have changed.
    pub fn nodes_version(&self) -> u64 {
        self.nodes_version
    }

    /// Every node of the nodes table with its record (unparseable records skipped).
    pub fn nodes(&self) -> Vec<(String, NodeInfo)> {
        self.store
            .entries(NODES_MAP)
            .filter_map(|(key, value)| {
                let id = std::str::from_utf8(key).ok()?;
                let info = serde_json::from_slice::<NodeInfo>(value).ok()?;
                Some((id.to_owned(), info))
            })
            .collect()
    }

    /// The service identity's private key, if this node holds it.
    pub(crate) fn service_key(&self) -> Option<&SigningKey> {
        self.config.service_key.as_ref()
    }

    /// The ledger secret.
    /// Every ledger secret this node holds.
    pub fn ledger_secrets(&self) -> &LedgerSecrets {
        &self.secrets
    }

    /// This node's ID (hex SHA-256 of its public key).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The last committed transaction.
    pub fn commit_tx_id(&self) -> TxId {
        TxId::new(
            self.term_at(self.commit_seqno).unwrap_or(0),
            self.commit_seqno,
        )
    }

    /// The last transaction in the ledger.
    pub fn last_tx_id(&self) -> TxId {
        let last = self.consensus.last_index();
        TxId::new(self.term_at(last).unwrap_or(0), last)
    }

    /// The TxID the next transaction written on this node will get.
    pub fn next_tx_id(&self) -> TxId {
        let (view, seqno) = self.consensus.next_tx();
        TxId::new(view, seqno)
    }

    /// A secret derived from the ledger secret for `label` (applications' keys).
    pub(crate) fn app_secret(&self, label: &str) -> Digest {
        let key = charter_crypto::hmac_sha256(
            self.secrets.for_seqno(1).as_bytes(),
            b"charter application secret",
        );
        charter_crypto::hmac_sha256(&key, label.as_bytes())
    }

    /// Current view (Raft term).
    pub fn view(&self) -> u64 {
        self.consensus.term()
    }

    /// Replication progress as the primary sees it: (Raft ID, matched seqno) per voter.
    pub fn replication_progress(&self) -> Vec<(u64, u64)> {
        self.consensus.progress()
    }

    /// The Raft ID of the primary, if known.
    pub fn primary_raft_id(&self) -> Option<u64> {
        self.consensus.leader_id()
    }

    /// This node's Raft ID.
    pub fn own_raft_id(&self) -> u64 {
        self.raft_id
    }

    /// Leadership or term changes this node has seen since it started.
    pub fn role_changes(&self) -> u64 {
        self.role_changes
    }

    /// Raft IDs of the current voters.
    pub fn voters(&self) -> Vec<u64> {
        self.consensus.voters()
    }

    /// Whether this node is the primary and can write (not handing leadership over).
    pub fn is_primary(&self) -> bool {
        self.consensus.accepts_proposals()
    }

    /// The store as of the last ingested entry.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The host's wall clock as of the last tick, in seconds since the Unix epoch.
    pub fn unix_time_s(&self) -> u64 {
        self.unix_time_s
    }

    /// Freshness window of signed governance requests.
    pub fn gov_request_window_s(&self) -> u64 {
        self.config.gov_request_window_s
    }

    /// The digest members acknowledge: hex Merkle root over the ledger so far.
    pub fn state_digest_hex(&self) -> String {
        self.tree.root().map(hex::encode).unwrap_or_default()
    }

    /// This node's attestation evidence.
    pub fn evidence(&self) -> &charter_attest::Evidence {
        &self.config.evidence
    }

    /// The service certificate.
    pub fn service_cert(&self) -> &Certificate {
        &self.config.service_cert
    }

    /// The status of `tx_id` on this node.
    pub fn tx_status(&self, tx_id: TxId) -> TxStatus {
        if tx_id.seqno == 0 {
            return TxStatus::Invalid;
        }
        match self.term_at(tx_id.seqno) {
            Some(view) if view == tx_id.view => {
                if tx_id.seqno <= self.commit_seqno {
                    TxStatus::Committed
                } else {
                    TxStatus::Pending
                }
            }
            Some(view) => {
                // Another entry holds that seqno. If it is committed, or came from a later
                // view than asked, the asked TxID can never commit.
                if tx_id.seqno <= self.commit_seqno || view > tx_id.view || tx_id.view < self.view()
                {
                    TxStatus::Invalid
                } else {
                    TxStatus::Unknown
                }
            }
            None => {
                if tx_id.view < self.view() && tx_id.seqno <= self.commit_seqno {
                    TxStatus::Invalid
                } else {
                    TxStatus::Unknown
                }
            }
        }
    }

    /// Handles one input, appending resulting actions to `out`.
    ///
    /// # Errors
    /// After an error the node is poisoned and refuses further input: the host must stop.
    pub fn step(&mut self, input: Input, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if let Some(reason) = &self.poisoned {
            return Err(CoreError::Poisoned(reason.clone()));
        }
        // A leader's appends are held across client requests, so that a batch of them goes
        // to each follower as one message; any other input sends them.
        let batchable = matches!(input, Input::Client { .. });
        let mut result = self.step_inner(input, out);
        if result.is_ok() && !batchable {
            result = self.flush(out);
        }
        if let Err(error) = &result {
            self.poisoned = Some(error.to_string());
        }
        result
    }

    /// Sends what [`Node::step`] held back over the client requests since the last input of
    /// another kind: a leader's appends to its followers, merged. A host calls this after each
    /// batch of inputs, before carrying out the actions. With
    /// [`NodeConfig::signature_when_idle`] a primary whose last signature committed also signs
    /// here what it wrote since, rather than at its next tick.
    ///
    /// # Errors
    /// [`CoreError::Poisoned`] after an earlier failure.
    pub fn flush(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if let Some(reason) = &self.poisoned {
            return Err(CoreError::Poisoned(reason.clone()));
        }
        if self.config.signature_when_idle && self.consensus.is_leader() && self.signature_due() {
            if let Err(error) = self.emit_signature(out) {
                self.poisoned = Some(error.to_string());
                return Err(error);
            }
        }
        let mut outputs = Vec::new();
        self.consensus.release_appends(&mut outputs);
        self.handle_outputs(outputs, out)
    }

    fn step_inner(&mut self, input: Input, out: &mut Vec<Action>) -> Result<(), CoreError> {
        match input {
            Input::Tick {
                now_ms,
                unix_time_s,
            } => {
                assert!(now_ms >= self.now_ms, "time went backwards");
                self.now_ms = now_ms;
                self.unix_time_s = unix_time_s;
                if self.last_raft_tick_ms == 0 {
                    self.last_raft_tick_ms = now_ms;
                }
                let mut ticks = 0;
                while self.now_ms - self.last_raft_tick_ms >= self.config.raft_tick_ms
                    && ticks < 100
                {
                    self.last_raft_tick_ms += self.config.raft_tick_ms;
                    self.consensus.tick();
                    ticks += 1;
                }
                if ticks == 100 {
                    self.last_raft_tick_ms = self.now_ms;
                }
                self.drain_consensus(out)?;
                if self.signature_due() || (self.sign_soon && self.consensus.is_leader()) {
                    self.sign_soon = false;
                    self.emit_signature(out)?;
                }
                // Hosts tick more often than Raft does, for signatures on time; membership
                // (which reads every node record) is reconciled at Raft's pace.
                if ticks > 0 {
                    self.reconcile_membership()?;
                }
                self.drain_consensus(out)?;
            }
            Input::Client { id, request } => {
                let linearizable =
                    request.method == crate::api::Method::Get && wants_linearizable_read(&request);
                if linearizable && self.is_primary() {
                    let response = self.handle_request(&request, out)?;
                    self.pending_reads.push(PendingRead {
                        id,
                        response,
                        view: self.consensus.term(),
                        barrier: None,
                    });
                    self.sign_soon = true;
                    return Ok(());
                }
                match self.forward_target(&request) {
                    Some(Forwarding::To(to)) => {
                        out.push(Action::Forward { id, to, request });
                        return Ok(());
                    }
                    Some(Forwarding::NoPrimary) | None if linearizable => {
                        let response = Response::error(
                            503,
                            "NotPrimary",
                            "a linearizable read needs the primary, and this node cannot reach it; retry",
                        )
                        .with_header("retry-after", "1");
                        out.push(Action::Respond { id, response });
                        return Ok(());
                    }
                    Some(Forwarding::NoPrimary) => {
                        let response = Response::error(
                            503,
                            "NotPrimary",
                            "no primary is known to this node right now; retry shortly",
                        )
                        .with_header("retry-after", "1");
                        out.push(Action::Respond { id, response });
                        return Ok(());
                    }
                    None => {}
                }
                let response = self.handle_request(&request, out)?;
                out.push(Action::Respond { id, response });
                if self.unsigned_txs >= self.config.signature_interval_txs {
                    self.emit_signature(out)?;
                }
            }
            Input::Peer { from, bytes } => {
                // A malformed or unexpected message is the sender's problem, not ours.
                if self.consensus.step(&bytes).is_err() {
                    let _ = from;
                }
                self.drain_consensus(out)?;
            }
            Input::SnapshotEncoded { seqno, digest } => {
                self.snapshot_encoded(seqno, digest, out)?;
            }
            Input::EntriesRead { entries } => {
                for (seqno, bytes) in entries {
                    self.historical_arrived(seqno, bytes);
                }
            }
            Input::Durable { token } => {
                self.pending_syncs.remove(&token);
                let mut released = Vec::new();
                self.consensus.on_durable(token, &mut released);
                self.handle_outputs(released, out)?;
                self.drain_consensus(out)?;
            }
        }
        self.release_reads(out);
        self.write_snapshot_evidence(out)?;
        Ok(())
    }

    /// Answers the linearizable reads whose barrier signature committed in their view, and
    /// refuses those whose view ended.
    fn release_reads(&mut self, out: &mut Vec<Action>) {
        if self.pending_reads.is_empty() {
            return;
        }
        let view = self.consensus.term();
        let leading = self.consensus.is_leader();
        let commit = self.commit_seqno;
        let commit_view = self.consensus.term_at(commit);
        let mut waiting = Vec::new();
        for read in std::mem::take(&mut self.pending_reads) {
            if read.view != view || !leading {
                out.push(Action::Respond {
                    id: read.id,
                    response: Response::error(
                        503,
                        "NotPrimary",
                        "this node stopped being primary before the read could be confirmed; retry",
                    )
                    .with_header("retry-after", "1"),
                });
            } else if read
                .barrier
                .is_some_and(|barrier| barrier <= commit && commit_view == Some(read.view))
            {
                out.push(Action::Respond {
                    id: read.id,
                    response: read.response,
                });
            } else {
                waiting.push(read);
            }
        }
        self.pending_reads = waiting;
    }

    /// The primary to forward `request` to: writes (anything but `GET`) reaching a follower
    /// that knows the primary, unless the request was forwarded once already.
    fn forward_target(&self, request: &Request) -> Option<Forwarding> {
        if (request.method == crate::api::Method::Get && !wants_linearizable_read(request))
            || self.consensus.is_leader()
            || request.header(FORWARDED_HEADER).is_some()
        {
            return None;
        }
        match self
            .consensus
            .leader_id()
            .filter(|leader| *leader != self.raft_id && *leader != 0)
        {
            Some(leader) => Some(Forwarding::To(leader)),
            // A lone node with no primary (before its first election) answers itself; a
            // replica that knows no primary cannot serve a write.
            None if self.replicated || self.consensus.voters().is_empty() => {
                Some(Forwarding::NoPrimary)
            }
            None => None,
        }
    }

    fn signature_due(&self) -> bool {
        if !self.consensus.accepts_proposals() || self.unsigned_txs == 0 {
            return false;
        }
        let since = self.unsigned_since_ms.unwrap_or(self.now_ms);
        self.unsigned_txs >= self.config.signature_interval_txs
            || self.now_ms.saturating_sub(since) >= self.config.signature_interval_ms
            || (self.config.signature_when_idle && !self.signature_in_flight())
    }

    /// Whether a signature this node holds is not committed yet.
    fn signature_in_flight(&self) -> bool {
        self.signatures
            .get_max()
            .is_some_and(|(seqno, _)| *seqno > self.commit_seqno)
    }

    /// Pulls all pending consensus work and turns it into actions.
    fn drain_consensus(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        // Bounded: each round either produces outputs or ends the loop.
        for _ in 0..16 {
            let mut outputs = Vec::new();
            self.consensus.drain(&mut outputs);
            if outputs.is_empty() {
                return Ok(());
            }
            self.handle_outputs(outputs, out)?;
        }
        Ok(())
    }

    fn handle_outputs(
        &mut self,
        outputs: Vec<Output>,
        out: &mut Vec<Action>,
    ) -> Result<(), CoreError> {
        for output in outputs {
            match output {
                Output::Append(entries) => {
                    for entry in entries {
                        let bytes = ledger_bytes(&entry);
                        if entry.seqno <= self.ingested {
                            self.roll_back_to(entry.seqno - 1, out)?;
                        }
                        self.ingest(&entry)?;
                        self.chunk_bytes += bytes.len() as u64;
                        out.push(Action::Append {
                            seqno: entry.seqno,
                            bytes,
                        });
                        if self.signatures.contains_key(&entry.seqno)
                            && self.chunk_bytes >= self.config.chunk_bytes_max
                        {
                            out.push(Action::CloseChunk {
                                last_seqno: entry.seqno,
                            });
                            self.chunk_bytes = 0;
                        }
                        if self.config.unsafe_commit_before_majority
                            && self.consensus.is_leader()
                            && self.signatures.contains_key(&entry.seqno)
                        {
                            self.commit_seqno = self.commit_seqno.max(entry.seqno);
                        }
                    }
                }
                Output::HardState(hard_state) => out.push(Action::SaveHardState(hard_state)),
                Output::Sync(token) => {
                    self.pending_syncs.insert(token, ());
                    out.push(Action::Sync { token });
                }
                Output::Send { to, bytes } => out.push(Action::Send { to, bytes }),
                Output::ConfChanged { voters } => {
                    self.replicated = voters != [self.raft_id];
                }
                Output::Committed(index) => {
                    self.raft_commit = self.raft_commit.max(index);
                    let commit = self.last_signature_at_or_before(self.raft_commit);
                    if commit > self.commit_seqno {
                        self.commit_seqno = commit;
                        // States before the commit point can never be rolled back to again.
                        // Pruned only when the commit point moves (at signatures), so the cost
                        // is paid once per signature, not once per write.
                        self.forget_rollbacks_before_commit();
                        self.snapshots_on_commit(out);
                        self.compact_log();
                    }
                }
                Output::Role { is_leader, .. } => {
                    self.role_changes += 1;
                    if is_leader {
                        // A new primary signs at once so that what it inherited commits promptly.
                        self.sign_soon = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn last_signature_at_or_before(&self, seqno: u64) -> u64 {
        self.signatures
            .range(..=seqno)
            .next_back()
            .map_or(0, |(seqno, _)| *seqno)
    }

    /// The write set of an entry from its bytes: the public maps decoded, the private ones
    /// decrypted with the secret for its seqno and decoded.
    fn decode_write_set(
        &mut self,
        entry: &LogEntry,
        decoded: &charter_ledger::Entry<'_>,
        bytes: &[u8],
    ) -> Result<WriteSet, CoreError> {
        let bad = |reason: String| CoreError::BadEntry {
            seqno: entry.seqno,
            reason,
        };
        let mut write_set = if decoded.public.is_empty() || decoded.kind == EntryKind::ConfChange {
            WriteSet::new()
        } else {
            WriteSet::decode(decoded.public).map_err(|error| bad(error.to_string()))?
        };
        let private = match self.secrets.get(entry.seqno) {
            Some(secret) => decoded
                .decrypt_private(secret, bytes)
                .map_err(|error| bad(error.to_string()))?,
            None => {
                // A recovered service's old ledger, before the members' shares bring its
                // secrets back: the public state now, the private state later.
                if !decoded.private.is_empty() {
                    self.recovery.pending.push((entry.seqno, bytes.to_vec()));
                }
                Vec::new()
            }
        };
        if !private.is_empty() {
            write_set.merge(WriteSet::decode(&private).map_err(|error| bad(error.to_string()))?);
        }
        Ok(write_set)
    }

    /// Adds an appended entry to the Merkle tree and the store.
    fn ingest(&mut self, entry: &LogEntry) -> Result<(), CoreError> {
        assert_eq!(
            entry.seqno,
            self.ingested + 1,
            "entries are ingested in order"
        );
        let owned = ledger_bytes(entry);
        let bytes: &[u8] = &owned;
        let bad = |reason: String| CoreError::BadEntry {
            seqno: entry.seqno,
            reason,
        };
        let decoded = decode_entry(bytes).map_err(|error| bad(error.to_string()))?;
        if decoded.tx_id != TxId::new(entry.view, entry.seqno) {
            return Err(bad(format!("entry says it is {}", decoded.tx_id)));
        }
        match self.views.last() {
            Some((view, _)) if *view == entry.view => {}
            Some((view, _)) if *view > entry.view => {
                return Err(bad(format!("view {} after view {view}", entry.view)))
            }
            _ => self.views.push((entry.view, entry.seqno)),
        }
        if entry.kind == LogKind::ConfChange {
            self.conf_changes.insert(entry.seqno, entry.data.clone());
        }
        let own = match self.own_proposal.take() {
            Some((seqno, write_set))
                if seqno == entry.seqno && decoded.kind == EntryKind::Transaction =>
            {
                Some(write_set)
            }
            _ => None,
        };
        let write_set = match own {
            Some(write_set) => write_set,
            None => self.decode_write_set(entry, &decoded, &owned)?,
        };
        if decoded.kind == EntryKind::Signature {
            let record = write_set
                .get(SIGNATURES_MAP, SIGNATURE_KEY)
                .flatten()
                .ok_or_else(|| bad("signature entry without a signature record".to_owned()))?;
            let record: SignatureRecord =
                serde_json::from_slice(record).map_err(|error| bad(error.to_string()))?;
            // Defence in depth: a replica checks every signature it is given (DESIGN.md §1).
            if record.node_id != self.node_id {
                self.check_signature(&record).map_err(bad)?;
            }
            self.signatures.insert(entry.seqno, record);
            self.unsigned_txs = 0;
            self.unsigned_since_ms = None;
        } else if decoded.kind == EntryKind::Transaction || decoded.kind == EntryKind::ConfChange {
            // Configuration changes are covered by the next signature like transactions.
            self.unsigned_txs += 1;
            self.unsigned_since_ms.get_or_insert(self.now_ms);
        }
        // The write set's digest once: it hashes the whole entry.
        let write_set_digest = decoded.write_set_digest();
        let leaf = charter_ledger::leaf_hash(
            &write_set_digest,
            &decoded.commit_evidence_digest,
            &decoded.claims_digest,
        );
        self.tree.append(leaf);
        self.leaves.push(SnapshotLeaf {
            write_set_digest,
            claims_digest: decoded.claims_digest,
            leaf,
        });
        if let Some(records) = write_set.maps.get(SNAPSHOT_EVIDENCE_MAP) {
            // Evidence binds a snapshot only through the claims digest of its transaction.
            for value in records.values().flatten() {
                let record = serde_json::from_slice::<SnapshotEvidence>(value).ok();
                let digest = record.as_ref().and_then(SnapshotEvidence::digest_bytes);
                if let (Some(record), Some(digest)) = (record, digest) {
                    if digest == decoded.claims_digest && record.seqno < entry.seqno {
                        self.snapshot_evidence
                            .insert(entry.seqno, (record.seqno, digest));
                    }
                }
            }
        }
        if let Some(records) = write_set.maps.get(LEDGER_SECRETS_MAP) {
            for value in records.values().flatten() {
                self.learn_ledger_secret(value).map_err(bad)?;
            }
        }
        if let Some(Some(end)) = write_set.get(RAFT_MAP, recovery::RECOVERED_AT_KEY) {
            let end = std::str::from_utf8(end)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| bad("malformed recovery point".to_owned()))?;
            self.forget_old_configuration(end);
        }
        if Node::restores_private_state(&write_set) {
            self.recovery.pending.clear();
            self.force_snapshot_point = true;
        }
        if !write_set.is_empty() {
            let service_changed = write_set.maps.contains_key(SERVICE_MAP);
            if write_set.maps.contains_key(NODES_MAP) {
                self.nodes_version += 1;
            }
            if let Some(Some(voters)) = write_set.get(RAFT_MAP, GENESIS_VOTERS_KEY) {
                // A joining node starts without a configuration: the genesis entry gives it the
                // one the log's configuration changes start from.
                let voters: Vec<u64> =
                    serde_json::from_slice(voters).map_err(|error| bad(error.to_string()))?;
                self.consensus.adopt_initial_voters(&voters)?;
            }
            self.store.apply(&write_set, entry.seqno);
            if service_changed {
                self.refresh_service_status();
            }
        }
        if decoded.kind == EntryKind::Signature {
            self.remember_snapshot_point(entry);
        }
        self.ingested = entry.seqno;
        assert_eq!(self.tree.len(), self.ingested);
        if self.replicated && entry.seqno > self.commit_seqno {
            self.remember_for_rollback(entry.seqno, write_set);
        }
        Ok(())
    }

    /// Keeps what a rollback to `seqno` needs, the store having just applied `write_set` at
    /// `seqno`: a full store state (a rollback point) at the first entry of a run and every
    /// [`ROLLBACK_POINT_ENTRIES_MAX`] entries; otherwise the write set, replayed by
    /// [`Node::roll_back_to`]. Signatures get no point of their own: each point is a store
    /// clone after which every write copies the B-tree paths it touches, and at a signature
    /// every 10 ms those copies (and freeing them) were a tenth of each node's core thread.
    fn remember_for_rollback(&mut self, seqno: u64, write_set: WriteSet) {
        assert!(seqno > 0);
        let previous_point = self
            .rollback_points
            .range(..seqno)
            .next_back()
            .map(|(at, _)| *at);
        let run_continues = previous_point == Some(seqno - 1)
            || self.rollback_write_sets.contains_key(&(seqno - 1));
        let point_due = !run_continues
            || previous_point.is_none_or(|at| seqno - at >= ROLLBACK_POINT_ENTRIES_MAX);
        if point_due {
            self.rollback_points.insert(seqno, self.store.clone());
        } else {
            self.rollback_write_sets.insert(seqno, write_set);
        }
        assert!(
            self.rollback_points.contains_key(&seqno)
                != self.rollback_write_sets.contains_key(&seqno)
        );
    }

    /// Drops old committed entries from the in-memory Raft log
    /// ([`NodeConfig::log_entries_kept`]), a quarter of the kept count at a time so that the
    /// cost of moving the kept entries is spread over many writes.
    fn compact_log(&mut self) {
        let kept = self.config.log_entries_kept;
        let Some(snapshot) = self.snapshot_committed_last else {
            return;
        };
        if kept == 0 {
            return;
        }
        let up_to = snapshot.min(self.commit_seqno.saturating_sub(kept));
        if up_to
            >= self
                .consensus
                .first_index()
                .saturating_add((kept / 4).max(1))
        {
            self.consensus.compact(up_to);
        }
    }

    /// Drops the rollback state no longer needed once the commit point moved: everything
    /// before the last point at or below the commit point, which a rollback to the commit
    /// point replays from. At most [`ROLLBACK_POINT_ENTRIES_MAX`] write sets stay below it.
    fn forget_rollbacks_before_commit(&mut self) {
        let base = self
            .rollback_points
            .range(..=self.commit_seqno)
            .next_back()
            .map(|(at, _)| *at);
        let Some(base) = base else {
            // No point at or below the commit point: the commit point is below every entry
            // kept (a fresh run), and nothing below it is held.
            return;
        };
        let keep = self.rollback_points.split_off(&base);
        self.rollback_points = keep;
        let keep = self.rollback_write_sets.split_off(&(base + 1));
        self.rollback_write_sets = keep;
    }

    /// Remembers the state at a signature that is a snapshot point: the first signature at
    /// least `snapshot_interval_txs` after the previous point, and at least as many seqnos
    /// after it as the previous point's state held keys. Every node ingests the same entries
    /// (and so holds the same state at the same seqno), so every node picks the same points.
    fn remember_snapshot_point(&mut self, entry: &LogEntry) {
        let interval = self.config.snapshot_interval_txs;
        if !self.recovery.pending.is_empty() {
            // The private state is not restored yet.
            return;
        }
        if std::mem::take(&mut self.force_snapshot_point) {
            self.snapshot_points.insert(
                entry.seqno,
                SnapshotPoint {
                    view: entry.view,
                    store: self.store.clone(),
                    forced: true,
                },
            );
            return;
        }
        if interval == 0 {
            return;
        }
        let (previous, previous_keys) = self.snapshot_points.last_key_value().map_or(
            (self.snapshot_last, self.snapshot_last_keys),
            |(seqno, point)| (*seqno, point.store.present_keys()),
        );
        if entry.seqno < previous.saturating_add(interval.max(previous_keys)) {
            return;
        }
        if self.replaying {
            // A restart serializes at most the newest point it replays.
            self.snapshot_points.clear();
        }
        self.snapshot_points.insert(
            entry.seqno,
            SnapshotPoint {
                view: entry.view,
                store: self.store.clone(),
                forced: false,
            },
        );
    }

    fn refresh_service_status(&mut self) {
        self.service_status = self
            .store
            .get(SERVICE_MAP, SERVICE_KEY)
            .and_then(|bytes| serde_json::from_slice::<ServiceInfo>(bytes).ok())
            .map(|info| info.status);
    }

    /// The service's status (Opening, Open, Recovering), if the service exists.
    pub fn service_status(&self) -> Option<ServiceStatus> {
        self.service_status
    }

    /// Checks a signature transaction from another node: the root must be this replica's own
    /// root over the same entries, signed by a node of the service.
    fn check_signature(&mut self, record: &SignatureRecord) -> Result<(), String> {
        let root = record.root_digest().map_err(|error| error.to_string())?;
        if self.tree.root() != Some(root) {
            return Err(format!(
                "signature root differs from this replica's Merkle root at {}",
                record.seqno
            ));
        }
        let node: NodeInfo = self
            .store
            .get(NODES_MAP, record.node_id.as_bytes())
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .ok_or_else(|| format!("signature by unknown node {}", record.node_id))?;
        let signature = record.signature_der().map_err(|error| error.to_string())?;
        let key = match self.signer_keys.get(&record.node_id) {
            Some((cert, key)) if *cert == node.cert => key,
            _ => {
                let cert = Certificate::from_pem(&node.cert).map_err(|error| error.to_string())?;
                let key = cert.public_key().map_err(|error| error.to_string())?;
                if self.signer_keys.len() >= SIGNER_KEYS_MAX {
                    self.signer_keys.clear();
                }
                let entry = (node.cert, PrecomputedVerifyingKey::new(&key));
                &self
                    .signer_keys
                    .entry(record.node_id.clone())
                    .insert_entry(entry)
                    .into_mut()
                    .1
            }
        };
        key.verify_digest(&root, &signature)
            .map_err(|_| format!("signature at {} does not verify", record.seqno))
    }

    /// Drops every entry after `seqno` (Raft replaced an uncommitted suffix).
    fn roll_back_to(&mut self, seqno: u64, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if seqno < self.commit_seqno {
            return Err(CoreError::Restore(format!(
                "consensus asked to roll back to {seqno}, below the commit point {}",
                self.commit_seqno
            )));
        }
        let missing =
            || CoreError::Restore(format!("no state kept for seqno {seqno} to roll back to"));
        self.store = match self.rollback_points.range(..=seqno).next_back() {
            Some((&point, store)) => {
                // Bounded: points are at most ROLLBACK_POINT_ENTRIES_MAX entries apart within
                // a run, and a gap in the write sets ends the replay with an error.
                let mut store = store.clone();
                for at in point + 1..=seqno {
                    let write_set = self.rollback_write_sets.get(&at).ok_or_else(missing)?;
                    if !write_set.is_empty() {
                        store.apply(write_set, at);
                    }
                }
                store
            }
            None if seqno == 0 => Store::new(),
            None => return Err(missing()),
        };
        let _ = self.rollback_points.split_off(&(seqno + 1));
        let _ = self.rollback_write_sets.split_off(&(seqno + 1));
        let _ = self.snapshot_points.split_off(&(seqno + 1));
        let _ = self.snapshot_evidence.split_off(&(seqno + 1));
        let _ = self.conf_changes.split_off(&(seqno + 1));
        self.views.retain(|(_, first)| *first <= seqno);
        self.refresh_service_status();
        self.nodes_version += 1;
        self.tree.truncate(seqno);
        self.leaves.truncate(seqno as usize);
        // Keys below seqno + 1 on the left; the key itself is dropped too.
        self.signatures = self.signatures.split(&(seqno + 1)).0;
        self.secrets.roll_back_to(seqno);
        self.historical = HistoricalCache::default();
        self.ingested = seqno;
        self.unsigned_txs = 0;
        self.unsigned_since_ms = None;
        out.push(Action::Truncate {
            from_seqno: seqno + 1,
        });
        Ok(())
    }

    /// The primary keeps Raft's voters equal to the trusted nodes of the nodes table: it adds
    /// a node once governance trusts it and removes it once retired, one change at a time,
    /// handing leadership away first if it is the one to go.
    fn reconcile_membership(&mut self) -> Result<(), CoreError> {
        if !self.consensus.is_leader() || self.consensus.conf_change_pending() {
            return Ok(());
        }
        let mut trusted: Vec<u64> = Vec::new();
        for (key, value) in self.store.entries(NODES_MAP) {
            let Ok(info) = serde_json::from_slice::<NodeInfo>(value) else {
                continue;
            };
            if info.status == NodeStatus::Trusted {
                if let Ok(id) = std::str::from_utf8(key) {
                    trusted.push(raft_id(id));
                }
            }
        }
        let voters = self.consensus.voters();
        let learners = self.consensus.learners();
        // A trusted node first joins as a learner and becomes a voter once it holds everything
        // committed, so that its catching up never costs the configuration its quorum.
        if let Some(missing) = trusted
            .iter()
            .find(|id| !voters.contains(id) && !learners.contains(id))
        {
            let _ = self.consensus.propose_learner(*missing);
            return Ok(());
        }
        let commit = self.consensus.commit_index();
        if let Some(ready) = learners
            .iter()
            .find(|id| trusted.contains(id) && self.consensus.matched(**id) >= commit.max(1))
        {
            let _ = self.consensus.propose_voter_change(*ready, true);
            return Ok(());
        }
        if let Some(stale) = learners.iter().find(|id| !trusted.contains(id)) {
            let _ = self.consensus.propose_voter_change(*stale, false);
            return Ok(());
        }
        if let Some(extra) = voters.iter().find(|id| !trusted.contains(id)) {
            if *extra == self.raft_id {
                if let Some(successor) = voters.iter().find(|id| **id != self.raft_id) {
                    self.consensus.transfer_leader(*successor);
                }
            } else {
                let _ = self.consensus.propose_voter_change(*extra, false);
            }
        }
        Ok(())
    }

    /// Writes `write_set` as the next transaction. Returns its TxID.
    pub(crate) fn write_transaction(
        &mut self,
        kind: EntryKind,
        write_set: WriteSet,
        claims_digest: Digest,
        out: &mut Vec<Action>,
    ) -> Result<TxId, CoreError> {
        let (view, seqno) = self.consensus.next_tx();
        let tx_id = TxId::new(view, seqno);
        let public_bytes = write_set.domain_to_bytes(true);
        let private_bytes = write_set.domain_to_bytes(false);
        let bytes = encode_entry(
            &EntryParts {
                kind,
                tx_id,
                claims_digest,
                public: &public_bytes,
                private_plain: &private_bytes,
            },
            self.secrets.for_seqno(seqno),
        )
        .map_err(|error| CoreError::Write {
            tx_id,
            reason: error.to_string(),
        })?;
        // Ingesting the entry needs its write set, which is at hand: decrypting and decoding
        // the bytes just encoded was a tenth of a busy primary's core thread.
        self.own_proposal = Some((seqno, write_set));
        let proposed = self.consensus.propose(bytes);
        if let Err(error) = proposed {
            self.own_proposal = None;
            return Err(error.into());
        }
        self.drain_consensus(out)?;
        assert_eq!(
            self.ingested, seqno,
            "a proposal is ingested as soon as it is appended"
        );
        assert!(self.own_proposal.is_none(), "ingesting takes the write set");
        Ok(tx_id)
    }

    /// Appends a signature transaction over everything before it.
    fn emit_signature(&mut self, out: &mut Vec<Action>) -> Result<(), CoreError> {
        if !self.consensus.accepts_proposals() {
            return Ok(());
        }
        let (view, seqno) = self.consensus.next_tx();
        assert_eq!(self.tree.len(), seqno - 1);
        let root = self
            .tree
            .root()
            .expect("a primary's ledger holds at least its no-op entry");
        let signature =
            self.config
                .node_key
                .sign_digest(&root)
                .map_err(|error| CoreError::Write {
                    tx_id: TxId::new(view, seqno),
                    reason: error.to_string(),
                })?;
        use base64::Engine as _;
        let record = SignatureRecord {
            view,
            seqno,
            root: hex::encode(root),
            node_id: self.node_id.clone(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
        };
        let mut write_set = WriteSet::new();
        // Serializing a plain struct to JSON cannot fail.
        let value = serde_json::to_vec(&record).expect("signature record serializes");
        write_set.put(SIGNATURES_MAP, SIGNATURE_KEY, &value);
        self.write_transaction(EntryKind::Signature, write_set, [0; 32], out)?;
        for read in &mut self.pending_reads {
            read.barrier.get_or_insert(seqno);
        }
        Ok(())
    }

    /// Records this node as the first node of a service (genesis or recovery): Trusted in the
    /// nodes table, and the only initial voter.
    fn write_first_node(&self, write_set: &mut WriteSet) {
        let node = NodeInfo {
            cert: self.config.node_cert.to_pem(),
            status: NodeStatus::Trusted,
            rpc_address: self.config.rpc_address.clone(),
            node_address: Some(self.config.node_address.clone()).filter(|a| !a.is_empty()),
            evidence: Some(
                serde_json::to_value(&self.config.evidence).expect("evidence serializes"),
            ),
        };
        let record = serde_json::to_vec(&node).expect("a node record serializes");
        write_set.put(NODES_MAP, self.node_id.as_bytes(), &record);
        write_set.put(
            RAFT_MAP,
            GENESIS_VOTERS_KEY,
            format!("[{}]", self.raft_id).as_bytes(),
        );
    }

    fn write_genesis(
        &mut self,
        members: &[Certificate],
        out: &mut Vec<Action>,
    ) -> Result<(), CoreError> {
        use charter_gov::tables as gov;
        let json = |value: &dyn erased::Json| value.to_json();
        let mut write_set = WriteSet::new();
        let service = ServiceInfo {
            cert: self.config.service_cert.to_pem(),
            status: ServiceStatus::Opening,
        };
        write_set.put(SERVICE_MAP, SERVICE_KEY, &json(&service));
        self.write_first_node(&mut write_set);
        for member in members {
            let info = gov::MemberInfo {
                cert: member.to_pem(),
                status: gov::MemberStatus::Accepted,
                member_data: None,
                public_encryption_key: self
                    .config
                    .genesis_recovery_keys
                    .get(&member.fingerprint_hex())
                    .cloned(),
            };
            write_set.put(
                gov::MEMBERS_MAP,
                member.fingerprint_hex().as_bytes(),
                &json(&info),
            );
        }
        write_set.put(
            gov::CONSTITUTION_MAP,
            gov::CONSTITUTION_KEY.as_bytes(),
            charter_gov::constitution::DEFAULT_CONSTITUTION.as_bytes(),
        );
        // The first node's own platform and code are what the network starts with; governance
        // changes both manifests afterwards.
        let platform = self.config.evidence.platform.as_str();
        write_set.put(
            gov::TEE_MANIFEST_MAP,
            platform.as_bytes(),
            br#"{"status":"Allowed"}"#,
        );
        write_set.put(
            gov::CODE_MANIFEST_MAP,
            self.config.evidence.measurement.as_bytes(),
            br#"{"status":"AllowedToJoin"}"#,
        );
        let threshold = gov::ServiceConfig {
            recovery_threshold: 1,
        };
        write_set.put(
            gov::SERVICE_CONFIG_MAP,
            gov::SERVICE_CONFIG_KEY.as_bytes(),
            &json(&threshold),
        );
        // Recovery shares for the genesis members that have recovery keys.
        let mut tx = Tx::new(self.store.snapshot());
        for (map, entries) in write_set.maps {
            for (key, value) in entries {
                if let Some(value) = value {
                    tx.put(&map, &key, &value);
                }
            }
        }
        let (start, secret) = self.secrets.latest();
        let secret = secret.clone();
        self.deal_if_needed(&mut tx, (start, &secret));
        self.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
        Ok(())
    }

    /// A receipt for a committed transaction, or why there is none.
    pub fn receipt(&self, tx_id: TxId) -> Result<Receipt, TxStatus> {
        let status = self.tx_status(tx_id);
        if status != TxStatus::Committed {
            return Err(status);
        }
        let (&signature_seqno, record) = self
            .signatures
            .range(tx_id.seqno + 1..)
            .next()
            .ok_or(TxStatus::Pending)?;
        let proof = self
            .tree
            .proof(tx_id.seqno - 1, signature_seqno - 1)
            .ok_or(TxStatus::Unknown)?;
        let node: NodeInfo = self
            .store
            .get(NODES_MAP, record.node_id.as_bytes())
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .ok_or(TxStatus::Unknown)?;
        let cert = Certificate::from_pem(&node.cert).map_err(|_| TxStatus::Unknown)?;
        // Receipt::new needs the signer's P-384 key; a node record without one has no receipt.
        cert.public_key().map_err(|_| TxStatus::Unknown)?;
        let signature = record.signature_der().map_err(|_| TxStatus::Unknown)?;
        let leaf = *self
            .leaves
            .get((tx_id.seqno - 1) as usize)
            .ok_or(TxStatus::Unknown)?;
        Ok(Receipt::new(
            &cert,
            &signature,
            &proof,
            &leaf.write_set_digest,
            &commit_evidence(self.secrets.for_seqno(tx_id.seqno), tx_id),
            &leaf.claims_digest,
            Vec::new(),
        ))
    }

    /// Registers an application; requests under `/app` that the key-value app does not serve
    /// go to the applications in registration order.
    pub fn register_app(&mut self, app: Box<dyn crate::app::Application>) {
        self.apps.push(app);
    }

    pub(crate) fn take_apps(&mut self) -> Vec<Box<dyn crate::app::Application>> {
        std::mem::take(&mut self.apps)
    }

    pub(crate) fn restore_apps(&mut self, apps: Vec<Box<dyn crate::app::Application>>) {
        assert!(
            self.apps.is_empty(),
            "applications cannot register while one runs"
        );
        self.apps = apps;
    }

    /// A historical transaction: from the cache, or asked of the host.
    pub(crate) fn historical(
        &mut self,
        tx_id: TxId,
        out: &mut Vec<Action>,
    ) -> crate::app::Historical {
        use crate::app::Historical;
        if tx_id.seqno == 0
            || tx_id.seqno > self.ingested
            || self.term_at(tx_id.seqno) != Some(tx_id.view)
        {
            return Historical::Unknown;
        }
        if let Some(found) = self.historical.get(tx_id.seqno) {
            return found;
        }
        if self.historical.pending.insert(tx_id.seqno) {
            out.push(Action::ReadEntries {
                from_seqno: tx_id.seqno,
                to_seqno: tx_id.seqno,
            });
        }
        Historical::Loading
    }

    /// Checks an entry the host read back against the Merkle tree, decrypts and caches it.
    fn historical_arrived(&mut self, seqno: u64, bytes: Option<Vec<u8>>) {
        use crate::app::{Historical, HistoricalTx};
        if !self.historical.pending.remove(&seqno) {
            return;
        }
        let result = (|| -> Result<HistoricalTx, String> {
            let bytes = bytes.ok_or_else(|| {
                if seqno <= self.base_seqno {
                    format!(
                        "this node started from a snapshot at seqno {} and its ledger files do \
                         not hold the entries up to it: give it another node's ledger in \
                         read_only_ledger_dirs, or ask a node that holds the whole ledger",
                        self.base_seqno
                    )
                } else {
                    "the ledger files do not hold this entry".to_owned()
                }
            })?;
            let entry = decode_entry(&bytes).map_err(|error| error.to_string())?;
            if entry.tx_id.seqno != seqno {
                return Err(format!(
                    "the files hold {} where seqno {seqno} belongs",
                    entry.tx_id
                ));
            }
            let expected = self
                .tree
                .leaf(seqno - 1)
                .ok_or("no Merkle leaf for this seqno")?;
            if entry.leaf() != expected {
                return Err(
                    "the entry in the ledger files does not match the Merkle tree".to_owned(),
                );
            }
            let mut write_set = if entry.public.is_empty() {
                WriteSet::new()
            } else {
                WriteSet::decode(entry.public).map_err(|error| error.to_string())?
            };
            let private = entry
                .decrypt_private(self.secrets.for_seqno(seqno), &bytes)
                .map_err(|error| error.to_string())?;
            if !private.is_empty() {
                write_set.merge(WriteSet::decode(&private).map_err(|error| error.to_string())?);
            }
            Ok(HistoricalTx {
                tx_id: entry.tx_id,
                write_set,
                claims_digest: entry.claims_digest,
            })
        })();
        let value = match result {
            Ok(found) => Historical::Ready(found),
            Err(reason) => Historical::Corrupt(reason),
        };
        self.historical.insert(seqno, value);
    }

    /// Starts a read-write transaction over the current state.
    pub(crate) fn begin(&self) -> Tx {
        Tx::new(self.store.snapshot())
    }

    fn handle_request(
        &mut self,
        request: &Request,
        out: &mut Vec<Action>,
    ) -> Result<Response, CoreError> {
        crate::endpoints::handle(self, request, out)
    }
}

/// Header asking for a linearizable read (value `linearizable`): the answer waits until this
/// node has confirmed, through a committed signature written after the read, that it was still
/// the primary and that what it read is committed. Followers forward such reads to the primary.
pub const READ_CONSISTENCY_HEADER: &str = "x-charter-read-consistency";

pub(crate) fn wants_linearizable_read(request: &Request) -> bool {
    request
        .header(READ_CONSISTENCY_HEADER)
        .is_some_and(|value| value.eq_ignore_ascii_case("linearizable"))
}

/// Where a write that reached a follower goes.
enum Forwarding {
    /// To the primary with this Raft ID.
    To(u64),
    /// Nowhere: no primary is known.
    NoPrimary,
}

/// Header the host adds to a request another node forwarded; such a request is never forwarded
/// again (a node that is no longer primary answers it with 503 instead).
pub const FORWARDED_HEADER: &str = "x-charter-forwarded-by";

/// The Raft configuration the network started with, under [`GENESIS_VOTERS_KEY`]: a JSON list of
/// Raft IDs.
pub const RAFT_MAP: &str = charter_ledger::tables::RAFT_MAP;
/// Key of the genesis voters in [`RAFT_MAP`].
pub const GENESIS_VOTERS_KEY: &[u8] = b"genesis_voters";

/// A node's Raft ID: the first 64 bits of its node ID (never 0, which Raft reserves).
pub fn raft_id(node_id_hex: &str) -> u64 {
    let prefix = node_id_hex.get(..16).unwrap_or(node_id_hex);
    u64::from_str_radix(prefix, 16).unwrap_or(0).max(1)
}

/// The ledger bytes of a log entry: the entry itself, or the stored form of Raft's no-op and
/// configuration-change entries.
fn ledger_bytes(entry: &LogEntry) -> Vec<u8> {
    let tx_id = TxId::new(entry.view, entry.seqno);
    match entry.kind {
        LogKind::ConfChange => encode_conf_change(tx_id, &entry.data),
        LogKind::Normal if entry.data.is_empty() => encode_noop(tx_id),
        LogKind::Normal => entry.data.clone(),
    }
}

/// Largest number of historical transactions kept in memory.
pub const HISTORICAL_CACHE_ENTRIES_MAX: usize = 10_000;

/// A bounded cache of historical transactions, evicting the oldest insertion first.
#[derive(Default)]
struct HistoricalCache {
    entries: HashMap<u64, crate::app::Historical>,
    order: std::collections::VecDeque<u64>,
    pending: std::collections::BTreeSet<u64>,
}

impl HistoricalCache {
    fn get(&self, seqno: u64) -> Option<crate::app::Historical> {
        self.entries.get(&seqno).cloned()
    }

    fn insert(&mut self, seqno: u64, value: crate::app::Historical) {
        if self.entries.insert(seqno, value).is_none() {
            self.order.push_back(seqno);
        }
        while self.order.len() > HISTORICAL_CACHE_ENTRIES_MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.entries.remove(&oldest);
            }
        }
        assert!(self.entries.len() <= HISTORICAL_CACHE_ENTRIES_MAX);
    }
}

mod erased {
    /// Serializes records to JSON bytes without naming serde in every call.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            // The records are plain structs of strings; serialization cannot fail.
            serde_json::to_vec(self).expect("record serializes")
        }
    }
}
