//! Charter's attestation: the evidence a node gives about the code it runs and the hardware it
//! runs on, and its verification against governance's code and TEE manifests.
//!
//! Two platforms exist. `virtual` has no hardware protection: its report is plain JSON claims
//! that say so, for development, tests and CI. `sev-snp` is AMD SEV-SNP: a 1184-byte
//! ATTESTATION_REPORT signed by the chip's VCEK, whose certificate chains through AMD's ASK to
//! the ARK of the CPU family, pinned here.
//!
//! Every report binds `report_data`: the SHA-256 of the node's public key (DER
//! SubjectPublicKeyInfo, see [`node_report_data`]), so evidence cannot be replayed for another
//! key. Nothing here does I/O or reads a clock: the host reads the binary and the device and
//! passes bytes in.
//!
//! ```
//! use charter_attest::{node_report_data, verify, virtual_evidence, Platform, Policy};
//! use charter_crypto::{sha256, SigningKey};
//!
//! let node_key = SigningKey::from_seed(&[1; 32]).unwrap();
//! let report_data = node_report_data(&node_key.verifying_key().to_spki_der());
//! let measurement = hex::encode(sha256(b"the node binary"));
//! let evidence = virtual_evidence(&measurement, &report_data);
//!
//! // Evidence travels as JSON (ledger, /node/quotes).
//! let json = serde_json::to_string(&evidence).unwrap();
//! let evidence: charter_attest::Evidence = serde_json::from_str(&json).unwrap();
//!
//! let allowed = [measurement.clone()];
//! let policy = Policy {
//!     allowed_platforms: &[Platform::Virtual],
//!     allowed_measurements: &allowed,
//!     allowed_host_data: &[],
//! };
//! assert_eq!(verify(&evidence, &report_data, &policy).unwrap(), measurement);
//!
//! // The same evidence does not vouch for another node's key.
//! let other = node_report_data(b"another key");
//! assert!(verify(&evidence, &other, &policy).is_err());
//! ```

mod amd;
mod error;
pub mod sev_snp;
mod virtual_platform;

use base64::Engine as _;

pub use amd::{
    amd_root_certificates, ARK_GENOA_PEM, ARK_MILAN_PEM, ASK_GENOA_PEM, ASK_MILAN_PEM,
    ENDORSEMENTS_BYTES_MAX, ENDORSEMENT_CERTIFICATES, RSA_MODULUS_BITS_MIN,
};
pub use error::AttestError;
pub use virtual_platform::{VIRTUAL_REPORT_BYTES_MAX, VIRTUAL_WARNING};

/// Largest base64 report accepted, in characters (a SEV-SNP report takes 1580).
pub const REPORT_BASE64_BYTES_MAX: usize = 8192;
const _: () = assert!(sev_snp::REPORT_BYTES.div_ceil(3) * 4 <= REPORT_BASE64_BYTES_MAX);

/// Size of the report data a node binds: a SHA-256 digest.
pub const REPORT_DATA_BYTES: usize = 32;

/// TEE platforms governance can allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Platform {
    /// No hardware protection; development, tests and CI only.
    #[serde(rename = "virtual")]
    Virtual,
    /// AMD SEV-SNP confidential VM.
    #[serde(rename = "sev-snp")]
    SevSnp,
}

impl Platform {
    /// The platform's name in manifests and JSON: `virtual` or `sev-snp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Virtual => "virtual",
            Platform::SevSnp => "sev-snp",
        }
    }

    /// The platform named `text` (as [`Platform::as_str`] writes it), if any.
    pub fn parse(text: &str) -> Option<Platform> {
        match text {
            "virtual" => Some(Platform::Virtual),
            "sev-snp" => Some(Platform::SevSnp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's attestation evidence, as stored in the ledger and served at `/node/quotes`: JSON.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The platform that produced the report.
    pub platform: Platform,
    /// Hex measurement of the code: SHA-256 of the binary (virtual) or the SEV-SNP launch
    /// measurement (48 bytes).
    pub measurement: String,
    /// Hex host data (SEV-SNP: the 32-byte HOST_DATA set at launch); `None` for virtual.
    pub host_data: Option<String>,
    /// Standard base64 of the raw report: the 1184-byte ATTESTATION_REPORT for SEV-SNP, the
    /// JSON claims for virtual.
    pub report: String,
    /// PEM certificates VCEK, ASK, ARK for SEV-SNP; `None` for virtual.
    pub endorsements: Option<String>,
    /// Whether the platform protects the node from its host; false for virtual.
    pub hardware_protection: bool,
}

/// What a verifier checks evidence against: governance's manifests.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Platforms in the TEE manifest.
    pub allowed_platforms: &'a [Platform],
    /// Hex measurements in the code manifest (compared case-insensitively).
    pub allowed_measurements: &'a [String],
    /// Hex host data values allowed; empty allows any.
    pub allowed_host_data: &'a [String],
}

/// The report data that binds evidence to a node key: SHA-256 of its DER
/// SubjectPublicKeyInfo (CCF's node ID).
pub fn node_report_data(public_key_spki_der: &[u8]) -> [u8; REPORT_DATA_BYTES] {
    charter_crypto::sha256(public_key_spki_der)
}

/// The 64-byte REPORT_DATA a SEV-SNP guest asks the PSP for: `report_data` then zeros.
pub fn sev_snp_report_data(report_data: &[u8; REPORT_DATA_BYTES]) -> [u8; 64] {
    let mut full = [0u8; 64];
    full[..REPORT_DATA_BYTES].copy_from_slice(report_data);
    full
}

/// Virtual platform: evidence naming `measurement_hex` (the host passes hex SHA-256 of the
/// node binary) and binding `report_data` (SHA-256 of the node's public key DER, see
/// [`node_report_data`]). The report is the JSON
/// `{"platform":"virtual","measurement","report_data","warning":"virtual platform: no hardware
/// protection"}`, base64-encoded; it proves nothing about hardware and says so.
pub fn virtual_evidence(measurement_hex: &str, report_data: &[u8; REPORT_DATA_BYTES]) -> Evidence {
    virtual_platform::evidence(measurement_hex, report_data)
}

/// SEV-SNP evidence from a raw ATTESTATION_REPORT (as `/dev/sev-guest` returns it) and the
/// PEM chain VCEK, ASK, ARK (as AMD's key distribution service or the cloud serves it).
/// Measurement and host data are copied from the report; nothing is verified here.
///
/// # Errors
/// [`AttestError::Malformed`] if the report does not parse.
pub fn sev_snp_evidence(report: &[u8], endorsements_pem: &str) -> Result<Evidence, AttestError> {
    let parsed = sev_snp::AttestationReport::parse(report)?;
    Ok(Evidence {
        platform: Platform::SevSnp,
        measurement: hex::encode(parsed.measurement),
        host_data: Some(hex::encode(parsed.host_data)),
        report: base64::engine::general_purpose::STANDARD.encode(report),
        endorsements: Some(endorsements_pem.to_owned()),
        hardware_protection: true,
    })
}

/// Verifies evidence against governance's `policy` and the node key digest
/// `expected_report_data`, trusting AMD's published Milan and Genoa roots for SEV-SNP.
/// Returns the verified measurement (lowercase hex).
///
/// Checks, in order: the platform is allowed; the report decodes and is authentic (SEV-SNP:
/// the VCEK signs the report, the VCEK→ASK→ARK chain verifies with RSASSA-PSS, and the ARK is
/// a pinned AMD root; the guest is not debuggable) and agrees with the evidence's fields; it
/// binds `expected_report_data`; the measurement and the host data are allowed.
///
/// # Errors
/// The [`AttestError`] variant naming the first check that failed.
pub fn verify(
    evidence: &Evidence,
    expected_report_data: &[u8; REPORT_DATA_BYTES],
    policy: &Policy<'_>,
) -> Result<String, AttestError> {
    verify_with_amd_roots(
        evidence,
        expected_report_data,
        policy,
        &amd_root_certificates(),
    )
}

/// [`verify`] with the SEV-SNP roots given by the caller (for a CPU family whose ARK is not
/// embedded, a root pinned by configuration, or a test chain). Only the root's public key is
/// compared.
///
/// # Errors
/// As [`verify`]; [`AttestError::BadEndorsements`] if `amd_roots` is empty for SEV-SNP.
pub fn verify_with_amd_roots(
    evidence: &Evidence,
    expected_report_data: &[u8; REPORT_DATA_BYTES],
    policy: &Policy<'_>,
    amd_roots: &[charter_crypto::Certificate],
) -> Result<String, AttestError> {
    if !policy.allowed_platforms.contains(&evidence.platform) {
        return Err(AttestError::PlatformNotAllowed(
            evidence.platform.as_str().to_owned(),
        ));
    }
    let (measurement, host_data) = match evidence.platform {
        Platform::Virtual => {
            let verified = virtual_platform::verify(evidence, expected_report_data)?;
            (verified.measurement, None)
        }
        Platform::SevSnp => verify_sev_snp(evidence, expected_report_data, amd_roots)?,
    };
    let allowed = policy
        .allowed_measurements
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(&measurement));
    if !allowed {
        return Err(AttestError::MeasurementNotAllowed(measurement));
    }
    if !policy.allowed_host_data.is_empty() {
        match &host_data {
            Some(host_data)
                if policy
                    .allowed_host_data
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(host_data)) => {}
            Some(host_data) => return Err(AttestError::HostDataNotAllowed(host_data.clone())),
            None => {
                return Err(AttestError::HostDataNotAllowed(
                    "evidence carries no host data".to_owned(),
                ))
            }
        }
    }
    assert_eq!(measurement, measurement.to_ascii_lowercase());
    Ok(measurement)
}

/// Returns the report's (measurement, host data) in lowercase hex.
fn verify_sev_snp(
    evidence: &Evidence,
    expected_report_data: &[u8; REPORT_DATA_BYTES],
    amd_roots: &[charter_crypto::Certificate],
) -> Result<(String, Option<String>), AttestError> {
    assert_eq!(evidence.platform, Platform::SevSnp);
    if !evidence.hardware_protection {
        return Err(AttestError::Malformed(
            "SEV-SNP evidence denies hardware protection".to_owned(),
        ));
    }
    let endorsements = evidence.endorsements.as_deref().ok_or_else(|| {
        AttestError::BadEndorsements("SEV-SNP evidence has no endorsements".to_owned())
    })?;
    let raw = decode_report(&evidence.report, sev_snp::REPORT_BYTES)?;
    let report = sev_snp::AttestationReport::parse(&raw)?;
    report.signing_key()?;
    let endorsed = amd::verify_chain(endorsements, amd_roots)?;
    report.verify_signature(&raw, &endorsed.key)?;
    // A VCEK names its chip; a masked chip ID (all zeros) cannot be compared.
    if let Some(chip_id) = &endorsed.chip_id {
        if report.chip_id.iter().any(|&byte| byte != 0) && chip_id[..] != report.chip_id[..] {
            return Err(AttestError::BadEndorsements(
                "VCEK is for another chip".to_owned(),
            ));
        }
    }
    // From here on the report is authentic.
    if report.debug_allowed() {
        return Err(AttestError::PlatformNotAllowed(
            "SEV-SNP guest policy allows debugging".to_owned(),
        ));
    }
    let measurement = hex::encode(report.measurement);
    let claimed = check_hex(&evidence.measurement, 48, "measurement")?;
    if claimed != measurement {
        return Err(AttestError::Malformed(
            "evidence measurement differs from the report's".to_owned(),
        ));
    }
    let host_data = hex::encode(report.host_data);
    let claimed = evidence
        .host_data
        .as_deref()
        .map(|text| check_hex(text, 32, "host_data"))
        .transpose()?;
    if claimed.as_deref() != Some(host_data.as_str()) {
        return Err(AttestError::Malformed(
            "evidence host data differs from the report's".to_owned(),
        ));
    }
    if report.report_data != sev_snp_report_data(expected_report_data) {
        return Err(AttestError::ReportDataMismatch);
    }
    Ok((measurement, Some(host_data)))
}

/// Decodes a base64 report of at most `bytes_max` bytes.
pub(crate) fn decode_report(report: &str, bytes_max: usize) -> Result<Vec<u8>, AttestError> {
    if report.len() > REPORT_BASE64_BYTES_MAX || report.len() > bytes_max.div_ceil(3) * 4 {
        return Err(AttestError::Malformed(format!(
            "report over {bytes_max} bytes"
        )));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(report)
        .map_err(|error| AttestError::Malformed(format!("report is not base64: {error}")))?;
    assert!(raw.len() <= bytes_max + 2);
    Ok(raw)
}

/// Checks that `text` is hex of exactly `bytes` bytes; returns it lowercased.
pub(crate) fn check_hex(text: &str, bytes: usize, what: &str) -> Result<String, AttestError> {
    if text.len() != bytes * 2 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(AttestError::Malformed(format!(
            "{what} is not {bytes} bytes of hex"
        )));
    }
    Ok(text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for platform in [Platform::Virtual, Platform::SevSnp] {
            assert_eq!(Platform::parse(platform.as_str()), Some(platform));
            let json = serde_json::to_string(&platform).unwrap();
            assert_eq!(json, format!("\"{}\"", platform.as_str()));
        }
        assert_eq!(Platform::parse("sgx"), None);
        assert_eq!(Platform::parse("Virtual"), None);
    }

    #[test]
    fn hex_checks() {
        assert_eq!(check_hex("AB", 1, "x").unwrap(), "ab");
        assert!(check_hex("ab", 2, "x").is_err());
        assert!(check_hex("zz", 1, "x").is_err());
        assert!(check_hex("+b", 1, "x").is_err());
    }
}
