//! Charter's consensus: raft-rs driven as a sans-I/O state machine whose log is the ledger.
//!
//! The caller feeds ticks, peer messages and durability notices, and drains [`Output`]s:
//! entries to append to the ledger, hard state to persist, messages to send (some only once
//! the matching appends are durable; a leader's appends once the caller releases them, merged)
//! and newly committed indices. Election timeouts are
//! drawn from a seeded RNG, never from raft-rs's thread RNG, so runs are reproducible.
//!
//! ```
//! use charter_consensus::{Consensus, ConsensusConfig, Output};
//! let mut consensus = Consensus::new(&ConsensusConfig::single(1, 7), Default::default()).unwrap();
//! consensus.campaign().unwrap();
//! let mut out = Vec::new();
//! consensus.drain(&mut out);
//! assert!(consensus.is_leader());
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, RawNode, StateRole, Storage, StorageError};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Errors of the consensus crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    /// This node is not the leader, so it cannot propose.
    #[error("not the primary")]
    NotLeader,
    /// A message from a peer could not be decoded.
    #[error("malformed consensus message: {0}")]
    MalformedMessage(String),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The restored log or snapshot base is inconsistent.
    #[error("cannot restore the Raft log: {0}")]
    Restore(String),
}

/// What a log entry carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogKind {
    /// A ledger entry (or, with empty data, raft's own leader no-op entry).
    #[default]
    Normal,
    /// A configuration change: `data` is a protobuf `ConfChangeV2`.
    ConfChange,
}

/// One log entry as the ledger stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Raft term.
    pub view: u64,
    /// Raft index.
    pub seqno: u64,
    /// Ledger entry bytes; empty for raft's own leader no-op entries; protobuf for
    /// configuration changes.
    pub data: Vec<u8>,
    /// What the entry carries.
    pub kind: LogKind,
}

/// Appends a leader has in flight to one follower before it waits for an answer (raft-rs's
/// `max_inflight_msgs`). raft-rs makes an append per proposal while the window is open; those
/// are held and merged (see [`Consensus::release_appends`]), so the window counts proposals,
/// not messages. It must cover the proposals of a commit round trip under load (about 16,000
/// a second times 10-20 ms): with 16, the leader was out of window at 70% of its signatures,
/// which then waited 5.6 ms (p50) for an answer before they went out.
pub const INFLIGHT_APPENDS_MAX: usize = 4_096;

/// Entry bytes beyond which a held append is not extended further (raft-rs's own message
/// limit, `max_size_per_msg`, is the same).
const MERGED_APPEND_BYTES_MAX: usize = 1 << 20;

/// How far behind the commit point a peer may be for a primary's [`Consensus::compact`] to
/// keep the entries it still lacks. A peer further behind must start again from a snapshot
/// (it shows in [`Consensus::peers_needing_snapshot`]), so that one dead peer cannot make
/// the primary hold its whole log.
pub const LAGGING_PEER_ENTRIES_MAX: u64 = 1_000_000;

/// Durable Raft state besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardStateRecord {
    /// Current term.
    pub term: u64,
    /// Vote in the current term (0 = none).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// What a node restores from disk at start.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// Log entries in order: from seqno 1, or from the seqno after the snapshot's.
    pub entries: Vec<LogEntry>,
    /// Hard state saved last.
    pub hard_state: HardStateRecord,
    /// The committed snapshot file the log continues from, if the node does not hold the
    /// ledger from seqno 1. Consensus does not read it: the node core decodes it and passes
    /// the Raft part as [`ConsensusConfig::base`].
    pub snapshot: Option<Vec<u8>>,
}

/// The point a log continues from when the entries before it are not held (the node started
/// from a snapshot): the Raft part of that snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogBase {
    /// Seqno of the last entry the snapshot covers; the log holds entries from `seqno + 1`.
    pub seqno: u64,
    /// View (term) of that entry.
    pub view: u64,
    /// Every configuration change (protobuf `ConfChangeV2`) up to `seqno`, in log order; the
    /// voters at `seqno` are the initial voters changed by each.
    pub conf_changes: Vec<Vec<u8>>,
}

/// Configuration of one Raft member.
#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    /// This node's Raft ID (non-zero).
    pub id: u64,
    /// Voting members' Raft IDs, including this one.
    pub voters: Vec<u64>,
    /// Minimum election timeout in ticks; timeouts are drawn from `[min, 2 * min)`.
    pub election_timeout_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Seed of the election-timeout RNG.
    pub seed: u64,
    /// Where the log starts when the node started from a snapshot; `None` for a log from
    /// seqno 1. `voters` are then still the initial voters, changed by the base's changes.
    pub base: Option<LogBase>,
}

impl ConsensusConfig {
    /// A single-voter configuration.
    pub fn single(id: u64, seed: u64) -> ConsensusConfig {
        ConsensusConfig {
            id,
            voters: vec![id],
            election_timeout_ticks: 10,
            heartbeat_ticks: 2,
            seed,
            base: None,
        }
    }
}

/// Work for the caller, in the order it must be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Append these entries to the ledger (they may replace a conflicting suffix from
    /// `entries[0].seqno` on).
    Append(Vec<LogEntry>),
    /// Persist this hard state.
    HardState(HardStateRecord),
    /// Make everything appended so far durable, then call [`Consensus::on_durable`] with this token.
    Sync(u64),
    /// Send this encoded message to peer `to`.
    Send {
        /// Raft ID of the peer.
        to: u64,
        /// Protobuf bytes of the raft message.
        bytes: Vec<u8>,
    },
    /// Entries up to this index are committed by Raft.
    Committed(u64),
    /// A committed configuration change took effect: these are now the voters.
    ConfChanged {
        /// Voting members' Raft IDs.
        voters: Vec<u64>,
    },
    /// Leadership or term changed.
    Role {
        /// Whether this node now leads.
        is_leader: bool,
        /// Current term.
        term: u64,
    },
}

/// raft-rs's in-memory log, except that it never hands out a Raft snapshot.
///
/// Charter replicates the ledger entry by entry and starts nodes from ledger snapshots, which
/// carry the key-value state that a Raft snapshot of raft-rs's memory storage would lack. If a
/// leader ever needs entries it does not hold (it started from a snapshot itself and a peer is
/// further behind), raft-rs asks for a snapshot: this storage refuses ("temporarily
/// unavailable", so raft-rs keeps the peer waiting instead of failing) and records the peer,
/// which [`Consensus::peers_needing_snapshot`] reports.
#[derive(Clone)]
struct LogStorage {
    memory: MemStorage,
    snapshot_requests: Arc<Mutex<BTreeSet<u64>>>,
}

impl Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.memory.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.memory.entries(low, high, max_size, context)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.memory.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.memory.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.memory.last_index()
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A poisoned lock only loses the report, never the refusal.
        if let Ok(mut peers) = self.snapshot_requests.lock() {
            peers.insert(to);
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// The configuration after applying `changes` (protobuf `ConfChangeV2`s) to `voters`, worked
/// out by a scratch raft-rs node so that joint configurations come out exactly as a live node
/// would have them.
fn conf_state_after(
    config: &ConsensusConfig,
    changes: &[Vec<u8>],
) -> Result<ConfState, ConsensusError> {
    let storage = MemStorage::new_with_conf_state(ConfState::from((config.voters.clone(), vec![])));
    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_timeout_ticks,
        heartbeat_tick: config.heartbeat_ticks,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut scratch = RawNode::new(&raft_config, storage, &logger)?;
    for bytes in changes {
        let change: ConfChangeV2 = protobuf::Message::parse_from_bytes(bytes)
            .map_err(|error| ConsensusError::Restore(format!("configuration change: {error}")))?;
        scratch.apply_conf_change(&change)?;
    }
    Ok(scratch.raft.prs().conf().to_conf_state())
}

/// raft-rs wrapped for a sans-I/O core.
pub struct Consensus {
    node: RawNode<LogStorage>,
    rng: ChaCha20Rng,
    min_timeout: usize,
    /// Messages that may go out only after the ready with this number is durable.
    waiting_messages: Vec<(u64, Vec<Message>)>,
    /// The last sync handed out that is not yet durable. While one is, later readies wait for
    /// a sync too: raft-rs takes a ready reported persisted as the persistence of every ready
    /// before it.
    sync_in_flight: Option<u64>,
    last_role: Option<(bool, u64)>,
    /// A leader's appends since the last [`Consensus::release_appends`].
    held_appends: Vec<Message>,
}

fn to_raft_entry(entry: &LogEntry) -> Entry {
    let mut raft_entry = Entry::default();
    raft_entry.set_entry_type(match entry.kind {
        LogKind::Normal => EntryType::EntryNormal,
        LogKind::ConfChange => EntryType::EntryConfChangeV2,
    });
    raft_entry.term = entry.view;
    raft_entry.index = entry.seqno;
    raft_entry.data = entry.data.clone().into();
    raft_entry
}

fn from_raft_entry(entry: &Entry) -> LogEntry {
    LogEntry {
        view: entry.term,
        seqno: entry.index,
        data: entry.data.to_vec(),
        kind: match entry.get_entry_type() {
            EntryType::EntryNormal => LogKind::Normal,
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => LogKind::ConfChange,
        },
    }
}

fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2, ConsensusError> {
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => protobuf::Message::parse_from_bytes(&entry.data)
            .map_err(|error| ConsensusError::MalformedMessage(error.to_string())),
        // Charter proposes only V2 changes; a V1 change in a log is not Charter's.
        EntryType::EntryConfChange => Err(ConsensusError::MalformedMessage(
            "version 1 configuration changes are not supported".to_owned(),
        )),
        EntryType::EntryNormal => Err(ConsensusError::MalformedMessage(
            "not a configuration change".to_owned(),
        )),
    }
}

impl Consensus {
    /// A Raft member restored from `restored` (empty for a new network).
    ///
    /// # Errors
    /// [`ConsensusError::Raft`] if the configuration or restored state is inconsistent.
    pub fn new(config: &ConsensusConfig, restored: Restored) -> Result<Consensus, ConsensusError> {
        assert!(config.id != 0);
        assert!(config.election_timeout_ticks > config.heartbeat_ticks);
        let (base_seqno, base_view) = config
            .base
            .as_ref()
            .map_or((0, 0), |base| (base.seqno, base.view));
        for (offset, entry) in restored.entries.iter().enumerate() {
            let expected = base_seqno + 1 + offset as u64;
            if entry.seqno != expected {
                return Err(ConsensusError::Restore(format!(
                    "entry {} found where {expected} was expected",
                    entry.seqno
                )));
            }
        }
        let conf_state = match &config.base {
            None => ConfState::from((config.voters.clone(), vec![])),
            Some(base) => conf_state_after(config, &base.conf_changes)?,
        };
        let storage = MemStorage::new_with_conf_state(conf_state.clone());
        let last_index = restored
            .entries
            .last()
            .map_or(base_seqno, |entry| entry.seqno);
        // Everything up to the base is committed: the snapshot was taken at a committed point.
        let commit = restored.hard_state.commit.max(base_seqno).min(last_index);
        {
            let mut writer = storage.wl();
            if config.base.is_some() {
                let mut snapshot = Snapshot::default();
                let metadata = snapshot.mut_metadata();
                metadata.index = base_seqno;
                metadata.term = base_view;
                metadata.set_conf_state(conf_state);
                writer.apply_snapshot(snapshot)?;
            }
            let entries: Vec<Entry> = restored.entries.iter().map(to_raft_entry).collect();
            writer.append(&entries)?;
            let mut hard_state = HardState::default();
            hard_state.term = restored
                .hard_state
                .term
                .max(base_view)
                .max(restored.entries.last().map_or(0, |entry| entry.view));
            hard_state.vote = restored.hard_state.vote;
            hard_state.commit = commit;
            writer.set_hardstate(hard_state);
        }
        let storage = LogStorage {
            memory: storage,
            snapshot_requests: Arc::new(Mutex::new(BTreeSet::new())),
        };
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_timeout_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: commit,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: INFLIGHT_APPENDS_MAX,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&raft_config, storage, &logger)?;
        // Membership is the initial voters changed by every committed configuration change.
        for entry in restored
            .entries
            .iter()
            .filter(|entry| entry.seqno <= commit && entry.kind == LogKind::ConfChange)
        {
            let change = decode_conf_change(&to_raft_entry(entry))?;
            let conf_state = node.apply_conf_change(&change)?;
            node.mut_store().memory.wl().set_conf_state(conf_state);
        }
        let mut consensus = Consensus {
            node,
            rng: ChaCha20Rng::seed_from_u64(config.seed),
            min_timeout: config.election_timeout_ticks,
            waiting_messages: Vec::new(),
            held_appends: Vec::new(),
            sync_in_flight: None,
            last_role: None,
        };
        consensus.redraw_timeout();
        Ok(consensus)
    }

    fn redraw_timeout(&mut self) {
        let span = self.min_timeout as u64;
        let timeout = self.min_timeout + (self.rng.next_u64() % span) as usize;
        self.node.raft.set_randomized_election_timeout(timeout);
    }

    /// raft-rs redraws its election timeout from the thread RNG whenever it resets the
    /// election clock; replace that draw with one from the seeded RNG so runs are reproducible.
    fn after_raft_call(&mut self) {
        if self.node.raft.election_elapsed == 0 {
            self.redraw_timeout();
        }
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.node.tick();
        self.after_raft_call();
    }

    /// Starts an election now (a single voter wins at once).
    ///
    /// # Errors
    /// [`ConsensusError::Raft`] if raft-rs refuses.
    pub fn campaign(&mut self) -> Result<(), ConsensusError> {
        let result = self.node.campaign();
        self.after_raft_call();
        Ok(result?)
    }

    /// Handles a message from a peer.
    ///
    /// # Errors
    /// [`ConsensusError::MalformedMessage`] if it does not decode; raft errors otherwise.
    pub fn step(&mut self, bytes: &[u8]) -> Result<(), ConsensusError> {
        let message: Message = protobuf::Message::parse_from_bytes(bytes)
            .map_err(|error| ConsensusError::MalformedMessage(error.to_string()))?;
        if message.get_msg_type() == MessageType::MsgSnapshot {
            // Charter leaders never send Raft snapshots (see `LogStorage`); one would carry no
            // key-value state, so it is refused rather than installed.
            return Err(ConsensusError::MalformedMessage(
                "Raft snapshots are not accepted: nodes start from ledger snapshots".to_owned(),
            ));
        }
        let result = self.node.step(message);
        self.after_raft_call();
        Ok(result?)
    }

    /// The seqno the next proposal will get, and the view it will carry.
    pub fn next_tx(&self) -> (u64, u64) {
        (
            self.node.raft.term,
            self.node.raft.raft_log.last_index() + 1,
        )
    }

    /// Appends `data` (a ledger entry built for [`Consensus::next_tx`]) as the next entry.
    ///
    /// # Errors
    /// [`ConsensusError::NotLeader`] unless this node leads.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(), ConsensusError> {
        if !self.accepts_proposals() {
            return Err(ConsensusError::NotLeader);
        }
        let (_, expected) = self.next_tx();
        self.node.propose(Vec::new(), data).map_err(|error| {
            ConsensusError::MalformedMessage(format!(
                "raft refused a proposal ({error}): leader {}, transferring to {:?}, voters {:?}, learners {:?}",
                self.is_leader(),
                self.node.raft.lead_transferee,
                self.voters(),
                self.learners()
            ))
        })?;
        assert_eq!(self.node.raft.raft_log.last_index(), expected);
        Ok(())
    }

    /// Proposes adding (`add == true`) or removing a voter; raft-rs enters and leaves joint
    /// consensus as needed.
    ///
    /// # Errors
    /// [`ConsensusError::NotLeader`], or raft's refusal (e.g. a change already pending).
    pub fn propose_voter_change(&mut self, raft_id: u64, add: bool) -> Result<(), ConsensusError> {
        self.propose_change(
            raft_id,
            if add {
                ConfChangeType::AddNode
            } else {
                ConfChangeType::RemoveNode
            },
        )
    }

    /// Proposes adding `raft_id` as a learner: it receives the log but does not vote, so a new
    /// node catching up cannot cost the configuration its quorum. Promote it with
    /// [`Consensus::propose_voter_change`] once it has caught up.
    ///
    /// # Errors
    /// As [`Consensus::propose_voter_change`].
    pub fn propose_learner(&mut self, raft_id: u64) -> Result<(), ConsensusError> {
        self.propose_change(raft_id, ConfChangeType::AddLearnerNode)
    }

    /// Raft IDs of the current learners.
    pub fn learners(&self) -> Vec<u64> {
        let mut learners: Vec<u64> = self
            .node
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        learners.sort_unstable();
        learners
    }

    /// The highest seqno the leader knows `raft_id` holds (0 if unknown or not the leader).
    pub fn matched(&self, raft_id: u64) -> u64 {
        self.node
            .raft
            .prs()
            .get(raft_id)
            .map_or(0, |progress| progress.matched)
    }

    fn propose_change(
        &mut self,
        raft_id: u64,
        change_type: ConfChangeType,
    ) -> Result<(), ConsensusError> {
        if !self.is_leader() {
            return Err(ConsensusError::NotLeader);
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = raft_id;
        let mut change = ConfChangeV2::default();
        // Joint consensus (C_old,new, then C_new) even for a single change, leaving the
        // joint configuration automatically once it commits.
        change.set_transition(ConfChangeTransition::Implicit);
        change.set_changes(vec![single].into());
        self.node.propose_conf_change(Vec::new(), change)?;
        Ok(())
    }

    /// Gives a node that joined with no configuration the network's initial voters, which it
    /// learns from the first ledger entry; the configuration changes in its log then apply on
    /// top of them as they did on every other node. Does nothing once the node has voters.
    ///
    /// # Errors
    /// [`ConsensusError::Raft`] if raft-rs refuses the change.
    pub fn adopt_initial_voters(&mut self, voters: &[u64]) -> Result<(), ConsensusError> {
        if !self.voters().is_empty() {
            return Ok(());
        }
        for voter in voters {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ConfChangeType::AddNode);
            single.node_id = *voter;
            let mut change = ConfChangeV2::default();
            change.set_changes(vec![single].into());
            let conf_state = self.node.apply_conf_change(&change)?;
            self.node.mut_store().memory.wl().set_conf_state(conf_state);
        }
        Ok(())
    }

    /// Whether a configuration change is proposed but not yet applied.
    pub fn conf_change_pending(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// Replication progress as the leader sees it: each peer's Raft ID and highest index
    /// known to match this log (empty on followers).
    pub fn progress(&self) -> Vec<(u64, u64)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut progress: Vec<(u64, u64)> = self
            .node
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched))
            .collect();
        progress.sort_unstable();
        progress
    }

    /// Current voters (both halves of a joint configuration).
    pub fn voters(&self) -> Vec<u64> {
        let mut voters: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        voters.sort_unstable();
        voters
    }

    /// Hands leadership to `raft_id` (before this node leaves the configuration).
    pub fn transfer_leader(&mut self, raft_id: u64) {
        self.node.transfer_leader(raft_id);
        self.after_raft_call();
    }

    /// A leader that a committed configuration change removed stays leader in raft-rs (a TODO
    /// in its `post_conf_change`), and panics on its next commit, its own progress gone. It
    /// steps down instead, in the same term; the remaining voters elect a new leader. (A leader
    /// removes others only, handing leadership over before it goes, but it may win an election
    /// with its own removal, proposed by the previous leader, still uncommitted in its log.)
    fn step_down_if_removed(&mut self) {
        let id = self.node.raft.id;
        if self.is_leader() && self.node.raft.prs().get(id).is_none() {
            let term = self.node.raft.term;
            self.node.raft.become_follower(term, raft::INVALID_ID);
            self.after_raft_call();
        }
        assert!(!self.is_leader() || self.node.raft.prs().get(id).is_some());
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Whether this node leads and raft-rs would take a proposal now: not while it hands
    /// leadership over, nor once a configuration without it has taken effect (raft-rs drops
    /// proposals then).
    pub fn accepts_proposals(&self) -> bool {
        let raft = &self.node.raft;
        self.is_leader() && raft.lead_transferee.is_none() && raft.prs().get(raft.id).is_some()
    }

    /// The leader's Raft ID, if known.
    pub fn leader_id(&self) -> Option<u64> {
        let leader = self.node.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// Raft's commit index.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// First index the log holds an entry for: 1, one after the snapshot it started from, or
    /// where [`Consensus::compact`] left it.
    pub fn first_index(&self) -> u64 {
        self.node.raft.raft_log.first_index()
    }

    /// Drops the entries before `up_to` from the in-memory log, so that it does not grow for
    /// ever; the ledger files keep them. Never drops an entry that is not committed and
    /// applied. A primary also keeps what each peer still lacks, unless that peer is more
    /// than [`LAGGING_PEER_ENTRIES_MAX`] entries behind the commit point. The entry at the
    /// new first index stays, so that appends to a peer that holds it can name its term.
    /// Returns the first index now held.
    ///
    /// A peer that later needs a dropped entry is answered as if it needed a Raft snapshot:
    /// it is listed by [`Consensus::peers_needing_snapshot`] and must start from a ledger
    /// snapshot.
    pub fn compact(&mut self, up_to: u64) -> u64 {
        let log = &self.node.raft.raft_log;
        let commit = log.committed;
        let mut target = up_to.min(commit).min(log.applied);
        if self.is_leader() {
            let own = self.node.raft.id;
            for (id, progress) in self.node.raft.prs().iter() {
                let lagging = commit.saturating_sub(progress.matched) > LAGGING_PEER_ENTRIES_MAX;
                if *id != own && !lagging {
                    target = target.min(progress.matched);
                }
            }
        }
        let storage_last = self.node.store().last_index().unwrap_or(0);
        target = target.min(storage_last);
        if target > self.first_index() {
            // `target` is at most the storage's last index, the one case compact refuses.
            if let Err(error) = self.node.mut_store().memory.wl().compact(target) {
                panic!("raft storage refused to compact to {target}: {error}");
            }
        }
        self.first_index()
    }

    /// Term of the entry at `seqno`, if it is in the log (or is the snapshot point the log
    /// starts after).
    pub fn term_at(&self, seqno: u64) -> Option<u64> {
        if seqno == 0 || seqno > self.last_index() || seqno + 1 < self.first_index() {
            return None;
        }
        self.node.raft.raft_log.term(seqno).ok()
    }

    /// Peers that needed entries this leader does not hold (it started from a snapshot, or
    /// compacted its log, and they are further behind): raft-rs asked for a Raft snapshot to
    /// send them, which Charter never sends. Such a peer must itself start from a ledger
    /// snapshot.
    pub fn peers_needing_snapshot(&self) -> Vec<u64> {
        self.node
            .store()
            .snapshot_requests
            .lock()
            .map(|peers| peers.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Tells raft-rs that everything up to sync token `token` is durable, and releases the
    /// messages that were waiting for it into `out`.
    pub fn on_durable(&mut self, token: u64, out: &mut Vec<Output>) {
        self.node.on_persist_ready(token);
        if self.sync_in_flight.is_some_and(|number| number <= token) {
            self.sync_in_flight = None;
        }
        let mut still_waiting = Vec::new();
        for (number, messages) in self.waiting_messages.drain(..) {
            if number <= token {
                push_messages(out, messages);
            } else {
                still_waiting.push((number, messages));
            }
        }
        self.waiting_messages = still_waiting;
    }

    /// Collects pending work into `out`.
    pub fn drain(&mut self, out: &mut Vec<Output>) {
        let role = (self.is_leader(), self.term());
        if self.last_role != Some(role) {
            self.last_role = Some(role);
            out.push(Output::Role {
                is_leader: role.0,
                term: role.1,
            });
        }
        // Bounded: each ready either makes progress or there is none left.
        for _ in 0..64 {
            if !self.node.has_ready() {
                break;
            }
            let mut ready = self.node.ready();
            for message in ready.take_messages() {
                if message.get_msg_type() == MessageType::MsgAppend {
                    self.held_appends.push(message);
                } else {
                    push_messages(out, vec![message]);
                }
            }
            if !ready.snapshot().is_empty() {
                // A ready carries a snapshot only after a MsgSnapshot was stepped, and `step`
                // refuses those.
                unreachable!("Raft snapshots are refused in Consensus::step");
            }
            let committed = ready.take_committed_entries();
            let entries = ready.take_entries();
            if !entries.is_empty() {
                // raft-rs reads its own entries back from storage, so store them before advancing.
                if let Err(error) = self.node.mut_store().memory.wl().append(&entries) {
                    panic!("raft storage rejected entries it produced: {error}");
                }
                out.push(Output::Append(
                    entries.iter().map(from_raft_entry).collect(),
                ));
            }
            if let Some(hard_state) = ready.hs() {
                self.node
                    .mut_store()
                    .memory
                    .wl()
                    .set_hardstate(hard_state.clone());
                out.push(Output::HardState(HardStateRecord {
                    term: hard_state.term,
                    vote: hard_state.vote,
                    commit: hard_state.commit,
                }));
            }
            let persisted_messages = ready.take_persisted_messages();
            let number = ready.number();
            let must_sync = ready.must_sync();
            for entry in &committed {
                if entry.get_entry_type() != EntryType::EntryNormal {
                    // Committed entries come from our own log, so they decode.
                    if let Ok(change) = decode_conf_change(entry) {
                        if let Ok(conf_state) = self.node.apply_conf_change(&change) {
                            self.node.mut_store().memory.wl().set_conf_state(conf_state);
                            out.push(Output::ConfChanged {
                                voters: self.voters(),
                            });
                            self.step_down_if_removed();
                        }
                    }
                }
            }
            if let Some(last) = committed.last() {
                out.push(Output::Committed(last.index));
            }
            self.node.advance_append_async(ready);
            self.node.advance_apply();
            // A ready with nothing to persist counts as persisted at once, unless an earlier
            // one is still syncing: raft-rs would take it for that one's persistence too (and
            // a primary would count entries it has not made durable towards a commit).
            if must_sync || !persisted_messages.is_empty() || self.sync_in_flight.is_some() {
                if !persisted_messages.is_empty() {
                    self.waiting_messages.push((number, persisted_messages));
                }
                self.sync_in_flight = Some(number);
                out.push(Output::Sync(number));
            } else {
                self.node.on_persist_ready(number);
            }
        }
    }
}

impl Consensus {
    /// Sends the appends held since the last call, each run of appends to one follower that
    /// continue one another merged into one message (up to 1 MiB of entries). raft-rs makes an
    /// append per proposal; one per batch of proposals spares a message, a TLS record, an
    /// answer and a Raft step per transaction per follower. Callers release at the end of each
    /// batch of inputs; a held append waits no longer than that.
    pub fn release_appends(&mut self, out: &mut Vec<Output>) {
        if self.held_appends.is_empty() {
            return;
        }
        // Each message with the bytes of entry data it carries, kept as it grows.
        let mut merged: Vec<(Message, usize)> = Vec::with_capacity(self.held_appends.len());
        for message in self.held_appends.drain(..) {
            let bytes = entry_bytes(&message);
            let earlier = merged
                .iter_mut()
                .rev()
                .find(|(earlier, _)| earlier.to == message.to);
            match earlier {
                Some((earlier, earlier_bytes))
                    if *earlier_bytes < MERGED_APPEND_BYTES_MAX && continues(earlier, &message) =>
                {
                    *earlier_bytes += bytes;
                    extend_append(earlier, message);
                }
                _ => merged.push((message, bytes)),
            }
        }
        push_messages(
            out,
            merged.into_iter().map(|(message, _)| message).collect(),
        );
    }
}

/// The entry an append ends at (its last entry, or the one it follows if it has none).
fn append_end(message: &Message) -> (u64, u64) {
    message
        .entries
        .last()
        .map_or((message.index, message.log_term), |entry| {
            (entry.index, entry.term)
        })
}

/// Bytes of entry data in `message`.
fn entry_bytes(message: &Message) -> usize {
    message.entries.iter().map(|entry| entry.data.len()).sum()
}

/// Whether `later` is an append of the same term that starts where `earlier` ends.
fn continues(earlier: &Message, later: &Message) -> bool {
    earlier.get_msg_type() == MessageType::MsgAppend
        && later.get_msg_type() == MessageType::MsgAppend
        && earlier.term == later.term
        && append_end(earlier) == (later.index, later.log_term)
}

/// Appends `later`'s entries to `earlier`, which then carries the later commit index too.
fn extend_append(earlier: &mut Message, mut later: Message) {
    earlier.entries.extend(later.take_entries());
    if later.commit >= earlier.commit {
        earlier.commit = later.commit;
        earlier.commit_term = later.commit_term;
    }
}

fn push_messages(out: &mut Vec<Output>, messages: Vec<Message>) {
    for message in messages {
        let bytes = protobuf::Message::write_to_bytes(&message)
            .expect("encoding a raft message into memory cannot fail");
        out.push(Output::Send {
            to: message.to,
            bytes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(consensus: &mut Consensus) -> Vec<Output> {
        let mut all = Vec::new();
        for _ in 0..10 {
            let mut out = Vec::new();
            consensus.drain(&mut out);
            if out.is_empty() {
                break;
            }
            for output in &out {
                if let Output::Sync(token) = output {
                    consensus.on_durable(*token, &mut Vec::new());
                }
            }
            all.extend(out);
        }
        all
    }

    #[test]
    fn single_voter_commits_only_after_durable() {
        let mut consensus =
            Consensus::new(&ConsensusConfig::single(1, 1), Restored::default()).unwrap();
        consensus.campaign().unwrap();
        settle(&mut consensus);
        assert!(consensus.is_leader());
        let (view, seqno) = consensus.next_tx();
        assert_eq!((view, seqno), (1, 2)); // seqno 1 is the leader's no-op
        consensus.propose(b"entry".to_vec()).unwrap();
        let mut out = Vec::new();
        consensus.drain(&mut out);
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::Append(e) if e[0].seqno == 2)));
        assert!(!out.iter().any(|o| matches!(o, Output::Committed(2))));
        let token = out
            .iter()
            .find_map(|o| {
                if let Output::Sync(t) = o {
                    Some(*t)
                } else {
                    None
                }
            })
            .unwrap();
        consensus.on_durable(token, &mut Vec::new());
        let rest = settle(&mut consensus);
        assert!(
            rest.iter().any(|o| matches!(o, Output::Committed(2))),
            "{rest:?}"
        );
        assert_eq!(consensus.commit_index(), 2);
    }

    #[test]
    fn restart_keeps_log_and_moves_to_new_term() {
        let restored = Restored {
            entries: vec![
                LogEntry {
                    view: 1,
                    seqno: 1,
                    data: vec![],
                    kind: LogKind::Normal,
                },
                LogEntry {
                    view: 1,
                    seqno: 2,
                    data: b"a".to_vec(),
                    kind: LogKind::Normal,
                },
            ],
            hard_state: HardStateRecord {
                term: 1,
                vote: 1,
                commit: 2,
            },
            snapshot: None,
        };
        let mut consensus = Consensus::new(&ConsensusConfig::single(1, 1), restored).unwrap();
        consensus.campaign().unwrap();
        settle(&mut consensus);
        assert!(consensus.is_leader());
        assert_eq!(consensus.term(), 2);
        assert_eq!(consensus.next_tx(), (2, 4));
        assert_eq!(consensus.term_at(2), Some(1));
        assert_eq!(consensus.term_at(3), Some(2));
        assert_eq!(consensus.term_at(9), None);
    }

    #[test]
    fn same_seed_same_timeouts() {
        let timeouts = |seed| {
            let mut consensus =
                Consensus::new(&ConsensusConfig::single(1, seed), Restored::default()).unwrap();
            let mut seen = Vec::new();
            for _ in 0..100 {
                consensus.tick();
                seen.push(consensus.node.raft.randomized_election_timeout());
            }
            seen
        };
        assert_eq!(timeouts(5), timeouts(5));
    }

    fn entries(views: &[(u64, u64)]) -> Vec<LogEntry> {
        views
            .iter()
            .map(|(view, seqno)| LogEntry {
                view: *view,
                seqno: *seqno,
                data: format!("entry {seqno}").into_bytes(),
                kind: LogKind::Normal,
            })
            .collect()
    }

    fn pair_config(id: u64, base: Option<LogBase>) -> ConsensusConfig {
        ConsensusConfig {
            voters: vec![1, 2],
            base,
            ..ConsensusConfig::single(id, id)
        }
    }

    /// Delivers messages between two members until quiet, making everything durable at once.
    /// Returns the entries each appended, by member index.
    fn exchange(members: &mut [Consensus; 2]) -> [Vec<LogEntry>; 2] {
        exchange_among(members, &[])
    }

    /// Delivers messages between members (Raft IDs 1..=N) until quiet, dropping every message
    /// to or from a member in `down`, and making everything durable at once. Returns the
    /// entries each appended, by member index.
    fn exchange_among<const N: usize>(
        members: &mut [Consensus; N],
        down: &[u64],
    ) -> [Vec<LogEntry>; N] {
        let mut appended: [Vec<LogEntry>; N] = std::array::from_fn(|_| Vec::new());
        for _ in 0..100 {
            let mut quiet = true;
            for index in 0..N {
                let mut out = Vec::new();
                members[index].drain(&mut out);
                members[index].release_appends(&mut out);
                let mut released = Vec::new();
                for output in &out {
                    if let Output::Sync(token) = output {
                        members[index].on_durable(*token, &mut released);
                    }
                }
                out.extend(released);
                for output in out {
                    quiet = false;
                    match output {
                        Output::Send { to, bytes }
                            if !down.contains(&to) && !down.contains(&(index as u64 + 1)) =>
                        {
                            let _ = members[(to - 1) as usize].step(&bytes);
                        }
                        Output::Append(entries) => appended[index].extend(entries),
                        _ => {}
                    }
                }
            }
            if quiet {
                return appended;
            }
        }
        panic!("the members did not quiesce");
    }

    #[test]
    fn compaction_drops_committed_entries_but_keeps_what_a_peer_lacks() {
        let config = |id| ConsensusConfig {
            voters: vec![1, 2, 3],
            ..ConsensusConfig::single(id, id)
        };
        let mut members =
            [1, 2, 3].map(|id| Consensus::new(&config(id), Restored::default()).unwrap());
        members[0].campaign().unwrap();
        exchange_among(&mut members, &[]);
        assert!(members[0].is_leader());
        let propose = |members: &mut [Consensus; 3], count: usize, down: &[u64]| {
            for index in 0..count {
                members[0]
                    .propose(format!("entry {index}").into_bytes())
                    .unwrap();
                exchange_among(members, down);
            }
        };
        propose(&mut members, 20, &[]);
        let commit = members[0].commit_index();
        assert_eq!(commit, members[0].last_index());
        // Nothing past the commit point goes, and the entry at the new first index stays.
        assert_eq!(members[1].compact(10), 10);
        assert_eq!(members[1].term_at(9), None);
        assert_eq!(members[1].term_at(10), Some(1));
        assert_eq!(members[1].compact(u64::MAX), commit);
        assert_eq!(members[1].compact(5), commit, "compaction never goes back");
        // Member 3 stops answering: the leader keeps the entries it lacks, and member 3
        // catches up from them once it is back.
        let lacking = members[0].matched(3);
        propose(&mut members, 20, &[3]);
        assert!(
            members[0].commit_index() > commit + 10,
            "two members commit"
        );
        assert_eq!(members[0].compact(u64::MAX), lacking);
        assert_eq!(members[0].term_at(lacking), Some(1));
        members[0].propose(b"back".to_vec()).unwrap();
        let appended = exchange_among(&mut members, &[]);
        let seqnos: Vec<u64> = appended[2].iter().map(|entry| entry.seqno).collect();
        assert_eq!(seqnos.first(), Some(&(lacking + 1)), "{seqnos:?}");
        assert_eq!(members[2].last_index(), members[0].last_index());
        assert!(members[0].peers_needing_snapshot().is_empty());
        // Once every member holds everything, the leader compacts to its commit point.
        propose(&mut members, 1, &[]);
        let commit = members[0].commit_index();
        assert_eq!(members[0].compact(u64::MAX), commit);
        // A member that lacks compacted entries is reported, never sent a Raft snapshot.
        let behind = Consensus::new(&config(3), Restored::default()).unwrap();
        members[2] = behind;
        members[0].propose(b"after".to_vec()).unwrap();
        let appended = exchange_among(&mut members, &[]);
        assert!(appended[2].is_empty(), "{:?}", appended[2]);
        assert_eq!(members[0].peers_needing_snapshot(), vec![3]);
    }

    #[test]
    fn a_log_restored_after_a_base_answers_for_the_base_only() {
        let base = LogBase {
            seqno: 6,
            view: 2,
            conf_changes: Vec::new(),
        };
        let restored = Restored {
            entries: entries(&[(2, 7), (3, 8)]),
            ..Restored::default()
        };
        let config = ConsensusConfig {
            base: Some(base.clone()),
            ..ConsensusConfig::single(1, 1)
        };
        let consensus = Consensus::new(&config, restored).unwrap();
        assert_eq!(consensus.first_index(), 7);
        assert_eq!(consensus.last_index(), 8);
        assert_eq!(consensus.commit_index(), 6, "the base is committed");
        assert_eq!(consensus.term_at(6), Some(2));
        assert_eq!(consensus.term_at(5), None);
        assert_eq!(consensus.term_at(8), Some(3));
        assert_eq!(consensus.voters(), vec![1]);
        // Entries must continue the base.
        let gap = Restored {
            entries: entries(&[(2, 8)]),
            ..Restored::default()
        };
        assert!(matches!(
            Consensus::new(&config, gap),
            Err(ConsensusError::Restore(_))
        ));
        // The voters at the base are the initial voters changed by the base's changes.
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddNode);
        single.node_id = 2;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        let config = ConsensusConfig {
            base: Some(LogBase {
                conf_changes: vec![protobuf::Message::write_to_bytes(&change).unwrap()],
                ..base
            }),
            ..ConsensusConfig::single(1, 1)
        };
        let consensus = Consensus::new(&config, Restored::default()).unwrap();
        assert_eq!(consensus.voters(), vec![1, 2]);
        assert_eq!(consensus.last_index(), 6);
    }

    #[test]
    fn a_leader_replicates_to_a_member_that_started_from_a_base() {
        let log: Vec<(u64, u64)> = (1..=10).map(|seqno| (1, seqno)).collect();
        let leader = Consensus::new(
            &pair_config(1, None),
            Restored {
                entries: entries(&log),
                hard_state: HardStateRecord {
                    term: 1,
                    vote: 1,
                    commit: 6,
                },
                snapshot: None,
            },
        )
        .unwrap();
        let base = LogBase {
            seqno: 6,
            view: 1,
            conf_changes: Vec::new(),
        };
        let follower = Consensus::new(&pair_config(2, Some(base)), Restored::default()).unwrap();
        let mut members = [leader, follower];
        members[0].campaign().unwrap();
        let appended = exchange(&mut members);
        assert!(members[0].is_leader());
        // The follower received exactly the entries after its base (§5.3: the leader backs
        // off to the follower's last index and sends from there).
        let seqnos: Vec<u64> = appended[1].iter().map(|entry| entry.seqno).collect();
        assert_eq!(seqnos.first(), Some(&7), "{seqnos:?}");
        assert_eq!(members[1].last_index(), members[0].last_index());
        assert_eq!(members[1].term_at(9), Some(1));
        assert!(members[0].peers_needing_snapshot().is_empty());
    }

    #[test]
    fn held_appends_go_out_merged_per_follower_and_are_answered_once() {
        let leader = Consensus::new(&pair_config(1, None), Restored::default()).unwrap();
        let follower = Consensus::new(&pair_config(2, None), Restored::default()).unwrap();
        let mut members = [leader, follower];
        members[0].campaign().unwrap();
        exchange(&mut members);
        assert!(members[0].is_leader());
        let before = members[0].last_index();
        // Three proposals, each drained on its own as the core does: nothing leaves until the
        // release, which sends one append carrying all three.
        let mut out = Vec::new();
        for data in [b"a", b"b", b"c"] {
            members[0].propose(data.to_vec()).unwrap();
            members[0].drain(&mut out);
        }
        assert!(!out
            .iter()
            .any(|output| matches!(output, Output::Send { .. })));
        members[0].release_appends(&mut out);
        let sends: Vec<&Vec<u8>> = out
            .iter()
            .filter_map(|output| match output {
                Output::Send { to: 2, bytes } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(sends.len(), 1, "{out:?}");
        let message: Message = protobuf::Message::parse_from_bytes(sends[0]).unwrap();
        let seqnos: Vec<u64> = message.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(seqnos, [before + 1, before + 2, before + 3]);
        assert_eq!(message.index, before);
        for output in &out {
            if let Output::Sync(token) = output {
                members[0].on_durable(*token, &mut Vec::new());
            }
        }
        // The follower takes it whole, and its one answer commits all three.
        members[1].step(sends[0]).unwrap();
        let appended = exchange(&mut members);
        assert_eq!(members[1].last_index(), before + 3);
        assert_eq!(members[0].commit_index(), before + 3);
        let seqnos: Vec<u64> = appended[1].iter().map(|entry| entry.seqno).collect();
        assert_eq!(seqnos, [before + 1, before + 2, before + 3], "each once");
        // Appends that do not continue one another (another term here) stay apart.
        let mut first = Message::default();
        first.set_msg_type(MessageType::MsgAppend);
        first.term = 2;
        first.index = 5;
        first.log_term = 2;
        let mut second = first.clone();
        second.term = 3;
        assert!(continues(&first, &first.clone()));
        assert!(!continues(&first, &second));
        second.term = 2;
        second.index = 6;
        assert!(!continues(&first, &second), "a gap is never merged over");
        // A message past the size bound is not extended: the next one goes on its own.
        let mut big = first.clone();
        big.to = 2;
        let entry = Entry {
            index: 6,
            term: 2,
            data: vec![0u8; MERGED_APPEND_BYTES_MAX].into(),
            ..Entry::default()
        };
        big.set_entries(vec![entry].into());
        let mut next = first.clone();
        next.to = 2;
        next.index = 6;
        assert!(continues(&big, &next));
        members[0].held_appends = vec![big, next];
        let mut out = Vec::new();
        members[0].release_appends(&mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }

    #[test]
    fn a_leader_without_old_entries_never_sends_a_raft_snapshot() {
        let base = LogBase {
            seqno: 6,
            view: 1,
            conf_changes: Vec::new(),
        };
        let leader = Consensus::new(&pair_config(1, Some(base)), Restored::default()).unwrap();
        let empty = Consensus::new(&pair_config(2, None), Restored::default()).unwrap();
        let mut members = [leader, empty];
        members[0].campaign().unwrap();
        let appended = exchange(&mut members);
        assert!(members[0].is_leader());
        assert!(appended[1].is_empty(), "nothing can be replicated");
        assert_eq!(members[0].peers_needing_snapshot(), vec![2]);
        assert_eq!(members[1].last_index(), 0);
    }

    #[test]
    fn raft_snapshot_messages_are_refused() {
        let mut consensus =
            Consensus::new(&ConsensusConfig::single(1, 1), Restored::default()).unwrap();
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgSnapshot);
        message.to = 1;
        message.from = 2;
        message.term = 5;
        message.mut_snapshot().mut_metadata().index = 10;
        let bytes = protobuf::Message::write_to_bytes(&message).unwrap();
        assert!(matches!(
            consensus.step(&bytes),
            Err(ConsensusError::MalformedMessage(_))
        ));
        assert_eq!(consensus.last_index(), 0);
    }

    #[test]
    fn garbage_message_is_an_error() {
        let mut consensus =
            Consensus::new(&ConsensusConfig::single(1, 1), Restored::default()).unwrap();
        assert!(consensus.step(&[0xff, 0xff, 0xff]).is_err());
    }
}
