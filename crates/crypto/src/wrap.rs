//! Wrapping a secret for one node: ECIES over the node's P-384 key.
//!
//! A fresh ephemeral key agrees a shared point with the recipient's public key; HKDF-SHA256
//! over it (bound to both public keys and a label) gives a single-use AES-256-GCM key, so a
//! fixed nonce is safe. The node's signing key doubles as its key-agreement key: the label
//! separates the two uses, and the agreed secret never signs anything.
//!
//! ```
//! use charter_crypto::{unwrap_from_node, wrap_for_node, SigningKey};
//! let node = SigningKey::from_seed(&[5; 32]).unwrap();
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! # use rand_chacha::rand_core::SeedableRng;
//! let wrapped = wrap_for_node(&node.verifying_key(), b"ledger secret", b"v1", &mut rng);
//! assert_eq!(unwrap_from_node(&node, &wrapped, b"v1").unwrap(), b"ledger secret");
//! assert!(unwrap_from_node(&node, &wrapped, b"v2").is_err());
//! ```

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use p384::elliptic_curve::sec1::ToEncodedPoint;

use crate::{CryptoError, SigningKey, VerifyingKey};

/// Bytes of the compressed ephemeral public key that starts a wrapped secret.
const EPHEMERAL_BYTES: usize = 49;
const LABEL: &[u8] = b"charter node key wrap v1";

fn wrapping_cipher(shared: &[u8], ephemeral: &[u8], recipient: &[u8]) -> Aes256Gcm {
    let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(LABEL), shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit.
    hkdf.expand_multi_info(&[ephemeral, recipient], &mut key)
        .expect("32 bytes is a valid HKDF output length");
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(key))
}

/// Encrypts `secret` so that only the holder of `recipient`'s private key can read it;
/// `aad` (for example the secret's version) is authenticated too.
pub fn wrap_for_node(
    recipient: &VerifyingKey,
    secret: &[u8],
    aad: &[u8],
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Vec<u8> {
    let ephemeral = p384::ecdh::EphemeralSecret::random(rng);
    let ephemeral_public = ephemeral.public_key().to_encoded_point(true);
    let recipient_point = recipient.inner().to_encoded_point(true);
    let recipient_key = p384::PublicKey::from(recipient.inner());
    let shared = ephemeral.diffie_hellman(&recipient_key);
    let cipher = wrapping_cipher(
        shared.raw_secret_bytes(),
        ephemeral_public.as_bytes(),
        recipient_point.as_bytes(),
    );
    let sealed = cipher
        .encrypt(&Nonce::from([0u8; 12]), Payload { msg: secret, aad })
        .expect("a wrapped secret is far below the AES-GCM size limit");
    let mut out = ephemeral_public.as_bytes().to_vec();
    out.extend_from_slice(&sealed);
    out
}

/// Decrypts what [`wrap_for_node`] made for `key`'s public key.
///
/// # Errors
/// [`CryptoError::Key`] if the ephemeral key is malformed; [`CryptoError::Decrypt`] if the
/// secret was wrapped for another key, with other associated data, or altered.
pub fn unwrap_from_node(
    key: &SigningKey,
    wrapped: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if wrapped.len() < EPHEMERAL_BYTES {
        return Err(CryptoError::Key("wrapped secret is too short".to_owned()));
    }
    let (ephemeral_bytes, sealed) = wrapped.split_at(EPHEMERAL_BYTES);
    let ephemeral = p384::PublicKey::from_sec1_bytes(ephemeral_bytes)
        .map_err(|_| CryptoError::Key("wrapped secret has a malformed ephemeral key".to_owned()))?;
    let scalar = key.inner().as_nonzero_scalar();
    let shared = p384::ecdh::diffie_hellman(scalar, ephemeral.as_affine());
    let own_point = key.verifying_key().inner().to_encoded_point(true);
    let cipher = wrapping_cipher(
        shared.raw_secret_bytes(),
        ephemeral_bytes,
        own_point.as_bytes(),
    );
    cipher
        .decrypt(&Nonce::from([0u8; 12]), Payload { msg: sealed, aad })
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn only_the_recipient_unwraps_and_tampering_is_caught() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
        let alice = SigningKey::from_seed(&[1; 32]).unwrap();
        let bob = SigningKey::from_seed(&[2; 32]).unwrap();
        let wrapped = wrap_for_node(&alice.verifying_key(), &[7; 32], b"aad", &mut rng);
        assert_eq!(unwrap_from_node(&alice, &wrapped, b"aad").unwrap(), [7; 32]);
        assert!(matches!(
            unwrap_from_node(&bob, &wrapped, b"aad"),
            Err(CryptoError::Decrypt)
        ));
        for index in [0, 10, EPHEMERAL_BYTES, wrapped.len() - 1] {
            let mut altered = wrapped.clone();
            altered[index] ^= 1;
            assert!(
                unwrap_from_node(&alice, &altered, b"aad").is_err(),
                "byte {index}"
            );
        }
        assert!(unwrap_from_node(&alice, &wrapped[..20], b"aad").is_err());
        // Two wraps of one secret differ (fresh ephemeral keys).
        let again = wrap_for_node(&alice.verifying_key(), &[7; 32], b"aad", &mut rng);
        assert_ne!(wrapped, again);
    }
}
