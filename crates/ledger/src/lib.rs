//! Charter's ledger: the entry format with its public and private domains, the framing of
//! entries in chunk files, the Merkle tree over transactions, signatures, receipts and
//! snapshots.
//!
//! Everything here works on bytes in memory; the host reads and writes the files.
//!
//! ```
//! use charter_crypto::LedgerSecret;
//! use charter_ledger::{decode_entry, encode_entry, EntryKind, EntryParts, TxId};
//! let secret = LedgerSecret::from_bytes([1; 32]);
//! let parts = EntryParts {
//!     kind: EntryKind::Transaction,
//!     tx_id: TxId::new(2, 7),
//!     claims_digest: [0; 32],
//!     public: b"",
//!     private_plain: b"hidden",
//! };
//! let bytes = encode_entry(&parts, &secret).unwrap();
//! let entry = decode_entry(&bytes).unwrap();
//! assert_eq!(entry.decrypt_private(&secret, &bytes).unwrap(), b"hidden");
//! ```

pub mod entry;
mod error;
pub mod frame;
mod leaves;
pub mod merkle;
pub mod receipt;
mod records;
mod secrets;
pub mod snapshot;
pub mod tables;
mod txid;
pub mod verify;

pub use entry::{
    commit_evidence, commit_evidence_digest, decode_entry, encode_conf_change, encode_entry,
    encode_noop, leaf_hash, Entry, EntryKind, EntryParts,
};
pub use error::LedgerError;
pub use leaves::{SnapshotLeaves, LEAF_CHUNK};
pub use receipt::{LeafComponents, ProofElement, Receipt, ReceiptError};
pub use records::{NodeInfo, NodeStatus, ServiceInfo, ServiceStatus, SignatureRecord};
pub use secrets::{
    follow_chain, ledger_secrets_key, node_wrap_aad, open_previous, seal_previous,
    LedgerSecretRecord, LedgerSecrets,
};
pub use snapshot::{
    committed_snapshot_evidence_length, committed_snapshot_prefix, decode_snapshot,
    encode_committed_snapshot, encode_snapshot, encode_snapshot_into, split_committed_snapshot,
    verify_committed_snapshot, SnapshotContents, SnapshotError, SnapshotEvidence, SnapshotLeaf,
    COMMITTED_SNAPSHOT_PREFIX_BYTES,
};
pub use txid::{TxId, TxIdParseError};
pub use verify::{
    verify_ledger, verify_ledger_with_snapshots, verify_recovered_ledger, LedgerFile,
    VerifyFailure, VerifySummary,
};

/// A SHA-256 digest.
pub type Digest = [u8; 32];
