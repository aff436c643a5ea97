use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::CryptoError;

/// Bytes of an AES-GCM nonce.
pub const AEAD_NONCE_BYTES: usize = 12;
/// Bytes of an AES-GCM authentication tag, appended to every ciphertext.
pub const AEAD_TAG_BYTES: usize = 16;

/// A 256-bit ledger secret: the AES-256-GCM key for private ledger domains.
#[derive(Clone)]
pub struct LedgerSecret {
    bytes: [u8; 32],
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for LedgerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("LedgerSecret(..)")
    }
}

impl LedgerSecret {
    /// A ledger secret from 32 secret bytes (drawn by the caller from a CSPRNG).
    pub fn from_bytes(bytes: [u8; 32]) -> LedgerSecret {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(bytes));
        LedgerSecret { bytes, cipher }
    }

    /// A fresh ledger secret drawn from `rng`.
    pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> LedgerSecret {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        LedgerSecret::from_bytes(bytes)
    }

    /// The raw secret, for sealing and for wrapping to other nodes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Encrypts `plaintext`, authenticating `aad` too; returns ciphertext ‖ tag.
    ///
    /// The caller must never reuse a nonce under one secret: Charter derives it from the TxID.
    pub fn encrypt(&self, nonce: &[u8; AEAD_NONCE_BYTES], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let payload = Payload {
            msg: plaintext,
            aad,
        };
        // AES-GCM encryption fails only for messages over 64 GiB, far above every limit here.
        self.cipher
            .encrypt(&Nonce::from(*nonce), payload)
            .expect("plaintext is below the AES-GCM size limit")
    }

    /// Decrypts ciphertext ‖ tag, checking it and `aad`.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] if anything was altered or the secret is wrong.
    pub fn decrypt(
        &self,
        nonce: &[u8; AEAD_NONCE_BYTES],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let payload = Payload {
            msg: ciphertext,
            aad,
        };
        self.cipher
            .decrypt(&Nonce::from(*nonce), payload)
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let secret = LedgerSecret::from_bytes([3; 32]);
        let nonce = [1; AEAD_NONCE_BYTES];
        let sealed = secret.encrypt(&nonce, b"header", b"private value");
        assert_eq!(sealed.len(), b"private value".len() + AEAD_TAG_BYTES);
        assert_eq!(
            secret.decrypt(&nonce, b"header", &sealed).unwrap(),
            b"private value"
        );
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 1;
            assert!(secret.decrypt(&nonce, b"header", &altered).is_err());
        }
        assert!(secret.decrypt(&nonce, b"headex", &sealed).is_err());
        assert!(secret
            .decrypt(&[2; AEAD_NONCE_BYTES], b"header", &sealed)
            .is_err());
        let other = LedgerSecret::from_bytes([4; 32]);
        assert!(other.decrypt(&nonce, b"header", &sealed).is_err());
    }
}
