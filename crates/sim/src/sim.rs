//! The simulation driver: one seed's network, clock, faults and load.

use std::collections::{BTreeMap, BTreeSet};

use charter_core::{Input, Method, Node, Request, RequestId, Response, StartMode, TxStatus};
use charter_crypto::Certificate;
use charter_ledger::tables::NODES_MAP;
use charter_ledger::{NodeInfo, NodeStatus, TxId};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::{Checker, Write};
use crate::host::SimNode;
use crate::setup::{
    baseline, gov_request, join_request, node_config, service_cert, Member, FOUNDING_NODE_SEEDS,
    JOINER_SEED, LEDGER_SECRET, UNIX_TIME_S,
};
use crate::{Corruption, CrashPoint, Failure, Fault, FaultCounts, Options, Report};

/// Keys the client load writes, so that writes overwrite each other.
const KEYS: u64 = 6;
const TRACE_TAIL: usize = 40;
/// Fewer signatures than CCF's 100 ms default: ECDSA P-384 dominates a run.
const SIGNATURE_INTERVAL_MS: u64 = 300;
/// Per-mille chances per step.
const WRITE_PER_MILLE: u64 = 400;
const GOV_PER_MILLE: u64 = 40;
/// Members act more often while a membership change is wanted.
const GOV_BUSY_PER_MILLE: u64 = 150;
/// Load proposals that also ask for a ledger rekey.
const REKEY_PER_MILLE: u64 = 200;
const JOIN_REQUEST_PER_MILLE: u64 = 150;
const PARTITION_PER_MILLE: u64 = 15;
const CRASH_PER_MILLE: u64 = 10;
const LOSS_PER_MILLE: u64 = 50;
const DUPLICATE_PER_MILLE: u64 = 20;
const SLOW_DISK_PER_MILLE: u64 = 5;
/// Sync latency once the faults end.
const HEALED_SYNC_DELAY_MS_MAX: u64 = 50;
/// Per-mille chance that a node's disk starts out slow to sync.
const SLOW_DISK_AT_START_PER_MILLE: u64 = 600;
const CLOCK_JUMP_PER_MILLE: u64 = 4;
const WALL_CLOCK_JUMP_PER_MILLE: u64 = 4;
/// Per-mille chances per seed.
const JOIN_PER_MILLE: u64 = 500;
const RETIRE_PER_MILLE: u64 = 600;
/// Governance proposals the load keeps track of at most.
const TRACKED_PROPOSALS_MAX: usize = 6;
/// Messages in flight at most (a run sends a few thousand in all).
const MESSAGES_IN_FLIGHT_MAX: usize = 100_000;

/// A message in flight.
struct Message {
    deliver_at_ms: u64,
    /// Send order, to break ties deterministically.
    serial: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// Blocked directed links, until a time.
struct Partition {
    blocked: BTreeSet<(usize, usize)>,
    until_ms: u64,
}

/// Why a governance proposal was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Background load: change user0's data.
    Load,
    /// Trust the joining node at this index.
    Trust(usize),
    /// Retire the node at this index.
    Retire(usize),
}

/// An open proposal the governance load knows of.
struct Proposal {
    id: String,
    purpose: Purpose,
    proposer: usize,
    voted: BTreeSet<usize>,
}

/// Whether the nodes of seed `seed`'s run also sign whenever no signature awaits commit: odd
/// seeds do, so both ways of signing meet every fault.
fn signs_when_idle(seed: u64) -> bool {
    seed % 2 == 1
}

/// A simulated network of three (at times four) nodes driven by one seed.
pub struct Simulation {
    seed: u64,
    options: Options,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    node_ids: Vec<String>,
    user: Certificate,
    members: Vec<Member>,
    start_ms: u64,
    now_ms: u64,
    step: u64,
    faults_active: bool,
    /// The liveness probe runs: no governance load.
    probing: bool,
    next_request: u64,
    next_serial: u64,
    network: Vec<Message>,
    partition: Option<Partition>,
    /// Crashed nodes and when they restart.
    restart_at: BTreeMap<usize, u64>,
    /// A crash drawn but waiting for its crash point: node, restart delay, steps left.
    pending_crash: Option<(usize, u64, u64)>,
    faults: FaultCounts,
    writes: Vec<Write>,
    checker: Checker,
    /// When the fourth node joins, and when a node may be retired.
    join_at_step: Option<u64>,
    retire_at_step: Option<u64>,
    /// The joined node's index, once started.
    joiner: Option<usize>,
    /// Whether the joining node's core started (once admitted).
    joiner_started: bool,
    trust_wanted: Option<usize>,
    retire_wanted: Option<usize>,
    retired: BTreeSet<usize>,
    proposals: Vec<Proposal>,
    load_proposals: u64,
    recovery_ms: u64,
    trace_hash: u64,
    trace_tail: Vec<String>,
}

impl Simulation {
    /// A network of three nodes restarted from the opened baseline, faults drawn from `seed`.
    ///
    /// # Errors
    /// A [`Failure`] if a node cannot restart.
    pub fn new(seed: u64, options: Options) -> Result<Simulation, Failure> {
        let baseline = baseline();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let fail = |message| Failure {
            seed,
            step: 0,
            message,
            trace_tail: Vec::new(),
        };
        let mut nodes = Vec::new();
        let mut node_ids = Vec::new();
        for (config, disk) in &baseline.nodes {
            let mut config = config.clone();
            config.seed = rng.next_u64();
            config.signature_interval_ms = SIGNATURE_INTERVAL_MS;
            config.signature_when_idle = signs_when_idle(seed);
            config.unsafe_commit_before_majority = options.unsafe_commit_before_majority;
            node_ids.push(config.node_key.verifying_key().id_hex());
            let restored = charter_core::Restored {
                entries: disk.entries.clone(),
                hard_state: disk.hard_state,
                snapshot: None,
            };
            let node = SimNode::start(config, StartMode::Restart(restored), disk.clone(), false)
                .map_err(fail)?;
            nodes.push(node);
        }
        let fault_steps = options.steps - options.steps / 5;
        let mut simulation = Simulation {
            seed,
            options,
            rng,
            nodes,
            node_ids,
            user: baseline.user.clone(),
            members: baseline.members.clone(),
            start_ms: baseline.now_ms,
            now_ms: baseline.now_ms,
            step: 0,
            faults_active: true,
            probing: false,
            next_request: 0,
            next_serial: 0,
            network: Vec::new(),
            partition: None,
            restart_at: BTreeMap::new(),
            pending_crash: None,
            faults: FaultCounts::default(),
            writes: Vec::new(),
            checker: Checker::new(
                options.corruption,
                service_cert(),
                LEDGER_SECRET,
                FOUNDING_NODE_SEEDS
                    .iter()
                    .chain([&JOINER_SEED])
                    .map(|seed| node_config(*seed).node_key)
                    .collect(),
            ),
            join_at_step: None,
            retire_at_step: None,
            joiner: None,
            joiner_started: false,
            trust_wanted: None,
            retire_wanted: None,
            retired: BTreeSet::new(),
            proposals: Vec::new(),
            load_proposals: 0,
            recovery_ms: 0,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace_tail: Vec::new(),
        };
        for index in 0..simulation.nodes.len() {
            // Most disks take a while to sync, so that a crash often finds unsynced writes.
            if simulation.chance(SLOW_DISK_AT_START_PER_MILLE) {
                let delay = simulation.draw(1, 300);
                simulation.nodes[index].sync_delay_ms = delay;
                simulation.faults.add(Fault::SlowDisk);
                simulation.trace(format!("n{index}'s disk syncs in {delay} ms"));
            }
        }
        if fault_steps > 20 && simulation.chance(JOIN_PER_MILLE) {
            let join_at = simulation.draw(10, fault_steps / 2);
            simulation.join_at_step = Some(join_at);
            if simulation.chance(RETIRE_PER_MILLE) {
                let retire_at = join_at + simulation.draw(0, fault_steps / 2);
                simulation.retire_at_step = Some(retire_at);
            }
        }
        Ok(simulation)
    }

    fn trace(&mut self, event: String) {
        let line = format!("[{} t={}] {event}", self.step, self.now_ms - self.start_ms);
        for byte in line.bytes().chain([b'\n']) {
            self.trace_hash ^= u64::from(byte);
            self.trace_hash = self.trace_hash.wrapping_mul(0x100_0000_01b3);
        }
        if self.options.print_trace {
            eprintln!("{line}");
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
        assert!(low <= high);
        low + self.rng.next_u64() % (high - low + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.next_u64() % 1000 < per_mille
    }

    fn connected(&self, from: usize, to: usize) -> bool {
        match &self.partition {
            Some(partition) => !partition.blocked.contains(&(from, to)),
            None => true,
        }
    }

    /// The wall clock, in Unix seconds, as members see it.
    fn unix_time_s(&self) -> u64 {
        UNIX_TIME_S + (self.now_ms - self.start_ms) / 1000
    }

    /// Runs every step, then the liveness probe.
    ///
    /// # Errors
    /// The first violated invariant.
    pub fn run(mut self) -> Result<Report, Failure> {
        let fault_steps = self.options.steps - self.options.steps / 5;
        while self.step < self.options.steps {
            if self.step == fault_steps {
                self.heal()?;
            }
            self.step_once().map_err(|m| self.fail(m))?;
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
            simulated_ms: self.now_ms - self.start_ms,
            recovery_ms: self.recovery_ms,
            trace_hash: self.trace_hash,
            writes_acked: self.writes.len(),
            writes_committed: self.checker.committed.len(),
            commit_seqno,
            receipts_checked: self.checker.receipts_checked,
            faults: {
                let mut faults = self.faults;
                for _ in 1..self.checker.committed_secrets().len() {
                    faults.add(Fault::RekeyCommitted);
                }
                faults
            },
        })
    }

    /// Ends the faults: heals the partition, restarts every crashed node, sets wall clocks right.
    fn heal(&mut self) -> Result<(), Failure> {
        self.faults_active = false;
        self.pending_crash = None;
        if self.partition.take().is_some() {
            self.trace("heal partition".to_owned());
        }
        for node in &mut self.nodes {
            node.wall_offset_s = 0;
            // Liveness needs syncs well within the election timeout (500 ms): a follower
            // sends every message, heartbeat responses included, only after a sync.
            node.sync_delay_ms = node.sync_delay_ms.min(HEALED_SYNC_DELAY_MS_MAX);
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
        let torn = self.nodes[index].restart()?;
        self.checker.node_restarted(index);
        let cut = if torn > 0 {
            format!(", cutting a torn tail of {torn} bytes")
        } else {
            String::new()
        };
        self.trace(format!(
            "restart n{index} from {durable} durable entries{cut}"
        ));
        Ok(())
    }

    /// Checks every invariant, asking for a few receipts.
    fn check(&mut self) -> Result<(), String> {
        if self.options.print_trace {
            for (index, sim) in self.nodes.iter().enumerate() {
                if let Some(node) = &sim.node {
                    eprintln!(
                        "    n{index}: view {} primary {} commit {} last {} durable {} syncing {} leader {:?} voters {:x?}",
                        node.view(),
                        node.is_primary(),
                        node.commit_tx_id(),
                        node.last_tx_id(),
                        sim.durable.entries.len(),
                        sim.unsynced_writes(),
                        node.primary_raft_id().map(|id| format!("{id:x}")),
                        node.voters()
                    );
                }
            }
        }
        let mut samples = Vec::new();
        for _ in 0..self.options.receipts_per_step {
            let index = self.draw(0, self.nodes.len() as u64 - 1) as usize;
            samples.push((index, self.rng.next_u64()));
        }
        let events = self.checker.check(&self.nodes, &self.writes, &samples)?;
        for event in events {
            self.trace(event);
        }
        Ok(())
    }

    /// After the faults: a new write must commit on every voter within the budget.
    fn liveness(&mut self) -> Result<(), Failure> {
        self.probing = true;
        let started_ms = self.now_ms;
        let mut probe: Option<TxId> = None;
        while self.now_ms - started_ms <= self.options.liveness_budget_ms {
            if probe.is_none() {
                let key = format!("probe{}", self.step);
                probe = self.client_write(key).map_err(|m| self.fail(m))?;
            }
            self.step_once().map_err(|m| self.fail(m))?;
            self.check().map_err(|m| self.fail(m))?;
            self.step += 1;
            let Some(tx_id) = probe else { continue };
            let Some(voters) = self
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref())
                .find(|n| n.is_primary())
                .map(Node::voters)
            else {
                continue;
            };
            let statuses: Vec<TxStatus> = self
                .nodes
                .iter()
                .filter(|n| voters.contains(&n.raft))
                .map(|n| {
                    n.node
                        .as_ref()
                        .map_or(TxStatus::Unknown, |n| n.tx_status(tx_id))
                })
                .collect();
            if statuses.iter().all(|s| *s == TxStatus::Committed) {
                self.recovery_ms = self.now_ms - started_ms;
                self.trace(format!(
                    "liveness: probe {tx_id} committed on all {} voters",
                    statuses.len()
                ));
                return Ok(());
            }
            if statuses.contains(&TxStatus::Invalid) {
                // Rolled back by an election: write again.
                probe = None;
            }
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(index, sim)| match &sim.node {
                Some(node) => format!(
                    "n{index} {:x}: view {}, primary {}, commit {}, last {}, voters {:x?}, probe {}",
                    sim.raft,
                    node.view(),
                    node.is_primary(),
                    node.commit_tx_id(),
                    node.last_tx_id(),
                    node.voters(),
                    probe.map_or("-", |tx_id| node.tx_status(tx_id).as_str()),
                ),
                None => format!("n{index} {:x}: down", sim.raft),
            })
            .collect();
        Err(self.fail(format!(
            "liveness: no new write committed on every voter within {} simulated ms of healing (probe {probe:?}); {}",
            self.options.liveness_budget_ms,
            nodes.join("; ")
        )))
    }

    fn step_once(&mut self) -> Result<(), String> {
        self.now_ms += self.draw(10, 100);
        if self.faults_active {
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
        for index in 0..self.nodes.len() {
            self.nodes[index].complete_syncs(self.now_ms)?;
            self.collect_sends(index);
        }
        self.deliver()?;
        let elapsed_s = (self.now_ms - self.start_ms) / 1000;
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let now_ms = self.now_ms + node.clock_offset_ms;
            let unix_time_s = (UNIX_TIME_S + elapsed_s).saturating_add_signed(node.wall_offset_s);
            node.step(Input::Tick {
                now_ms,
                unix_time_s,
            })?;
            self.collect_sends(index);
        }
        if self.chance(WRITE_PER_MILLE) {
            let key = format!("k{}", self.draw(0, KEYS - 1));
            self.client_write(key)?;
        }
        if !self.probing {
            self.membership()?;
            self.governance()?;
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        match self.partition.as_ref().map(|p| p.until_ms) {
            Some(until_ms) if until_ms <= self.now_ms => {
                self.partition = None;
                self.trace("heal partition".to_owned());
            }
            None if self.chance(PARTITION_PER_MILLE) => self.start_partition(),
            _ => {}
        }
        if self.restart_at.is_empty()
            && self.pending_crash.is_none()
            && self.chance(CRASH_PER_MILLE)
        {
            let index = self.draw(0, self.nodes.len() as u64 - 1) as usize;
            let delay = self.draw(100, 3000);
            // A joining node whose core has not started yet has nothing to crash.
            if self.nodes[index].node.is_some() {
                self.pending_crash = Some((index, delay, 50));
            }
        }
        if let Some((index, delay, left)) = self.pending_crash.take() {
            if self.crash_point_reached(index) {
                self.crash(index, delay);
            } else if left > 0 {
                self.pending_crash = Some((index, delay, left - 1));
            }
        }
        if self.chance(SLOW_DISK_PER_MILLE) {
            let index = self.draw(0, self.nodes.len() as u64 - 1) as usize;
            let delay = if self.chance(300) {
                0
            } else {
                self.draw(1, 500)
            };
            self.nodes[index].sync_delay_ms = delay;
            if delay > 0 {
                self.faults.add(Fault::SlowDisk);
            }
            self.trace(format!("n{index}'s disk syncs in {delay} ms"));
        }
        if self.chance(CLOCK_JUMP_PER_MILLE) {
            let index = self.draw(0, self.nodes.len() as u64 - 1) as usize;
            let jump = self.draw(1_000, 60_000);
            self.nodes[index].clock_offset_ms += jump;
            self.faults.add(Fault::ClockJump);
            self.trace(format!("n{index}'s clock jumps {jump} ms ahead"));
        }
        if self.chance(WALL_CLOCK_JUMP_PER_MILLE) {
            let index = self.draw(0, self.nodes.len() as u64 - 1) as usize;
            let offset = if self.chance(250) {
                0
            } else {
                self.draw(0, 4000) as i64 - 2000
            };
            self.nodes[index].wall_offset_s = offset;
            self.faults.add(Fault::WallClockJump);
            self.trace(format!("n{index}'s wall clock is off by {offset} s"));
        }
        Ok(())
    }

    fn start_partition(&mut self) {
        let count = self.nodes.len();
        let until_ms = self.now_ms + self.draw(200, 4000);
        let mut blocked = BTreeSet::new();
        let isolate =
            |blocked: &mut BTreeSet<(usize, usize)>, node: usize, out: bool, inward: bool| {
                for other in (0..count).filter(|other| *other != node) {
                    if out {
                        blocked.insert((node, other));
                    }
                    if inward {
                        blocked.insert((other, node));
                    }
                }
            };
        let (fault, description) = match self.draw(0, 3) {
            0 => {
                let node = self.draw(0, count as u64 - 1) as usize;
                isolate(&mut blocked, node, true, true);
                (Fault::PartitionIsolate, format!("isolates n{node}"))
            }
            1 => {
                let primary =
                    (0..count).find(|i| self.nodes[*i].node.as_ref().is_some_and(Node::is_primary));
                let node = match primary {
                    Some(node) => node,
                    None => self.draw(0, count as u64 - 1) as usize,
                };
                isolate(&mut blocked, node, true, true);
                (
                    Fault::PartitionIsolatePrimary,
                    format!("isolates n{node} (primary: {primary:?})"),
                )
            }
            2 => {
                let node = self.draw(0, count as u64 - 1) as usize;
                let outgoing = self.chance(500);
                isolate(&mut blocked, node, outgoing, !outgoing);
                let what = if outgoing { "sends to" } else { "hears from" };
                (
                    Fault::PartitionAsymmetric,
                    format!("n{node} no longer {what} anyone"),
                )
            }
            _ => {
                let a = self.draw(0, count as u64 - 1) as usize;
                let b = (a + 1 + self.draw(0, count as u64 - 2) as usize) % count;
                blocked.insert((a, b));
                blocked.insert((b, a));
                (Fault::PartitionLink, format!("cuts the link n{a}-n{b}"))
            }
        };
        self.faults.add(fault);
        self.trace(format!(
            "partition {description} until t={}",
            until_ms - self.start_ms
        ));
        self.partition = Some(Partition { blocked, until_ms });
    }

    fn crash_point_reached(&mut self, index: usize) -> bool {
        let sim = &self.nodes[index];
        match self.options.crash_point {
            // Crashes favour moments with writes in flight, where torn and partly kept writes
            // happen.
            CrashPoint::Anywhere => {
                sim.node.is_some() && (sim.unsynced_writes() > 0 || self.chance(300))
            }
            CrashPoint::CommittedSignature => sim.node.as_ref().is_some_and(|node| {
                let commit = node.commit_tx_id().seqno;
                sim.durable.entries.len() as u64 == commit
            }),
        }
    }

    fn crash(&mut self, index: usize, delay: u64) {
        let at = self.now_ms + delay;
        let unsynced = self.nodes[index].unsynced_writes();
        let keep = if unsynced > 0 && self.chance(500) {
            self.draw(0, unsynced as u64) as usize
        } else {
            0
        };
        let tear = if self.chance(500) {
            Some(self.draw(1, 999))
        } else {
            None
        };
        let node = &self.nodes[index];
        let (volatile, durable) = (node.volatile.entries.len(), node.durable.entries.len());
        let damage = self.nodes[index].crash(keep, tear);
        self.trace(format!(
            "crash n{index} (volatile {volatile} entries, durable {durable}, {unsynced} unsynced writes of which {} kept, {} torn bytes), restart at t={}",
            damage.kept,
            damage.torn_bytes,
            at - self.start_ms
        ));
        self.network.retain(|m| m.to != index);
        self.restart_at.insert(index, at);
        self.faults.add(Fault::Crash);
        if damage.kept > 0 {
            self.faults.add(Fault::CrashKeptUnsynced);
        }
        if damage.torn_bytes > 0 {
            self.faults.add(Fault::TornWrite);
        }
    }

    /// Moves what `index` sent into the network, with delay, loss and duplication.
    fn collect_sends(&mut self, index: usize) {
        let sent: Vec<(u64, Vec<u8>)> = self.nodes[index].outbox.drain(..).collect();
        for (to_raft, bytes) in sent {
            let Some(to) = self.nodes.iter().position(|n| n.raft == to_raft) else {
                continue;
            };
            if self.faults_active {
                if !self.connected(index, to) {
                    self.faults.add(Fault::MessageBlocked);
                    continue;
                }
                if self.chance(LOSS_PER_MILLE) {
                    self.faults.add(Fault::MessageLost);
                    continue;
                }
            }
            let copies = if self.faults_active && self.chance(DUPLICATE_PER_MILLE) {
                self.faults.add(Fault::MessageDuplicated);
                2
            } else {
                1
            };
            assert!(
                self.network.len() + copies <= MESSAGES_IN_FLIGHT_MAX,
                "the simulated network holds more than {MESSAGES_IN_FLIGHT_MAX} messages"
            );
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

    fn deliver(&mut self) -> Result<(), String> {
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
            if !self.connected(message.from, message.to) {
                self.faults.add(Fault::MessageBlocked);
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
            self.collect_sends(message.to);
        }
        if delivered > 0 {
            self.trace(format!("delivered {delivered} messages"));
        }
        Ok(())
    }

    /// Sends `request` to node `index`: the response, or a violation if it is a server error
    /// other than 503 (unavailable), which no request may cause.
    fn request(&mut self, index: usize, request: Request) -> Result<Response, String> {
        self.next_request += 1;
        let path = request.path.clone();
        let response = self.nodes[index].request(RequestId(self.next_request), request)?;
        self.collect_sends(index);
        if response.status >= 500 && response.status != 503 {
            return Err(format!(
                "n{index} answered {path} with {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        Ok(response)
    }

    /// The live nodes that think they are primary.
    fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].node.as_ref().is_some_and(Node::is_primary))
            .collect()
    }

    /// A PUT as user0 to the current primary, if there is one; its TxID if acknowledged.
    fn client_write(&mut self, key: String) -> Result<Option<TxId>, String> {
        let primaries = self.primaries();
        if primaries.is_empty() {
            return Ok(None);
        }
        let index = primaries[self.draw(0, primaries.len() as u64 - 1) as usize];
        let value = format!("v{}-{}", self.step, self.rng.next_u64() % 1000).into_bytes();
        let request = Request {
            method: Method::Put,
            path: format!("/app/kv/{key}"),
            query: Vec::new(),
            headers: Vec::new(),
            body: value.clone(),
            caller_cert_der: Some(self.user.der().to_vec()),
        };
        let response = self.request(index, request)?;
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
            self.checker.committed.insert(tx_id.seqno, tx_id);
        }
        Ok(Some(tx_id))
    }

    /// The status of node `index` in the committed nodes table.
    fn committed_status(&self, index: usize) -> Option<NodeStatus> {
        let bytes = self
            .checker
            .committed_store()
            .get(NODES_MAP, self.node_ids[index].as_bytes())?;
        serde_json::from_slice::<NodeInfo>(bytes)
            .ok()
            .map(|info| info.status)
    }

    /// Joins and retirements: starts the joiner, sends its join request until the service
    /// records it, and asks governance to trust it, then to retire a node.
    fn membership(&mut self) -> Result<(), String> {
        if self.joiner.is_none() && self.join_at_step.is_some_and(|at| self.step >= at) {
            let mut config = node_config(JOINER_SEED);
            config.seed = self.rng.next_u64();
            config.signature_interval_ms = SIGNATURE_INTERVAL_MS;
            config.signature_when_idle = signs_when_idle(self.seed);
            config.unsafe_commit_before_majority = self.options.unsafe_commit_before_majority;
            self.node_ids.push(config.node_key.verifying_key().id_hex());
            // The joining node's core starts once governance trusts it (see below).
            let mut node = SimNode::waiting(config);
            node.now_ms = self.now_ms;
            self.nodes.push(node);
            let index = self.nodes.len() - 1;
            self.joiner = Some(index);
            self.faults.add(Fault::Join);
            self.trace(format!("n{index} starts and asks to join"));
        }
        if let Some(joiner) = self.joiner {
            let admitted = matches!(
                self.committed_status(joiner),
                Some(NodeStatus::Trusted | NodeStatus::Retired)
            );
            if admitted && self.nodes[joiner].node.is_none() && !self.joiner_started {
                // Admitted: its host receives the committed ledger secrets and starts the core.
                self.joiner_started = true;
                self.nodes[joiner].config.ledger_secrets = self.checker.committed_secrets();
                self.nodes[joiner].restart()?;
                self.trace(format!("n{joiner} is admitted and starts"));
            }
            match self.committed_status(joiner) {
                None => {
                    if self.chance(JOIN_REQUEST_PER_MILLE) {
                        if let Some(&primary) = self.primaries().first() {
                            let response = self.request(primary, join_request(JOINER_SEED))?;
                            self.trace(format!(
                                "n{joiner}'s join request to n{primary}: {}",
                                response.status
                            ));
                        }
                    }
                }
                Some(NodeStatus::Pending) => self.trust_wanted = Some(joiner),
                Some(_) => {
                    if self.trust_wanted.take().is_some() {
                        self.faults.add(Fault::JoinTrusted);
                        self.trace(format!("n{joiner} is trusted"));
                    }
                }
            }
        }
        let trusted: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.committed_status(*i) == Some(NodeStatus::Trusted))
            .collect();
        if self.retire_wanted.is_none()
            && self.retired.is_empty()
            && trusted.len() == 4
            && self.retire_at_step.is_some_and(|at| self.step >= at)
        {
            let victim = trusted[self.draw(0, 3) as usize];
            self.retire_wanted = Some(victim);
            self.faults.add(Fault::Retirement);
            self.trace(format!("governance is asked to retire n{victim}"));
        }
        if let Some(victim) = self.retire_wanted {
            if self.committed_status(victim) == Some(NodeStatus::Retired) {
                self.retire_wanted = None;
                self.retired.insert(victim);
                self.faults.add(Fault::RetirementCommitted);
                self.trace(format!("n{victim} is retired"));
            }
        }
        Ok(())
    }

    /// A member governance load: proposals (the membership changes wanted, or user data
    /// changes), ballots and withdrawals, signed with the members' true clock and sent to the
    /// primary (now and then to another node).
    fn governance(&mut self) -> Result<(), String> {
        let busy = self.trust_wanted.is_some() || self.retire_wanted.is_some();
        let per_mille = if busy {
            GOV_BUSY_PER_MILLE
        } else {
            GOV_PER_MILLE
        };
        if !self.chance(per_mille) {
            return Ok(());
        }
        let member = self.draw(0, self.members.len() as u64 - 1) as usize;
        let wanted = [
            self.trust_wanted.map(Purpose::Trust),
            self.retire_wanted.map(Purpose::Retire),
        ]
        .into_iter()
        .flatten()
        .find(|purpose| !self.proposals.iter().any(|p| p.purpose == *purpose));
        if let Some(purpose) = wanted {
            return self.propose(member, purpose);
        }
        let votable: Vec<usize> = (0..self.proposals.len())
            .filter(|i| !self.proposals[*i].voted.contains(&member))
            .collect();
        if !votable.is_empty() {
            let chosen = votable[self.draw(0, votable.len() as u64 - 1) as usize];
            return self.ballot(member, chosen);
        }
        if self.chance(200) {
            if let Some(own) = self
                .proposals
                .iter()
                .position(|p| p.proposer == member && p.purpose == Purpose::Load)
            {
                return self.withdraw(member, own);
            }
        }
        self.propose(member, Purpose::Load)
    }

    /// Sends a signed governance request; its JSON answer if the service accepted it.
    fn member_request(
        &mut self,
        member: usize,
        path: &str,
        msg_type: &str,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> Result<Option<(u16, serde_json::Value)>, String> {
        let primaries = self.primaries();
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].node.is_some())
            .collect();
        // Mostly to a primary; now and then to any node (which refuses if it is not primary).
        let index = if !primaries.is_empty() && self.chance(900) {
            primaries[self.draw(0, primaries.len() as u64 - 1) as usize]
        } else if !live.is_empty() && (!primaries.is_empty() || self.chance(200)) {
            live[self.draw(0, live.len() as u64 - 1) as usize]
        } else {
            return Ok(None);
        };
        let body = self.members[member].sign(msg_type, proposal_id, self.unix_time_s(), payload);
        let response = self.request(index, gov_request(path, body))?;
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        if response.status == 200 {
            self.faults.add(Fault::GovRequest);
        } else {
            self.faults.add(Fault::GovRequestRefused);
            let code = json["error"]["code"].as_str().unwrap_or("?").to_owned();
            self.trace(format!(
                "member{member}'s {msg_type} to n{index}: {} {code}",
                response.status
            ));
        }
        Ok(Some((response.status, json)))
    }

    fn propose(&mut self, member: usize, purpose: Purpose) -> Result<(), String> {
        let action = match purpose {
            Purpose::Load => {
                self.load_proposals += 1;
                let action = serde_json::json!({"name": "set_user_data", "args": {
                    "user_id": self.user.fingerprint_hex(),
                    "user_data": {"role": "Administrator", "revision": self.load_proposals},
                }});
                if self.chance(REKEY_PER_MILLE) {
                    self.faults.add(Fault::Rekey);
                    serde_json::json!([action, {"name": "trigger_ledger_rekey", "args": {}}])
                } else {
                    action
                }
            }
            Purpose::Trust(index) => serde_json::json!({
                "name": "transition_node_to_trusted", "args": {"node_id": self.node_ids[index]}
            }),
            Purpose::Retire(index) => serde_json::json!({
                "name": "remove_node", "args": {"node_id": self.node_ids[index]}
            }),
        };
        let actions = match action {
            serde_json::Value::Array(actions) => actions,
            action => vec![action],
        };
        let payload = serde_json::json!({ "actions": actions }).to_string();
        let path = "/gov/members/proposals:create";
        let Some((200, json)) =
            self.member_request(member, path, "proposal", None, payload.as_bytes())?
        else {
            return Ok(());
        };
        let id = json["proposalId"].as_str().unwrap_or_default().to_owned();
        let state = json["proposalState"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.trace(format!("member{member} proposes {purpose:?}: {id} {state}"));
        if state == "Open" && !id.is_empty() {
            if self.proposals.len() == TRACKED_PROPOSALS_MAX {
                self.proposals.remove(0);
            }
            self.proposals.push(Proposal {
                id,
                purpose,
                proposer: member,
                voted: BTreeSet::new(),
            });
        }
        Ok(())
    }

    fn ballot(&mut self, member: usize, chosen: usize) -> Result<(), String> {
        let id = self.proposals[chosen].id.clone();
        // Members favour the membership changes, and most load proposals.
        let approve = self.proposals[chosen].purpose != Purpose::Load || self.chance(800);
        let ballot = format!("export function vote(proposal, proposer) {{ return {approve}; }}");
        let payload = serde_json::json!({ "ballot": ballot }).to_string();
        let member_id = self.members[member].id.clone();
        let path = format!("/gov/members/proposals/{id}/ballots/{member_id}:submit");
        let answer = self.member_request(member, &path, "ballot", Some(&id), payload.as_bytes())?;
        let Some(position) = self.proposals.iter().position(|p| p.id == id) else {
            return Ok(());
        };
        match answer {
            Some((200, json)) => {
                let state = json["proposalState"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                self.trace(format!("member{member} votes {approve} on {id}: {state}"));
                self.proposals[position].voted.insert(member);
                if state != "Open" {
                    self.proposals.remove(position);
                }
            }
            // Gone (rolled back with a lost primary, or resolved) or no longer open.
            Some((404 | 409 | 400, _)) => {
                self.proposals.remove(position);
            }
            _ => {}
        }
        Ok(())
    }

    fn withdraw(&mut self, member: usize, chosen: usize) -> Result<(), String> {
        let id = self.proposals[chosen].id.clone();
        let path = format!("/gov/members/proposals/{id}:withdraw");
        let answer = self.member_request(member, &path, "withdrawal", Some(&id), b"")?;
        if let Some((status, _)) = answer {
            self.trace(format!("member{member} withdraws {id}: {status}"));
            if status != 503 {
                self.proposals.retain(|p| p.id != id);
            }
        }
        Ok(())
    }
}
