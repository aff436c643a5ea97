//! The `virtual` platform: JSON claims with no hardware behind them, for development and CI.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{AttestError, Evidence, Platform, REPORT_BASE64_BYTES_MAX};

/// The warning every virtual report carries, so that nobody mistakes it for hardware evidence.
pub const VIRTUAL_WARNING: &str = "virtual platform: no hardware protection";

/// Largest decoded virtual report accepted, in bytes; real ones are about 250.
pub const VIRTUAL_REPORT_BYTES_MAX: usize = 4096;
const _: () = assert!(VIRTUAL_REPORT_BYTES_MAX <= REPORT_BASE64_BYTES_MAX);

/// The claims of a virtual report, as serialized into [`Evidence::report`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VirtualClaims {
    platform: Platform,
    measurement: String,
    report_data: String,
    warning: String,
}

pub(crate) fn evidence(measurement_hex: &str, report_data: &[u8; 32]) -> Evidence {
    let claims = VirtualClaims {
        platform: Platform::Virtual,
        measurement: measurement_hex.to_owned(),
        report_data: hex::encode(report_data),
        warning: VIRTUAL_WARNING.to_owned(),
    };
    // Serializing a struct of strings to JSON cannot fail.
    let report = serde_json::to_vec(&claims).expect("claims serialize");
    Evidence {
        platform: Platform::Virtual,
        measurement: measurement_hex.to_owned(),
        host_data: None,
        report: base64::engine::general_purpose::STANDARD.encode(report),
        endorsements: None,
        hardware_protection: false,
    }
}

/// What a verified virtual report says.
pub(crate) struct Verified {
    pub measurement: String,
}

/// Checks that the report decodes, says it is virtual, agrees with the evidence's fields and
/// binds `expected_report_data`. There is nothing to authenticate: anyone can make one.
pub(crate) fn verify(
    evidence: &Evidence,
    expected_report_data: &[u8; 32],
) -> Result<Verified, AttestError> {
    assert_eq!(evidence.platform, Platform::Virtual);
    if evidence.hardware_protection {
        return Err(AttestError::Malformed(
            "virtual evidence claims hardware protection".to_owned(),
        ));
    }
    if evidence.endorsements.is_some() || evidence.host_data.is_some() {
        return Err(AttestError::Malformed(
            "virtual evidence carries endorsements or host data".to_owned(),
        ));
    }
    let report = crate::decode_report(&evidence.report, VIRTUAL_REPORT_BYTES_MAX)?;
    let claims: VirtualClaims = serde_json::from_slice(&report)
        .map_err(|error| AttestError::Malformed(format!("virtual report: {error}")))?;
    if claims.platform != Platform::Virtual || claims.warning != VIRTUAL_WARNING {
        return Err(AttestError::Malformed(
            "virtual report does not declare itself virtual".to_owned(),
        ));
    }
    let measurement = crate::check_hex(&claims.measurement, 32, "measurement")?;
    if measurement != evidence.measurement.to_ascii_lowercase() {
        return Err(AttestError::Malformed(
            "virtual report measurement differs from the evidence's".to_owned(),
        ));
    }
    let report_data = crate::check_hex(&claims.report_data, 32, "report_data")?;
    if report_data != hex::encode(expected_report_data) {
        return Err(AttestError::ReportDataMismatch);
    }
    Ok(Verified { measurement })
}
