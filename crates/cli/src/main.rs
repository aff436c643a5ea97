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

fn main() -> ExitCode {
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
