//! Names of the public maps that the ledger itself, and offline verifiers, rely on.

/// Signature transactions write one record here under key [`SIGNATURE_KEY`].
pub const SIGNATURES_MAP: &str = "public:charter.internal.signatures";
/// The key of the signature record in [`SIGNATURES_MAP`].
pub const SIGNATURE_KEY: &[u8] = b"sig";
/// Nodes by node ID (hex SHA-256 of the node's public key): JSON [`NodeInfo`](crate::NodeInfo).
pub const NODES_MAP: &str = "public:charter.internal.nodes";
/// The service's identity and status under key [`SERVICE_KEY`]: JSON [`ServiceInfo`](crate::ServiceInfo).
pub const SERVICE_MAP: &str = "public:charter.gov.service_info";
/// The key of the record in [`SERVICE_MAP`].
pub const SERVICE_KEY: &[u8] = b"service";
/// Evidence of snapshots: under the snapshot's seqno in decimal, JSON
/// [`SnapshotEvidence`](crate::SnapshotEvidence). The transaction writing it carries the
/// snapshot's SHA-256 digest as its claims digest, so its receipt binds the snapshot.
pub const SNAPSHOT_EVIDENCE_MAP: &str = "public:charter.internal.snapshot_evidence";
/// Ledger secrets after a rekey: under the first seqno each encrypts, zero-padded to 20
/// decimal digits, JSON [`LedgerSecretRecord`](crate::LedgerSecretRecord): the new secret
/// wrapped for every trusted node, and the previous secret wrapped under the new one.
pub const LEDGER_SECRETS_MAP: &str = "public:charter.internal.ledger_secrets";
/// Raft's records: the genesis voters, and for a recovered service under [`RECOVERED_AT_KEY`]
/// the last seqno of the old ledger it continues.
pub const RAFT_MAP: &str = "public:charter.internal.raft";
/// Key in [`RAFT_MAP`] of a recovered service's recovery point (decimal seqno): Raft
/// configurations before it belong to the lost service.
pub const RECOVERED_AT_KEY: &[u8] = b"recovered_at";
