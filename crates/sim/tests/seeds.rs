//! The simulator over many seeds: safety after every step, liveness after healing,
//! determinism of a seed, and a checker that catches corrupted inputs.

use charter_sim::{run_seed, Corruption, CrashPoint, Options};

/// Steps per seed in these tests: 50 seeds stay within a minute of a debug build.
const STEPS: u64 = 200;

fn options() -> Options {
    Options {
        steps: STEPS,
        ..Options::default()
    }
}

fn check_seeds(seeds: std::ops::Range<u64>) {
    for seed in seeds {
        if let Err(failure) = run_seed(seed, options()) {
            panic!("{failure}replay: cargo run -p charter-sim -- --seeds 1 --start {seed} --steps {STEPS}");
        }
    }
}

#[test]
fn seeds_0_to_24_keep_every_invariant() {
    check_seeds(0..25);
}

#[test]
fn seeds_25_to_49_keep_every_invariant() {
    check_seeds(25..50);
}

/// Snapshots every 20 seqnos: every node writes the same bytes for a seqno (across crashes and
/// restarts too) and every committed snapshot file verifies against the service certificate.
#[test]
fn seeds_with_snapshots_keep_every_invariant() {
    let options = Options {
        snapshot_interval_txs: 20,
        ..options()
    };
    let mut committed = 0;
    for seed in 0..8 {
        match run_seed(seed, options) {
            Ok(report) => committed += report.snapshots_committed,
            Err(failure) => panic!(
                "{failure}replay: cargo run -p charter-sim -- --seeds 1 --start {seed} --steps {STEPS} --snapshot-interval 20"
            ),
        }
    }
    assert!(committed > 0, "no seed committed a snapshot");
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let first = run_seed(7, options()).unwrap();
    let second = run_seed(7, options()).unwrap();
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.steps, second.steps);
    let other = run_seed(8, options()).unwrap();
    assert_ne!(first.trace_hash, other.trace_hash);
}

#[test]
fn the_checker_catches_a_flipped_committed_byte() {
    let options = Options {
        corruption: Corruption::FlipCommittedByte,
        ..options()
    };
    let failure = run_seed(1, options).unwrap_err();
    assert!(
        failure
            .message
            .contains("differs from the committed ledger"),
        "{failure}"
    );
}

#[test]
fn the_checker_catches_a_pending_write_taken_for_committed() {
    let options = Options {
        corruption: Corruption::PendingAsCommitted,
        ..options()
    };
    let caught = (0..20).any(|seed| run_seed(seed, options).is_err());
    assert!(
        caught,
        "no seed exposed a pending write recorded as committed"
    );
}

fn crash_anywhere() -> Options {
    Options {
        crash_point: CrashPoint::Anywhere,
        ..Options::default()
    }
}

/// Regression: a restarted follower's replay used to drop its durable unsigned tail, which it
/// had acknowledged; the primary's next heartbeat then committed past its log and raft-rs
/// panicked. Replay: `cargo run -p charter-sim -- --seeds 1 --start 1 --crash-anywhere`.
#[test]
fn seed_1_crash_anywhere_restart_forgets_acknowledged_entries() {
    if let Err(failure) = run_seed(1, crash_anywhere()) {
        panic!("{failure}");
    }
}

/// Regression: a restarted node kept rollback state only after its saved commit point, so a new
/// primary's conflicting suffix found no state to roll back to. Replay:
/// `cargo run -p charter-sim -- --seeds 1 --start 11 --crash-anywhere`.
#[test]
fn seed_11_crash_anywhere_restart_cannot_roll_back_replayed_entries() {
    if let Err(failure) = run_seed(11, crash_anywhere()) {
        panic!("{failure}");
    }
}
