//! `charter keys new`.
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use charter_crypto::{Certificate, CertificateSpec, SigningKey, Validity};

/// Days an identity certificate is valid for.
const VALIDITY_DAYS: u32 = 365;
/// How far before now the certificate's validity starts, to tolerate clock skew.
const BACKDATE_SECONDS: i64 = 24 * 60 * 60;

/// Writes `NAME_privk.pem` and `NAME_cert.pem` into `out`.
pub fn new_identity(name: &str, out: &Path) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(format!(
            "invalid identity name {name:?}: it must be a non-empty file name without slashes"
        ));
    }
    std::fs::create_dir_all(out)
        .map_err(|error| format!("cannot create directory {}: {error}", out.display()))?;
    let key_path = out.join(format!("{name}_privk.pem"));
    let cert_path = out.join(format!("{name}_cert.pem"));
    for path in [&key_path, &cert_path] {
        if path.exists() {
            return Err(format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            ));
        }
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?
        .as_secs();
    let now = i64::try_from(now).map_err(|_| "the system clock is out of range".to_owned())?;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let spec = CertificateSpec {
        common_name: name,
        is_ca: false,
        subject_alt_names: &[],
        validity: Validity {
            not_before_unix: now - BACKDATE_SECONDS,
            days: VALIDITY_DAYS,
        },
    };
    let cert = Certificate::self_signed(&key, &spec)
        .map_err(|error| format!("cannot create the certificate for {name:?}: {error}"))?;

    write_new(&key_path, key.to_pem().as_bytes(), 0o600)?;
    if let Err(error) = write_new(&cert_path, cert.to_pem().as_bytes(), 0o644) {
        // Do not leave a key without its certificate behind.
        let _ = std::fs::remove_file(&key_path);
        return Err(error);
    }

    println!("private key: {}", key_path.display());
    println!("certificate: {}", cert_path.display());
    println!("ID: {}", cert.fingerprint_hex());
    Ok(())
}

/// Creates `path` (failing if it exists) with `mode` and writes `contents` to it.
/// Writes a recovery encryption key pair: `NAME_enc_privk.pem` (0600) and `NAME_enc_pubk.pem`.
/// A member whose `set_member` (or genesis entry) carries the public key is a recovery member.
pub fn new_recovery_key(name: &str, out: &Path) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(format!("invalid name {name:?}"));
    }
    std::fs::create_dir_all(out)
        .map_err(|error| format!("cannot create directory {}: {error}", out.display()))?;
    let private_path = out.join(format!("{name}_enc_privk.pem"));
    let public_path = out.join(format!("{name}_enc_pubk.pem"));
    for path in [&private_path, &public_path] {
        if path.exists() {
            return Err(format!(
                "{} already exists; refusing to overwrite it",
                path.display()
            ));
        }
    }
    let key = charter_crypto::RecoveryKeyPair::generate(&mut rand_core::OsRng);
    write_new(&private_path, key.to_pem().as_bytes(), 0o600)?;
    write_new(&public_path, key.public_key().to_pem().as_bytes(), 0o644)?;
    println!(
        "wrote {} and {}",
        private_path.display(),
        public_path.display()
    );
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}
