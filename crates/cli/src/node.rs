//! `charter node --config FILE`.
use std::path::Path;

use charter_host::node::{run_node, NodeFileConfig};

/// Runs one node until SIGTERM or Ctrl-C.
pub fn run(config: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(config)
        .map_err(|error| format!("{}: {error}", config.display()))?;
    let config: NodeFileConfig = serde_json::from_str(&text)
        .map_err(|error| format!("{}: invalid configuration: {error}", config.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let address = config.rpc_address;
    run_node(config, move |_| {
        tracing::info!(%address, "node is serving");
    })
}
