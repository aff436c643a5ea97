//! Receipts: offline proof that a transaction was committed, in CCF's published format.
//!
//! A receipt carries the three components of the transaction's Merkle leaf, the path from that
//! leaf to a signed root, the signing node's certificate and its signature over the root. Anyone
//! holding the service certificate can check it:
//!
//! 1. `leaf = SHA-256(write_set_digest ‖ SHA-256(commit_evidence) ‖ claims_digest)`;
//! 2. for each proof element from the leaf upwards, `{"left": h}` gives `SHA-256(h ‖ current)`
//!    and `{"right": h}` gives `SHA-256(current ‖ h)`; the result is the root;
//! 3. `node_id` is the hex SHA-256 of the node certificate's SubjectPublicKeyInfo;
//! 4. the node certificate is signed by `service_endorsements[0]`, which is signed by
//!    `service_endorsements[1]`, and so on, the last one (or the node certificate itself when
//!    there are no endorsements) being signed by the service certificate;
//! 5. `signature` (base64 DER ECDSA) verifies over the 32-byte root as a SHA-256 prehash with
//!    the node certificate's key.
//!
//! These are exactly the steps of the `azure-confidentialledger` Python verifier and of CCF's
//! documentation, so those tools accept Charter receipts and Charter accepts theirs.

use base64::Engine as _;
use charter_crypto::{Certificate, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::merkle::{root_from_proof, ProofStep};
use crate::{commit_evidence_digest, leaf_hash, Digest};

/// Most proof elements a receipt may carry: a tree over a `u64` count of leaves is at most 64
/// levels deep.
pub const PROOF_STEPS_MAX: usize = 64;
/// Most service endorsement certificates a receipt may carry (one per service identity change).
pub const SERVICE_ENDORSEMENTS_MAX: usize = 64;
/// Longest commit evidence string accepted; Charter's are under 100 bytes.
pub const COMMIT_EVIDENCE_BYTES_MAX: usize = 1024;

/// A receipt as CCF's `/app/receipt` returns it (snake_case field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// PEM of the certificate of the node that signed the root.
    pub cert: String,
    /// Hex SHA-256 of the signing node's public key (DER SubjectPublicKeyInfo).
    pub node_id: String,
    /// Base64 DER ECDSA signature over the root, as a SHA-256 prehash.
    pub signature: String,
    /// Path from the leaf to the signed root, from the leaf upwards.
    pub proof: Vec<ProofElement>,
    /// What the transaction's leaf is made of.
    pub leaf_components: LeafComponents,
    /// PEMs of the certificates linking the node certificate to the current service identity,
    /// nearest to the node first; empty when the service certificate endorsed the node directly.
    #[serde(default)]
    pub service_endorsements: Vec<String>,
}

/// One step of a receipt's proof: exactly one of `left` and `right` is set, to a hex digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofElement {
    /// The sibling on the left: the parent is `SHA-256(left ‖ current)`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub left: Option<String>,
    /// The sibling on the right: the parent is `SHA-256(current ‖ right)`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub right: Option<String>,
}

/// The three parts of a transaction's Merkle leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafComponents {
    /// Hex SHA-256 of the transaction's entry (header and both domains).
    pub write_set_digest: String,
    /// The commit evidence string, revealed only for committed transactions.
    pub commit_evidence: String,
    /// Hex digest of the application's claims (zeros when none).
    pub claims_digest: String,
}

/// Why a receipt is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// A field is missing, of the wrong type, not hex or base64, or over a limit.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// A proof element has neither or both of `left` and `right`, or a digest that is not 64
    /// hex digits, or the proof is longer than [`PROOF_STEPS_MAX`].
    #[error("malformed Merkle proof in receipt")]
    BadProof,
    /// `node_id` is not the hash of the node certificate's public key.
    #[error("receipt node ID does not match the node certificate's public key")]
    NodeIdMismatch,
    /// The node certificate does not chain to the service certificate.
    #[error("node certificate is not endorsed by the service certificate: {0}")]
    NotEndorsed(String),
    /// The signature does not verify over the recomputed root: the leaf components, the proof
    /// or the signature were altered, or another key signed.
    #[error("signature does not verify over the recomputed Merkle root")]
    BadSignature,
    /// A certificate does not parse or holds no P-384 key.
    #[error("invalid certificate in receipt: {0}")]
    Certificate(String),
}

/// Decodes 64 hex digits (either case) into a digest.
fn digest_from_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 {
        return None;
    }
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

impl Receipt {
    /// Assembles a receipt from its parts (the core calls this once the transaction is
    /// committed and covered by a signature).
    ///
    /// # Panics
    /// If `node_cert` holds no P-384 key (a node's own certificate always certifies the P-384
    /// key the node generated), if `proof` has more than [`PROOF_STEPS_MAX`] steps (no tree is
    /// that deep) or if there are more than [`SERVICE_ENDORSEMENTS_MAX`] endorsements: each is
    /// a bug in the caller, not bad input.
    pub fn new(
        node_cert: &Certificate,
        signature_der: &[u8],
        proof: &[ProofStep],
        write_set_digest: &Digest,
        commit_evidence: &str,
        claims_digest: &Digest,
        service_endorsements: Vec<String>,
    ) -> Receipt {
        assert!(proof.len() <= PROOF_STEPS_MAX, "proof deeper than any tree");
        assert!(service_endorsements.len() <= SERVICE_ENDORSEMENTS_MAX);
        let node_key = node_cert
            .public_key()
            .expect("a node certificate certifies the node's P-384 key");
        let proof = proof
            .iter()
            .map(|step| match step {
                ProofStep::Left(digest) => ProofElement {
                    left: Some(hex::encode(digest)),
                    right: None,
                },
                ProofStep::Right(digest) => ProofElement {
                    left: None,
                    right: Some(hex::encode(digest)),
                },
            })
            .collect();
        Receipt {
            cert: node_cert.to_pem(),
            node_id: node_key.id_hex(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature_der),
            proof,
            leaf_components: LeafComponents {
                write_set_digest: hex::encode(write_set_digest),
                commit_evidence: commit_evidence.to_owned(),
                claims_digest: hex::encode(claims_digest),
            },
            service_endorsements,
        }
    }

    /// The leaf hash this receipt claims for its transaction.
    ///
    /// # Errors
    /// [`ReceiptError::Malformed`] if a digest is not 64 hex digits or the commit evidence is
    /// longer than [`COMMIT_EVIDENCE_BYTES_MAX`].
    pub fn leaf(&self) -> Result<Digest, ReceiptError> {
        let components = &self.leaf_components;
        let write_set_digest = digest_from_hex(&components.write_set_digest).ok_or_else(|| {
            ReceiptError::Malformed("write_set_digest is not a hex digest".into())
        })?;
        let claims_digest = digest_from_hex(&components.claims_digest)
            .ok_or_else(|| ReceiptError::Malformed("claims_digest is not a hex digest".into()))?;
        if components.commit_evidence.len() > COMMIT_EVIDENCE_BYTES_MAX {
            return Err(ReceiptError::Malformed(format!(
                "commit_evidence is over {COMMIT_EVIDENCE_BYTES_MAX} bytes"
            )));
        }
        Ok(leaf_hash(
            &write_set_digest,
            &commit_evidence_digest(&components.commit_evidence),
            &claims_digest,
        ))
    }

    /// The proof as Merkle steps.
    ///
    /// # Errors
    /// [`ReceiptError::BadProof`] as described on the variant.
    pub fn proof_steps(&self) -> Result<Vec<ProofStep>, ReceiptError> {
        if self.proof.len() > PROOF_STEPS_MAX {
            return Err(ReceiptError::BadProof);
        }
        self.proof
            .iter()
            .map(|element| match (&element.left, &element.right) {
                (Some(left), None) => digest_from_hex(left).map(ProofStep::Left),
                (None, Some(right)) => digest_from_hex(right).map(ProofStep::Right),
                _ => None,
            })
            .collect::<Option<Vec<ProofStep>>>()
            .ok_or(ReceiptError::BadProof)
    }

    /// The root recomputed from the leaf and the proof.
    ///
    /// # Errors
    /// As [`Receipt::leaf`] and [`Receipt::proof_steps`].
    pub fn root(&self) -> Result<Digest, ReceiptError> {
        let leaf = self.leaf()?;
        let steps = self.proof_steps()?;
        Ok(root_from_proof(leaf, &steps))
    }

    /// Verifies the receipt against the service certificate, with every step listed in the
    /// module documentation, and returns the signed root.
    ///
    /// # Errors
    /// [`ReceiptError::Malformed`] or [`ReceiptError::BadProof`] for undecodable fields,
    /// [`ReceiptError::Certificate`] for an unreadable certificate,
    /// [`ReceiptError::NodeIdMismatch`], [`ReceiptError::NotEndorsed`], and
    /// [`ReceiptError::BadSignature`] when the signature does not verify over the root.
    pub fn verify(&self, service_cert: &Certificate) -> Result<Digest, ReceiptError> {
        let root = self.root()?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| ReceiptError::Malformed("signature is not base64".into()))?;
        let node_cert = Certificate::from_pem(&self.cert)
            .map_err(|error| ReceiptError::Certificate(format!("node certificate: {error}")))?;
        let node_key = node_cert
            .public_key()
            .map_err(|error| ReceiptError::Certificate(format!("node certificate: {error}")))?;
        let node_id = hex::decode(&self.node_id)
            .map_err(|_| ReceiptError::Malformed("node_id is not hex".into()))?;
        if node_id != charter_crypto::sha256(&node_key.to_spki_der()) {
            return Err(ReceiptError::NodeIdMismatch);
        }
        self.verify_endorsements(&node_cert, service_cert)?;
        node_key
            .verify_digest(&root, &signature)
            .map_err(|_| ReceiptError::BadSignature)?;
        Ok(root)
    }

    /// Checks the chain node certificate ← endorsements… ← service certificate.
    fn verify_endorsements(
        &self,
        node_cert: &Certificate,
        service_cert: &Certificate,
    ) -> Result<(), ReceiptError> {
        if self.service_endorsements.len() > SERVICE_ENDORSEMENTS_MAX {
            return Err(ReceiptError::Malformed(format!(
                "more than {SERVICE_ENDORSEMENTS_MAX} service endorsements"
            )));
        }
        let mut chain = Vec::with_capacity(self.service_endorsements.len() + 1);
        for (position, pem) in self.service_endorsements.iter().enumerate() {
            let cert = Certificate::from_pem(pem).map_err(|error| {
                ReceiptError::Certificate(format!("service endorsement {position}: {error}"))
            })?;
            chain.push(cert);
        }
        chain.push(service_cert.clone());
        let mut endorsee = node_cert;
        for (position, endorser) in chain.iter().enumerate() {
            let key: VerifyingKey = endorser.public_key().map_err(|error| {
                ReceiptError::Certificate(format!("endorsing certificate {position}: {error}"))
            })?;
            endorsee.verify_signed_by(&key).map_err(|_| {
                let what = if position == 0 {
                    "the node certificate".to_owned()
                } else {
                    format!("service endorsement {}", position - 1)
                };
                let by = if position + 1 == chain.len() {
                    "the service certificate".to_owned()
                } else {
                    format!("service endorsement {position}")
                };
                ReceiptError::NotEndorsed(format!("{what} is not signed by {by}"))
            })?;
            endorsee = endorser;
        }
        Ok(())
    }

    /// The receipt as CCF returns it (snake_case keys).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cert": self.cert,
            "node_id": self.node_id,
            "signature": self.signature,
            "proof": self.proof_json(),
            "leaf_components": {
                "write_set_digest": self.leaf_components.write_set_digest,
                "commit_evidence": self.leaf_components.commit_evidence,
                "claims_digest": self.leaf_components.claims_digest,
            },
            "service_endorsements": self.service_endorsements,
        })
    }

    /// The receipt as Azure confidential ledger returns it (camelCase keys), which its SDKs'
    /// `verify_receipt` take.
    pub fn to_azure_json(&self) -> serde_json::Value {
        serde_json::json!({
            "cert": self.cert,
            "nodeId": self.node_id,
            "signature": self.signature,
            "proof": self.proof_json(),
            "leafComponents": {
                "writeSetDigest": self.leaf_components.write_set_digest,
                "commitEvidence": self.leaf_components.commit_evidence,
                "claimsDigest": self.leaf_components.claims_digest,
            },
            "serviceEndorsements": self.service_endorsements,
        })
    }

    fn proof_json(&self) -> serde_json::Value {
        self.proof
            .iter()
            .map(|element| {
                let mut object = serde_json::Map::new();
                if let Some(left) = &element.left {
                    object.insert("left".into(), left.clone().into());
                }
                if let Some(right) = &element.right {
                    object.insert("right".into(), right.clone().into());
                }
                serde_json::Value::Object(object)
            })
            .collect()
    }

    /// Parses a receipt in either form (snake_case or camelCase keys), also when wrapped as
    /// `{"receipt": {...}}` the way Azure confidential ledger's `getReceipt` answers. Unknown
    /// fields (such as `is_signature_transaction`) are ignored.
    ///
    /// # Errors
    /// [`ReceiptError::Malformed`] if a required field is missing or of the wrong type, or a key
    /// appears in both forms.
    pub fn from_json(value: &serde_json::Value) -> Result<Receipt, ReceiptError> {
        let object = value
            .as_object()
            .ok_or_else(|| ReceiptError::Malformed("receipt is not a JSON object".into()))?;
        let object = match object.get("receipt") {
            Some(serde_json::Value::Object(inner)) if !object.contains_key("cert") => inner,
            _ => object,
        };
        let mut receipt = snake_case_keys(object)?;
        let components = receipt
            .get("leaf_components")
            .and_then(serde_json::Value::as_object)
            .map(snake_case_keys)
            .transpose()?;
        if let Some(components) = components {
            receipt.insert(
                "leaf_components".into(),
                serde_json::Value::Object(components),
            );
        }
        serde_json::from_value(serde_json::Value::Object(receipt))
            .map_err(|error| ReceiptError::Malformed(error.to_string()))
    }
}

/// Copies an object with its camelCase keys turned into snake_case (`nodeId` → `node_id`).
fn snake_case_keys(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, ReceiptError> {
    let mut out = serde_json::Map::new();
    for (key, value) in object {
        let mut snake = String::with_capacity(key.len() + 4);
        for character in key.chars() {
            if character.is_ascii_uppercase() {
                snake.push('_');
                snake.push(character.to_ascii_lowercase());
            } else {
                snake.push(character);
            }
        }
        if out.insert(snake.clone(), value.clone()).is_some() {
            return Err(ReceiptError::Malformed(format!(
                "receipt key {snake} appears in both snake_case and camelCase"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::MerkleTree;
    use crate::{commit_evidence, decode_entry, encode_entry, EntryKind, EntryParts, TxId};
    use charter_crypto::{CertificateSpec, LedgerSecret, SigningKey, Validity};

    fn spec(name: &str, is_ca: bool) -> CertificateSpec<'_> {
        CertificateSpec {
            common_name: name,
            is_ca,
            subject_alt_names: &[],
            validity: Validity {
                not_before_unix: 1_700_000_000,
                days: 365,
            },
        }
    }

    struct Fixture {
        service_key: SigningKey,
        service_cert: Certificate,
        node_key: SigningKey,
        node_cert: Certificate,
        receipts: Vec<Receipt>,
        leaves: Vec<Digest>,
        root: Digest,
    }

    /// Seven real entries, a service and a node, and a receipt for every entry against the
    /// root over all of them.
    fn fixture() -> Fixture {
        let secret = LedgerSecret::from_bytes([3; 32]);
        let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
        let service_cert = Certificate::self_signed(&service_key, &spec("service", true)).unwrap();
        let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
        let node_cert = Certificate::issue(
            &node_key.verifying_key(),
            &spec("node", false),
            &service_key,
            &service_cert,
        )
        .unwrap();
        let mut entries = Vec::new();
        let mut tree = MerkleTree::new();
        for seqno in 1..=7u64 {
            let public = format!("public {seqno}");
            let bytes = encode_entry(
                &EntryParts {
                    kind: EntryKind::Transaction,
                    tx_id: TxId::new(2, seqno),
                    claims_digest: [seqno as u8; 32],
                    public: public.as_bytes(),
                    private_plain: b"private",
                },
                &secret,
            )
            .unwrap();
            tree.append(decode_entry(&bytes).unwrap().leaf());
            entries.push(bytes);
        }
        let size = tree.len();
        let root = tree.root().unwrap();
        let signature = node_key.sign_digest(&root).unwrap();
        let mut receipts = Vec::new();
        let mut leaves = Vec::new();
        for (index, bytes) in entries.iter().enumerate() {
            let entry = decode_entry(bytes).unwrap();
            let proof = tree.proof(index as u64, size).unwrap();
            receipts.push(Receipt::new(
                &node_cert,
                &signature,
                &proof,
                &entry.write_set_digest(),
                &commit_evidence(&secret, entry.tx_id),
                &entry.claims_digest,
                Vec::new(),
            ));
            leaves.push(entry.leaf());
        }
        Fixture {
            service_key,
            service_cert,
            node_key,
            node_cert,
            receipts,
            leaves,
            root,
        }
    }

    #[test]
    fn every_receipt_verifies() {
        let fixture = fixture();
        for (receipt, leaf) in fixture.receipts.iter().zip(&fixture.leaves) {
            assert_eq!(receipt.leaf().unwrap(), *leaf);
            assert_eq!(receipt.root().unwrap(), fixture.root);
            assert_eq!(receipt.verify(&fixture.service_cert), Ok(fixture.root));
            assert_eq!(receipt.node_id, fixture.node_key.verifying_key().id_hex());
        }
    }

    #[test]
    fn every_altered_proof_digit_fails() {
        let fixture = fixture();
        let receipt = &fixture.receipts[2];
        assert!(!receipt.proof.is_empty());
        for (step, element) in receipt.proof.iter().enumerate() {
            let text = element.left.as_ref().or(element.right.as_ref()).unwrap();
            // Every few digits: each verification costs a P-384 signature check.
            for position in (0..text.len()).filter(|p| p % 7 == 0 || p + 1 == text.len()) {
                let mut altered = receipt.clone();
                let mut digits = text.clone().into_bytes();
                digits[position] = if digits[position] == b'0' { b'1' } else { b'0' };
                let digits = String::from_utf8(digits).unwrap();
                let target = &mut altered.proof[step];
                if target.left.is_some() {
                    target.left = Some(digits);
                } else {
                    target.right = Some(digits);
                }
                assert_eq!(
                    altered.verify(&fixture.service_cert),
                    Err(ReceiptError::BadSignature),
                    "step {step} digit {position}"
                );
            }
        }
        // A side swapped, a step dropped or added.
        let mut swapped = receipt.clone();
        let first = &mut swapped.proof[0];
        std::mem::swap(&mut first.left, &mut first.right);
        assert_eq!(
            swapped.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
        let mut shorter = receipt.clone();
        shorter.proof.pop();
        assert_eq!(
            shorter.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
        let mut longer = receipt.clone();
        longer.proof.push(receipt.proof[0].clone());
        assert_eq!(
            longer.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
    }

    #[test]
    fn malformed_proofs_are_rejected() {
        let fixture = fixture();
        let receipt = &fixture.receipts[0];
        let digest = "ab".repeat(32);
        for element in [
            ProofElement {
                left: None,
                right: None,
            },
            ProofElement {
                left: Some(digest.clone()),
                right: Some(digest.clone()),
            },
            ProofElement {
                left: Some("abc".into()),
                right: None,
            },
            ProofElement {
                left: None,
                right: Some("zz".repeat(32)),
            },
        ] {
            let mut altered = receipt.clone();
            altered.proof.push(element);
            assert_eq!(
                altered.verify(&fixture.service_cert),
                Err(ReceiptError::BadProof)
            );
        }
        let mut deep = receipt.clone();
        deep.proof = vec![
            ProofElement {
                left: Some(digest),
                right: None
            };
            PROOF_STEPS_MAX + 1
        ];
        assert_eq!(deep.root(), Err(ReceiptError::BadProof));
    }

    #[test]
    fn altered_leaf_components_fail() {
        let fixture = fixture();
        let receipt = &fixture.receipts[4];
        let service = &fixture.service_cert;

        let mut evidence = receipt.clone();
        evidence.leaf_components.commit_evidence.push('0');
        assert_eq!(evidence.verify(service), Err(ReceiptError::BadSignature));

        let mut other_evidence = receipt.clone();
        other_evidence.leaf_components.commit_evidence =
            fixture.receipts[3].leaf_components.commit_evidence.clone();
        assert_eq!(
            other_evidence.verify(service),
            Err(ReceiptError::BadSignature)
        );

        let mut claims = receipt.clone();
        claims.leaf_components.claims_digest = hex::encode([0u8; 32]);
        assert_eq!(claims.verify(service), Err(ReceiptError::BadSignature));

        let mut write_set = receipt.clone();
        write_set.leaf_components.write_set_digest =
            fixture.receipts[5].leaf_components.write_set_digest.clone();
        assert_eq!(write_set.verify(service), Err(ReceiptError::BadSignature));

        let mut short = receipt.clone();
        short.leaf_components.claims_digest.pop();
        assert!(matches!(
            short.verify(service),
            Err(ReceiptError::Malformed(_))
        ));
        let mut long = receipt.clone();
        long.leaf_components.commit_evidence = "c".repeat(COMMIT_EVIDENCE_BYTES_MAX + 1);
        assert!(matches!(
            long.verify(service),
            Err(ReceiptError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_node_id_fails() {
        let fixture = fixture();
        let mut receipt = fixture.receipts[1].clone();
        receipt.node_id = fixture.service_key.verifying_key().id_hex();
        assert_eq!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::NodeIdMismatch)
        );
        receipt.node_id = "not hex".into();
        assert!(matches!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::Malformed(_))
        ));
        // Upper-case hex is the same ID, as for bytes.fromhex.
        receipt.node_id = fixture.receipts[1].node_id.to_uppercase();
        assert!(receipt.verify(&fixture.service_cert).is_ok());
    }

    #[test]
    fn unendorsed_node_or_wrong_service_fails() {
        let fixture = fixture();
        let receipt = &fixture.receipts[3];

        // A node certificate the service did not issue, for the same node key.
        let rogue_key = SigningKey::from_seed(&[9; 32]).unwrap();
        let rogue_cert = Certificate::self_signed(&rogue_key, &spec("rogue", true)).unwrap();
        let forged = Certificate::issue(
            &fixture.node_key.verifying_key(),
            &spec("node", false),
            &rogue_key,
            &rogue_cert,
        )
        .unwrap();
        let mut unendorsed = receipt.clone();
        unendorsed.cert = forged.to_pem();
        assert!(matches!(
            unendorsed.verify(&fixture.service_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));
        let self_signed =
            Certificate::self_signed(&fixture.node_key, &spec("node", false)).unwrap();
        unendorsed.cert = self_signed.to_pem();
        assert!(matches!(
            unendorsed.verify(&fixture.service_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));

        // The genuine receipt against another service.
        assert!(matches!(
            receipt.verify(&rogue_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));

        let mut garbage = receipt.clone();
        garbage.cert = "not a certificate".into();
        assert!(matches!(
            garbage.verify(&fixture.service_cert),
            Err(ReceiptError::Certificate(_))
        ));
    }

    #[test]
    fn signature_by_another_key_fails() {
        let fixture = fixture();
        let mut receipt = fixture.receipts[6].clone();
        let other = SigningKey::from_seed(&[8; 32]).unwrap();
        let signature = other.sign_digest(&fixture.root).unwrap();
        receipt.signature = base64::engine::general_purpose::STANDARD.encode(signature);
        assert_eq!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
        // The service key itself is not the node key either.
        let signature = fixture.service_key.sign_digest(&fixture.root).unwrap();
        receipt.signature = base64::engine::general_purpose::STANDARD.encode(signature);
        assert_eq!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
        receipt.signature = "%%%".into();
        assert!(matches!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::Malformed(_))
        ));
        receipt.signature = "AAAA".into();
        assert_eq!(
            receipt.verify(&fixture.service_cert),
            Err(ReceiptError::BadSignature)
        );
    }

    #[test]
    fn endorsement_chain_of_one() {
        // The node was endorsed by an old service identity A; the current identity B endorses
        // A's key. The receipt carries that endorsement and verifies against B.
        let fixture = fixture();
        let old_key = &fixture.service_key;
        let old_cert = &fixture.service_cert;
        let new_key = SigningKey::from_seed(&[5; 32]).unwrap();
        let new_cert = Certificate::self_signed(&new_key, &spec("service", true)).unwrap();
        let endorsement = Certificate::issue(
            &old_key.verifying_key(),
            &spec("service", true),
            &new_key,
            &new_cert,
        )
        .unwrap();

        let mut receipt = fixture.receipts[2].clone();
        assert!(matches!(
            receipt.verify(&new_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));
        receipt.service_endorsements = vec![endorsement.to_pem()];
        assert_eq!(receipt.verify(&new_cert), Ok(fixture.root));
        // The chain ends at B, not A.
        assert!(matches!(
            receipt.verify(old_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));
        // The endorsement must be of the key that signed the node certificate.
        let wrong = Certificate::issue(
            &fixture.node_key.verifying_key(),
            &spec("service", true),
            &new_key,
            &new_cert,
        )
        .unwrap();
        receipt.service_endorsements = vec![wrong.to_pem()];
        assert!(matches!(
            receipt.verify(&new_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));
        receipt.service_endorsements = vec!["garbage".into()];
        assert!(matches!(
            receipt.verify(&new_cert),
            Err(ReceiptError::Certificate(_))
        ));
        // A chain of two: C endorses B, which endorses A.
        let newest_key = SigningKey::from_seed(&[6; 32]).unwrap();
        let newest_cert = Certificate::self_signed(&newest_key, &spec("service", true)).unwrap();
        let second = Certificate::issue(
            &new_key.verifying_key(),
            &spec("service", true),
            &newest_key,
            &newest_cert,
        )
        .unwrap();
        receipt.service_endorsements = vec![endorsement.to_pem(), second.to_pem()];
        assert_eq!(receipt.verify(&newest_cert), Ok(fixture.root));
        receipt.service_endorsements = vec![second.to_pem(), endorsement.to_pem()];
        assert!(matches!(
            receipt.verify(&newest_cert),
            Err(ReceiptError::NotEndorsed(_))
        ));
    }

    #[test]
    fn json_round_trips_in_both_forms() {
        let fixture = fixture();
        let mut receipt = fixture.receipts[5].clone();
        receipt.service_endorsements = vec![fixture.service_cert.to_pem()];
        let snake = receipt.to_json();
        assert!(snake.get("leaf_components").is_some());
        assert!(snake["proof"]
            .as_array()
            .unwrap()
            .iter()
            .all(|element| element.as_object().unwrap().len() == 1));
        assert_eq!(Receipt::from_json(&snake), Ok(receipt.clone()));
        // serde's own derive agrees with to_json.
        assert_eq!(serde_json::to_value(&receipt).unwrap(), snake);

        let azure = receipt.to_azure_json();
        assert_eq!(
            azure["leafComponents"]["writeSetDigest"],
            serde_json::json!(receipt.leaf_components.write_set_digest)
        );
        assert_eq!(azure["nodeId"], serde_json::json!(receipt.node_id));
        assert_eq!(Receipt::from_json(&azure), Ok(receipt.clone()));

        let text = serde_json::to_string(&azure).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let back = Receipt::from_json(&parsed).unwrap();
        assert_eq!(back.verify(&fixture.service_cert), Ok(fixture.root));

        // Wrapped as Azure's getReceipt answers, with extra fields.
        let wrapped = serde_json::json!({
            "receipt": azure,
            "receiptState": "Ready",
            "transactionId": "2.6",
        });
        assert_eq!(Receipt::from_json(&wrapped), Ok(receipt.clone()));
        let mut extra = snake.clone();
        extra["is_signature_transaction"] = serde_json::json!(false);
        assert_eq!(Receipt::from_json(&extra), Ok(receipt.clone()));

        // Endorsements are optional.
        let mut bare = snake.clone();
        bare.as_object_mut().unwrap().remove("service_endorsements");
        assert!(Receipt::from_json(&bare)
            .unwrap()
            .service_endorsements
            .is_empty());
    }

    #[test]
    fn from_json_rejects_bad_shapes() {
        let fixture = fixture();
        let good = fixture.receipts[0].to_json();
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("signature");
        let mut wrong_type = good.clone();
        wrong_type["proof"] = serde_json::json!("x");
        let mut both = good.clone();
        both["nodeId"] = good["node_id"].clone();
        let mut bad_element = good.clone();
        bad_element["proof"] = serde_json::json!([{"left": 5}]);
        for bad in [
            missing,
            wrong_type,
            both,
            bad_element,
            serde_json::json!(null),
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!({"receipt": 5}),
        ] {
            assert!(
                matches!(Receipt::from_json(&bad), Err(ReceiptError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn node_certificate_is_the_signing_nodes() {
        let fixture = fixture();
        let receipt = &fixture.receipts[0];
        let cert = Certificate::from_pem(&receipt.cert).unwrap();
        assert_eq!(cert, fixture.node_cert);
    }
}
