//! SEV-SNP through the public API, with a synthetic AMD-shaped chain: an RSA "ARK" and "ASK"
//! signing with RSASSA-PSS/SHA-384 as AMD's do, a P-384 "VCEK", and a report signed by it.
//! RSA keys are 2048 bits (AMD's are 4096) to keep key generation fast.

use std::sync::OnceLock;

use base64::Engine as _;
use charter_attest::sev_snp::{self, AttestationReport};
use charter_attest::{
    node_report_data, sev_snp_evidence, verify, verify_with_amd_roots, AttestError, Evidence,
    Platform, Policy,
};
use charter_crypto::{Certificate, SigningKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rsa::pkcs8::EncodePublicKey as _;
use sha2::{Digest as _, Sha384};

// A minimal DER writer, enough for the test certificates.

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else if length < 0x100 {
        out.extend([0x81, length as u8]);
    } else {
        out.extend([0x82, (length >> 8) as u8, length as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn name(common_name: &str) -> Vec<u8> {
    let attribute = sequence(&[
        &[0x06, 0x03, 0x55, 0x04, 0x03],
        &tlv(0x0c, common_name.as_bytes()),
    ]);
    sequence(&[&tlv(0x31, &attribute)])
}

/// AlgorithmIdentifier for RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48, as AMD writes it.
fn pss_sha384() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode("MEYGCSqGSIb3DQEBCjA5oA8wDQYJYIZIAWUDBAICBQChHDAaBgkqhkiG9w0BAQgwDQYJYIZIAWUDBAICBQCiAwIBMKMDAgEB")
        .unwrap()
}

const OID_HWID: [u8; 11] = [
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x9c, 0x78, 0x01, 0x04,
];

fn certificate(
    subject: &str,
    issuer: &str,
    subject_spki: &[u8],
    is_ca: bool,
    chip_id: Option<&[u8; 64]>,
    issuer_key: &rsa::RsaPrivateKey,
    rng: &mut rand_chacha::ChaCha20Rng,
) -> Vec<u8> {
    let validity = sequence(&[&tlv(0x17, b"230101000000Z"), &tlv(0x17, b"491231000000Z")]);
    let mut extensions = Vec::new();
    if is_ca {
        let value = tlv(0x04, &sequence(&[&[0x01, 0x01, 0xff]]));
        extensions.push(sequence(&[
            &[0x06, 0x03, 0x55, 0x1d, 0x13],
            &[0x01, 0x01, 0xff],
            &value,
        ]));
    }
    if let Some(chip_id) = chip_id {
        extensions.push(sequence(&[&OID_HWID, &tlv(0x04, chip_id)]));
    }
    let extensions = if extensions.is_empty() {
        Vec::new()
    } else {
        let refs: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
        tlv(0xa3, &sequence(&refs))
    };
    let tbs = sequence(&[
        &[0xa0, 0x03, 0x02, 0x01, 0x02],
        &[0x02, 0x01, 0x01],
        &pss_sha384(),
        &name(issuer),
        &validity,
        &name(subject),
        subject_spki,
        &extensions,
    ]);
    let signature = issuer_key
        .sign_with_rng(
            rng,
            rsa::Pss::new_with_salt::<Sha384>(48),
            &Sha384::digest(&tbs),
        )
        .unwrap();
    let mut bits = vec![0u8];
    bits.extend(signature);
    sequence(&[&tbs, &pss_sha384(), &tlv(0x03, &bits)])
}

fn pem(der: &[u8]) -> String {
    Certificate::from_der(der).unwrap().to_pem()
}

struct Chain {
    ark: Certificate,
    ark_key: rsa::RsaPrivateKey,
    ask_der: Vec<u8>,
    ask_key: rsa::RsaPrivateKey,
    vcek_key: SigningKey,
    chip_id: [u8; 64],
    /// VCEK, ASK, ARK.
    endorsements: String,
}

fn chain() -> &'static Chain {
    static CHAIN: OnceLock<Chain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let ark_key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let ask_key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let spki = |key: &rsa::RsaPrivateKey| key.to_public_key().to_public_key_der().unwrap();
        let ark_der = certificate(
            "ARK-Test",
            "ARK-Test",
            spki(&ark_key).as_bytes(),
            true,
            None,
            &ark_key,
            &mut rng,
        );
        let ask_der = certificate(
            "SEV-Test",
            "ARK-Test",
            spki(&ask_key).as_bytes(),
            true,
            None,
            &ark_key,
            &mut rng,
        );
        let vcek_key = SigningKey::from_seed(&[5; 32]).unwrap();
        let chip_id = [0x5a; 64];
        let vcek_der = certificate(
            "SEV-VCEK",
            "SEV-Test",
            &vcek_key.verifying_key().to_spki_der(),
            false,
            Some(&chip_id),
            &ask_key,
            &mut rng,
        );
        let endorsements = [pem(&vcek_der), pem(&ask_der), pem(&ark_der)].concat();
        Chain {
            ark: Certificate::from_der(&ark_der).unwrap(),
            ark_key,
            ask_der,
            ask_key,
            vcek_key,
            chip_id,
            endorsements,
        }
    })
}

const MEASUREMENT: [u8; 48] = [0x11; 48];
const HOST_DATA: [u8; 32] = [0x22; 32];

fn node_data() -> [u8; 32] {
    node_report_data(
        &SigningKey::from_seed(&[6; 32])
            .unwrap()
            .verifying_key()
            .to_spki_der(),
    )
}

/// An unsigned report with the given fields.
fn report_fields(report_data: &[u8; 32], policy: u64) -> Vec<u8> {
    let mut raw = vec![0u8; sev_snp::REPORT_BYTES];
    raw[sev_snp::VERSION_OFFSET..][..4].copy_from_slice(&2u32.to_le_bytes());
    raw[sev_snp::POLICY_OFFSET..][..8].copy_from_slice(&policy.to_le_bytes());
    raw[sev_snp::SIGNATURE_ALGO_OFFSET..][..4].copy_from_slice(&1u32.to_le_bytes());
    raw[sev_snp::REPORT_DATA_OFFSET..][..32].copy_from_slice(report_data);
    raw[sev_snp::MEASUREMENT_OFFSET..][..48].copy_from_slice(&MEASUREMENT);
    raw[sev_snp::HOST_DATA_OFFSET..][..32].copy_from_slice(&HOST_DATA);
    raw[sev_snp::CHIP_ID_OFFSET..][..64].copy_from_slice(&chain().chip_id);
    raw
}

/// Signs bytes 0..0x2A0 and stores R and S little-endian, as the PSP does.
fn sign(raw: &mut [u8], key: &SigningKey) {
    let der = key.sign(&raw[..sev_snp::SIGNED_BYTES]);
    let signature = p384::ecdsa::Signature::from_der(&der).unwrap();
    let (r, s) = signature.split_bytes();
    for (offset, scalar) in [
        (sev_snp::SIGNATURE_OFFSET, r),
        (
            sev_snp::SIGNATURE_OFFSET + sev_snp::SIGNATURE_COMPONENT_BYTES,
            s,
        ),
    ] {
        let field = &mut raw[offset..offset + sev_snp::SIGNATURE_COMPONENT_BYTES];
        field.fill(0);
        for (index, byte) in scalar.iter().rev().enumerate() {
            field[index] = *byte;
        }
    }
}

fn signed_report(report_data: &[u8; 32], policy: u64) -> Vec<u8> {
    let mut raw = report_fields(report_data, policy);
    sign(&mut raw, &chain().vcek_key);
    raw
}

fn evidence_for(raw: &[u8]) -> Evidence {
    sev_snp_evidence(raw, &chain().endorsements).unwrap()
}

fn allowed_measurements() -> [String; 1] {
    [hex::encode(MEASUREMENT)]
}

fn check(evidence: &Evidence, host_data: &[String]) -> Result<String, AttestError> {
    let measurements = allowed_measurements();
    let policy = Policy {
        allowed_platforms: &[Platform::SevSnp],
        allowed_measurements: &measurements,
        allowed_host_data: host_data,
    };
    verify_with_amd_roots(
        evidence,
        &node_data(),
        &policy,
        std::slice::from_ref(&chain().ark),
    )
}

#[test]
fn synthetic_report_verifies() {
    let raw = signed_report(&node_data(), 0x30000);
    let evidence = evidence_for(&raw);
    assert_eq!(evidence.platform, Platform::SevSnp);
    assert!(evidence.hardware_protection);
    assert_eq!(evidence.measurement, hex::encode(MEASUREMENT));
    assert_eq!(
        evidence.host_data.as_deref(),
        Some(hex::encode(HOST_DATA).as_str())
    );
    let json = serde_json::to_string(&evidence).unwrap();
    assert!(json.contains("\"platform\":\"sev-snp\""));
    let evidence: Evidence = serde_json::from_str(&json).unwrap();

    assert_eq!(check(&evidence, &[]).unwrap(), hex::encode(MEASUREMENT));
    assert_eq!(
        check(&evidence, &[hex::encode(HOST_DATA)]).unwrap(),
        hex::encode(MEASUREMENT)
    );
    let result = check(&evidence, &[hex::encode([0u8; 32])]);
    assert!(
        matches!(result, Err(AttestError::HostDataNotAllowed(_))),
        "{result:?}"
    );

    let parsed = AttestationReport::parse(&raw).unwrap();
    assert_eq!(parsed.version, 2);
    assert_eq!(parsed.policy, 0x30000);
    assert_eq!(parsed.measurement, MEASUREMENT);
    assert_eq!(parsed.host_data, HOST_DATA);
    assert_eq!(&parsed.report_data[..32], &node_data());
    assert_eq!(parsed.report_data[32..], [0; 32]);
}

#[test]
fn policy_checks_apply() {
    let evidence = evidence_for(&signed_report(&node_data(), 0x30000));
    let measurements = allowed_measurements();
    let roots = [chain().ark.clone()];
    let policy = Policy {
        allowed_platforms: &[Platform::Virtual],
        allowed_measurements: &measurements,
        allowed_host_data: &[],
    };
    let result = verify_with_amd_roots(&evidence, &node_data(), &policy, &roots);
    assert!(matches!(result, Err(AttestError::PlatformNotAllowed(_))));
    let policy = Policy {
        allowed_platforms: &[Platform::SevSnp],
        allowed_measurements: &[],
        allowed_host_data: &[],
    };
    let result = verify_with_amd_roots(&evidence, &node_data(), &policy, &roots);
    assert!(matches!(result, Err(AttestError::MeasurementNotAllowed(_))));
}

#[test]
fn report_for_another_key_is_rejected() {
    let other = node_report_data(b"another node's key");
    let evidence = evidence_for(&signed_report(&other, 0x30000));
    assert!(matches!(
        check(&evidence, &[]),
        Err(AttestError::ReportDataMismatch)
    ));
    // Bytes after the 32-byte digest must be zero.
    let mut raw = report_fields(&node_data(), 0x30000);
    raw[sev_snp::REPORT_DATA_OFFSET + 40] = 1;
    sign(&mut raw, &chain().vcek_key);
    assert!(matches!(
        check(&evidence_for(&raw), &[]),
        Err(AttestError::ReportDataMismatch)
    ));
}

#[test]
fn debuggable_guest_is_rejected() {
    let evidence = evidence_for(&signed_report(
        &node_data(),
        0x30000 | sev_snp::POLICY_DEBUG_BIT,
    ));
    let result = check(&evidence, &[]);
    assert!(
        matches!(result, Err(AttestError::PlatformNotAllowed(_))),
        "{result:?}"
    );
}

#[test]
fn every_flipped_report_byte_is_detected() {
    let raw = signed_report(&node_data(), 0x30000);
    let evidence = evidence_for(&raw);
    for index in (0..sev_snp::SIGNATURE_OFFSET + 2 * sev_snp::SIGNATURE_COMPONENT_BYTES).step_by(5)
    {
        let mut altered_raw = raw.clone();
        altered_raw[index] ^= 0x01;
        let mut altered = evidence.clone();
        altered.report = base64::engine::general_purpose::STANDARD.encode(&altered_raw);
        let result = check(&altered, &[]);
        assert!(result.is_err(), "flip at {index:#x} not detected");
        if (sev_snp::MEASUREMENT_OFFSET..sev_snp::HOST_DATA_OFFSET + 32).contains(&index) {
            assert!(
                matches!(result, Err(AttestError::BadSignature(_))),
                "{index:#x}: {result:?}"
            );
        }
    }
    // The reserved tail after the signature is not signed, so changing it changes nothing.
    let mut altered_raw = raw.clone();
    altered_raw[sev_snp::REPORT_BYTES - 1] ^= 1;
    let mut altered = evidence.clone();
    altered.report = base64::engine::general_purpose::STANDARD.encode(&altered_raw);
    assert!(check(&altered, &[]).is_ok());
}

#[test]
fn evidence_fields_must_match_the_report() {
    let evidence = evidence_for(&signed_report(&node_data(), 0x30000));
    let mut altered = evidence.clone();
    altered.measurement = hex::encode([0x33; 48]);
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
    let mut altered = evidence.clone();
    altered.host_data = Some(hex::encode([0x44; 32]));
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
    let mut altered = evidence.clone();
    altered.host_data = None;
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
    let mut altered = evidence.clone();
    altered.hardware_protection = false;
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
}

#[test]
fn report_signed_by_another_key_is_rejected() {
    let mut raw = report_fields(&node_data(), 0x30000);
    sign(&mut raw, &SigningKey::from_seed(&[8; 32]).unwrap());
    let result = check(&evidence_for(&raw), &[]);
    assert!(
        matches!(result, Err(AttestError::BadSignature(_))),
        "{result:?}"
    );
}

#[test]
fn chain_must_reach_a_pinned_root() {
    let evidence = evidence_for(&signed_report(&node_data(), 0x30000));
    // AMD's real roots do not vouch for the test chain.
    let measurements = allowed_measurements();
    let policy = Policy {
        allowed_platforms: &[Platform::SevSnp],
        allowed_measurements: &measurements,
        allowed_host_data: &[],
    };
    let result = verify(&evidence, &node_data(), &policy);
    assert!(
        matches!(result, Err(AttestError::BadEndorsements(_))),
        "{result:?}"
    );
    let result = verify_with_amd_roots(&evidence, &node_data(), &policy, &[]);
    assert!(matches!(result, Err(AttestError::BadEndorsements(_))));
}

#[test]
fn broken_chains_are_rejected() {
    let chain = chain();
    let raw = signed_report(&node_data(), 0x30000);
    let blocks: Vec<String> = chain
        .endorsements
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .collect();
    assert_eq!(blocks.len(), 3);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let vcek_spki = chain.vcek_key.verifying_key().to_spki_der();
    // A VCEK signed by the ARK instead of the ASK (issuer name claims the ASK).
    let skipped = certificate(
        "SEV-VCEK",
        "SEV-Test",
        &vcek_spki,
        false,
        None,
        &chain.ark_key,
        &mut rng,
    );
    // A VCEK for another chip.
    let other_chip = certificate(
        "SEV-VCEK",
        "SEV-Test",
        &vcek_spki,
        false,
        Some(&[1; 64]),
        &chain.ask_key,
        &mut rng,
    );
    let cases = [
        (
            "wrong order",
            [blocks[1].clone(), blocks[0].clone(), blocks[2].clone()].concat(),
        ),
        (
            "missing ARK",
            [blocks[0].clone(), blocks[1].clone()].concat(),
        ),
        (
            "ASK as ARK",
            [blocks[0].clone(), blocks[1].clone(), blocks[1].clone()].concat(),
        ),
        (
            "VCEK skips ASK",
            [pem(&skipped), blocks[1].clone(), blocks[2].clone()].concat(),
        ),
        (
            "other chip",
            [pem(&other_chip), blocks[1].clone(), blocks[2].clone()].concat(),
        ),
        ("garbage", "not a certificate".to_owned()),
        (
            "oversized",
            "A".repeat(charter_attest::ENDORSEMENTS_BYTES_MAX + 1),
        ),
    ];
    for (what, endorsements) in cases {
        let mut evidence = evidence_for(&raw);
        evidence.endorsements = Some(endorsements);
        let result = check(&evidence, &[]);
        assert!(result.is_err(), "{what} accepted");
        assert!(
            matches!(
                result,
                Err(AttestError::BadEndorsements(_)) | Err(AttestError::Malformed(_))
            ),
            "{what}: {result:?}"
        );
    }
    // A flipped byte in the ASK's signed part.
    let mut ask = chain.ask_der.clone();
    ask[100] ^= 1;
    if Certificate::from_der(&ask).is_ok() {
        let mut evidence = evidence_for(&raw);
        evidence.endorsements = Some([blocks[0].clone(), pem(&ask), blocks[2].clone()].concat());
        assert!(matches!(
            check(&evidence, &[]),
            Err(AttestError::BadEndorsements(_))
        ));
    }
    let mut evidence = evidence_for(&raw);
    evidence.endorsements = None;
    assert!(matches!(
        check(&evidence, &[]),
        Err(AttestError::BadEndorsements(_))
    ));
}

#[test]
fn malformed_reports_do_not_panic() {
    let raw = signed_report(&node_data(), 0x30000);
    let evidence = evidence_for(&raw);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let mut candidates: Vec<Vec<u8>> = vec![
        Vec::new(),
        raw[..sev_snp::REPORT_BYTES - 1].to_vec(),
        [raw.clone(), vec![0]].concat(),
        vec![0xff; sev_snp::REPORT_BYTES],
    ];
    for _ in 0..64 {
        let mut altered = raw.clone();
        for _ in 0..4 {
            let index = rng.next_u32() as usize % altered.len();
            altered[index] = rng.next_u32() as u8;
        }
        candidates.push(altered);
    }
    // Wide and out-of-range signature components.
    let mut wide = raw.clone();
    wide[sev_snp::SIGNATURE_OFFSET + 60] = 1;
    candidates.push(wide);
    let mut maximal = raw.clone();
    maximal[sev_snp::SIGNATURE_OFFSET..][..48].fill(0xff);
    candidates.push(maximal);
    for candidate in candidates {
        let _ = AttestationReport::parse(&candidate);
        let _ = sev_snp_evidence(&candidate, "");
        let mut altered = evidence.clone();
        altered.report = base64::engine::general_purpose::STANDARD.encode(&candidate);
        assert!(
            check(&altered, &[]).is_err()
                || candidate[..sev_snp::SIGNED_BYTES + 144] == raw[..sev_snp::SIGNED_BYTES + 144]
        );
    }
    let mut altered = evidence.clone();
    altered.report = "%%%".to_owned();
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
    altered.report = "A".repeat(1 << 20);
    assert!(matches!(
        check(&altered, &[]),
        Err(AttestError::Malformed(_))
    ));
}
