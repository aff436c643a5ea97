//! The closed-loop load generator shared by etcd and Charter: C clients, each sending its next
//! request when the previous one is answered, for a warm-up and then a measured window.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charter_bench_core::progress;

/// A request taking longer than this counts as an error (the bench stays bounded in time).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One client: sends its `counter`-th request and returns the transaction ID (view, seqno) if
/// the system gives one (Charter writes).
pub trait Worker: Send + 'static {
    fn send(
        &mut self,
        counter: u64,
    ) -> impl Future<Output = Result<Option<(u64, u64)>, String>> + Send;
}

/// One answered request. Times in nanoseconds since the run's origin.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent_ns: u64,
    pub replied_ns: u64,
    pub tx_id: Option<(u64, u64)>,
}

/// What a phase produced.
pub struct Outcome {
    /// Answered requests sent inside the measured window.
    pub samples: Vec<Sample>,
    /// Failed requests over the whole phase.
    pub errors: u64,
    /// The first error seen, for the log.
    pub first_error: Option<String>,
    /// Length of the measured window, seconds.
    pub measured_s: f64,
    /// For each client, the last counter it completed (keys 1..=this exist after writes).
    pub last_counters: Vec<u64>,
    /// CPU seconds the server processes used during the measured window.
    pub server_cpu_s: f64,
}

/// CPU seconds (user and system, all threads) used so far by the processes `pids`; a process
/// that is gone counts as zero.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_s)
        })
        .sum()
}

/// Nanoseconds from `origin` to now.
pub fn since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `workers` for `warmup` then `duration`, drawing a progress bar labelled `label`, and
/// measures the CPU time of the server processes `server_pids` over the measured window.
pub async fn closed_loop<W: Worker>(
    workers: Vec<W>,
    server_pids: &[u32],
    origin: Instant,
    label: &str,
    warmup: Duration,
    duration: Duration,
) -> Outcome {
    assert!(!workers.is_empty());
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let (stop, completed, errors, first_error) = (
            stop.clone(),
            completed.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut counter = 0u64;
            let mut last_done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                let sent_ns = since(origin);
                match tokio::time::timeout(REQUEST_TIMEOUT, worker.send(counter)).await {
                    Ok(Ok(tx_id)) => {
                        samples.push(Sample {
                            sent_ns,
                            replied_ns: since(origin),
                            tx_id,
                        });
                        completed.fetch_add(1, Ordering::Relaxed);
                        last_done = counter;
                    }
                    Ok(Err(error)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(error);
                        }
                        // Do not spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert("request timed out".to_owned());
                        }
                    }
                }
            }
            (samples, last_done)
        }));
    }
    let phase_start = Instant::now();
    let total = warmup + duration;
    let terminal = std::io::stderr().is_terminal();
    let mut last_count = 0u64;
    let mut last_at = Instant::now();
    let mut rate = 0.0;
    let mut window_start_ns = None;
    let mut cpu_at_start = 0.0;
    loop {
        let elapsed = phase_start.elapsed();
        if window_start_ns.is_none() && elapsed >= warmup {
            window_start_ns = Some(since(origin));
            cpu_at_start = cpu_seconds(server_pids);
        }
        if elapsed >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250).min(total - elapsed)).await;
        let count = completed.load(Ordering::Relaxed);
        let interval = last_at.elapsed().as_secs_f64();
        if interval >= 0.9 {
            rate = (count - last_count) as f64 / interval;
            last_count = count;
            last_at = Instant::now();
        }
        if terminal {
            let phase = if phase_start.elapsed() < warmup {
                "warm-up"
            } else {
                "measuring"
            };
            let line = progress::render(
                label,
                phase_start.elapsed().as_secs_f64() / total.as_secs_f64(),
                phase_start.elapsed().as_secs_f64(),
                total.as_secs_f64(),
                &format!(
                    "{phase} {rate:.0} replies/s, {} errors",
                    errors.load(Ordering::Relaxed)
                ),
            );
            eprint!("\r{line}\x1b[K");
        }
    }
    let window_end_ns = since(origin);
    let server_cpu_s = cpu_seconds(server_pids) - cpu_at_start;
    let window_start_ns = window_start_ns.unwrap_or(window_end_ns);
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut last_counters = Vec::new();
    for task in tasks {
        if let Ok((mut own, last)) = task.await {
            own.retain(|sample| (window_start_ns..window_end_ns).contains(&sample.sent_ns));
            samples.append(&mut own);
            last_counters.push(last);
        }
    }
    let errors = errors.load(Ordering::Relaxed);
    let line = progress::render(
        label,
        1.0,
        total.as_secs_f64(),
        total.as_secs_f64(),
        &format!("done: {} measured, {errors} errors", samples.len()),
    );
    if terminal {
        eprintln!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
    let _ = std::io::stderr().flush();
    Outcome {
        samples,
        errors,
        first_error: first_error.lock().ok().and_then(|first| first.clone()),
        measured_s: (window_end_ns - window_start_ns) as f64 / 1e9,
        last_counters,
        server_cpu_s,
    }
}
