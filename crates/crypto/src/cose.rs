//! COSE Sign1 governance messages (RFC 9052 §4.2), as CCF members sign them.
//!
//! Members sign proposals, ballots, withdrawals and recovery messages as `COSE_Sign1`; the
//! service stores them in the ledger for non-repudiation. The wire format is the one that
//! `ccf_cose_sign1` (from the `ccf` Python package) emits, so members can use either tool:
//!
//! ```text
//! 18([                                   ; tag 18 (COSE_Sign1); optional when parsing
//!   << {                                 ; protected header, a bstr holding a map in this order:
//!     1: -35,                            ;   alg: ES384
//!     4: h'3731...',                     ;   kid: the member ID (hex SHA-256 of the member's
//!                                        ;        certificate DER) as the bstr of its ASCII text
//!     "ccf.gov.msg.type": "ballot",      ;   text
//!     "ccf.gov.msg.proposal_id": "...",  ;   text; only when present
//!     "ccf.gov.msg.created_at": 1704067200 ; unsigned, seconds since the Unix epoch
//!   } >>,
//!   {},                                  ; unprotected header: empty
//!   h'7b22...',                          ; payload (attached)
//!   h'...'                               ; signature: 96 bytes, r ‖ s
//! ])
//! ```
//!
//! The signature is ECDSA P-384 with SHA-384 over the `Sig_structure`
//! `["Signature1", protected, h'', payload]`.

use std::collections::BTreeSet;

use ciborium::value::Value;

use crate::{CryptoError, SigningKey, VerifyingKey};

/// Largest `COSE_Sign1` message [`CoseSign1::parse`] accepts.
pub const COSE_SIGN1_BYTES_MAX: usize = 1 << 20;
/// COSE algorithm identifier of ECDSA with SHA-384 (ES384), the algorithm for P-384 keys.
pub const COSE_ALG_ES384: i64 = -35;
/// CBOR tag of a `COSE_Sign1` message.
pub const COSE_SIGN1_TAG: u64 = 18;
/// Protected header label: the governance message type (text).
pub const HEADER_MSG_TYPE: &str = "ccf.gov.msg.type";
/// Protected header label: the proposal a ballot or withdrawal refers to (text).
pub const HEADER_MSG_PROPOSAL_ID: &str = "ccf.gov.msg.proposal_id";
/// Protected header label: when the member created the message (unsigned seconds since epoch).
pub const HEADER_MSG_CREATED_AT: &str = "ccf.gov.msg.created_at";

const HEADER_ALG_LABEL: i64 = 1;
const HEADER_KID_LABEL: i64 = 4;
const SIG_STRUCTURE_CONTEXT: &str = "Signature1";

/// Governance message protected headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovHeaders {
    /// COSE algorithm identifier (`alg`, label 1); [`COSE_ALG_ES384`] for member keys.
    pub alg: i64,
    /// The signer's member ID in hex (`kid`, label 4, carried as a byte string of the text).
    pub kid: String,
    /// `ccf.gov.msg.type`: "proposal", "ballot", "withdrawal", "ack", "state_digest",
    /// "recovery_share", "encrypted_recovery_share", ...
    pub msg_type: String,
    /// `ccf.gov.msg.proposal_id`, present for ballots and withdrawals.
    pub proposal_id: Option<String>,
    /// `ccf.gov.msg.created_at`, seconds since the Unix epoch.
    pub created_at: u64,
}

/// A parsed `COSE_Sign1` governance message. Parsing checks the structure and headers only;
/// call [`CoseSign1::verify`] with the member's key before trusting anything in it.
#[derive(Clone, Debug)]
pub struct CoseSign1 {
    /// The protected headers.
    pub headers: GovHeaders,
    /// The attached payload.
    pub payload: Vec<u8>,
    /// The protected header exactly as received: the signature covers these bytes.
    protected: Vec<u8>,
    signature: Vec<u8>,
}

fn cose_error(reason: impl Into<String>) -> CryptoError {
    CryptoError::Cose(reason.into())
}

fn missing(header: &str) -> CryptoError {
    cose_error(format!("missing protected header {header}"))
}

/// Encodes a CBOR value. Writing to a `Vec` cannot fail with an I/O error, and every value
/// built in this module (integers, strings, byte strings, arrays, maps, one tag) is
/// serialisable, so the `expect` cannot fire.
fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("CBOR values encode into a Vec");
    out
}

/// The bytes that are signed: `["Signature1", protected, h'', payload]`.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let structure = encode(&Value::Array(vec![
        Value::Text(SIG_STRUCTURE_CONTEXT.to_owned()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]));
    assert!(structure.len() > protected.len() + payload.len());
    structure
}

/// Reads exactly one CBOR item. ciborium bounds nesting depth (256) and reads long strings in
/// chunks, so hostile lengths and deep nesting yield errors, not stack overflows or huge
/// allocations.
fn decode_one(bytes: &[u8], what: &str) -> Result<Value, CryptoError> {
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader(&mut rest)
        .map_err(|error| cose_error(format!("{what} is not CBOR: {error}")))?;
    if !rest.is_empty() {
        return Err(cose_error(format!(
            "{} trailing bytes after the {what}",
            rest.len()
        )));
    }
    Ok(value)
}

/// A header label (RFC 9052 §3: `int / tstr`), ordered so duplicates can be found.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HeaderLabel {
    Int(i128),
    Text(String),
}

impl HeaderLabel {
    fn from_value(value: &Value) -> Result<HeaderLabel, CryptoError> {
        match value {
            Value::Integer(integer) => Ok(HeaderLabel::Int(i128::from(*integer))),
            Value::Text(text) => Ok(HeaderLabel::Text(text.clone())),
            _ => Err(cose_error("header labels must be integers or text strings")),
        }
    }

    /// Whether this parser processes the header, so that `crit` may name it.
    fn is_understood(&self) -> bool {
        match self {
            HeaderLabel::Int(label) => {
                *label == i128::from(HEADER_ALG_LABEL) || *label == i128::from(HEADER_KID_LABEL)
            }
            HeaderLabel::Text(text) => [
                HEADER_MSG_TYPE,
                HEADER_MSG_PROPOSAL_ID,
                HEADER_MSG_CREATED_AT,
            ]
            .contains(&text.as_str()),
        }
    }
}

fn header_alg(value: &Value) -> Result<i64, CryptoError> {
    match value {
        Value::Integer(integer) => i64::try_from(*integer)
            .map_err(|_| cose_error("protected header alg (1) is out of range")),
        _ => Err(cose_error("protected header alg (1) must be an integer")),
    }
}

fn header_kid(value: &Value) -> Result<String, CryptoError> {
    match value {
        Value::Bytes(bytes) if bytes.is_empty() => {
            Err(cose_error("protected header kid (4) must not be empty"))
        }
        Value::Bytes(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| cose_error("protected header kid (4) must hold UTF-8 text")),
        _ => Err(cose_error("protected header kid (4) must be a byte string")),
    }
}

fn header_text(name: &str, value: &Value) -> Result<String, CryptoError> {
    match value {
        Value::Text(text) => Ok(text.clone()),
        _ => Err(cose_error(format!(
            "protected header {name} must be a text string"
        ))),
    }
}

fn header_uint(name: &str, value: &Value) -> Result<u64, CryptoError> {
    match value {
        Value::Integer(integer) => u64::try_from(*integer).map_err(|_| {
            cose_error(format!(
                "protected header {name} must be an unsigned 64-bit integer"
            ))
        }),
        _ => Err(cose_error(format!(
            "protected header {name} must be an unsigned integer"
        ))),
    }
}

/// RFC 9052 §3.1: a recipient must reject a message whose `crit` names a header it does not
/// process.
fn check_crit(crit: &Value) -> Result<(), CryptoError> {
    let Value::Array(labels) = crit else {
        return Err(cose_error("protected header crit (2) must be an array"));
    };
    if labels.is_empty() {
        return Err(cose_error("protected header crit (2) must not be empty"));
    }
    for label in labels {
        let label = HeaderLabel::from_value(label)?;
        if !label.is_understood() {
            return Err(cose_error(format!(
                "critical header {label:?} is not supported"
            )));
        }
    }
    Ok(())
}

/// Decodes the protected header bytes into the governance headers.
fn gov_headers(protected: &[u8]) -> Result<GovHeaders, CryptoError> {
    // RFC 9052 §3: an empty bstr stands for an empty map, which lacks alg.
    if protected.is_empty() {
        return Err(missing("alg (1)"));
    }
    let Value::Map(entries) = decode_one(protected, "protected header")? else {
        return Err(cose_error("protected header is not a map"));
    };
    let mut seen = BTreeSet::new();
    let mut alg = None;
    let mut kid = None;
    let mut msg_type = None;
    let mut proposal_id = None;
    let mut created_at = None;
    // Bounded by the message size.
    for (label, value) in &entries {
        let label = HeaderLabel::from_value(label)?;
        match &label {
            HeaderLabel::Int(1) => alg = Some(header_alg(value)?),
            HeaderLabel::Int(2) => check_crit(value)?,
            HeaderLabel::Int(4) => kid = Some(header_kid(value)?),
            HeaderLabel::Text(name) => match name.as_str() {
                HEADER_MSG_TYPE => msg_type = Some(header_text(name, value)?),
                HEADER_MSG_PROPOSAL_ID => proposal_id = Some(header_text(name, value)?),
                HEADER_MSG_CREATED_AT => created_at = Some(header_uint(name, value)?),
                _ => {} // Unknown text labels are allowed and ignored.
            },
            HeaderLabel::Int(_) => {} // Unknown integer labels are allowed and ignored.
        }
        // RFC 9052 §3: duplicate labels make a message invalid.
        if !seen.insert(label) {
            return Err(cose_error("duplicate label in protected header"));
        }
    }
    assert!(seen.len() == entries.len());
    Ok(GovHeaders {
        alg: alg.ok_or_else(|| missing("alg (1)"))?,
        kid: kid.ok_or_else(|| missing("kid (4)"))?,
        msg_type: msg_type.ok_or_else(|| missing(HEADER_MSG_TYPE))?,
        proposal_id,
        created_at: created_at.ok_or_else(|| missing(HEADER_MSG_CREATED_AT))?,
    })
}

impl CoseSign1 {
    /// Parses a `COSE_Sign1` governance message, tagged (18) or not.
    ///
    /// The parse is strict: at most [`COSE_SIGN1_BYTES_MAX`] bytes, exactly one CBOR item,
    /// integer or text header labels without duplicates, an attached payload, no `crit`
    /// header naming a header this parser ignores, and `alg` (integer), `kid` (a non-empty
    /// byte string holding UTF-8), [`HEADER_MSG_TYPE`] (text) and [`HEADER_MSG_CREATED_AT`]
    /// (unsigned) in the protected header. Unknown extra protected headers are allowed and
    /// ignored; the unprotected header must be a map and is ignored. Indefinite-length items
    /// are accepted (the signature covers the protected header's bytes as received).
    ///
    /// # Errors
    /// [`CryptoError::Cose`] saying what is wrong, naming the missing or malformed header.
    pub fn parse(bytes: &[u8]) -> Result<CoseSign1, CryptoError> {
        if bytes.len() > COSE_SIGN1_BYTES_MAX {
            return Err(cose_error(format!(
                "message of {} bytes exceeds the maximum of {COSE_SIGN1_BYTES_MAX}",
                bytes.len()
            )));
        }
        let value = match decode_one(bytes, "message")? {
            Value::Tag(COSE_SIGN1_TAG, inner) => *inner,
            Value::Tag(tag, _) => {
                return Err(cose_error(format!(
                    "CBOR tag {tag} is not COSE_Sign1 ({COSE_SIGN1_TAG})"
                )))
            }
            untagged => untagged,
        };
        let Value::Array(items) = value else {
            return Err(cose_error("not a COSE_Sign1: expected an array"));
        };
        let count = items.len();
        let Ok([protected, unprotected, payload, signature]) = <[Value; 4]>::try_from(items) else {
            return Err(cose_error(format!(
                "not a COSE_Sign1: expected 4 items, found {count}"
            )));
        };
        let Value::Bytes(protected) = protected else {
            return Err(cose_error("protected header must be a byte string"));
        };
        if !matches!(unprotected, Value::Map(_)) {
            return Err(cose_error("unprotected header must be a map"));
        }
        let payload = match payload {
            Value::Bytes(payload) => payload,
            Value::Null => return Err(cose_error("detached payloads are not supported")),
            _ => return Err(cose_error("payload must be a byte string")),
        };
        let Value::Bytes(signature) = signature else {
            return Err(cose_error("signature must be a byte string"));
        };
        let headers = gov_headers(&protected)?;
        assert!(!protected.is_empty(), "a header holding alg is not empty");
        assert!(protected.len() + payload.len() + signature.len() < bytes.len());
        Ok(CoseSign1 {
            headers,
            payload,
            protected,
            signature,
        })
    }

    /// Verifies the signature with the member's key. Member keys are P-384, so `alg` must be
    /// ES384 ([`COSE_ALG_ES384`]).
    ///
    /// # Errors
    /// [`CryptoError::Cose`] if `alg` is not ES384; [`CryptoError::BadSignature`] if the
    /// signature is not 96 bytes or does not verify with `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), CryptoError> {
        if self.headers.alg != COSE_ALG_ES384 {
            return Err(cose_error(format!(
                "alg {} is not ES384 ({COSE_ALG_ES384}), the algorithm of P-384 member keys",
                self.headers.alg
            )));
        }
        key.verify_raw(
            &sig_structure(&self.protected, &self.payload),
            &self.signature,
        )
    }

    /// The protected header bytes exactly as received (what the signature covers).
    pub fn protected_bytes(&self) -> &[u8] {
        &self.protected
    }

    /// The signature bytes as received (`r ‖ s` for ES384).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
}

/// Signs a protected header given as CBOR map entries, producing a tagged `COSE_Sign1` with an
/// empty unprotected header.
fn sign_protected(key: &SigningKey, protected: Vec<(Value, Value)>, payload: &[u8]) -> Vec<u8> {
    let protected = encode(&Value::Map(protected));
    let signature = key.sign_raw(&sig_structure(&protected, payload));
    let message = encode(&Value::Tag(
        COSE_SIGN1_TAG,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(payload.to_vec()),
            Value::Bytes(signature.to_vec()),
        ])),
    ));
    assert!(message.len() > payload.len() + signature.len());
    message
}

/// Signs a governance message with ES384, byte for byte as `ccf_cose_sign1` (`ccf` 6.0.28)
/// lays it out (see the module documentation). Both sign deterministically (RFC 6979), so for
/// the same key and inputs the two outputs are identical.
///
/// `kid` is the member ID (hex SHA-256 of the member certificate's DER, see
/// [`crate::Certificate::fingerprint_hex`]). As in `ccf_cose_sign1`, a `proposal_id` of
/// `Some("")` is left out. The result parses with [`CoseSign1::parse`] provided `kid` is not
/// empty and the message fits in [`COSE_SIGN1_BYTES_MAX`].
pub fn cose_sign1(
    key: &SigningKey,
    kid: &str,
    msg_type: &str,
    proposal_id: Option<&str>,
    created_at: u64,
    payload: &[u8],
) -> Vec<u8> {
    let text = |text: &str| Value::Text(text.to_owned());
    let mut protected = vec![
        (
            Value::Integer(HEADER_ALG_LABEL.into()),
            Value::Integer(COSE_ALG_ES384.into()),
        ),
        (
            Value::Integer(HEADER_KID_LABEL.into()),
            Value::Bytes(kid.as_bytes().to_vec()),
        ),
        (text(HEADER_MSG_TYPE), text(msg_type)),
    ];
    if let Some(proposal_id) = proposal_id.filter(|id| !id.is_empty()) {
        protected.push((text(HEADER_MSG_PROPOSAL_ID), text(proposal_id)));
    }
    protected.push((
        text(HEADER_MSG_CREATED_AT),
        Value::Integer(created_at.into()),
    ));
    sign_protected(key, protected, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KID: &str = "7123bc065a31f8e69928050bad461b99576c33a4171f608a963e0183cd2608ec";

    fn key() -> SigningKey {
        SigningKey::from_seed(&[5; 32]).unwrap()
    }

    fn ballot() -> Vec<u8> {
        cose_sign1(
            &key(),
            KID,
            "ballot",
            Some("abc123"),
            1_704_067_200,
            br#"{"ballot":"export function vote() { return true; }"}"#,
        )
    }

    fn text(text: &str) -> Value {
        Value::Text(text.to_owned())
    }

    fn int(value: i64) -> Value {
        Value::Integer(value.into())
    }

    /// The protected entries `cose_sign1` writes for a proposal, for tests to alter.
    fn proposal_entries() -> Vec<(Value, Value)> {
        vec![
            (int(1), int(COSE_ALG_ES384)),
            (int(4), Value::Bytes(KID.as_bytes().to_vec())),
            (text(HEADER_MSG_TYPE), text("proposal")),
            (text(HEADER_MSG_CREATED_AT), int(1_704_067_200)),
        ]
    }

    fn parse_error(bytes: &[u8]) -> String {
        match CoseSign1::parse(bytes) {
            Ok(message) => panic!("parsed unexpectedly: {message:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = ballot();
        let message = CoseSign1::parse(&bytes).unwrap();
        assert_eq!(
            message.headers,
            GovHeaders {
                alg: COSE_ALG_ES384,
                kid: KID.to_owned(),
                msg_type: "ballot".to_owned(),
                proposal_id: Some("abc123".to_owned()),
                created_at: 1_704_067_200,
            }
        );
        assert_eq!(
            message.payload,
            br#"{"ballot":"export function vote() { return true; }"}"#
        );
        assert_eq!(message.signature().len(), 96);
        message.verify(&key().verifying_key()).unwrap();

        let proposal = cose_sign1(&key(), KID, "proposal", None, 0, b"");
        let message = CoseSign1::parse(&proposal).unwrap();
        assert_eq!(message.headers.proposal_id, None);
        assert_eq!(message.headers.created_at, 0);
        assert!(message.payload.is_empty());
        message.verify(&key().verifying_key()).unwrap();

        // Like ccf_cose_sign1, an empty proposal ID is left out.
        let empty_id = cose_sign1(&key(), KID, "ack", Some(""), u64::MAX, b"x");
        let message = CoseSign1::parse(&empty_id).unwrap();
        assert_eq!(message.headers.proposal_id, None);
        assert_eq!(message.headers.created_at, u64::MAX);
    }

    #[test]
    fn layout_matches_ccf_cose_sign1() {
        // Bytes ccf_cose_sign1 6.0.28 wrote for the same headers, up to the payload.
        let expected_prefix = concat!(
            "d284589aa5013822045840373132336263303635613331663865363939323830",
            "3530626164343631623939353736633333613431373166363038613936336530",
            "3138336364323630386563706363662e676f762e6d73672e747970656662616c",
            "6c6f74776363662e676f762e6d73672e70726f706f73616c5f69646661626331",
            "3233766363662e676f762e6d73672e637265617465645f61741a65920080a0",
        );
        let bytes = ballot();
        assert_eq!(
            hex::encode(&bytes[..expected_prefix.len() / 2]),
            expected_prefix
        );
        let message = CoseSign1::parse(&bytes).unwrap();
        let protected_hex = &expected_prefix[8..expected_prefix.len() - 2];
        assert_eq!(hex::encode(message.protected_bytes()), protected_hex);
    }

    #[test]
    fn untagged_is_accepted_other_tags_are_not() {
        let bytes = ballot();
        assert_eq!(bytes[0], 0xd2);
        let message = CoseSign1::parse(&bytes[1..]).unwrap();
        message.verify(&key().verifying_key()).unwrap();
        let mut other_tag = bytes.clone();
        other_tag[0] = 0xd3;
        assert!(parse_error(&other_tag).contains("tag 19"));
    }

    #[test]
    fn every_flipped_byte_fails_parse_or_verify() {
        let bytes = ballot();
        let public = key().verifying_key();
        for index in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut altered = bytes.clone();
                altered[index] ^= mask;
                if let Ok(message) = CoseSign1::parse(&altered) {
                    assert!(
                        message.verify(&public).is_err(),
                        "byte {index} ^ {mask:#x} still verifies"
                    );
                }
            }
        }
    }

    #[test]
    fn wrong_key_fails() {
        let message = CoseSign1::parse(&ballot()).unwrap();
        let other = SigningKey::from_seed(&[6; 32]).unwrap();
        assert!(matches!(
            message.verify(&other.verifying_key()),
            Err(CryptoError::BadSignature)
        ));
    }

    #[test]
    fn missing_headers_are_named() {
        let cases = [
            (0, "alg (1)"),
            (1, "kid (4)"),
            (2, HEADER_MSG_TYPE),
            (3, HEADER_MSG_CREATED_AT),
        ];
        for (index, name) in cases {
            let mut entries = proposal_entries();
            entries.remove(index);
            let bytes = sign_protected(&key(), entries, b"{}");
            let error = parse_error(&bytes);
            assert!(error.contains(name), "{error} does not name {name}");
            assert!(error.contains("missing"), "{error}");
        }
        // An empty protected header lacks everything, alg first.
        let bytes = sign_protected(&key(), Vec::new(), b"{}");
        assert!(parse_error(&bytes).contains("alg (1)"));
    }

    #[test]
    fn malformed_headers_are_named() {
        let cases = [
            (1, Value::Bytes(Vec::new()), "kid (4) must not be empty"),
            (1, text(KID), "kid (4) must be a byte string"),
            (0, text("ES384"), "alg (1) must be an integer"),
            (1, Value::Bytes(vec![0xff, 0xfe]), "kid (4) must hold UTF-8"),
            (2, int(7), HEADER_MSG_TYPE),
            (3, int(-1), HEADER_MSG_CREATED_AT),
            (3, text("2024-01-01"), HEADER_MSG_CREATED_AT),
        ];
        for (index, value, name) in cases {
            let mut entries = proposal_entries();
            entries[index].1 = value;
            let error = parse_error(&sign_protected(&key(), entries, b"{}"));
            assert!(error.contains(name), "{error} does not name {name}");
        }
        let mut entries = proposal_entries();
        entries.push((text(HEADER_MSG_PROPOSAL_ID), int(1)));
        assert!(parse_error(&sign_protected(&key(), entries, b"")).contains(HEADER_MSG_PROPOSAL_ID));
        let mut entries = proposal_entries();
        entries.push((text(HEADER_MSG_TYPE), text("ballot")));
        assert!(parse_error(&sign_protected(&key(), entries, b"")).contains("duplicate"));
    }

    #[test]
    fn unknown_headers_are_ignored_but_unknown_critical_ones_rejected() {
        let mut entries = proposal_entries();
        entries.push((text("ccf.gov.msg.member_id"), text(KID)));
        entries.push((int(-70_000), Value::Array(vec![int(1)])));
        let message = CoseSign1::parse(&sign_protected(&key(), entries, b"p")).unwrap();
        assert_eq!(message.headers.msg_type, "proposal");
        message.verify(&key().verifying_key()).unwrap();

        let mut entries = proposal_entries();
        entries.push((int(2), Value::Array(vec![text(HEADER_MSG_TYPE), int(4)])));
        CoseSign1::parse(&sign_protected(&key(), entries, b"p")).unwrap();
        let mut entries = proposal_entries();
        entries.push((int(2), Value::Array(vec![text("ccf.gov.msg.other")])));
        assert!(parse_error(&sign_protected(&key(), entries, b"p")).contains("critical"));
    }

    #[test]
    fn other_algorithms_do_not_verify() {
        let mut entries = proposal_entries();
        entries[0].1 = int(-7);
        let message = CoseSign1::parse(&sign_protected(&key(), entries, b"p")).unwrap();
        assert_eq!(message.headers.alg, -7);
        let error = message.verify(&key().verifying_key()).unwrap_err();
        assert!(error.to_string().contains("ES384"), "{error}");
    }

    #[test]
    fn structural_errors() {
        let bytes = ballot();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(parse_error(&trailing).contains("trailing"));
        assert!(parse_error(&bytes[..bytes.len() - 1]).contains("not CBOR"));
        assert!(parse_error(&[]).contains("not CBOR"));

        let oversized = cose_sign1(
            &key(),
            KID,
            "proposal",
            None,
            1,
            &vec![b'x'; COSE_SIGN1_BYTES_MAX],
        );
        assert!(parse_error(&oversized).contains("exceeds the maximum"));

        // Detached payload (nil), signature not a bstr, wrong arity.
        let protected = encode(&Value::Map(proposal_entries()));
        let detached = encode(&Value::Array(vec![
            Value::Bytes(protected.clone()),
            Value::Map(Vec::new()),
            Value::Null,
            Value::Bytes(vec![0; 96]),
        ]));
        assert!(parse_error(&detached).contains("detached"));
        let three = encode(&Value::Array(vec![
            Value::Bytes(protected.clone()),
            Value::Map(Vec::new()),
            Value::Bytes(Vec::new()),
        ]));
        assert!(parse_error(&three).contains("expected 4 items, found 3"));

        // Wrong item types, each named.
        let item = |index: usize, value: Value| {
            let mut items = vec![
                Value::Bytes(protected.clone()),
                Value::Map(Vec::new()),
                Value::Bytes(Vec::new()),
                Value::Bytes(vec![0; 96]),
            ];
            items[index] = value;
            parse_error(&encode(&Value::Array(items)))
        };
        assert!(item(0, Value::Map(Vec::new())).contains("protected header must be a byte"));
        assert!(item(0, Value::Bytes(encode(&int(1)))).contains("not a map"));
        assert!(item(0, Value::Bytes(Vec::new())).contains("missing protected header alg"));
        assert!(item(1, Value::Array(Vec::new())).contains("unprotected header must be a map"));
        assert!(item(2, text("{}")).contains("payload must be a byte string"));
        assert!(item(3, text("sig")).contains("signature must be a byte string"));
        let mut entries = proposal_entries();
        entries.push((Value::Bytes(vec![1]), int(1)));
        assert!(item(0, Value::Bytes(encode(&Value::Map(entries)))).contains("labels"));

        // A short signature parses but does not verify.
        let short = encode(&Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(Vec::new()),
            Value::Bytes(Vec::new()),
            Value::Bytes(vec![1; 95]),
        ]));
        let message = CoseSign1::parse(&short).unwrap();
        assert!(matches!(
            message.verify(&key().verifying_key()),
            Err(CryptoError::BadSignature)
        ));
    }

    #[test]
    fn hostile_cbor_is_an_error() {
        // Deep nesting.
        let mut nested = vec![0x81u8; 100_000];
        nested.push(0x00);
        assert!(CoseSign1::parse(&nested).is_err());
        // Huge declared lengths.
        for head in [
            &[0x5bu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0xd2, 0x84, 0x5a, 0xff, 0xff, 0xff, 0xff],
            &[0xbb, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(CoseSign1::parse(head).is_err());
        }
        // Indefinite-length items and stray break codes.
        assert!(CoseSign1::parse(&[0x9f, 0xff]).is_err());
        assert!(CoseSign1::parse(&[0xff]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = CoseSign1::parse(&bytes);
        }

        #[test]
        fn mutations_never_panic_nor_verify(
            edits in proptest::collection::vec((any::<usize>(), 1..=255u8), 1..4),
            truncate in any::<bool>(),
        ) {
            let original = ballot();
            let mut bytes = original.clone();
            for (index, mask) in edits {
                let index = index % bytes.len();
                bytes[index] ^= mask;
            }
            if truncate {
                bytes.truncate(bytes.len() / 2);
            }
            if let Ok(message) = CoseSign1::parse(&bytes) {
                prop_assert!(bytes == original || message.verify(&key().verifying_key()).is_err());
            }
        }

        #[test]
        fn sign_parse_round_trip(
            msg_type in "[a-z_]{1,24}",
            proposal_id in proptest::option::of("[0-9a-f]{1,64}"),
            created_at in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let bytes = cose_sign1(&key(), KID, &msg_type, proposal_id.as_deref(), created_at, &payload);
            let message = CoseSign1::parse(&bytes).unwrap();
            prop_assert_eq!(&message.headers.msg_type, &msg_type);
            prop_assert_eq!(&message.headers.proposal_id, &proposal_id);
            prop_assert_eq!(message.headers.created_at, created_at);
            prop_assert_eq!(&message.payload, &payload);
            prop_assert!(message.verify(&key().verifying_key()).is_ok());
        }
    }
}
