//! The virtual platform through the public API.

use base64::Engine as _;
use charter_attest::{
    node_report_data, verify, virtual_evidence, AttestError, Evidence, Platform, Policy,
};
use charter_crypto::{sha256, SigningKey};

fn setup() -> (Evidence, [u8; 32], String) {
    let key = SigningKey::from_seed(&[3; 32]).unwrap();
    let report_data = node_report_data(&key.verifying_key().to_spki_der());
    let measurement = hex::encode(sha256(b"charter node binary"));
    (
        virtual_evidence(&measurement, &report_data),
        report_data,
        measurement,
    )
}

fn policy<'a>(platforms: &'a [Platform], measurements: &'a [String]) -> Policy<'a> {
    Policy {
        allowed_platforms: platforms,
        allowed_measurements: measurements,
        allowed_host_data: &[],
    }
}

fn report_json(evidence: &Evidence) -> serde_json::Value {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&evidence.report)
        .unwrap();
    serde_json::from_slice(&raw).unwrap()
}

fn with_report(evidence: &Evidence, report: &serde_json::Value) -> Evidence {
    let mut altered = evidence.clone();
    altered.report =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(report).unwrap());
    altered
}

#[test]
fn round_trip_and_verify() {
    let (evidence, report_data, measurement) = setup();
    assert_eq!(evidence.platform, Platform::Virtual);
    assert!(!evidence.hardware_protection);
    assert_eq!(evidence.host_data, None);
    assert_eq!(evidence.endorsements, None);
    let report = report_json(&evidence);
    assert_eq!(report["platform"], "virtual");
    assert_eq!(report["measurement"], measurement.as_str());
    assert_eq!(report["report_data"], hex::encode(report_data).as_str());
    assert_eq!(
        report["warning"],
        "virtual platform: no hardware protection"
    );

    let json = serde_json::to_string(&evidence).unwrap();
    assert!(json.contains("\"platform\":\"virtual\""));
    let back: Evidence = serde_json::from_str(&json).unwrap();
    assert_eq!(back, evidence);

    let allowed = [measurement.to_ascii_uppercase()];
    let verified = verify(&back, &report_data, &policy(&[Platform::Virtual], &allowed)).unwrap();
    assert_eq!(verified, measurement);
}

#[test]
fn platform_not_allowed() {
    let (evidence, report_data, measurement) = setup();
    let allowed = [measurement];
    for platforms in [&[][..], &[Platform::SevSnp][..]] {
        let result = verify(&evidence, &report_data, &policy(platforms, &allowed));
        assert!(
            matches!(result, Err(AttestError::PlatformNotAllowed(_))),
            "{result:?}"
        );
    }
}

#[test]
fn measurement_not_allowed() {
    let (evidence, report_data, _) = setup();
    let allowed = [hex::encode(sha256(b"another binary"))];
    let result = verify(
        &evidence,
        &report_data,
        &policy(&[Platform::Virtual], &allowed),
    );
    assert!(matches!(result, Err(AttestError::MeasurementNotAllowed(_))));
    let result = verify(&evidence, &report_data, &policy(&[Platform::Virtual], &[]));
    assert!(matches!(result, Err(AttestError::MeasurementNotAllowed(_))));
}

#[test]
fn report_data_mismatch() {
    let (evidence, _, measurement) = setup();
    let allowed = [measurement];
    let other = node_report_data(
        &SigningKey::from_seed(&[4; 32])
            .unwrap()
            .verifying_key()
            .to_spki_der(),
    );
    let result = verify(&evidence, &other, &policy(&[Platform::Virtual], &allowed));
    assert!(matches!(result, Err(AttestError::ReportDataMismatch)));
}

#[test]
fn host_data_required_but_absent() {
    let (evidence, report_data, measurement) = setup();
    let allowed = [measurement];
    let host_data = ["00".repeat(32)];
    let policy = Policy {
        allowed_platforms: &[Platform::Virtual],
        allowed_measurements: &allowed,
        allowed_host_data: &host_data,
    };
    let result = verify(&evidence, &report_data, &policy);
    assert!(matches!(result, Err(AttestError::HostDataNotAllowed(_))));
}

#[test]
fn tampered_report_is_rejected() {
    let (evidence, report_data, measurement) = setup();
    let other_measurement = hex::encode(sha256(b"evil binary"));
    let allowed = [measurement.clone(), other_measurement.clone()];
    let policy = policy(&[Platform::Virtual], &allowed);
    let report = report_json(&evidence);

    // The evidence names one measurement, the report another.
    let mut altered = report.clone();
    altered["measurement"] = other_measurement.clone().into();
    let result = verify(&with_report(&evidence, &altered), &report_data, &policy);
    assert!(
        matches!(result, Err(AttestError::Malformed(_))),
        "{result:?}"
    );
    let mut named = evidence.clone();
    named.measurement = other_measurement;
    let result = verify(&named, &report_data, &policy);
    assert!(
        matches!(result, Err(AttestError::Malformed(_))),
        "{result:?}"
    );

    // The report binds another key.
    let mut altered = report.clone();
    altered["report_data"] = hex::encode([9u8; 32]).into();
    let result = verify(&with_report(&evidence, &altered), &report_data, &policy);
    assert!(matches!(result, Err(AttestError::ReportDataMismatch)));

    // The report stops saying it is virtual, or gains a field.
    for (field, value) in [
        ("warning", serde_json::Value::from("trust me")),
        ("platform", "sev-snp".into()),
        ("extra", true.into()),
    ] {
        let mut altered = report.clone();
        altered[field] = value;
        let result = verify(&with_report(&evidence, &altered), &report_data, &policy);
        assert!(
            matches!(result, Err(AttestError::Malformed(_))),
            "{field}: {result:?}"
        );
    }

    // The evidence claims protection, or carries fields virtual never has.
    let mut altered = evidence.clone();
    altered.hardware_protection = true;
    assert!(matches!(
        verify(&altered, &report_data, &policy),
        Err(AttestError::Malformed(_))
    ));
    let mut altered = evidence.clone();
    altered.endorsements = Some(String::new());
    assert!(matches!(
        verify(&altered, &report_data, &policy),
        Err(AttestError::Malformed(_))
    ));

    // Every single-character change of the base64 report is caught or decodes to the same
    // claims.
    for index in 0..evidence.report.len() {
        let mut chars: Vec<char> = evidence.report.chars().collect();
        chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
        let mut altered = evidence.clone();
        altered.report = chars.into_iter().collect();
        if let Ok(verified) = verify(&altered, &report_data, &policy) {
            assert_eq!(verified, measurement);
            assert_eq!(report_json(&altered), report);
        }
    }
}

#[test]
fn malformed_inputs_do_not_panic() {
    let (evidence, report_data, measurement) = setup();
    let allowed = [measurement];
    let policy = policy(&[Platform::Virtual, Platform::SevSnp], &allowed);
    let reports = [
        String::new(),
        "!!!".to_owned(),
        "A".repeat(1 << 16),
        base64::engine::general_purpose::STANDARD.encode(b"{}"),
        base64::engine::general_purpose::STANDARD.encode(b"null"),
        base64::engine::general_purpose::STANDARD.encode([0xff; 40]),
        base64::engine::general_purpose::STANDARD.encode(r#"{"platform":"virtual","measurement":"\u0000","report_data":"zz","warning":"virtual platform: no hardware protection"}"#),
    ];
    for platform in [Platform::Virtual, Platform::SevSnp] {
        for report in &reports {
            let mut altered = evidence.clone();
            altered.platform = platform;
            altered.hardware_protection = platform == Platform::SevSnp;
            altered.report = report.clone();
            altered.endorsements = Some("-----BEGIN CERTIFICATE-----\nAAAA\n".to_owned());
            assert!(verify(&altered, &report_data, &policy).is_err());
        }
    }
    let mut altered = evidence.clone();
    altered.measurement = "é".repeat(32);
    assert!(verify(&altered, &report_data, &policy).is_err());
    assert!(serde_json::from_str::<Evidence>(r#"{"platform":"sgx"}"#).is_err());
}
