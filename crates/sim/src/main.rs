//! `charter-sim --seeds N [--start S] [options]`: runs seeds S..S+N and prints a report: seeds
//! run, seeds per second, simulated hours covered and faults injected by kind. A failing seed
//! prints the seed, its trace tail and the command that replays exactly that seed; the batch
//! stops there unless `--keep-going`. Exits 1 if any seed failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use charter_sim::{run_seed, Corruption, CrashPoint, Failure, FaultCounts, Options, Report};

const USAGE: &str = "usage: charter-sim --seeds N [--start S] [--steps K] [--jobs J] [--keep-going]
                   [--verbose] [--trace] [--liveness-ms MS] [--receipts R] [--crash-at-signature]
                   [--unsafe-commit-before-majority]
                   [--corrupt flip-committed-byte|pending-as-committed|drop-replayed-write]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

struct Batch {
    seeds: u64,
    start: u64,
    jobs: u64,
    keep_going: bool,
    verbose: bool,
    options: Options,
}

fn parse() -> Batch {
    let mut batch = Batch {
        seeds: 1,
        start: 0,
        jobs: 1,
        keep_going: false,
        verbose: false,
        options: Options::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--keep-going" => batch.keep_going = true,
            "--verbose" => batch.verbose = true,
            "--trace" => batch.options.print_trace = true,
            "--crash-at-signature" => batch.options.crash_point = CrashPoint::CommittedSignature,
            // The default since crashes anywhere pass; kept for old replay commands.
            "--crash-anywhere" => batch.options.crash_point = CrashPoint::Anywhere,
            "--unsafe-commit-before-majority" => batch.options.unsafe_commit_before_majority = true,
            "--corrupt" => {
                batch.options.corruption = match args.next().as_deref() {
                    Some("flip-committed-byte") => Corruption::FlipCommittedByte,
                    Some("pending-as-committed") => Corruption::PendingAsCommitted,
                    Some("drop-replayed-write") => Corruption::DropReplayedWrite,
                    _ => usage(),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {
                let value: u64 = match args.next().and_then(|v| v.parse().ok()) {
                    Some(value) => value,
                    None => usage(),
                };
                match flag.as_str() {
                    "--seeds" => batch.seeds = value,
                    "--start" => batch.start = value,
                    "--steps" if value >= 5 => batch.options.steps = value,
                    "--jobs" if value >= 1 => batch.jobs = value,
                    "--liveness-ms" => batch.options.liveness_budget_ms = value,
                    "--receipts" => {
                        batch.options.receipts_per_step = u32::try_from(value).unwrap_or(u32::MAX)
                    }
                    _ => usage(),
                }
            }
        }
    }
    batch
}

/// What all seeds did together.
#[derive(Default)]
struct Totals {
    passed: u64,
    steps: u64,
    simulated_ms: u64,
    recovery_ms_max: u64,
    writes_acked: u64,
    writes_committed: u64,
    receipts: u64,
    faults: FaultCounts,
    failures: Vec<Failure>,
}

impl Totals {
    fn add(&mut self, report: &Report) {
        self.passed += 1;
        self.steps += report.steps;
        self.simulated_ms += report.simulated_ms;
        self.recovery_ms_max = self.recovery_ms_max.max(report.recovery_ms);
        self.writes_acked += report.writes_acked as u64;
        self.writes_committed += report.writes_committed as u64;
        self.receipts += report.receipts_checked;
        self.faults.merge(&report.faults);
    }
}

fn main() {
    let batch = parse();
    let end = batch.start.saturating_add(batch.seeds);
    let next = AtomicU64::new(batch.start);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..batch.jobs {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let result = run_seed(seed, batch.options);
                let mut totals = totals.lock().unwrap_or_else(|poison| poison.into_inner());
                match result {
                    Ok(report) => {
                        if batch.verbose {
                            println!(
                                "seed {seed}: ok, {} steps, {:.1} simulated s, {} writes acknowledged, {} committed, commit seqno {}, {} crashes, trace {:016x}",
                                report.steps,
                                report.simulated_ms as f64 / 1000.0,
                                report.writes_acked,
                                report.writes_committed,
                                report.commit_seqno,
                                report.faults.get(charter_sim::Fault::Crash),
                                report.trace_hash
                            );
                        }
                        totals.add(&report);
                    }
                    Err(failure) => {
                        eprint!("{failure}");
                        eprintln!("replay: {}", batch.options.replay_command(seed));
                        totals.failures.push(failure);
                        if !batch.keep_going {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let totals = totals
        .into_inner()
        .unwrap_or_else(|poison| poison.into_inner());
    let run = totals.passed + totals.failures.len() as u64;
    println!("== charter-sim report");
    println!(
        "seeds run: {run} (from {}), passed {}, failed {}",
        batch.start,
        totals.passed,
        totals.failures.len()
    );
    println!(
        "wall time: {elapsed:.1} s with {} job(s): {:.2} seeds/s",
        batch.jobs,
        run as f64 / elapsed.max(1e-9)
    );
    println!(
        "simulated: {:.2} hours over {} steps ({:.1} s per passing seed); slowest recovery after healing {:.1} s",
        totals.simulated_ms as f64 / 3_600_000.0,
        totals.steps,
        totals.simulated_ms as f64 / 1000.0 / totals.passed.max(1) as f64,
        totals.recovery_ms_max as f64 / 1000.0
    );
    println!(
        "load: {} writes acknowledged, {} seen committed, {} receipts verified",
        totals.writes_acked, totals.writes_committed, totals.receipts
    );
    println!("faults injected:");
    for (fault, count) in totals.faults.iter() {
        println!("  {:<34} {count}", fault.name());
    }
    if !totals.failures.is_empty() {
        let seeds: Vec<String> = totals.failures.iter().map(|f| f.seed.to_string()).collect();
        println!("failing seeds: {}", seeds.join(" "));
        std::process::exit(1);
    }
}
