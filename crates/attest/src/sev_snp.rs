//! AMD SEV-SNP: the ATTESTATION_REPORT structure and its VCEK signature.
//!
//! Layout from the SEV-SNP Firmware ABI specification (table "ATTESTATION_REPORT
//! Structure"), all integers little-endian. The PSP signs bytes `0x000..0x2A0` with ECDSA
//! P-384 over SHA-384; `r` and `s` are 72-byte little-endian fields of which only the low 48
//! bytes can be non-zero.

use p384::ecdsa::Signature;

use crate::AttestError;

/// Size of an ATTESTATION_REPORT in bytes.
pub const REPORT_BYTES: usize = 0x4A0;
/// The signature covers the report up to here.
pub const SIGNED_BYTES: usize = 0x2A0;

/// Offset of VERSION (u32).
pub const VERSION_OFFSET: usize = 0x000;
/// Offset of GUEST_SVN (u32).
pub const GUEST_SVN_OFFSET: usize = 0x004;
/// Offset of the guest POLICY (u64).
pub const POLICY_OFFSET: usize = 0x008;
/// Offset of FAMILY_ID (16 bytes).
pub const FAMILY_ID_OFFSET: usize = 0x010;
/// Offset of IMAGE_ID (16 bytes).
pub const IMAGE_ID_OFFSET: usize = 0x020;
/// Offset of VMPL (u32).
pub const VMPL_OFFSET: usize = 0x030;
/// Offset of SIGNATURE_ALGO (u32).
pub const SIGNATURE_ALGO_OFFSET: usize = 0x034;
/// Offset of CURRENT_TCB (u64).
pub const CURRENT_TCB_OFFSET: usize = 0x038;
/// Offset of PLATFORM_INFO (u64).
pub const PLATFORM_INFO_OFFSET: usize = 0x040;
/// Offset of the key-information flags (u32): AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY.
pub const FLAGS_OFFSET: usize = 0x048;
/// Offset of REPORT_DATA (64 bytes), chosen by the guest.
pub const REPORT_DATA_OFFSET: usize = 0x050;
/// Offset of MEASUREMENT (48 bytes), the launch digest.
pub const MEASUREMENT_OFFSET: usize = 0x090;
/// Offset of HOST_DATA (32 bytes), chosen by the host at launch.
pub const HOST_DATA_OFFSET: usize = 0x0C0;
/// Offset of ID_KEY_DIGEST (48 bytes).
pub const ID_KEY_DIGEST_OFFSET: usize = 0x0E0;
/// Offset of AUTHOR_KEY_DIGEST (48 bytes).
pub const AUTHOR_KEY_DIGEST_OFFSET: usize = 0x110;
/// Offset of REPORT_ID (32 bytes).
pub const REPORT_ID_OFFSET: usize = 0x140;
/// Offset of REPORT_ID_MA (32 bytes).
pub const REPORT_ID_MA_OFFSET: usize = 0x160;
/// Offset of REPORTED_TCB (u64).
pub const REPORTED_TCB_OFFSET: usize = 0x180;
/// Offset of CHIP_ID (64 bytes).
pub const CHIP_ID_OFFSET: usize = 0x1A0;
/// Offset of the signature: R (72 bytes), S (72 bytes), reserved.
pub const SIGNATURE_OFFSET: usize = 0x2A0;
/// Size of each of R and S in the report.
pub const SIGNATURE_COMPONENT_BYTES: usize = 72;

/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIGNATURE_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Guest policy bit 19: the hypervisor may debug the guest (read its memory).
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;
/// The lowest report version this crate reads (the first SEV-SNP release wrote 2).
pub const VERSION_MIN: u32 = 2;

const SCALAR_BYTES: usize = 48;

const _: () = assert!(SIGNED_BYTES == SIGNATURE_OFFSET);
const _: () = assert!(SIGNATURE_OFFSET + 2 * SIGNATURE_COMPONENT_BYTES <= REPORT_BYTES);
const _: () = assert!(REPORT_DATA_OFFSET + 64 == MEASUREMENT_OFFSET);
const _: () = assert!(MEASUREMENT_OFFSET + 48 == HOST_DATA_OFFSET);
const _: () = assert!(CHIP_ID_OFFSET + 64 <= SIGNED_BYTES);

/// Which key signed the report (flags bits 4:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's Versioned Chip Endorsement Key.
    Vcek,
    /// A cloud provider's Versioned Loaded Endorsement Key.
    Vlek,
}

/// A parsed ATTESTATION_REPORT. Parsing checks the size, version and signature algorithm; it
/// does not check the signature (see [`AttestationReport::verify_signature`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationReport {
    /// Report format version.
    pub version: u32,
    /// Guest security version number.
    pub guest_svn: u32,
    /// Guest policy the guest was launched with.
    pub policy: u64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// Virtual machine privilege level that asked for the report.
    pub vmpl: u32,
    /// Signature algorithm; always [`SIGNATURE_ALGO_ECDSA_P384_SHA384`] after parsing.
    pub signature_algo: u32,
    /// Current TCB version.
    pub current_tcb: u64,
    /// Platform information flags (SMT, TSME, ...).
    pub platform_info: u64,
    /// Key-information flags.
    pub flags: u32,
    /// Guest-chosen data bound into the report.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-chosen data set at launch.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key, if an ID block was given.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key, if any.
    pub author_key_digest: [u8; 48],
    /// Report ID of the guest.
    pub report_id: [u8; 32],
    /// Report ID of the guest's migration agent.
    pub report_id_ma: [u8; 32],
    /// TCB version the VCEK was derived from.
    pub reported_tcb: u64,
    /// Chip identifier (zeros when MASK_CHIP_ID is set).
    pub chip_id: [u8; 64],
    /// Signature R, little-endian, as in the report.
    pub signature_r: [u8; SIGNATURE_COMPONENT_BYTES],
    /// Signature S, little-endian, as in the report.
    pub signature_s: [u8; SIGNATURE_COMPONENT_BYTES],
}

fn array<const N: usize>(raw: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[offset..offset + N]);
    out
}

fn u32_at(raw: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(array(raw, offset))
}

fn u64_at(raw: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(array(raw, offset))
}

/// Converts a 72-byte little-endian report field to a 48-byte big-endian scalar.
fn scalar_big_endian(
    little: &[u8; SIGNATURE_COMPONENT_BYTES],
) -> Result<[u8; SCALAR_BYTES], AttestError> {
    if little[SCALAR_BYTES..].iter().any(|&byte| byte != 0) {
        return Err(AttestError::BadSignature(
            "signature component wider than 384 bits".to_owned(),
        ));
    }
    let mut big = [0u8; SCALAR_BYTES];
    for (index, byte) in little[..SCALAR_BYTES].iter().enumerate() {
        big[SCALAR_BYTES - 1 - index] = *byte;
    }
    Ok(big)
}

impl AttestationReport {
    /// Parses a raw report.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] if `raw` is not [`REPORT_BYTES`] long, its version is below
    /// [`VERSION_MIN`] or its signature algorithm is not ECDSA P-384 with SHA-384.
    pub fn parse(raw: &[u8]) -> Result<AttestationReport, AttestError> {
        if raw.len() != REPORT_BYTES {
            return Err(AttestError::Malformed(format!(
                "SEV-SNP report is {} bytes, expected {REPORT_BYTES}",
                raw.len()
            )));
        }
        let report = AttestationReport {
            version: u32_at(raw, VERSION_OFFSET),
            guest_svn: u32_at(raw, GUEST_SVN_OFFSET),
            policy: u64_at(raw, POLICY_OFFSET),
            family_id: array(raw, FAMILY_ID_OFFSET),
            image_id: array(raw, IMAGE_ID_OFFSET),
            vmpl: u32_at(raw, VMPL_OFFSET),
            signature_algo: u32_at(raw, SIGNATURE_ALGO_OFFSET),
            current_tcb: u64_at(raw, CURRENT_TCB_OFFSET),
            platform_info: u64_at(raw, PLATFORM_INFO_OFFSET),
            flags: u32_at(raw, FLAGS_OFFSET),
            report_data: array(raw, REPORT_DATA_OFFSET),
            measurement: array(raw, MEASUREMENT_OFFSET),
            host_data: array(raw, HOST_DATA_OFFSET),
            id_key_digest: array(raw, ID_KEY_DIGEST_OFFSET),
            author_key_digest: array(raw, AUTHOR_KEY_DIGEST_OFFSET),
            report_id: array(raw, REPORT_ID_OFFSET),
            report_id_ma: array(raw, REPORT_ID_MA_OFFSET),
            reported_tcb: u64_at(raw, REPORTED_TCB_OFFSET),
            chip_id: array(raw, CHIP_ID_OFFSET),
            signature_r: array(raw, SIGNATURE_OFFSET),
            signature_s: array(raw, SIGNATURE_OFFSET + SIGNATURE_COMPONENT_BYTES),
        };
        if report.version < VERSION_MIN {
            return Err(AttestError::Malformed(format!(
                "SEV-SNP report version {} is below {VERSION_MIN}",
                report.version
            )));
        }
        if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384 {
            return Err(AttestError::Malformed(format!(
                "SEV-SNP signature algorithm {} is not ECDSA P-384 with SHA-384",
                report.signature_algo
            )));
        }
        Ok(report)
    }

    /// Which key signed the report.
    ///
    /// # Errors
    /// [`AttestError::Malformed`] for "no key" or reserved values.
    pub fn signing_key(&self) -> Result<SigningKey, AttestError> {
        match (self.flags >> 2) & 0b111 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            other => Err(AttestError::Malformed(format!(
                "SEV-SNP report signed by key kind {other}, not VCEK or VLEK"
            ))),
        }
    }

    /// Whether the guest policy lets the hypervisor debug (and so read) the guest.
    pub fn debug_allowed(&self) -> bool {
        self.policy & POLICY_DEBUG_BIT != 0
    }

    /// The report's ECDSA signature, converted to big-endian scalars.
    ///
    /// # Errors
    /// [`AttestError::BadSignature`] if R or S is zero, too wide or not below the group order.
    pub fn signature(&self) -> Result<Signature, AttestError> {
        let r = scalar_big_endian(&self.signature_r)?;
        let s = scalar_big_endian(&self.signature_s)?;
        Signature::from_scalars(r, s)
            .map_err(|_| AttestError::BadSignature("R or S out of range".to_owned()))
    }

    /// Verifies the signature over `raw` (the same bytes this report was parsed from) with
    /// the endorsement key (VCEK or VLEK).
    ///
    /// # Errors
    /// [`AttestError::Malformed`] if `raw` is not the parsed report,
    /// [`AttestError::BadSignature`] if the signature does not verify.
    pub fn verify_signature(
        &self,
        raw: &[u8],
        endorsement_key: &charter_crypto::VerifyingKey,
    ) -> Result<(), AttestError> {
        if raw.len() != REPORT_BYTES || AttestationReport::parse(raw)? != *self {
            return Err(AttestError::Malformed(
                "raw bytes are not the parsed report".to_owned(),
            ));
        }
        let signature = self.signature()?;
        // charter-crypto's verify hashes with SHA-384, the digest SEV-SNP uses for P-384.
        endorsement_key
            .verify(&raw[..SIGNED_BYTES], signature.to_der().as_bytes())
            .map_err(|_| {
                AttestError::BadSignature("report not signed by the endorsed key".to_owned())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_conversion_reverses_and_rejects_wide_values() {
        let mut little = [0u8; SIGNATURE_COMPONENT_BYTES];
        little[0] = 1;
        little[47] = 2;
        let big = scalar_big_endian(&little).unwrap();
        assert_eq!(big[47], 1);
        assert_eq!(big[0], 2);
        little[48] = 1;
        assert!(matches!(
            scalar_big_endian(&little),
            Err(AttestError::BadSignature(_))
        ));
    }

    #[test]
    fn parse_checks_size_version_and_algorithm() {
        assert!(AttestationReport::parse(&[0; REPORT_BYTES - 1]).is_err());
        let mut raw = [0u8; REPORT_BYTES];
        raw[VERSION_OFFSET] = 2;
        assert!(AttestationReport::parse(&raw).is_err());
        raw[SIGNATURE_ALGO_OFFSET] = 1;
        let report = AttestationReport::parse(&raw).unwrap();
        assert_eq!(report.signing_key().unwrap(), SigningKey::Vcek);
        assert!(!report.debug_allowed());
        // Zero R and S are never a valid signature.
        assert!(report.signature().is_err());
        raw[VERSION_OFFSET] = 1;
        assert!(AttestationReport::parse(&raw).is_err());
    }
}
