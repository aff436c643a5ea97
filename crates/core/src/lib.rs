//! Charter's node core: a deterministic state machine that composes the key-value store, the
//! ledger and consensus. It consumes [`Input`]s and emits [`Action`]s; it performs no I/O,
//! reads no clock and draws no randomness of its own, so the host and a simulator can drive it
//! alike.
//!
//! ```
//! use charter_core::{Action, Input, Node, NodeConfig, StartMode};
//! use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
//! let validity = Validity { not_before_unix: 1_700_000_000, days: 365 };
//! let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
//! let spec = CertificateSpec { common_name: "service", is_ca: true, subject_alt_names: &[], validity };
//! let service_cert = Certificate::self_signed(&service_key, &spec).unwrap();
//! let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
//! let spec = CertificateSpec { common_name: "node", is_ca: false, subject_alt_names: &[], validity };
//! let node_cert = Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service_cert).unwrap();
//! let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &[7; 32]);
//! let config = NodeConfig::new(node_key, node_cert, service_cert, LedgerSecret::from_bytes([3; 32]), evidence);
//! let mut actions = Vec::new();
//! let node = Node::new(config, StartMode::Genesis { members: vec![] }, &mut actions).unwrap();
//! assert!(actions.iter().any(|action| matches!(action, Action::Append { .. })));
//! ```

pub mod api;
pub mod app;
mod endpoints;
mod error;
mod gov_endpoints;
mod join;
mod kv_app;
mod node;
pub mod tables;

pub use api::{Method, Request, RequestId, Response};
pub use app::{AppContext, Application, Historical, HistoricalTx};
pub use charter_consensus::{HardStateRecord, LogBase, LogEntry, LogKind, Restored};
pub use endpoints::{commit_response, commit_wait_after, is_commit_query};
pub use error::CoreError;
pub use join::ENDORSED_CERT_DAYS;
pub use node::{
    raft_id, Action, FetchedEntries, Input, MemberShare, Node, NodeConfig, PreviousServiceIdentity,
    RecoveryShares, SnapshotWork, StartMode, TxStatus, FOLLOWER_SNAPSHOT_SPACING, FORWARDED_HEADER,
    GENESIS_VOTERS_KEY, PREVIOUS_SERVICE_KEY, PREVIOUS_SERVICE_MAP, RAFT_MAP,
    READ_CONSISTENCY_HEADER, RECOVERED_AT_KEY, RECOVERY_REQUESTS_MAP, RECOVERY_SHARES_KEY,
    RECOVERY_SHARES_MAP, RECOVERY_SUBMISSIONS_MAP, SNAPSHOTS_AWAITING_EVIDENCE_MAX,
};
