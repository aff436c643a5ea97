//! The ledger entry format.
//!
//! ```text
//! header (32 bytes): version u8 | kind u8 | flags u16 | reserved u32 | view u64 | seqno u64
//!                    | public_len u32 | private_len u32          (little endian)
//! claims_digest [32] | commit_evidence_digest [32]
//! public domain  [public_len]   write set of public maps, in clear
//! private domain [private_len]  AES-256-GCM(write set of private maps) ‖ tag, or empty
//! ```
//! The private domain's associated data is everything before it, so no byte of an entry can
//! change unnoticed by a node holding the ledger secret, and the Merkle leaf covers every
//! byte for everyone else: `leaf = SHA-256(write_set_digest ‖ commit_evidence_digest ‖
//! claims_digest)` with `write_set_digest = SHA-256(header ‖ public ‖ private)`.

use charter_crypto::{hmac_sha256, sha256, sha256_parts, LedgerSecret, AEAD_NONCE_BYTES};

use crate::{Digest, LedgerError, TxId};

/// Version of the entry format written by this code.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const ENTRY_HEADER_BYTES: usize = 32;
/// Bytes before the public domain: header and the two digests.
pub const ENTRY_PREFIX_BYTES: usize = ENTRY_HEADER_BYTES + 64;
/// Largest entry accepted.
pub const ENTRY_BYTES_MAX: usize = 8 << 20;
const _: () = assert!(ENTRY_BYTES_MAX as u64 <= crate::frame::FRAME_PAYLOAD_BYTES_MAX as u64);

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A transaction's write set.
    Transaction = 0,
    /// A signature transaction: a write set holding the signed Merkle root.
    Signature = 1,
    /// An empty entry appended by Raft when a leader is elected.
    Noop = 2,
    /// A Raft configuration change: the public domain is its protobuf `ConfChangeV2`.
    ConfChange = 3,
}

impl EntryKind {
    fn from_byte(byte: u8) -> Result<EntryKind, LedgerError> {
        match byte {
            0 => Ok(EntryKind::Transaction),
            1 => Ok(EntryKind::Signature),
            2 => Ok(EntryKind::Noop),
            3 => Ok(EntryKind::ConfChange),
            _ => Err(LedgerError::Malformed("entry kind")),
        }
    }
}

/// A decoded entry, borrowing the bytes it was decoded from. The private domain stays
/// encrypted until [`Entry::decrypt_private`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What the entry is.
    pub kind: EntryKind,
    /// Its transaction ID.
    pub tx_id: TxId,
    /// Digest of application claims (zeros when none).
    pub claims_digest: Digest,
    /// SHA-256 of the commit evidence string.
    pub commit_evidence_digest: Digest,
    /// Encoded write set of public maps.
    pub public: &'a [u8],
    /// Encrypted write set of private maps (empty when there are none).
    pub private: &'a [u8],
    header: &'a [u8],
}

/// The nonce of an entry's private domain: seqno (8 bytes LE) ‖ view (4 bytes LE). A TxID
/// is never reused with different contents, so a nonce never repeats under one secret.
pub fn entry_nonce(tx_id: TxId) -> [u8; AEAD_NONCE_BYTES] {
    assert!(tx_id.view <= u64::from(u32::MAX), "view above 2^32");
    let mut nonce = [0u8; AEAD_NONCE_BYTES];
    nonce[..8].copy_from_slice(&tx_id.seqno.to_le_bytes());
    nonce[8..].copy_from_slice(&(tx_id.view as u32).to_le_bytes());
    nonce
}

/// The commit evidence string of `tx_id`: `ce:VIEW.SEQNO:HEX`, where HEX is a MAC of the
/// TxID under a key derived from the ledger secret. It is revealed only in receipts, after
/// commit, and proves that the transaction was committed.
pub fn commit_evidence(secret: &LedgerSecret, tx_id: TxId) -> String {
    let commit_key = hmac_sha256(secret.as_bytes(), b"charter commit evidence key");
    let nonce = hmac_sha256(&commit_key, tx_id.to_string().as_bytes());
    format!("ce:{tx_id}:{}", hex::encode(nonce))
}

/// SHA-256 of a commit evidence string.
pub fn commit_evidence_digest(evidence: &str) -> Digest {
    sha256(evidence.as_bytes())
}

/// The Merkle leaf from its three components, as CCF defines it.
pub fn leaf_hash(
    write_set_digest: &Digest,
    commit_evidence_digest: &Digest,
    claims_digest: &Digest,
) -> Digest {
    sha256_parts(&[write_set_digest, commit_evidence_digest, claims_digest])
}

/// Everything needed to build an entry.
#[derive(Clone, Debug)]
pub struct EntryParts<'a> {
    /// What the entry is.
    pub kind: EntryKind,
    /// Its transaction ID.
    pub tx_id: TxId,
    /// Digest of application claims (zeros when none).
    pub claims_digest: Digest,
    /// Encoded write set of public maps.
    pub public: &'a [u8],
    /// Encoded write set of private maps, in clear; encrypted here.
    pub private_plain: &'a [u8],
}

/// Builds an entry's bytes, encrypting its private domain with `secret`.
///
/// # Errors
/// [`LedgerError::TooLarge`] if the entry would exceed [`ENTRY_BYTES_MAX`].
pub fn encode_entry(parts: &EntryParts<'_>, secret: &LedgerSecret) -> Result<Vec<u8>, LedgerError> {
    let private_len = if parts.private_plain.is_empty() {
        0
    } else {
        parts.private_plain.len() + charter_crypto::AEAD_TAG_BYTES
    };
    let total = ENTRY_PREFIX_BYTES + parts.public.len() + private_len;
    if total > ENTRY_BYTES_MAX {
        return Err(LedgerError::TooLarge {
            bytes: total,
            max: ENTRY_BYTES_MAX,
        });
    }
    let evidence = if matches!(parts.kind, EntryKind::Noop | EntryKind::ConfChange) {
        [0u8; 32]
    } else {
        commit_evidence_digest(&commit_evidence(secret, parts.tx_id))
    };
    let mut out = Vec::with_capacity(total);
    out.push(ENTRY_FORMAT_VERSION);
    out.push(parts.kind as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&parts.tx_id.view.to_le_bytes());
    out.extend_from_slice(&parts.tx_id.seqno.to_le_bytes());
    // Lengths fit in u32: total is bounded by ENTRY_BYTES_MAX.
    out.extend_from_slice(&(parts.public.len() as u32).to_le_bytes());
    out.extend_from_slice(&(private_len as u32).to_le_bytes());
    assert_eq!(out.len(), ENTRY_HEADER_BYTES);
    out.extend_from_slice(&parts.claims_digest);
    out.extend_from_slice(&evidence);
    out.extend_from_slice(parts.public);
    if !parts.private_plain.is_empty() {
        let sealed = secret.encrypt(&entry_nonce(parts.tx_id), &out, parts.private_plain);
        out.extend_from_slice(&sealed);
    }
    assert_eq!(out.len(), total);
    Ok(out)
}

/// The entry a Raft configuration change (protobuf bytes) is stored as.
pub fn encode_conf_change(tx_id: TxId, change: &[u8]) -> Vec<u8> {
    let parts = EntryParts {
        kind: EntryKind::ConfChange,
        tx_id,
        claims_digest: [0; 32],
        public: change,
        private_plain: &[],
    };
    // Configuration changes are small and carry no secret material.
    encode_entry(&parts, &LedgerSecret::from_bytes([0; 32]))
        .expect("a configuration change is small")
}

/// The entry Raft's empty leader entries are stored as.
pub fn encode_noop(tx_id: TxId) -> Vec<u8> {
    let parts = EntryParts {
        kind: EntryKind::Noop,
        tx_id,
        claims_digest: [0; 32],
        public: &[],
        private_plain: &[],
    };
    // A noop is far below the size limit and uses no secret material.
    encode_entry(&parts, &LedgerSecret::from_bytes([0; 32])).expect("a noop entry is small")
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes an entry without decrypting it.
///
/// # Errors
/// [`LedgerError::Malformed`] or [`LedgerError::Truncated`] for anything but a well-formed entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<'_>, LedgerError> {
    if bytes.len() < ENTRY_PREFIX_BYTES {
        return Err(LedgerError::Truncated);
    }
    if bytes.len() > ENTRY_BYTES_MAX {
        return Err(LedgerError::TooLarge {
            bytes: bytes.len(),
            max: ENTRY_BYTES_MAX,
        });
    }
    if bytes[0] != ENTRY_FORMAT_VERSION {
        return Err(LedgerError::Malformed("entry format version"));
    }
    let kind = EntryKind::from_byte(bytes[1])?;
    if bytes[2..8] != [0; 6] {
        return Err(LedgerError::Malformed("entry flags"));
    }
    let tx_id = TxId::new(read_u64(bytes, 8), read_u64(bytes, 16));
    if tx_id.view > u64::from(u32::MAX) {
        return Err(LedgerError::Malformed("entry view above 2^32"));
    }
    let public_len = read_u32(bytes, 24) as usize;
    let private_len = read_u32(bytes, 28) as usize;
    if ENTRY_PREFIX_BYTES + public_len + private_len != bytes.len() {
        return Err(LedgerError::Malformed("entry lengths"));
    }
    if private_len != 0 && private_len < charter_crypto::AEAD_TAG_BYTES {
        return Err(LedgerError::Malformed(
            "private domain shorter than its tag",
        ));
    }
    let public_end = ENTRY_PREFIX_BYTES + public_len;
    let digest = |at: usize| -> Digest { bytes[at..at + 32].try_into().expect("32 bytes") };
    Ok(Entry {
        kind,
        tx_id,
        claims_digest: digest(ENTRY_HEADER_BYTES),
        commit_evidence_digest: digest(ENTRY_HEADER_BYTES + 32),
        public: &bytes[ENTRY_PREFIX_BYTES..public_end],
        private: &bytes[public_end..],
        header: &bytes[..ENTRY_HEADER_BYTES],
    })
}

impl Entry<'_> {
    /// SHA-256 over the header and both domains.
    pub fn write_set_digest(&self) -> Digest {
        sha256_parts(&[self.header, self.public, self.private])
    }

    /// This entry's Merkle leaf.
    pub fn leaf(&self) -> Digest {
        leaf_hash(
            &self.write_set_digest(),
            &self.commit_evidence_digest,
            &self.claims_digest,
        )
    }

    /// Decrypts the private domain (empty if there is none).
    ///
    /// # Errors
    /// [`LedgerError::Decrypt`] if any byte of the entry was altered or the secret is wrong.
    pub fn decrypt_private(
        &self,
        secret: &LedgerSecret,
        entry_bytes: &[u8],
    ) -> Result<Vec<u8>, LedgerError> {
        if self.private.is_empty() {
            return Ok(Vec::new());
        }
        let aad_len = entry_bytes.len() - self.private.len();
        secret
            .decrypt(
                &entry_nonce(self.tx_id),
                &entry_bytes[..aad_len],
                self.private,
            )
            .map_err(|_| LedgerError::Decrypt(self.tx_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: &LedgerSecret) -> Vec<u8> {
        encode_entry(
            &EntryParts {
                kind: EntryKind::Transaction,
                tx_id: TxId::new(2, 7),
                claims_digest: [5; 32],
                public: b"public bytes",
                private_plain: b"SECRET-MARKER",
            },
            secret,
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let secret = LedgerSecret::from_bytes([1; 32]);
        let bytes = sample(&secret);
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!(entry.kind, EntryKind::Transaction);
        assert_eq!(entry.tx_id, TxId::new(2, 7));
        assert_eq!(entry.public, b"public bytes");
        assert_eq!(entry.claims_digest, [5; 32]);
        assert_eq!(
            entry.commit_evidence_digest,
            commit_evidence_digest(&commit_evidence(&secret, TxId::new(2, 7)))
        );
        assert_eq!(
            entry.decrypt_private(&secret, &bytes).unwrap(),
            b"SECRET-MARKER"
        );
        assert!(!bytes.windows(13).any(|window| window == b"SECRET-MARKER"));
        let noop = encode_noop(TxId::new(3, 9));
        let decoded = decode_entry(&noop).unwrap();
        assert_eq!(decoded.kind, EntryKind::Noop);
        assert_eq!(decoded.tx_id, TxId::new(3, 9));
    }

    #[test]
    fn every_altered_byte_changes_the_leaf_or_fails_decoding() {
        let secret = LedgerSecret::from_bytes([1; 32]);
        let bytes = sample(&secret);
        let leaf = decode_entry(&bytes).unwrap().leaf();
        for index in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[index] ^= 0x10;
            match decode_entry(&altered) {
                Err(_) => {}
                Ok(entry) => {
                    assert_ne!(entry.leaf(), leaf, "byte {index}");
                    // The private domain authenticates every byte of the entry.
                    assert!(
                        entry.decrypt_private(&secret, &altered).is_err(),
                        "byte {index}"
                    );
                }
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        for length in 0..200 {
            let bytes: Vec<u8> = (0..length).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_entry(&bytes);
        }
    }

    #[test]
    fn commit_evidence_shape() {
        let secret = LedgerSecret::from_bytes([1; 32]);
        let evidence = commit_evidence(&secret, TxId::new(2, 15));
        assert!(evidence.starts_with("ce:2.15:"));
        assert_eq!(evidence.len(), "ce:2.15:".len() + 64);
        assert_ne!(
            evidence,
            commit_evidence(&LedgerSecret::from_bytes([2; 32]), TxId::new(2, 15))
        );
    }
}
