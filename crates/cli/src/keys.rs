//! `charter keys new`.
use std::path::Path;

/// Writes `NAME_privk.pem` and `NAME_cert.pem` into `out`.
pub fn new_identity(name: &str, out: &Path) -> Result<(), String> {
    let _ = (name, out);
    Err("not implemented yet".to_owned())
}
