//! ECDSA P-384 with precomputed multiples: verification for a key that verifies many
//! signatures (a primary's node key, checked by every replica at every signature), and
//! signing, whose `k·G` uses the generator's table.
//!
//! Verifying computes `u1·G + u2·Q`. The generic path doubles its way through both 384-bit
//! scalars (about 384 doublings and 190 additions). Here both `G` and `Q` have a table of
//! `d·2^(w·i)·P` for every window `i` and digit `d`, so the sum is one table addition per
//! nonzero window of each scalar and no doubling at all. Everything involved is public (the
//! key, the digest, the signature), so variable time is fine there.
//!
//! Signing computes `k·G` for the secret nonce `k`, so that path reads every entry of each
//! window's row and keeps the one it needs with a constant-time select, and adds it even when
//! the digit is zero (the identity): the memory it touches and the work it does do not depend
//! on `k`. That is 77 additions against the generic path's 384 doublings and 96 additions.

use std::sync::OnceLock;

use p384::ecdsa::Signature;
use p384::elliptic_curve::group::Group;
use p384::elliptic_curve::ops::{Invert, Reduce};
use p384::elliptic_curve::point::AffineCoordinates;
use p384::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq};
use p384::elliptic_curve::{Curve, FieldBytesEncoding, PrimeField};
use p384::{FieldBytes, NistP384, NonZeroScalar, ProjectivePoint, Scalar, U384};

use crate::{CryptoError, VerifyingKey};

/// Scalar bits of P-384.
const SCALAR_BITS: usize = 384;
/// Bits per window of the signing table. Its constant-time lookups read a window's whole row,
/// so rows stay short: 31 points, 77 windows.
const SIGNING_WINDOW_BITS: usize = 5;
/// Bits per window of the generator's verification table, whose lookups read one point: 48
/// windows (one addition each) of 255 points, 1.8 MB, built once per process.
const GENERATOR_WINDOW_BITS: usize = 8;
/// Bits per window of a key's table: 64 windows of 63 points, 0.6 MB, built in about as long
/// as 20 verifications (a replica builds one per primary it follows; the simulator, many).
const KEY_WINDOW_BITS: usize = 6;

/// `d·2^(W·i)·P` for every window `i` of `W` bits and digit `d` in `1..=DIGITS`. Projective:
/// p384 offers no batch inversion to make them affine cheaply, and mixed addition would save
/// only one multiplication in twelve.
struct PointTable<const W: usize> {
    multiples: Vec<ProjectivePoint>,
}

impl<const W: usize> PointTable<W> {
    /// Windows covering a scalar (the last one may be partly beyond its top bit).
    const WINDOWS: usize = SCALAR_BITS.div_ceil(W);
    /// Nonzero digits per window.
    const DIGITS: usize = (1 << W) - 1;

    fn new(point: ProjectivePoint) -> PointTable<W> {
        let mut multiples = Vec::with_capacity(Self::WINDOWS * Self::DIGITS);
        let mut base = point;
        for _ in 0..Self::WINDOWS {
            let mut multiple = base;
            for _ in 0..Self::DIGITS {
                multiples.push(multiple);
                multiple += base;
            }
            // `multiple` is now 2^W·base: the next window's base.
            base = multiple;
        }
        PointTable { multiples }
    }

    /// Adds `scalar·P` to `sum`.
    fn add_multiple(&self, sum: &mut ProjectivePoint, scalar: &Scalar) {
        let bytes: FieldBytes = scalar.to_bytes();
        for window in 0..Self::WINDOWS {
            let digit = usize::from(window_digit(&bytes, window, W));
            if digit != 0 {
                *sum += &self.multiples[window * Self::DIGITS + digit - 1];
            }
        }
    }
}

impl PointTable<SIGNING_WINDOW_BITS> {
    /// `scalar·P`, in time and memory accesses independent of `scalar`: every window reads
    /// all of its row and adds the selected entry, the identity for a zero digit.
    fn multiple_constant_time(&self, scalar: &Scalar) -> ProjectivePoint {
        let bytes: FieldBytes = scalar.to_bytes();
        let mut sum = ProjectivePoint::IDENTITY;
        for (window, row) in self.multiples.chunks_exact(Self::DIGITS).enumerate() {
            let digit = window_digit(&bytes, window, SIGNING_WINDOW_BITS);
            let mut chosen = ProjectivePoint::IDENTITY;
            for (position, entry) in row.iter().enumerate() {
                // `position + 1` is at most DIGITS, which fits a byte.
                chosen.conditional_assign(entry, digit.ct_eq(&(position as u8 + 1)));
            }
            sum += &chosen;
        }
        sum
    }
}

/// Digit `window` of `bits` bits of the big-endian scalar `bytes` (bit `b`, 0 the least
/// significant, is bit `b % 8` of byte `47 - b / 8`; bits past the top are zero). Branches
/// only on the positions, which are public, never on the bits, so signing may use it on a
/// secret scalar.
fn window_digit(bytes: &FieldBytes, window: usize, bits: usize) -> u8 {
    debug_assert!(bits <= 8);
    let mut digit = 0u8;
    for offset in 0..bits {
        let index = window * bits + offset;
        if index < SCALAR_BITS {
            digit |= ((bytes[bytes.len() - 1 - index / 8] >> (index % 8)) & 1) << offset;
        }
    }
    digit
}

/// ECDSA over `prehash` with the RFC 6979 nonce (HMAC-SHA-384), exactly as
/// `p384::ecdsa::SigningKey::sign_prehash` computes it, with `k·G` from the generator's table.
///
/// # Errors
/// [`CryptoError::BadSignature`] for a prehash shorter than half the field (as the generic
/// signer), or in the negligible case of a zero `r` or `s`.
pub(crate) fn sign_prehash(
    secret: &NonZeroScalar,
    prehash: &[u8],
) -> Result<Signature, CryptoError> {
    let z_bytes =
        ecdsa::hazmat::bits2field::<NistP384>(prehash).map_err(|_| CryptoError::BadSignature)?;
    let order: FieldBytes = NistP384::ORDER.encode_field_bytes();
    let k_bytes = rfc6979::generate_k::<sha2::Sha384, _>(&secret.to_repr(), &order, &z_bytes, &[]);
    // RFC 6979 draws k in [1, n-1], so the conversion and the inversion succeed.
    let k = Option::<Scalar>::from(Scalar::from_repr(k_bytes)).ok_or(CryptoError::BadSignature)?;
    let k_inverse = Option::<Scalar>::from(k.invert()).ok_or(CryptoError::BadSignature)?;
    let z = <Scalar as Reduce<U384>>::reduce_bytes(&z_bytes);
    let big_r = signing_table().multiple_constant_time(&k).to_affine();
    let r = <Scalar as Reduce<U384>>::reduce_bytes(&big_r.x());
    let s = k_inverse * (z + r * secret.as_ref());
    Signature::from_scalars(r, s).map_err(|_| CryptoError::BadSignature)
}

/// The generator's table, built once per process (about 2,400 additions).
fn signing_table() -> &'static PointTable<SIGNING_WINDOW_BITS> {
    static TABLE: OnceLock<PointTable<SIGNING_WINDOW_BITS>> = OnceLock::new();
    TABLE.get_or_init(|| PointTable::new(ProjectivePoint::generator()))
}

/// The generator's table for verification, built once per process.
fn verifying_table() -> &'static PointTable<GENERATOR_WINDOW_BITS> {
    static TABLE: OnceLock<PointTable<GENERATOR_WINDOW_BITS>> = OnceLock::new();
    TABLE.get_or_init(|| PointTable::new(ProjectivePoint::generator()))
}

/// A P-384 public key with its precomputed multiples: verifies the same signatures as
/// [`VerifyingKey`], about five times faster. Building it costs about as much as 20
/// verifications and 0.6 MB, so keep it for keys that verify often.
pub struct PrecomputedVerifyingKey {
    key: VerifyingKey,
    table: PointTable<KEY_WINDOW_BITS>,
}

impl std::fmt::Debug for PrecomputedVerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrecomputedVerifyingKey({})", self.key.id_hex())
    }
}

impl PrecomputedVerifyingKey {
    /// Precomputes the multiples of `key`.
    pub fn new(key: &VerifyingKey) -> PrecomputedVerifyingKey {
        let point = ProjectivePoint::from(*key.inner().as_affine());
        PrecomputedVerifyingKey {
            key: *key,
            table: PointTable::new(point),
        }
    }

    /// The key itself.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Verifies a DER ECDSA signature over `prehash`, exactly as
    /// [`VerifyingKey::verify_prehash`] does.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if malformed or not valid.
    pub fn verify_prehash(&self, prehash: &[u8], signature_der: &[u8]) -> Result<(), CryptoError> {
        let signature =
            Signature::from_der(signature_der).map_err(|_| CryptoError::BadSignature)?;
        let z = ecdsa::hazmat::bits2field::<p384::NistP384>(prehash)
            .map_err(|_| CryptoError::BadSignature)?;
        let z = <Scalar as Reduce<U384>>::reduce_bytes(&z);
        let (r, s) = signature.split_scalars();
        let s_inverse = *s.invert_vartime();
        let mut sum = ProjectivePoint::IDENTITY;
        verifying_table().add_multiple(&mut sum, &(z * s_inverse));
        self.table.add_multiple(&mut sum, &(*r * s_inverse));
        // The identity's affine x is zero, which never equals the nonzero r.
        let x = sum.to_affine().x();
        if *r == <Scalar as Reduce<U384>>::reduce_bytes(&x) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Verifies a DER ECDSA signature over a SHA-256 digest used as the prehash, exactly as
    /// [`VerifyingKey::verify_digest`] does.
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if malformed or not valid.
    pub fn verify_digest(
        &self,
        digest: &crate::Digest,
        signature_der: &[u8],
    ) -> Result<(), CryptoError> {
        self.verify_prehash(digest, signature_der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{sha256, SigningKey};
    use p384::ecdsa::signature::hazmat::PrehashSigner;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn tables_hold_the_multiples_they_claim() {
        let point = ProjectivePoint::generator() * Scalar::from(12_345u64);
        let table = PointTable::<SIGNING_WINDOW_BITS>::new(point);
        let (windows, digits) = (
            PointTable::<SIGNING_WINDOW_BITS>::WINDOWS,
            PointTable::<SIGNING_WINDOW_BITS>::DIGITS,
        );
        for (window, digit) in [(0, 1), (0, digits), (1, 3), (windows - 1, digits)] {
            let mut scalar = Scalar::from(digit as u64);
            for _ in 0..window * SIGNING_WINDOW_BITS {
                scalar = scalar.double();
            }
            let expected = (point * scalar).to_affine();
            assert_eq!(
                table.multiples[window * digits + digit - 1].to_affine(),
                expected
            );
        }
        // Sums of table entries give the scalar multiple, for scalars with every bit pattern.
        for scalar in [
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(u64::MAX),
            Scalar::ZERO,
        ] {
            let mut sum = ProjectivePoint::IDENTITY;
            table.add_multiple(&mut sum, &scalar);
            assert_eq!(sum.to_affine(), (point * scalar).to_affine());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Both verifiers agree on good signatures, on signatures over another digest, on
        /// signatures by another key, and on signatures with a byte changed.
        #[test]
        fn agrees_with_the_generic_verifier(seed in any::<u64>(), message in any::<Vec<u8>>(), flip in any::<(usize, u8)>()) {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let key = SigningKey::generate(&mut rng);
            let other = SigningKey::generate(&mut rng);
            let precomputed = PrecomputedVerifyingKey::new(&key.verifying_key());
            let digest = sha256(&message);
            let signature = key.sign_digest(&digest).unwrap();
            prop_assert!(precomputed.verify_digest(&digest, &signature).is_ok());
            let mut wrong_digest = digest;
            wrong_digest[flip.0 % 32] ^= flip.1 | 1;
            prop_assert!(precomputed.verify_digest(&wrong_digest, &signature).is_err());
            let by_other = other.sign_digest(&digest).unwrap();
            prop_assert!(precomputed.verify_digest(&digest, &by_other).is_err());
            let mut changed = signature.clone();
            let at = flip.0 % changed.len();
            changed[at] ^= flip.1 | 1;
            prop_assert_eq!(
                precomputed.verify_digest(&digest, &changed).is_ok(),
                key.verifying_key().verify_digest(&digest, &changed).is_ok()
            );
            // A 48-byte prehash (no padding) too.
            let long = [digest, sha256(&digest)].concat();
            let signature = key.inner().sign_prehash(&long[..48]).map(|s: p384::ecdsa::Signature| s.to_der().as_bytes().to_vec()).unwrap();
            prop_assert!(precomputed.verify_prehash(&long[..48], &signature).is_ok());
            prop_assert!(precomputed.verify_prehash(&long[1..49], &signature).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// The table signer gives the same bytes as p384's own (both are RFC 6979), for
        /// messages, SHA-256 prehashes and 48-byte prehashes.
        #[test]
        fn signs_exactly_as_the_generic_signer(seed in any::<u64>(), message in any::<Vec<u8>>()) {
            use p384::ecdsa::signature::Signer;
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            let key = SigningKey::generate(&mut rng);
            let generic: Signature = key.inner().sign(&message);
            prop_assert_eq!(key.sign_raw(&message).to_vec(), generic.to_bytes().to_vec());
            prop_assert_eq!(key.sign(&message), generic.to_der().as_bytes().to_vec());
            let digest = sha256(&message);
            let generic: Signature = key.inner().sign_prehash(&digest).unwrap();
            prop_assert_eq!(key.sign_digest(&digest).unwrap(), generic.to_der().as_bytes().to_vec());
            let long = [digest, sha256(&digest)].concat();
            let generic: Signature = key.inner().sign_prehash(&long[..48]).unwrap();
            prop_assert_eq!(sign_prehash(key.inner().as_nonzero_scalar(), &long[..48]).unwrap(), generic);
        }
    }

    #[test]
    fn constant_time_multiples_match_the_generic_product() {
        let table = signing_table();
        for scalar in [
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(u64::MAX),
            Scalar::from(31u64),
            Scalar::from(32u64),
            Scalar::ZERO,
        ] {
            assert_eq!(
                table.multiple_constant_time(&scalar).to_affine(),
                (ProjectivePoint::generator() * scalar).to_affine()
            );
        }
    }

    #[test]
    fn a_too_short_prehash_is_refused_by_the_signer() {
        let key = SigningKey::from_seed(&[5; 32]).unwrap();
        assert!(sign_prehash(key.inner().as_nonzero_scalar(), &[1; 16]).is_err());
        assert!(key
            .inner()
            .sign_prehash(&[1; 16])
            .map(|s: Signature| s)
            .is_err());
    }

    #[test]
    fn malformed_input_is_refused() {
        let key = SigningKey::from_seed(&[3; 32]).unwrap();
        let precomputed = PrecomputedVerifyingKey::new(&key.verifying_key());
        let digest = sha256(b"root");
        assert!(precomputed.verify_digest(&digest, b"").is_err());
        assert!(precomputed.verify_digest(&digest, &[0x30, 0x00]).is_err());
        // A prehash shorter than half the field is refused, as by the generic verifier.
        let signature = key.sign_digest(&digest).unwrap();
        assert!(precomputed
            .verify_prehash(&digest[..16], &signature)
            .is_err());
        assert!(key
            .verifying_key()
            .verify_prehash(&digest[..16], &signature)
            .is_err());
    }
}
