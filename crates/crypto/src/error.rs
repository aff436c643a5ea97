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
}
