use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::signature::Verifier;
use p384::ecdsa::Signature;
use p384::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sha2::Digest as _;

use crate::{sha256, CryptoError, Digest};

/// Length of an ECDSA P-384 signature in the fixed-size `r ‖ s` form that COSE uses
/// (RFC 9053 §2.1): two 48-byte big-endian integers.
pub const SIGNATURE_RAW_BYTES: usize = 96;

/// An ECDSA P-384 private key. Signatures are deterministic (RFC 6979), so signing needs no RNG.
#[derive(Clone)]
pub struct SigningKey {
    inner: p384::ecdsa::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifying_key().id_hex())
    }
}

impl SigningKey {
    /// A fresh key drawn from `rng`.
    pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> SigningKey {
        SigningKey {
            inner: p384::ecdsa::SigningKey::random(rng),
        }
    }

    /// A key whose scalar is derived from `seed` (for tests and simulations only).
    ///
    /// # Errors
    /// [`CryptoError::Key`] in the negligible case that the derived scalar is invalid.
    pub fn from_seed(seed: &[u8; 32]) -> Result<SigningKey, CryptoError> {
        let mut scalar = [0u8; 48];
        scalar[..32].copy_from_slice(&sha256(seed));
        scalar[32..].copy_from_slice(&sha256(&sha256(seed))[..16]);
        scalar[0] &= 0x7f;
        let inner = p384::ecdsa::SigningKey::from_slice(&scalar)
            .map_err(|error| CryptoError::Key(error.to_string()))?;
        Ok(SigningKey { inner })
    }

    /// Parses a PEM private key: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    ///
    /// # Errors
    /// [`CryptoError::Key`] if it is not a P-384 private key.
    pub fn from_pem(pem: &str) -> Result<SigningKey, CryptoError> {
        let inner = match p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            Ok(key) => key,
            Err(pkcs8_error) => {
                let secret = p384::SecretKey::from_sec1_pem(pem).map_err(|_| {
                    CryptoError::Key(format!("not a P-384 private key: {pkcs8_error}"))
                })?;
                p384::ecdsa::SigningKey::from(secret)
            }
        };
        Ok(SigningKey { inner })
    }

    /// Parses a PKCS#8 DER private key.
    ///
    /// # Errors
    /// [`CryptoError::Key`] if it is not a P-384 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, CryptoError> {
        let inner = p384::ecdsa::SigningKey::from_pkcs8_der(der)
            .map_err(|error| CryptoError::Key(error.to_string()))?;
        Ok(SigningKey { inner })
    }

    /// The key as a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> String {
        // Encoding a valid in-memory key cannot fail.
        self.inner
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a valid key encodes")
            .to_string()
    }

    /// The key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.inner
            .to_pkcs8_der()
            .expect("a valid key encodes")
            .as_bytes()
            .to_vec()
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            inner: *self.inner.verifying_key(),
        }
    }

    /// ECDSA with SHA-384 over `message`; DER-encoded signature.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.sign_message(message).to_der().as_bytes().to_vec()
    }

    /// ECDSA with SHA-384 over `message`, through the generator's table.
    fn sign_message(&self, message: &[u8]) -> Signature {
        let digest = sha2::Sha384::digest(message);
        // A 48-byte prehash is never too short, and a zero r or s has negligible probability.
        crate::precomputed::sign_prehash(self.inner.as_nonzero_scalar(), &digest)
            .expect("ECDSA over a SHA-384 digest succeeds")
    }

    /// ECDSA with SHA-384 over `message`; fixed-size `r ‖ s` signature, as COSE (ES384) wants.
    pub fn sign_raw(&self, message: &[u8]) -> [u8; SIGNATURE_RAW_BYTES] {
        let signature = self.sign_message(message);
        let mut raw = [0u8; SIGNATURE_RAW_BYTES];
        // A P-384 signature is always two 48-byte scalars, so the lengths match.
        raw.copy_from_slice(&signature.to_bytes());
        raw
    }

    /// ECDSA over a SHA-256 digest used as the prehash (what CCF and its receipt verifiers do
    /// for Merkle roots); DER-encoded signature.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] never in practice: a 32-byte prehash is accepted for P-384.
    pub fn sign_digest(&self, digest: &Digest) -> Result<Vec<u8>, CryptoError> {
        let signature = crate::precomputed::sign_prehash(self.inner.as_nonzero_scalar(), digest)?;
        Ok(signature.to_der().as_bytes().to_vec())
    }

    /// The raw scalar, for the certificate builder's signer.
    pub(crate) fn inner(&self) -> &p384::ecdsa::SigningKey {
        &self.inner
    }
}

/// An ECDSA P-384 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: p384::ecdsa::VerifyingKey,
}

impl VerifyingKey {
    pub(crate) fn inner(&self) -> &p384::ecdsa::VerifyingKey {
        &self.inner
    }

    /// Parses a DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    /// [`CryptoError::Key`] if it is not a P-384 public key.
    pub fn from_spki_der(der: &[u8]) -> Result<VerifyingKey, CryptoError> {
        let inner = p384::ecdsa::VerifyingKey::from_public_key_der(der)
            .map_err(|error| CryptoError::Key(error.to_string()))?;
        Ok(VerifyingKey { inner })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        self.inner
            .to_public_key_der()
            .expect("a valid key encodes")
            .as_bytes()
            .to_vec()
    }

    /// The uncompressed SEC1 point (`04 ‖ x ‖ y`).
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        self.inner.to_encoded_point(false).as_bytes().to_vec()
    }

    /// Hex SHA-256 of the DER SubjectPublicKeyInfo: CCF's node ID.
    pub fn id_hex(&self) -> String {
        hex::encode(sha256(&self.to_spki_der()))
    }

    /// Verifies a DER ECDSA-SHA-384 signature over `message`.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if malformed or not valid.
    pub fn verify(&self, message: &[u8], signature_der: &[u8]) -> Result<(), CryptoError> {
        let signature =
            Signature::from_der(signature_der).map_err(|_| CryptoError::BadSignature)?;
        self.inner
            .verify(message, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies a fixed-size `r ‖ s` ECDSA-SHA-384 signature over `message` (COSE ES384).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if it is not [`SIGNATURE_RAW_BYTES`] long, has a zero
    /// scalar, or is not valid.
    pub fn verify_raw(&self, message: &[u8], signature_raw: &[u8]) -> Result<(), CryptoError> {
        if signature_raw.len() != SIGNATURE_RAW_BYTES {
            return Err(CryptoError::BadSignature);
        }
        let signature =
            Signature::from_slice(signature_raw).map_err(|_| CryptoError::BadSignature)?;
        self.inner
            .verify(message, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies a DER ECDSA signature over `prehash` (a digest of any supported length).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if malformed or not valid.
    pub fn verify_prehash(&self, prehash: &[u8], signature_der: &[u8]) -> Result<(), CryptoError> {
        let signature =
            Signature::from_der(signature_der).map_err(|_| CryptoError::BadSignature)?;
        self.inner
            .verify_prehash(prehash, &signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies a DER ECDSA signature over a SHA-256 digest used as the prehash.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if malformed or not valid.
    pub fn verify_digest(&self, digest: &Digest, signature_der: &[u8]) -> Result<(), CryptoError> {
        self.verify_prehash(digest, signature_der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn sign_and_verify_both_ways() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let key = SigningKey::generate(&mut rng);
        let public = key.verifying_key();
        let signature = key.sign(b"message");
        public.verify(b"message", &signature).unwrap();
        assert!(public.verify(b"messagf", &signature).is_err());
        let digest = sha256(b"root");
        let signature = key.sign_digest(&digest).unwrap();
        public.verify_digest(&digest, &signature).unwrap();
        let mut other = digest;
        other[0] ^= 1;
        assert!(public.verify_digest(&other, &signature).is_err());
        assert!(public.verify_digest(&digest, &signature[1..]).is_err());
        // Deterministic signatures.
        assert_eq!(key.sign_digest(&digest).unwrap(), signature);
    }

    #[test]
    fn raw_signatures_verify_and_reject_tampering() {
        let key = SigningKey::from_seed(&[3; 32]).unwrap();
        let public = key.verifying_key();
        let signature = key.sign_raw(b"message");
        public.verify_raw(b"message", &signature).unwrap();
        assert!(public.verify_raw(b"messagf", &signature).is_err());
        assert!(public.verify_raw(b"message", &signature[1..]).is_err());
        assert!(public
            .verify_raw(b"message", &[0; SIGNATURE_RAW_BYTES])
            .is_err());
        let mut flipped = signature;
        flipped[95] ^= 1;
        assert!(public.verify_raw(b"message", &flipped).is_err());
        // The raw form is the DER form's two integers, so the DER verifier agrees.
        let der = Signature::from_slice(&signature).unwrap().to_der();
        public.verify(b"message", der.as_bytes()).unwrap();
    }

    #[test]
    fn pem_round_trip() {
        let key = SigningKey::from_seed(&[9; 32]).unwrap();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
        let der = key.verifying_key().to_spki_der();
        assert_eq!(
            VerifyingKey::from_spki_der(&der).unwrap(),
            key.verifying_key()
        );
        assert!(SigningKey::from_pem("garbage").is_err());
        assert!(VerifyingKey::from_spki_der(b"garbage").is_err());
    }
}
