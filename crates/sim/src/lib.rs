//! Charter's deterministic simulator (DESIGN.md §2, STYLE.md §6): unmodified cores over a
//! simulated network, disk and clock, every fault drawn from one 64-bit seed, invariants checked
//! after every step. A failing seed replays exactly.
//!
//! The network is opened once per process (a genesis node, three members, two joiners admitted
//! by attestation and a governance vote); each seed then restarts the three nodes from that
//! network's durable ledgers with seed-derived consensus RNGs, so a seed costs only its own
//! steps.
//!
//! Faults ([`Fault`]): message loss, duplication, delay and so reordering; partitions that
//! isolate a node or the primary, cut one link, or block one direction only; crashes that lose
//! unsynced writes, keep some of them, or tear the entry being written; slow disks; jumps of a
//! node's monotonic clock (forwards) and wall clock (either way); a fourth node joining and a
//! node retiring through governance; and a member governance load of proposals, ballots and
//! withdrawals. The last fifth of the steps is fault-free, then a liveness probe must commit
//! on every voter within a simulated-time budget.
//!
//! Invariants after every step: at most one primary per view; committed ledgers agree byte for
//! byte; a write seen committed stays committed; each node's key-value state equals a replay of
//! the committed write sets (an independent replay by the simulator); the simulator's own Merkle
//! tree over the committed ledger gives the root each signature transaction signed; sampled
//! receipts for committed transactions verify and match the committed ledger; no request is
//! answered with a server error other than 503.
//!
//! ```
//! use charter_sim::{run_seed, Options};
//! let report = run_seed(3, Options { steps: 40, ..Options::default() }).unwrap();
//! assert!(report.simulated_ms > 0);
//! ```

mod check;
mod host;
mod setup;
mod sim;

pub use sim::Simulation;

/// A deliberate corruption of the checker's inputs, to show the checker can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Check honestly.
    None,
    /// Flip a byte of node 2's committed ledger as the checker reads it.
    FlipCommittedByte,
    /// Record an acknowledged write as Committed while it is still Pending.
    PendingAsCommitted,
    /// Leave the first committed client write out of the simulator's own replay.
    DropReplayedWrite,
}

/// When a node the seed chose to crash actually crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// At once, whatever its disk holds.
    Anywhere,
    /// Only once its durable ledger ends at its committed signature (a crash is dropped if that
    /// takes more than 50 steps): the gentler model the simulator started with.
    CommittedSignature,
}

/// Knobs of a run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Steps of the run; the last fifth is fault-free and fully connected.
    pub steps: u64,
    /// Simulated time allowed after the run for a new write to commit on every voter.
    pub liveness_budget_ms: u64,
    /// Test-only corruption of the checker's inputs.
    pub corruption: Corruption,
    /// When a drawn crash may happen.
    pub crash_point: CrashPoint,
    /// Test-only: every core counts its signatures committed before a majority holds them
    /// (the core's `NodeConfig::unsafe_commit_before_majority`), a broken rule the checker
    /// must catch.
    pub unsafe_commit_before_majority: bool,
    /// Receipts sampled and verified per step.
    pub receipts_per_step: u32,
    /// Print every trace event to stderr as it happens (to study one seed).
    pub print_trace: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            steps: 250,
            liveness_budget_ms: 30_000,
            corruption: Corruption::None,
            crash_point: CrashPoint::Anywhere,
            unsafe_commit_before_majority: false,
            receipts_per_step: 1,
            print_trace: false,
        }
    }
}

impl Options {
    /// The command that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut command = format!("cargo run --release -p charter-sim -- --seeds 1 --start {seed}");
        let default = Options::default();
        if self.steps != default.steps {
            command.push_str(&format!(" --steps {}", self.steps));
        }
        if self.liveness_budget_ms != default.liveness_budget_ms {
            command.push_str(&format!(" --liveness-ms {}", self.liveness_budget_ms));
        }
        if self.receipts_per_step != default.receipts_per_step {
            command.push_str(&format!(" --receipts {}", self.receipts_per_step));
        }
        if self.crash_point == CrashPoint::CommittedSignature {
            command.push_str(" --crash-at-signature");
        }
        if self.unsafe_commit_before_majority {
            command.push_str(" --unsafe-commit-before-majority");
        }
        match self.corruption {
            Corruption::None => {}
            Corruption::FlipCommittedByte => command.push_str(" --corrupt flip-committed-byte"),
            Corruption::PendingAsCommitted => command.push_str(" --corrupt pending-as-committed"),
            Corruption::DropReplayedWrite => command.push_str(" --corrupt drop-replayed-write"),
        }
        command
    }
}

/// A kind of injected fault (or load), counted per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A message lost (dropped at random, not by a partition).
    MessageLost,
    /// A message delivered twice.
    MessageDuplicated,
    /// A message dropped by a partition.
    MessageBlocked,
    /// A partition cutting one node off both ways.
    PartitionIsolate,
    /// A partition cutting the primary off both ways.
    PartitionIsolatePrimary,
    /// A partition blocking one node's messages in one direction only.
    PartitionAsymmetric,
    /// A partition cutting the link between two nodes, both still reaching the third.
    PartitionLink,
    /// A node crashed (and later restarted).
    Crash,
    /// A crash that left some unsynced writes on disk.
    CrashKeptUnsynced,
    /// A crash that left a torn entry at the ledger tail.
    TornWrite,
    /// A node's disk completes syncs only after a delay (drawn per node at the start, and
    /// changed now and then).
    SlowDisk,
    /// A node's monotonic clock jumped forwards.
    ClockJump,
    /// A node's wall clock jumped (either way).
    WallClockJump,
    /// A fourth node started and asked to join (join request, then a trust proposal).
    Join,
    /// The joining node became trusted in the committed ledger.
    JoinTrusted,
    /// Governance was asked to retire a node (`remove_node`).
    Retirement,
    /// The node's retirement reached the committed ledger.
    RetirementCommitted,
    /// A member governance request the service accepted.
    GovRequest,
    /// A member governance request the service refused (stale, not primary, no such proposal).
    GovRequestRefused,
    /// A proposal that also asks for a ledger rekey.
    Rekey,
    /// A rekey that reached the committed ledger (its secret opened with a node's key).
    RekeyCommitted,
}

impl Fault {
    /// Every kind, in report order.
    pub const ALL: [Fault; 21] = [
        Fault::MessageLost,
        Fault::MessageDuplicated,
        Fault::MessageBlocked,
        Fault::PartitionIsolate,
        Fault::PartitionIsolatePrimary,
        Fault::PartitionAsymmetric,
        Fault::PartitionLink,
        Fault::Crash,
        Fault::CrashKeptUnsynced,
        Fault::TornWrite,
        Fault::SlowDisk,
        Fault::ClockJump,
        Fault::WallClockJump,
        Fault::Join,
        Fault::JoinTrusted,
        Fault::Retirement,
        Fault::RetirementCommitted,
        Fault::GovRequest,
        Fault::GovRequestRefused,
        Fault::Rekey,
        Fault::RekeyCommitted,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::MessageLost => "messages lost",
            Fault::MessageDuplicated => "messages duplicated",
            Fault::MessageBlocked => "messages blocked by partitions",
            Fault::PartitionIsolate => "partitions isolating a node",
            Fault::PartitionIsolatePrimary => "partitions isolating the primary",
            Fault::PartitionAsymmetric => "asymmetric partitions",
            Fault::PartitionLink => "single-link partitions",
            Fault::Crash => "crashes (and restarts)",
            Fault::CrashKeptUnsynced => "crashes keeping unsynced writes",
            Fault::TornWrite => "torn writes at the ledger tail",
            Fault::SlowDisk => "disks with delayed syncs",
            Fault::ClockJump => "monotonic clock jumps",
            Fault::WallClockJump => "wall clock jumps",
            Fault::Join => "nodes asking to join",
            Fault::JoinTrusted => "joining nodes trusted",
            Fault::Retirement => "retirements proposed",
            Fault::RetirementCommitted => "retirements committed",
            Fault::GovRequest => "governance requests accepted",
            Fault::GovRequestRefused => "governance requests refused",
            Fault::Rekey => "rekeys proposed",
            Fault::RekeyCommitted => "rekeys committed",
        }
    }
}

/// How many faults of each kind a run injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts([u64; Fault::ALL.len()]);

impl FaultCounts {
    /// The count of `fault`.
    pub fn get(&self, fault: Fault) -> u64 {
        self.0[fault as usize]
    }

    /// Counts one more `fault`.
    pub fn add(&mut self, fault: Fault) {
        self.0[fault as usize] += 1;
    }

    /// Adds another run's counts.
    pub fn merge(&mut self, other: &FaultCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// Each kind with its count, in report order.
    pub fn iter(&self) -> impl Iterator<Item = (Fault, u64)> + '_ {
        Fault::ALL.iter().map(|fault| (*fault, self.get(*fault)))
    }
}

/// What a passing seed did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Steps taken, liveness probe included.
    pub steps: u64,
    /// Simulated time covered, in milliseconds.
    pub simulated_ms: u64,
    /// Simulated time from healing to the liveness probe committing everywhere.
    pub recovery_ms: u64,
    /// FNV-1a hash of the whole trace: equal seeds give equal hashes.
    pub trace_hash: u64,
    /// Client writes acknowledged.
    pub writes_acked: usize,
    /// Acknowledged writes observed committed.
    pub writes_committed: usize,
    /// Highest commit seqno of any node at the end.
    pub commit_seqno: u64,
    /// Receipts checked (each signed root's signature is verified once per seed).
    pub receipts_checked: u64,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
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

/// Runs one seed, turning a panic anywhere into a failure.
///
/// # Errors
/// The first violated invariant, with the trace tail.
pub fn run_seed(seed: u64, options: Options) -> Result<Report, Failure> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Simulation::new(seed, options)?.run()
    }));
    match result {
        Ok(result) => result,
        Err(panic) => Err(Failure {
            seed,
            step: 0,
            message: format!("panic: {}", host::panic_message(&*panic)),
            trace_tail: Vec::new(),
        }),
    }
}
