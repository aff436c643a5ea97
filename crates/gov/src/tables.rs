//! Governance maps and the JSON records they hold. Keys are UTF-8 strings (IDs are lower-case
//! hex); values are JSON unless said otherwise. The constitution's JavaScript reads and writes
//! these same formats, so a change here is a change of the constitution API.

use serde::{Deserialize, Serialize};

pub use charter_ledger::tables::{NODES_MAP, SERVICE_KEY, SERVICE_MAP};

/// Members by member ID (hex SHA-256 of the certificate DER): [`MemberInfo`].
pub const MEMBERS_MAP: &str = "public:charter.gov.members";
/// Users by user ID (hex SHA-256 of the certificate DER): [`UserInfo`].
pub const USERS_MAP: &str = "public:charter.gov.users";
/// The constitution's JavaScript source (raw UTF-8, not JSON) under [`CONSTITUTION_KEY`].
pub const CONSTITUTION_MAP: &str = "public:charter.gov.constitution";
/// Key of the constitution.
pub const CONSTITUTION_KEY: &str = "constitution";
/// Allowed code measurements (hex) → `{"status": "AllowedToJoin"}`.
pub const CODE_MANIFEST_MAP: &str = "public:charter.gov.code_manifest";
/// Allowed SEV-SNP host data (hex) → `{"metadata": ...}`.
pub const HOST_DATA_MAP: &str = "public:charter.gov.snp_host_data";
/// Allowed TEE platforms (`virtual`, `sev-snp`) → `{"status": "Allowed"}`.
pub const TEE_MANIFEST_MAP: &str = "public:charter.gov.tee_manifest";
/// Proposal bodies by proposal ID (raw JSON bytes as submitted).
pub const PROPOSALS_MAP: &str = "public:charter.gov.proposals";
/// Proposal state by proposal ID: [`ProposalInfo`].
pub const PROPOSALS_INFO_MAP: &str = "public:charter.gov.proposals_info";
/// Every accepted member request, verbatim (COSE Sign1 bytes), by member ID: each write is a
/// ledger entry, so the ledger holds every signed request (non-repudiation).
pub const HISTORY_MAP: &str = "public:charter.gov.history";
/// Digests of recent member requests (hex SHA-256 of the COSE bytes) → created_at, to refuse
/// replays within the freshness window.
pub const REQUEST_DIGESTS_MAP: &str = "public:charter.gov.request_digests";
/// Service configuration under [`SERVICE_CONFIG_KEY`]: [`ServiceConfig`].
pub const SERVICE_CONFIG_MAP: &str = "public:charter.gov.service_config";
/// Key of the service configuration.
pub const SERVICE_CONFIG_KEY: &str = "config";
/// JavaScript runtime limits under [`JS_RUNTIME_OPTIONS_KEY`]: [`JsRuntimeOptions`].
pub const JS_RUNTIME_OPTIONS_MAP: &str = "public:charter.gov.js_runtime_options";
/// Key of the runtime options.
pub const JS_RUNTIME_OPTIONS_KEY: &str = "options";

/// Prefix of the maps the constitution may read and write.
pub const GOV_MAP_PREFIX: &str = "public:charter.gov.";
/// Prefix of the node maps the constitution may read and write.
pub const INTERNAL_MAP_PREFIX: &str = "public:charter.internal.";

/// A member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// PEM certificate.
    pub cert: String,
    /// `Accepted` until the member acknowledges the state digest, then `Active`.
    pub status: MemberStatus,
    /// Free-form data set by governance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_data: Option<serde_json::Value>,
    /// PEM public encryption key for recovery shares, if a recovery member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_encryption_key: Option<String>,
}

/// Member status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Added by governance, has not acknowledged yet; cannot vote.
    Accepted,
    /// Acknowledged; votes.
    Active,
}

/// A user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// PEM certificate.
    pub cert: String,
    /// Free-form data set by governance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<serde_json::Value>,
}

/// States of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposalState {
    /// Collecting ballots.
    Open,
    /// Passed and applied.
    Accepted,
    /// Turned down by the constitution's resolve.
    Rejected,
    /// Withdrawn by its proposer.
    Withdrawn,
    /// Passed, but applying it threw (or resolve/apply failed).
    Failed,
    /// Open when the constitution or the member set changed.
    Dropped,
}

/// A proposal's record in [`PROPOSALS_INFO_MAP`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalInfo {
    /// Member who proposed it.
    pub proposer_id: String,
    /// Current state.
    pub state: ProposalState,
    /// Ballots by member ID (JavaScript source of `vote`).
    pub ballots: std::collections::BTreeMap<String, String>,
    /// Each ballot's result when last evaluated, by member ID.
    #[serde(default)]
    pub final_votes: std::collections::BTreeMap<String, bool>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The service configuration record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Shares needed to recover the ledger secret.
    pub recovery_threshold: u32,
}

/// Limits of constitution runs, settable by governance (`set_js_runtime_options`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsRuntimeOptions {
    /// Heap limit in bytes.
    pub max_heap_bytes: u64,
    /// Stack limit in bytes.
    pub max_stack_bytes: u64,
    /// Execution budget, in interrupt-handler polls (deterministic, not wall time). One poll is
    /// about 10,000 interpreter steps; the default (10,000) ends a runaway script in about a
    /// second, while the default constitution needs fewer than 100.
    pub max_execution_fuel: u64,
}

impl Default for JsRuntimeOptions {
    fn default() -> Self {
        JsRuntimeOptions {
            max_heap_bytes: 100 << 20,
            max_stack_bytes: 1 << 20,
            max_execution_fuel: 10_000,
        }
    }
}

/// A passed `trigger_ledger_rekey` writes a request here under [`LEDGER_REKEY_KEY`]; the
/// primary's core consumes it in the same transaction by recording a fresh ledger secret.
pub const LEDGER_REKEY_MAP: &str = "public:charter.internal.ledger_rekey";
/// The key of the rekey request in [`LEDGER_REKEY_MAP`].
pub const LEDGER_REKEY_KEY: &str = "request";
