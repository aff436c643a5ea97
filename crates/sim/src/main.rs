//! `charter-sim --seeds N [--start S] [--steps K] [--snapshot-interval T] [--crash-anywhere]`:
//! runs seeds S..S+N; on the first failure
//! prints the seed, the last trace events and the command that replays it, and exits 1.

use charter_sim::{run_seed, CrashPoint, Options};

fn usage() -> ! {
    eprintln!(
        "usage: charter-sim --seeds N [--start S] [--steps K] [--snapshot-interval T] [--crash-anywhere]"
    );
    std::process::exit(2);
}

fn main() {
    let mut seeds = 1u64;
    let mut start = 0u64;
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--crash-anywhere" {
            options.crash_point = CrashPoint::Anywhere;
            continue;
        }
        let value: u64 = match args.next().and_then(|v| v.parse().ok()) {
            Some(value) => value,
            None => usage(),
        };
        match flag.as_str() {
            "--seeds" => seeds = value,
            "--start" => start = value,
            "--steps" => options.steps = value,
            "--snapshot-interval" => options.snapshot_interval_txs = value,
            _ => usage(),
        }
    }
    let mut steps = 0;
    for seed in start..start.saturating_add(seeds) {
        match run_seed(seed, options) {
            Ok(report) => {
                steps += report.steps;
                println!(
                    "seed {seed}: ok, {} steps, {} writes acknowledged, {} committed, commit seqno {}, {} crashes, {} committed snapshots, trace {:016x}",
                    report.steps, report.writes_acked, report.writes_committed, report.commit_seqno, report.crashes, report.snapshots_committed, report.trace_hash
                );
            }
            Err(failure) => {
                eprint!("{failure}");
                let anywhere = if options.crash_point == CrashPoint::Anywhere {
                    " --crash-anywhere"
                } else {
                    ""
                };
                let snapshots = match options.snapshot_interval_txs {
                    0 => String::new(),
                    interval => format!(" --snapshot-interval {interval}"),
                };
                eprintln!(
                    "replay: cargo run -p charter-sim -- --seeds 1 --start {seed} --steps {}{snapshots}{anywhere}",
                    options.steps
                );
                std::process::exit(1);
            }
        }
    }
    println!("{seeds} seeds passed, {steps} steps");
}
