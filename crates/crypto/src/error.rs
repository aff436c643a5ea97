use thiserror::Error;

/// Everything that can go wrong in this crate; variants name the culprit.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A PEM document could not be parsed or had the wrong label.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A key could not be decoded or is not a P-384 key.
    #[error("invalid key: {0}")]
    Key(String),
    /// A certificate could not be parsed or uses an unsupported algorithm.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// A certificate could not be created.
    #[error("cannot create certificate: {0}")]
    CertificateCreation(String),
    /// A signature did not verify or was malformed.
    #[error("bad signature")]
    BadSignature,
    /// Authenticated decryption failed: wrong key, or the ciphertext or its associated data
    /// were altered.
    #[error("decryption failed: ciphertext or associated data altered, or wrong key")]
    Decrypt,
    /// A COSE Sign1 message is malformed, too large, or lacks a required header; the text
    /// names the culprit.
    #[error("invalid COSE Sign1 message: {0}")]
    Cose(String),
    /// Recovery-scheme bytes are malformed: a wrong length, a non-canonical or identity point,
    /// a non-canonical scalar, or a zero member index; the text names the culprit.
    #[error("invalid recovery encoding: {0}")]
    RecoveryEncoding(String),
    /// A recovery deal was asked for with no members, more than the maximum, or a threshold of
    /// zero or above the number of members.
    #[error("invalid recovery threshold {threshold} for {members} members")]
    RecoveryThreshold {
        /// The threshold asked for.
        threshold: u32,
        /// The number of members given.
        members: usize,
    },
    /// An encrypted recovery share did not open: the member key is the wrong one, or the share
    /// or the recovery ciphertext was altered.
    #[error(
        "cannot open the recovery share of member {index}: wrong member key, or the share or \
         the recovery ciphertext was altered"
    )]
    RecoveryShareOpen {
        /// The member index of the share.
        index: u32,
    },
    /// An opened recovery share does not match its published verification key, so the dealer
    /// or the ledger gave this member a bad share.
    #[error("the recovery share of member {index} does not match its verification key")]
    RecoveryShareMismatch {
        /// The member index of the share.
        index: u32,
    },
    /// A partial decryption's proof does not verify against the member's verification key and
    /// the recovery ciphertext: it is forged, corrupted, or presented under the wrong index.
    #[error("the partial decryption of member {index} is invalid: forged or corrupted")]
    RecoveryPartialInvalid {
        /// The member index the partial decryption claims.
        index: u32,
    },
    /// Fewer partial decryptions than the threshold were given to combine.
    #[error("recovery needs {threshold} partial decryptions but has {have}: {missing} missing")]
    RecoveryPartialsMissing {
        /// The threshold of the deal.
        threshold: u32,
        /// How many partial decryptions were given.
        have: usize,
        /// How many more are needed.
        missing: usize,
    },
    /// Two partial decryptions given to combine claim the same member index.
    #[error("two partial decryptions claim member index {index}")]
    RecoveryPartialDuplicate {
        /// The repeated member index.
        index: u32,
    },
}
