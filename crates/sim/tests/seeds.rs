//! The simulator over many seeds: safety after every step, liveness after healing, determinism
//! of a seed, a checker that catches corrupted inputs and a broken commit rule in the core, and
//! the seeds that found core bugs.
//!
//! CI runs 1,000 seeds here, in eight tests of 125 so that the test harness spreads them over
//! the machine's cores. A longer run: `cargo run --release -p charter-sim -- --seeds 100000
//! --jobs 2` (README.md).

use charter_sim::{run_seed, Corruption, Fault, Options};

fn check_seeds(seeds: std::ops::Range<u64>) {
    let options = Options::default();
    for seed in seeds {
        if let Err(failure) = run_seed(seed, options) {
            panic!("{failure}replay: {}", options.replay_command(seed));
        }
    }
}

#[test]
fn seeds_0_to_124_keep_every_invariant() {
    check_seeds(0..125);
}

#[test]
fn seeds_125_to_249_keep_every_invariant() {
    check_seeds(125..250);
}

#[test]
fn seeds_250_to_374_keep_every_invariant() {
    check_seeds(250..375);
}

#[test]
fn seeds_375_to_499_keep_every_invariant() {
    check_seeds(375..500);
}

#[test]
fn seeds_500_to_624_keep_every_invariant() {
    check_seeds(500..625);
}

#[test]
fn seeds_625_to_749_keep_every_invariant() {
    check_seeds(625..750);
}

#[test]
fn seeds_750_to_874_keep_every_invariant() {
    check_seeds(750..875);
}

#[test]
fn seeds_875_to_999_keep_every_invariant() {
    check_seeds(875..1000);
}

#[test]
fn a_seed_replays_to_the_same_trace() {
    let options = Options::default();
    let first = run_seed(7, options).unwrap();
    let second = run_seed(7, options).unwrap();
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.steps, second.steps);
    assert_eq!(first.faults, second.faults);
    let other = run_seed(8, options).unwrap();
    assert_ne!(first.trace_hash, other.trace_hash);
}

#[test]
fn every_kind_of_fault_happens_within_a_hundred_seeds() {
    let mut seen = charter_sim::FaultCounts::default();
    for seed in 1000..1100 {
        seen.merge(&run_seed(seed, Options::default()).unwrap().faults);
    }
    for (fault, count) in seen.iter() {
        assert!(count > 0, "no {} in 100 seeds", fault.name());
    }
    // Every join and retirement attempted is counted once.
    assert!(seen.get(Fault::Retirement) <= seen.get(Fault::Join));
}

#[test]
fn the_checker_catches_a_flipped_committed_byte() {
    let options = Options {
        corruption: Corruption::FlipCommittedByte,
        ..Options::default()
    };
    let failure = run_seed(1, options).unwrap_err();
    assert!(failure.message.contains("committed"), "{failure}");
}

#[test]
fn the_checker_catches_a_pending_write_taken_for_committed() {
    let options = Options {
        corruption: Corruption::PendingAsCommitted,
        ..Options::default()
    };
    let caught = (0..20).any(|seed| run_seed(seed, options).is_err());
    assert!(
        caught,
        "no seed exposed a pending write recorded as committed"
    );
}

/// The core counts a signature committed as soon as its primary appends it, before a majority
/// holds it (`NodeConfig::unsafe_commit_before_majority`): the simulator must find a seed where
/// that loses or changes a committed transaction.
#[test]
fn the_checker_catches_a_core_that_commits_before_a_majority() {
    let options = Options {
        unsafe_commit_before_majority: true,
        ..Options::default()
    };
    let failure = (0..300)
        .find_map(|seed| run_seed(seed, options).err())
        .expect("no seed in 300 caught commits before a majority");
    eprintln!(
        "caught at seed {} step {}: {}",
        failure.seed, failure.step, failure.message
    );
    // The same seeds pass with the correct rule.
    assert!(run_seed(failure.seed, Options::default()).is_ok());
}
