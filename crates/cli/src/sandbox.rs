//! `charter sandbox`.

/// Arguments of `charter sandbox`.
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Workspace directory (created if missing; reused to restart from its ledger).
    #[arg(long, default_value = "workspace/sandbox")]
    pub workspace: std::path::PathBuf,
    /// Client port of the first node.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
}

/// Runs the sandbox until Ctrl-C.
pub fn run(args: SandboxArgs) -> Result<(), String> {
    let _ = args;
    Err("not implemented yet".to_owned())
}
