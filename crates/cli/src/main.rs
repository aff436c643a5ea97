//! The `charter` command: run a sandbox network or a node, make keys, verify ledgers and receipts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod gov;
mod keys;
mod load;
mod node;
mod sandbox;
mod verify;

/// Charter: a confidential consortium ledger.
#[derive(Parser, Debug)]
#[command(name = "charter", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local network with generated members and users, and run it until Ctrl-C.
    Sandbox(sandbox::SandboxArgs),
    /// Drive a closed-loop write load against a sandbox and report throughput and latency.
    Load(load::LoadArgs),
    /// Run one node from a configuration file.
    Node {
        /// Path of the node's JSON configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Governance as a member: propose, vote, withdraw, show, ack.
    Gov {
        #[command(flatten)]
        member: gov::MemberArgs,
        #[command(subcommand)]
        command: gov::GovCommand,
    },
    /// Key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Offline ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Offline receipt tools.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a P-384 key pair and a self-signed certificate: NAME_privk.pem and NAME_cert.pem.
    New {
        /// Base name of the files, e.g. member3 or user2.
        name: String,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Create a member's recovery encryption key pair: NAME_enc_privk.pem and NAME_enc_pubk.pem
    /// (pass the public one as `encryption_pub_key` of `set_member`).
    Recovery {
        /// Base name of the files, e.g. member3.
        name: String,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Check every entry, Merkle root, signature and node endorsement of a ledger directory,
    /// and its committed snapshots: their evidence, and their agreement with the ledger.
    Verify {
        /// Directory holding ledger_* chunk files.
        dir: PathBuf,
        /// The service certificate (PEM) that must have endorsed every signing node.
        #[arg(long)]
        service_cert: PathBuf,
        /// Directory of snapshot_*.committed files to check too (default: `snapshots` next
        /// to DIR, when it exists). A ledger that starts after seqno 1 is verified from the
        /// oldest of them that covers its start.
        #[arg(long)]
        snapshots: Option<PathBuf>,
        /// For a recovered service: a previous service certificate whose endorsements of the
        /// old ledger's nodes are accepted too (repeat for each recovery).
        #[arg(long = "previous-service-cert")]
        previous_service_certs: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ReceiptCommand {
    /// Verify a receipt (CCF or Azure JSON form) against the service certificate.
    Verify {
        /// Receipt JSON file.
        file: PathBuf,
        /// The service certificate (PEM).
        #[arg(long)]
        service_cert: PathBuf,
    },
}

/// mimalloc instead of glibc's malloc: a node allocates and frees small objects at a high rate
/// on several threads (request and write-set buffers, store nodes), and glibc's bins and their
/// consolidation were about a third of the primary's core thread under an Ethereum load.
///
/// Built with `no_thp`: mimalloc then never asks for transparent huge pages (`MADV_HUGEPAGE`).
/// With them, every fresh 2 MiB region was zeroed at its first touch, and page clearing was
/// 13-27% of the nodes' core threads under the Ethereum load; without them the three nodes
/// spent 12% less CPU per transaction and each node's memory grew more slowly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its place in mimalloc 3's `mi_option_e` (mimalloc.h), the option
/// setting how long freed memory waits before it is returned to the OS (1,000 ms by default).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Tells the allocator to keep the memory a process frees for reuse rather than return it to
/// the OS a second later (unless `MIMALLOC_PURGE_DELAY` says otherwise). A loaded node frees
/// and reuses memory all the time; returned memory came back through a page fault and a
/// zeroed page at each reuse. Under the Ethereum load (ERC-20 transfers, three nodes, A/B
/// pairs of one binary) the nodes took 124-129 instead of 131-133 us of CPU per transaction,
/// 5% more transactions a second. The cost: a node's resident memory stays at its peak.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: both functions take and return plain integers; mimalloc is this process's
        // allocator (above) and its options may be changed at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sandbox(args) => sandbox::run(args),
        Command::Load(args) => load::run(args),
        Command::Gov { member, command } => gov::run(member, command),
        Command::Node { config } => node::run(&config),
        Command::Keys {
            command: KeysCommand::New { name, out },
        } => keys::new_identity(&name, &out),
        Command::Keys {
            command: KeysCommand::Recovery { name, out },
        } => keys::new_recovery_key(&name, &out),
        Command::Ledger {
            command:
                LedgerCommand::Verify {
                    dir,
                    service_cert,
                    snapshots,
                    previous_service_certs,
                },
        } => verify::ledger(
            &dir,
            &service_cert,
            snapshots.as_deref(),
            &previous_service_certs,
        ),
        Command::Receipt {
            command: ReceiptCommand::Verify { file, service_cert },
        } => verify::receipt(&file, &service_cert),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    extern "C" {
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    /// Option 15 is mimalloc's purge delay (the only option whose default is 1,000), and
    /// `keep_freed_memory` turns purging off.
    #[test]
    fn keep_freed_memory_sets_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: plain integers in and out.
        let read = || unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(read(), 1_000);
        super::keep_freed_memory();
        assert_eq!(read(), -1);
    }
}
