//! `charter ledger verify` and `charter receipt verify`.
use std::path::{Path, PathBuf};

use charter_crypto::Certificate;
use charter_ledger::{verify_recovered_ledger, LedgerFile, Receipt};

/// Reads and parses the service certificate, naming the file in any error.
fn read_service_cert(path: &Path) -> Result<Certificate, String> {
    let pem = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "cannot read the service certificate {}: {error}",
            path.display()
        )
    })?;
    Certificate::from_pem(&pem)
        .map_err(|error| format!("{} is not a valid PEM certificate: {error}", path.display()))
}

/// Reads every regular file of `dir` whose name `wanted` accepts; `what` names the directory
/// in errors.
fn read_files(
    dir: &Path,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<LedgerFile>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read {what} directory {}: {error}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| format!("cannot read {what} directory {}: {error}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !wanted(&name) {
            continue;
        }
        let path = entry.path();
        // Follows symbolic links, so a link to a file counts as the file.
        let metadata = std::fs::metadata(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        if !metadata.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        files.push(LedgerFile { name, bytes });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Reads every regular file of `dir` whose name starts with `ledger_`.
fn read_ledger_files(dir: &Path) -> Result<Vec<LedgerFile>, String> {
    let files = read_files(dir, "ledger", |name| name.starts_with("ledger_"))?;
    if files.is_empty() {
        return Err(format!("no ledger_* files in {}", dir.display()));
    }
    Ok(files)
}

/// The snapshot directory to check: the one given, or `snapshots/` next to the ledger
/// directory when it exists (a node directory holds `ledger/` and `snapshots/`).
fn snapshot_dir(ledger_dir: &Path, given: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = given {
        return Some(dir.to_owned());
    }
    let sibling = ledger_dir.parent()?.join("snapshots");
    sibling.is_dir().then_some(sibling)
}

/// Verifies a ledger directory, and the committed snapshots (`snapshot_*.committed`) of
/// `snapshots` or, by default, of `snapshots/` next to it.
pub fn ledger(
    dir: &Path,
    service_cert: &Path,
    snapshots: Option<&Path>,
    previous: &[PathBuf],
) -> Result<(), String> {
    let service_cert = read_service_cert(service_cert)?;
    let previous = previous
        .iter()
        .map(|path| read_service_cert(path))
        .collect::<Result<Vec<_>, _>>()?;
    let files = read_ledger_files(dir)?;
    let snapshot_files = match snapshot_dir(dir, snapshots) {
        Some(snapshots) => read_files(&snapshots, "snapshot", |name| {
            name.starts_with("snapshot_") && name.ends_with(".committed")
        })?,
        None => Vec::new(),
    };
    let summary = verify_recovered_ledger(&files, &snapshot_files, &service_cert, &previous)
        .map_err(|failure| failure.to_string())?;
    println!("{summary}");
    Ok(())
}

/// Verifies a receipt file.
pub fn receipt(file: &Path, service_cert: &Path) -> Result<(), String> {
    let service_cert = read_service_cert(service_cert)?;
    let text = std::fs::read_to_string(file)
        .map_err(|error| format!("cannot read receipt {}: {error}", file.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| format!("{} is not JSON: {error}", file.display()))?;
    // `from_json` takes the snake_case and camelCase forms, bare or wrapped as
    // `{"receipt": {...}}` the way Azure's getReceipt answers.
    let receipt = Receipt::from_json(&value)
        .map_err(|error| format!("receipt {}: {error}", file.display()))?;
    let root = receipt
        .verify(&service_cert)
        .map_err(|error| format!("receipt {} is not valid: {error}", file.display()))?;
    let root_hex: String = root.iter().map(|byte| format!("{byte:02x}")).collect();
    println!("receipt OK: root {root_hex}");
    Ok(())
}
