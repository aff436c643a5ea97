//! `charter ledger verify` and `charter receipt verify`.
use std::path::Path;

/// Verifies a ledger directory.
pub fn ledger(dir: &Path, service_cert: &Path) -> Result<(), String> {
    let _ = (dir, service_cert);
    Err("not implemented yet".to_owned())
}

/// Verifies a receipt file.
pub fn receipt(file: &Path, service_cert: &Path) -> Result<(), String> {
    let _ = (file, service_cert);
    Err("not implemented yet".to_owned())
}
