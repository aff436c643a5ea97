use charter_ledger::TxId;

/// Errors of the node core; variants name the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A restored ledger entry does not decode or decrypt.
    #[error("ledger entry {seqno} is invalid: {reason}")]
    BadEntry {
        /// Seqno of the entry.
        seqno: u64,
        /// What is wrong.
        reason: String,
    },
    /// The restored ledger is not usable (e.g. no genesis transaction).
    #[error("cannot restore: {0}")]
    Restore(String),
    /// A snapshot to start from was refused: its evidence does not verify against the
    /// service certificate, it does not match its evidence, or it does not decrypt.
    #[error("snapshot refused: {0}")]
    Snapshot(String),
    /// Consensus failed.
    #[error("consensus: {0}")]
    Consensus(#[from] charter_consensus::ConsensusError),
    /// A transaction could not be written to the ledger.
    #[error("cannot write transaction {tx_id}: {reason}")]
    Write {
        /// Transaction that failed.
        tx_id: TxId,
        /// Why.
        reason: String,
    },
    /// The node stopped after an earlier fatal error and accepts no more input.
    #[error("node is poisoned by an earlier error: {0}")]
    Poisoned(String),
    /// An operation this version does not support yet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}
