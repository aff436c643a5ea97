//! Messages written by CCF's own `ccf_cose_sign1` (Python package `ccf` 6.0.28) for the member
//! whose certificate is `data/ccf_member_cert.pem` (test key `data/ccf_member_privk.pem`) verify
//! with Charter, and Charter writes the very same bytes: both sign deterministically (RFC 6979).

use charter_crypto::{cose_sign1, Certificate, CoseSign1, GovHeaders, SigningKey};

const MEMBER_KEY: &str = include_str!("data/ccf_member_privk.pem");
const MEMBER_CERT: &str = include_str!("data/ccf_member_cert.pem");
const BALLOT: &[u8] = include_bytes!("data/ccf_ballot.cose");
const PROPOSAL: &[u8] = include_bytes!("data/ccf_proposal.cose");

fn member() -> Certificate {
    Certificate::from_pem(MEMBER_CERT).unwrap()
}

#[test]
fn ccf_ballot_verifies() {
    let member = member();
    let message = CoseSign1::parse(BALLOT).unwrap();
    assert_eq!(
        message.headers,
        GovHeaders {
            alg: -35,
            kid: member.fingerprint_hex(),
            msg_type: "ballot".to_owned(),
            proposal_id: Some("abc123".to_owned()),
            created_at: 1_704_067_200, // 2024-01-01T00:00:00Z
        }
    );
    assert_eq!(message.payload, br#"{"actions":[]}"#);
    message.verify(&member.public_key().unwrap()).unwrap();
}

#[test]
fn ccf_proposal_verifies() {
    let member = member();
    let message = CoseSign1::parse(PROPOSAL).unwrap();
    assert_eq!(message.headers.msg_type, "proposal");
    assert_eq!(message.headers.proposal_id, None);
    assert_eq!(message.headers.created_at, 1_717_245_000); // 2024-06-01T12:30:00Z
    assert_eq!(message.headers.kid, member.fingerprint_hex());
    message.verify(&member.public_key().unwrap()).unwrap();
    // Some other key does not verify it.
    let other = SigningKey::from_seed(&[1; 32]).unwrap();
    assert!(message.verify(&other.verifying_key()).is_err());
}

#[test]
fn charter_lays_out_messages_as_ccf_does() {
    // Same headers and payload, other key: everything but the signature is identical.
    let kid = member().fingerprint_hex();
    let key = SigningKey::from_seed(&[2; 32]).unwrap();
    for (ccf, msg_type, proposal_id, created_at) in [
        (BALLOT, "ballot", Some("abc123"), 1_704_067_200),
        (PROPOSAL, "proposal", None, 1_717_245_000),
    ] {
        let ccf_message = CoseSign1::parse(ccf).unwrap();
        let ours = cose_sign1(
            &key,
            &kid,
            msg_type,
            proposal_id,
            created_at,
            &ccf_message.payload,
        );
        assert_eq!(ours.len(), ccf.len());
        assert_eq!(ours[..ours.len() - 96], ccf[..ccf.len() - 96]);
        let message = CoseSign1::parse(&ours).unwrap();
        assert_eq!(message.protected_bytes(), ccf_message.protected_bytes());
        message.verify(&key.verifying_key()).unwrap();

        // With the member's own key, the output is exactly CCF's.
        let member_key = SigningKey::from_pem(MEMBER_KEY).unwrap();
        let ours = cose_sign1(
            &member_key,
            &kid,
            msg_type,
            proposal_id,
            created_at,
            &ccf_message.payload,
        );
        assert_eq!(ours, ccf);
    }
}
