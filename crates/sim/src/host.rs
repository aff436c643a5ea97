//! A simulated host: it plays the host's part for one core (appends, truncations, syncs,
//! messages, responses) over a simulated disk that can be slow, lose what was not synced, keep
//! part of it, and tear the last entry it was writing.

use std::collections::VecDeque;

use charter_core::{
    raft_id, Action, HardStateRecord, Input, LogEntry, LogKind, Node, NodeConfig, Request,
    RequestId, Response, Restored, StartMode,
};
use charter_ledger::frame::{encode_frame, parse_frames, FrameError};

/// Most rounds of host work (a sync's durability, entries read back) one input may cause.
const HOST_ROUNDS_MAX: usize = 1000;
/// Most syncs in flight on one disk (a slow disk completes one per step or so).
const SYNCS_IN_FLIGHT_MAX: usize = 10_000;

/// One write to a node's disk, in the order the host issued it.
#[derive(Clone, Debug)]
pub(crate) enum DiskOp {
    Append(LogEntry, Vec<u8>),
    Truncate(u64),
    HardState(HardStateRecord),
}

/// A ledger and Raft state as a host keeps them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Disk {
    pub entries: Vec<LogEntry>,
    /// Entry bytes by seqno - 1, as the chunk files frame them.
    pub files: Vec<Vec<u8>>,
    pub hard_state: HardStateRecord,
    /// The first bytes of a frame whose write a crash cut short.
    pub torn_tail: Vec<u8>,
}

impl Disk {
    fn apply(&mut self, op: DiskOp) {
        assert!(
            self.torn_tail.is_empty(),
            "nothing is written after a torn tail"
        );
        match op {
            DiskOp::Append(entry, bytes) => {
                assert_eq!(entry.seqno, self.entries.len() as u64 + 1);
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
        assert_eq!(self.entries.len(), self.files.len());
    }

    /// Reads the ledger back as the host's ledger files do: the entries are framed into one
    /// chunk, parsed with the ledger's own frame parser, and a torn tail is cut off (the torn
    /// entry is dropped). Returns the restored state and the bytes cut.
    fn load(&mut self) -> Result<(Restored, usize), String> {
        let mut bytes = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            encode_frame(index as u64 + 1, file, &mut bytes);
        }
        let good = bytes.len();
        bytes.extend_from_slice(&self.torn_tail);
        let (frames, error) = parse_frames(&bytes, Some(1));
        match error {
            None if self.torn_tail.is_empty() => {}
            Some(FrameError::TornTail { offset, .. }) if offset == good as u64 => {}
            other => {
                return Err(format!(
                "the ledger reads back as {other:?} with a torn tail of {} bytes after byte {good}",
                self.torn_tail.len()
            ))
            }
        }
        if frames.len() != self.files.len() {
            return Err(format!(
                "{} entries read back where {} were written",
                frames.len(),
                self.files.len()
            ));
        }
        let mut entries = Vec::with_capacity(frames.len());
        for frame in &frames {
            entries.push(log_entry(frame.seqno, frame.payload)?);
        }
        if entries != self.entries {
            return Err("the entries read back differ from those written".to_owned());
        }
        let torn = self.torn_tail.len();
        // The host truncates the file to its good prefix.
        self.torn_tail.clear();
        let restored = Restored {
            entries,
            hard_state: self.hard_state,
            snapshot: None,
        };
        Ok((restored, torn))
    }
}

/// The log entry the consensus layer restores from ledger bytes, as the host's files do.
pub(crate) fn log_entry(seqno: u64, bytes: &[u8]) -> Result<LogEntry, String> {
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
pub(crate) fn guarded<T>(
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

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Writes handed to the disk whose sync has not completed yet.
#[derive(Debug)]
struct PendingSync {
    due_ms: u64,
    token: u64,
    ops: Vec<DiskOp>,
}

/// What a crash left on disk.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CrashDamage {
    /// Unsynced writes that reached the disk anyway.
    pub kept: usize,
    /// Bytes of the next entry that reached the disk (a torn write), if any.
    pub torn_bytes: usize,
}

/// A node and its host: what it wrote (volatile), what survives a crash (durable).
pub(crate) struct SimNode {
    pub config: NodeConfig,
    pub raft: u64,
    pub node: Option<Node>,
    pub volatile: Disk,
    pub durable: Disk,
    /// Writes since the last sync request.
    unsynced: Vec<DiskOp>,
    /// Sync requests in flight, oldest first.
    syncing: VecDeque<PendingSync>,
    pub responses: Vec<(RequestId, Response)>,
    pub outbox: Vec<(u64, Vec<u8>)>,
    /// How long this node's disk takes to complete a sync.
    pub sync_delay_ms: u64,
    /// The simulation's time, for sync completion.
    pub now_ms: u64,
    /// How far this node's monotonic clock is ahead of the simulation's (it only grows).
    pub clock_offset_ms: u64,
    /// How far this node's wall clock is off (either way).
    pub wall_offset_s: i64,
    /// Started by joining: with an empty ledger it restarts by joining again, as its host would.
    pub joiner: bool,
}

impl SimNode {
    /// Starts a node over `disk` (already durable).
    pub fn start(
        config: NodeConfig,
        mode: StartMode,
        disk: Disk,
        joiner: bool,
    ) -> Result<SimNode, String> {
        let raft = raft_id(&config.node_key.verifying_key().id_hex());
        let mut out = Vec::new();
        let node = guarded(raft, || Node::new(config.clone(), mode, &mut out))?;
        let mut sim = SimNode {
            config,
            raft,
            node: Some(node),
            volatile: disk.clone(),
            durable: disk,
            unsynced: Vec::new(),
            syncing: VecDeque::new(),
            responses: Vec::new(),
            outbox: Vec::new(),
            sync_delay_ms: 0,
            now_ms: 0,
            clock_offset_ms: 0,
            wall_offset_s: 0,
            joiner,
        };
        sim.host(out)?;
        Ok(sim)
    }

    /// A node whose core is not started yet: a joining node waiting for governance to trust
    /// it (its host starts the core only once admitted, with the secrets it receives).
    pub fn waiting(config: NodeConfig) -> SimNode {
        let raft = raft_id(&config.node_key.verifying_key().id_hex());
        SimNode {
            config,
            raft,
            node: None,
            volatile: Disk::default(),
            durable: Disk::default(),
            unsynced: Vec::new(),
            syncing: VecDeque::new(),
            responses: Vec::new(),
            outbox: Vec::new(),
            sync_delay_ms: 0,
            now_ms: 0,
            clock_offset_ms: 0,
            wall_offset_s: 0,
            joiner: true,
        }
    }

    /// Feeds one input to the node and plays the host for what follows.
    pub fn step(&mut self, input: Input) -> Result<(), String> {
        let Some(node) = self.node.as_mut() else {
            return Ok(());
        };
        let mut out = Vec::new();
        guarded(self.raft, || {
            node.step(input, &mut out)?;
            node.flush(&mut out)
        })?;
        self.host(out)
    }

    /// Applies actions in order; a sync completes at once on a fast disk, later on a slow one.
    fn host(&mut self, mut actions: Vec<Action>) -> Result<(), String> {
        for _ in 0..HOST_ROUNDS_MAX {
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
                        let ops = std::mem::take(&mut self.unsynced);
                        if self.sync_delay_ms == 0 && self.syncing.is_empty() {
                            for op in ops {
                                self.durable.apply(op);
                            }
                            inputs.push(Input::Durable { token });
                        } else {
                            // Syncs complete in order, each no sooner than the disk allows;
                            // one with nothing new to flush completes with the one before.
                            let after = self.syncing.back().map_or(0, |s| s.due_ms);
                            let delay = if ops.is_empty() {
                                0
                            } else {
                                self.sync_delay_ms
                            };
                            let due_ms = (self.now_ms + delay).max(after);
                            assert!(self.syncing.len() < SYNCS_IN_FLIGHT_MAX);
                            self.syncing.push_back(PendingSync { due_ms, token, ops });
                        }
                    }
                    Action::Send { to, bytes } => self.outbox.push((to, bytes)),
                    Action::Respond { id, response } => self.responses.push((id, response)),
                    // The simulated host has no node channel to forward on: the client sees
                    // what a node without forwarding answers (not executed, retry).
                    Action::Forward { id, .. } => self.responses.push((
                        id,
                        charter_core::Response::error(503, "NotPrimary", "not the primary"),
                    )),
                    // Snapshots are taken only with snapshot_interval_txs > 0; the simulator
                    // keeps its runs below the interval and ignores them.
                    // Snapshots are encoded (their digest is what the evidence records) but not kept:
                    // the simulated nodes never start from one.
                    Action::EncodeSnapshot(work) => {
                        let digest = charter_crypto::sha256(&work.encode());
                        inputs.push(Input::SnapshotEncoded {
                            seqno: work.seqno,
                            digest,
                        });
                    }
                    Action::CommitSnapshot { .. } => {}
                    Action::CloseChunk { .. } => {}
                    // The simulated nodes never recover a service.
                    Action::SealLedgerSecrets { .. } => {}
                    Action::ReadEntries {
                        from_seqno,
                        to_seqno,
                    } => {
                        let entries = (from_seqno..=to_seqno)
                            .map(|seqno| {
                                let bytes = (seqno as usize)
                                    .checked_sub(1)
                                    .and_then(|index| self.volatile.files.get(index))
                                    .cloned();
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
            let Some(node) = self.node.as_mut() else {
                unreachable!("only a running node has host work");
            };
            for input in inputs {
                guarded(self.raft, || node.step(input, &mut actions))?;
            }
        }
        Err(format!("node {:x}: host loop did not settle", self.raft))
    }

    /// Completes the syncs due by `now_ms`, telling the node.
    pub fn complete_syncs(&mut self, now_ms: u64) -> Result<(), String> {
        self.now_ms = now_ms;
        while self.syncing.front().is_some_and(|s| s.due_ms <= now_ms) {
            let Some(done) = self.syncing.pop_front() else {
                break;
            };
            for op in done.ops {
                self.durable.apply(op);
            }
            self.step(Input::Durable { token: done.token })?;
        }
        Ok(())
    }

    /// Writes the disk holds but has not made durable, oldest first.
    pub fn unsynced_writes(&self) -> usize {
        self.syncing.iter().map(|s| s.ops.len()).sum::<usize>() + self.unsynced.len()
    }

    /// Stops the node. Of its unsynced writes, the first `keep` reach the disk anyway; if
    /// `tear_per_mille` is given and the next one is an append, that fraction of its frame
    /// (at least a byte, never all of it) reaches the disk too. Everything else is lost.
    pub fn crash(&mut self, keep: usize, tear_per_mille: Option<u64>) -> CrashDamage {
        let mut pending: Vec<DiskOp> = self.syncing.drain(..).flat_map(|s| s.ops).collect();
        pending.append(&mut self.unsynced);
        let keep = keep.min(pending.len());
        let mut damage = CrashDamage {
            kept: keep,
            torn_bytes: 0,
        };
        let mut pending = pending.into_iter();
        for op in pending.by_ref().take(keep) {
            self.durable.apply(op);
        }
        if let (Some(per_mille), Some(DiskOp::Append(entry, bytes))) =
            (tear_per_mille, pending.next())
        {
            let mut frame = Vec::new();
            encode_frame(entry.seqno, &bytes, &mut frame);
            let cut = (frame.len() as u64 * per_mille / 1000).clamp(1, frame.len() as u64 - 1);
            frame.truncate(cut as usize);
            damage.torn_bytes = frame.len();
            self.durable.torn_tail = frame;
        }
        self.node = None;
        self.volatile = self.durable.clone();
        self.outbox.clear();
        self.responses.clear();
        damage
    }

    /// Starts the node again from its durable disk; returns the torn bytes the host cut off.
    pub fn restart(&mut self) -> Result<usize, String> {
        let (restored, torn) = self.durable.load()?;
        self.volatile = self.durable.clone();
        let mode = if self.joiner && restored.entries.is_empty() {
            StartMode::Join { snapshot: None }
        } else {
            StartMode::Restart(restored)
        };
        let mut out = Vec::new();
        let config = self.config.clone();
        let node = guarded(self.raft, || Node::new(config, mode, &mut out))?;
        self.node = Some(node);
        self.host(out)?;
        Ok(torn)
    }

    /// Sends a client request and returns the core's response.
    pub fn request(&mut self, id: RequestId, request: Request) -> Result<Response, String> {
        self.step(Input::Client { id, request })?;
        let index = self
            .responses
            .iter()
            .position(|(rid, _)| *rid == id)
            .ok_or_else(|| format!("node {:x}: no response to request {}", self.raft, id.0))?;
        Ok(self.responses.remove(index).1)
    }
}
