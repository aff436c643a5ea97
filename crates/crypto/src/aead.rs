use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
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

    /// Encrypts `buffer` in place, authenticating `aad` too; returns the tag, which goes after
    /// the ciphertext (the same bytes as [`LedgerSecret::encrypt`] without the copies).
    ///
    /// The caller must never reuse a nonce under one secret.
    pub fn encrypt_in_place(
        &self,
        nonce: &[u8; AEAD_NONCE_BYTES],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> [u8; AEAD_TAG_BYTES] {
        // AES-GCM encryption fails only for messages over 64 GiB, far above every limit here.
        let tag = self
            .cipher
            .encrypt_in_place_detached(&Nonce::from(*nonce), aad, buffer)
            .expect("plaintext is below the AES-GCM size limit");
        tag.into()
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

/// Bytes that [`wrap_key`] adds to a plaintext: the nonce in front and the tag behind.
pub const WRAP_OVERHEAD_BYTES: usize = AEAD_NONCE_BYTES + AEAD_TAG_BYTES;

/// Encrypts `plaintext` (typically a ledger secret) under a 256-bit wrapping `key` with
/// AES-256-GCM, authenticating `aad` too; returns nonce ‖ ciphertext ‖ tag.
///
/// The 96-bit nonce is drawn from `rng`, so one key may wrap many plaintexts: a random nonce
/// repeats with probability about n²/2⁹⁷ after n wraps under one key.
pub fn wrap_key(
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Vec<u8> {
    let mut nonce = [0u8; AEAD_NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let payload = Payload {
        msg: plaintext,
        aad,
    };
    // AES-GCM encryption fails only for messages over 64 GiB, far above every limit here.
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), payload)
        .expect("plaintext is below the AES-GCM size limit");
    let mut wrapped = Vec::with_capacity(AEAD_NONCE_BYTES + sealed.len());
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed);
    assert_eq!(wrapped.len(), plaintext.len() + WRAP_OVERHEAD_BYTES);
    wrapped
}

/// Decrypts the output of [`wrap_key`], checking it and `aad`.
///
/// # Errors
/// [`CryptoError::Decrypt`] if `wrapped` is shorter than [`WRAP_OVERHEAD_BYTES`], anything
/// was altered, or the key is wrong.
pub fn unwrap_key(key: &[u8; 32], wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if wrapped.len() < WRAP_OVERHEAD_BYTES {
        return Err(CryptoError::Decrypt);
    }
    let (nonce_bytes, sealed) = wrapped.split_at(AEAD_NONCE_BYTES);
    let mut nonce = [0u8; AEAD_NONCE_BYTES];
    nonce.copy_from_slice(nonce_bytes);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let payload = Payload { msg: sealed, aad };
    let plaintext = cipher
        .decrypt(&Nonce::from(nonce), payload)
        .map_err(|_| CryptoError::Decrypt)?;
    assert_eq!(plaintext.len() + WRAP_OVERHEAD_BYTES, wrapped.len());
    Ok(plaintext)
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

    #[test]
    fn in_place_encryption_gives_the_same_bytes() {
        let secret = LedgerSecret::from_bytes([3; 32]);
        let nonce = [1; AEAD_NONCE_BYTES];
        let mut buffer = b"private value".to_vec();
        let tag = secret.encrypt_in_place(&nonce, b"header", &mut buffer);
        buffer.extend_from_slice(&tag);
        assert_eq!(buffer, secret.encrypt(&nonce, b"header", b"private value"));
        assert_eq!(
            secret.decrypt(&nonce, b"header", &buffer).unwrap(),
            b"private value"
        );
    }

    #[test]
    fn wrap_round_trip_and_tamper_detection() {
        use rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let key = [9; 32];
        let wrapped = wrap_key(&key, b"ledger secret", b"seqno 12", &mut rng);
        assert_eq!(wrapped.len(), b"ledger secret".len() + WRAP_OVERHEAD_BYTES);
        assert_eq!(
            unwrap_key(&key, &wrapped, b"seqno 12").unwrap(),
            b"ledger secret"
        );
        // The nonce comes from the RNG, so wrapping twice gives different bytes.
        let again = wrap_key(&key, b"ledger secret", b"seqno 12", &mut rng);
        assert_ne!(again, wrapped);
        assert_eq!(
            unwrap_key(&key, &again, b"seqno 12").unwrap(),
            b"ledger secret"
        );
        for index in 0..wrapped.len() {
            let mut altered = wrapped.clone();
            altered[index] ^= 0x10;
            assert!(matches!(
                unwrap_key(&key, &altered, b"seqno 12"),
                Err(CryptoError::Decrypt)
            ));
        }
        for length in 0..wrapped.len() {
            assert!(unwrap_key(&key, &wrapped[..length], b"seqno 12").is_err());
        }
        assert!(unwrap_key(&key, &wrapped, b"seqno 13").is_err());
        assert!(unwrap_key(&[8; 32], &wrapped, b"seqno 12").is_err());
        let empty = wrap_key(&key, b"", b"", &mut rng);
        assert_eq!(unwrap_key(&key, &empty, b"").unwrap(), b"");
    }
}
