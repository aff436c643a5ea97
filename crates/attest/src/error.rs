use thiserror::Error;

/// Why evidence was rejected; variants name the culprit.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The evidence or its report does not decode, is over a size limit, or its fields
    /// contradict each other.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// The platform is not in governance's TEE manifest, or the platform's configuration
    /// (for example a debuggable SEV-SNP guest) is not acceptable.
    #[error("platform not allowed: {0}")]
    PlatformNotAllowed(String),
    /// The measurement is not in governance's code manifest.
    #[error("measurement not allowed: {0}")]
    MeasurementNotAllowed(String),
    /// The host data is not among the allowed values (or is missing while some are required).
    #[error("host data not allowed: {0}")]
    HostDataNotAllowed(String),
    /// The report does not bind the expected report data (the node's public key digest), so it
    /// may have been replayed from another node.
    #[error("report data does not match the node's key")]
    ReportDataMismatch,
    /// The report's signature does not verify under the endorsed key.
    #[error("bad report signature: {0}")]
    BadSignature(String),
    /// The endorsement certificates do not form a valid chain to a pinned vendor root.
    #[error("bad endorsements: {0}")]
    BadEndorsements(String),
}
