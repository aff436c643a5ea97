use crate::TxId;

/// Errors of the ledger crate; variants name the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The bytes end before the structure does.
    #[error("truncated entry")]
    Truncated,
    /// A field has an impossible value.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Over a size limit.
    #[error("entry of {bytes} bytes is over the limit of {max}")]
    TooLarge {
        /// Size found.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The private domain did not decrypt: altered bytes or the wrong secret.
    #[error("private domain of {0} does not decrypt: altered or wrong ledger secret")]
    Decrypt(TxId),
    /// Ledger secrets or a rekey record are malformed or do not open; the text says which.
    #[error("ledger secrets: {0}")]
    Secrets(String),
}
