//! Charter's cryptography: SHA-256, ECDSA P-384 keys, X.509 certificates and AES-256-GCM.
//!
//! Nothing here reads a clock or the operating system's randomness: key generation takes an
//! RNG from the caller and certificate validity takes times from the caller, so the node core
//! can stay deterministic.
//!
//! ```
//! use charter_crypto::{sha256, SigningKey};
//! let key = SigningKey::from_seed(&[7; 32]).unwrap();
//! let digest = sha256(b"root");
//! let signature = key.sign_digest(&digest).unwrap();
//! key.verifying_key().verify_digest(&digest, &signature).unwrap();
//! ```

mod aead;
mod cert;
mod error;
mod hash;
mod keys;

pub use aead::{LedgerSecret, AEAD_NONCE_BYTES, AEAD_TAG_BYTES};
pub use cert::{Certificate, CertificateSpec, Validity};
pub use error::CryptoError;
pub use hash::{hmac_sha256, sha256, sha256_parts, Digest};
pub use keys::{SigningKey, VerifyingKey};

/// Re-exported so that callers can pass an RNG without naming the crate themselves.
pub use rand_core::{CryptoRng, RngCore};
