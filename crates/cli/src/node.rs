//! `charter node --config FILE`.
use std::path::Path;

/// Runs one node until SIGTERM or Ctrl-C.
pub fn run(config: &Path) -> Result<(), String> {
    let _ = config;
    Err("not implemented yet".to_owned())
}
