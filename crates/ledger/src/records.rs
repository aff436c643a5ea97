use serde::{Deserialize, Serialize};

use crate::{Digest, LedgerError};

/// What a signature transaction records: the Merkle root over every earlier transaction,
/// signed by the primary's node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    /// View of the signature transaction.
    pub view: u64,
    /// Seqno of the signature transaction; the root covers seqnos `1..seqno`.
    pub seqno: u64,
    /// Hex Merkle root over the leaves of seqnos `1..seqno`.
    pub root: String,
    /// ID of the signing node.
    pub node_id: String,
    /// Base64 DER ECDSA signature over the root (as a SHA-256 prehash).
    pub signature: String,
}

impl SignatureRecord {
    /// The root as bytes.
    ///
    /// # Errors
    /// [`LedgerError::Malformed`] if it is not 64 hex digits.
    pub fn root_digest(&self) -> Result<Digest, LedgerError> {
        let bytes =
            hex::decode(&self.root).map_err(|_| LedgerError::Malformed("signature root"))?;
        bytes
            .try_into()
            .map_err(|_| LedgerError::Malformed("signature root length"))
    }

    /// The DER signature bytes.
    ///
    /// # Errors
    /// [`LedgerError::Malformed`] if it is not base64.
    pub fn signature_der(&self) -> Result<Vec<u8>, LedgerError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| LedgerError::Malformed("signature base64"))
    }
}

/// Status of a node in the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Asked to join, waiting for governance.
    Pending,
    /// Part of the service.
    Trusted,
    /// Removed by governance.
    Retired,
}

/// A node as recorded in [`NODES_MAP`](crate::tables::NODES_MAP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// PEM of the node certificate, endorsed by the service identity.
    pub cert: String,
    /// Status.
    pub status: NodeStatus,
    /// Address clients use to reach the node.
    pub rpc_address: String,
    /// Address other nodes reach this node's node-to-node channel on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address: Option<String>,
    /// The node's attestation evidence (JSON), as checked when it joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// Status of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceStatus {
    /// Created, not yet opened by governance.
    Opening,
    /// Open to users.
    Open,
    /// Recovering from a disaster, waiting for members.
    Recovering,
    /// Recovering, opened by governance, waiting for members' recovery shares.
    WaitingForRecoveryShares,
}

/// The service record in [`SERVICE_MAP`](crate::tables::SERVICE_MAP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// PEM of the service certificate.
    pub cert: String,
    /// Status.
    pub status: ServiceStatus,
}
