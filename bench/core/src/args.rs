//! Command-line arguments of `charter-bench` and their validation.

use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

/// The most concurrent clients a run may have (each holds a connection and a task).
pub const CLIENTS_MAX: usize = 1024;
/// The largest value a write may carry, in bytes.
pub const VALUE_BYTES_MAX: usize = 64 << 10;
/// The longest measured phase, in seconds (the bench is bounded in time).
pub const DURATION_S_MAX: u64 = 600;
/// The most points a signature-interval sweep may have.
pub const SWEEP_POINTS_MAX: usize = 16;
/// Key length in bytes: six hex digits of client index and ten of a per-client counter.
pub const KEY_BYTES: usize = 16;

/// One Charter signature setting: a signature every `txs` transactions or every `ms`
/// milliseconds, whichever comes first, and with `when_idle` also as soon as no signature
/// awaits commit (`charter sandbox --signature-when-idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SignatureInterval {
    /// Transactions between signatures.
    pub txs: u64,
    /// Milliseconds between signatures.
    pub ms: u64,
    /// Also sign whenever no signature is in flight.
    pub when_idle: bool,
}

impl FromStr for SignatureInterval {
    type Err = String;

    /// Parses `TXS:MS` or `TXS:MS:idle`, e.g. `1000:10` or `1000:10:idle`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (text_interval, when_idle) = match text.strip_suffix(":idle") {
            Some(interval) => (interval, true),
            None => (text, false),
        };
        let (txs, ms) = text_interval
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: expected TXS:MS or TXS:MS:idle, e.g. 1000:10"))?;
        let txs: u64 = txs
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: bad transaction count"))?;
        let ms: u64 = ms
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: bad milliseconds"))?;
        if txs == 0 || ms == 0 {
            return Err(format!("{text:?}: both parts must be at least 1"));
        }
        Ok(Self { txs, ms, when_idle })
    }
}

impl std::fmt::Display for SignatureInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txs, self.ms)?;
        if self.when_idle {
            write!(f, ":idle")?;
        }
        Ok(())
    }
}

/// Arguments of `charter-bench`.
#[derive(clap::Parser, Clone, Debug, Serialize)]
#[command(
    name = "charter-bench",
    about = "Charter against a 3-member etcd cluster on loopback: committed writes/s, latency to \
             global commit, a signature-interval sweep, single node versus three, and reads"
)]
pub struct BenchArgs {
    /// The release `charter` binary [default: $CARGO_TARGET_DIR/release/charter, else
    /// target/release/charter].
    #[arg(long)]
    pub charter_bin: Option<PathBuf>,
    /// The etcd server binary (Debian's etcd-server; scripts/bench-setup.sh installs it).
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Bytes per value (keys are 16 bytes).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Seconds of warm-up before each measured phase.
    #[arg(long, default_value_t = 3)]
    pub warmup_s: u64,
    /// Seconds measured per write phase.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Seconds measured per read phase.
    #[arg(long, default_value_t = 5)]
    pub read_duration_s: u64,
    /// Short phases and a two-point sweep: under a minute of load in all.
    #[arg(long)]
    pub quick: bool,
    /// Charter's signature setting (TXS:MS, or TXS:MS:idle to also sign whenever no signature
    /// awaits commit) for the comparison with etcd and the 1-node run. (1000:10:idle had the
    /// best p99 here since signing got cheaper, without fewer writes/s than 1000:10.)
    #[arg(long, default_value = "1000:10:idle")]
    pub signature_interval: SignatureInterval,
    /// Signature settings (TXS:MS, comma-separated) swept on the 3-node network (an idle node
    /// ticks every 10 ms and a busy one every 2 ms, so MS below 2 acts as 2).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100:10,1000:5,1000:10,1000:20,5000:100,5000:100:idle"
    )]
    pub sweep: Vec<SignatureInterval>,
    /// Charter's snapshot interval in committed transactions (0: no snapshots), passed to
    /// `charter sandbox` (whose default is 10,000, as here).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_interval_txs: u64,
    /// Skip the signature sweep.
    #[arg(long)]
    pub no_sweep: bool,
    /// Skip the single-node run.
    #[arg(long)]
    pub no_single_node: bool,
    /// Skip the read phases.
    #[arg(long)]
    pub no_reads: bool,
    /// Skip etcd (no baseline and no ratios: for profiling Charter alone).
    #[arg(long)]
    pub no_etcd: bool,
    /// gRPC connections to etcd shared by the clients (0: one per client, as for Charter).
    #[arg(long, default_value_t = 0)]
    pub etcd_connections: usize,
    /// Milliseconds between two reads of /node/commit by the commit watcher; 0 (the default)
    /// long-polls instead (`/node/commit?after_seqno=N`, answered when the commit point passes
    /// N), which adds no polling delay to the measured latency.
    #[arg(long, default_value_t = 0)]
    pub commit_poll_ms: u64,
    /// Client port of Charter's first node (the others follow).
    #[arg(long, default_value_t = 18_000)]
    pub charter_port: u16,
    /// Client port of etcd's first member (peers listen 100 above).
    #[arg(long, default_value_t = 23_790)]
    pub etcd_port: u16,
    /// Directory for the networks' data (on disk; removed after each run unless --keep).
    #[arg(long, default_value = "/var/tmp/charter-bench")]
    pub work_dir: PathBuf,
    /// Keep the data directories and logs after the runs.
    #[arg(long)]
    pub keep: bool,
    /// Directory for bench.json and sweep.svg.
    #[arg(long, default_value = "bench-out")]
    pub out_dir: PathBuf,
    /// Record the 3-node primary with `perf record -g` during the comparison run (to
    /// OUT_DIR/perf.data).
    #[arg(long)]
    pub perf: bool,
}

impl BenchArgs {
    /// Applies `--quick` (shorter phases, a two-point sweep) and checks every bound.
    ///
    /// # Errors
    /// A message naming the first argument out of range.
    pub fn resolve(mut self) -> Result<Self, String> {
        if self.quick {
            self.warmup_s = self.warmup_s.min(1);
            self.duration_s = self.duration_s.min(4);
            self.read_duration_s = self.read_duration_s.min(2);
            if self.sweep.len() > 2 {
                self.sweep = vec![self.sweep[0], self.sweep[self.sweep.len() - 1]];
            }
        }
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            return Err(format!("--clients must be 1 to {CLIENTS_MAX}"));
        }
        if !(1..=VALUE_BYTES_MAX).contains(&self.value_bytes) {
            return Err(format!("--value-bytes must be 1 to {VALUE_BYTES_MAX}"));
        }
        for (name, value) in [
            ("--duration-s", self.duration_s),
            ("--read-duration-s", self.read_duration_s),
        ] {
            if !(1..=DURATION_S_MAX).contains(&value) {
                return Err(format!("{name} must be 1 to {DURATION_S_MAX}"));
            }
        }
        if self.warmup_s > DURATION_S_MAX {
            return Err(format!("--warmup-s must be at most {DURATION_S_MAX}"));
        }
        if self.sweep.is_empty() && !self.no_sweep {
            return Err("--sweep needs at least one TXS:MS point (or --no-sweep)".to_owned());
        }
        if self.sweep.len() > SWEEP_POINTS_MAX {
            return Err(format!("--sweep takes at most {SWEEP_POINTS_MAX} points"));
        }
        for (index, point) in self.sweep.iter().enumerate() {
            if self.sweep[..index].contains(point) {
                // Each point is a run of its own in the report, named by its setting.
                return Err(format!("--sweep lists {point} twice"));
            }
        }
        if self.etcd_connections > self.clients {
            return Err("--etcd-connections must not exceed --clients".to_owned());
        }
        if self.commit_poll_ms > 1000 {
            return Err("--commit-poll-ms must be 0 (long-poll) to 1000".to_owned());
        }
        for (name, port, span) in [
            ("--charter-port", self.charter_port, 3u16),
            ("--etcd-port", self.etcd_port, 103),
        ] {
            if port < 1024 || port.checked_add(span).is_none() {
                return Err(format!("{name} must be 1024 to {}", u16::MAX - span));
            }
        }
        Ok(self)
    }

    /// Phases measured, for the progress display: (warm-up + measured) seconds in all.
    pub fn planned_seconds(&self) -> u64 {
        let write = self.warmup_s + self.duration_s;
        let mut total = 0;
        if !self.no_etcd {
            total += write;
            if !self.no_reads {
                total += self.read_duration_s;
            }
        }
        total += write;
        if !self.no_reads {
            total += 2 * self.read_duration_s;
        }
        if !self.no_single_node {
            total += write;
        }
        if !self.no_sweep {
            total += write * self.sweep.len() as u64;
        }
        total
    }
}

/// The 16-byte key of a client's `counter`-th write.
pub fn key(client: usize, counter: u64) -> String {
    assert!(client < 1 << 24 && counter < 1 << 40);
    let key = format!("{client:06x}{counter:010x}");
    assert_eq!(key.len(), KEY_BYTES);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(arguments: &[&str]) -> Result<BenchArgs, String> {
        BenchArgs::try_parse_from(std::iter::once("charter-bench").chain(arguments.iter().copied()))
            .map_err(|error| error.to_string())?
            .resolve()
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let args = parse(&[]).expect("defaults are valid");
        assert_eq!(args.clients, 64);
        assert_eq!(args.value_bytes, 100);
        assert_eq!(
            args.signature_interval,
            SignatureInterval {
                txs: 1000,
                ms: 10,
                when_idle: true
            }
        );
        assert_eq!(args.sweep.len(), 6);
        assert!(args.planned_seconds() > args.duration_s);
    }

    #[test]
    fn quick_shortens_and_trims_the_sweep() {
        let args = parse(&["--quick", "--sweep", "10:1,20:2,30:3"]).expect("valid");
        assert_eq!(args.duration_s, 4);
        assert_eq!(args.warmup_s, 1);
        assert_eq!(
            args.sweep,
            vec![
                SignatureInterval {
                    txs: 10,
                    ms: 1,
                    when_idle: false
                },
                SignatureInterval {
                    txs: 30,
                    ms: 3,
                    when_idle: false
                }
            ]
        );
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(parse(&["--clients", "0"]).is_err());
        assert!(parse(&["--clients", "5000"]).is_err());
        assert!(parse(&["--value-bytes", "0"]).is_err());
        assert!(parse(&["--duration-s", "0"]).is_err());
        assert!(parse(&["--sweep", "10"]).is_err());
        assert!(parse(&["--sweep", "0:5"]).is_err());
        assert!(parse(&["--clients", "4", "--etcd-connections", "8"]).is_err());
        assert!(parse(&["--charter-port", "80"]).is_err());
        assert!(parse(&["--no-sweep", "--no-etcd", "--no-reads"]).is_ok());
        let twice = parse(&["--sweep", "1000:10,5:5,1000:10"]).unwrap_err();
        assert!(twice.contains("1000:10 twice"), "{twice}");
    }

    #[test]
    fn signature_interval_round_trips() {
        let interval: SignatureInterval = "5000:100".parse().expect("valid");
        assert_eq!(interval.to_string(), "5000:100");
        assert!(!interval.when_idle);
        let idle: SignatureInterval = "1000:10:idle".parse().expect("valid");
        assert!(idle.when_idle);
        assert_eq!(idle.to_string(), "1000:10:idle");
        assert_ne!(idle, "1000:10".parse().expect("valid"));
        assert!("x:1".parse::<SignatureInterval>().is_err());
        assert!("1000:10:busy".parse::<SignatureInterval>().is_err());
        assert!("1000:idle".parse::<SignatureInterval>().is_err());
    }

    #[test]
    fn keys_are_sixteen_bytes() {
        assert_eq!(key(0, 1), "0000000000000001");
        assert_eq!(key(63, 0xff), "00003f00000000ff");
    }
}
