//! Charter's cryptography: SHA-256, ECDSA P-384 keys, X.509 certificates, AES-256-GCM, COSE
//! Sign1 governance messages, and threshold recovery of a wrapping key on ristretto255.
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
mod cose;
mod error;
mod hash;
mod keys;
mod precomputed;
mod recovery;
mod wrap;

pub use aead::{
    unwrap_key, wrap_key, LedgerSecret, AEAD_NONCE_BYTES, AEAD_TAG_BYTES, WRAP_OVERHEAD_BYTES,
};
pub use cert::{Certificate, CertificateSpec, Validity};
pub use cose::{
    cose_sign1, CoseSign1, GovHeaders, COSE_ALG_ES384, COSE_SIGN1_BYTES_MAX, COSE_SIGN1_TAG,
    HEADER_MSG_CREATED_AT, HEADER_MSG_PROPOSAL_ID, HEADER_MSG_TYPE,
};
pub use error::CryptoError;
pub use hash::{hmac_sha256, sha256, sha256_parts, Digest};
pub use keys::{SigningKey, VerifyingKey, SIGNATURE_RAW_BYTES};
pub use precomputed::PrecomputedVerifyingKey;
pub use recovery::{
    combine, deal, open_share, partial_decrypt, verify_partial, Deal, DealtShare, KeyShare,
    PartialDecryption, RecoveryCiphertext, RecoveryKeyPair, RecoveryPublicKey,
    ENCRYPTED_SHARE_BYTES, PARTIAL_DECRYPTION_BYTES, RECOVERY_MEMBERS_MAX, RECOVERY_POINT_BYTES,
};
pub use wrap::{unwrap_from_node, wrap_for_node};

/// Re-exported so that callers can pass an RNG without naming the crate themselves.
pub use rand_core::{CryptoRng, RngCore};
