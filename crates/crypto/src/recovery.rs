//! Threshold recovery of a wrapping key: threshold ElGamal on ristretto255 with Chaum-Pedersen
//! (DLEQ) proofs.
//!
//! A trusted node [`deal`]s a fresh wrapping key K for N recovery members so that any M of them
//! can restore it and fewer learn nothing about it. Each member holds a [`RecoveryKeyPair`];
//! the deal encrypts member i's Shamir share sᵢ of the group secret x to that member's public
//! key, and publishes the ElGamal ciphertext C = r·G together with each verification key
//! Yᵢ = sᵢ·G. K is SHA-256 of r·X, where X = x·G is never published. On recovery each member
//! opens its share ([`open_share`]) and submits only a [`PartialDecryption`] Dᵢ = sᵢ·C with a
//! proof that log_G(Yᵢ) = log_C(Dᵢ); the node checks every proof ([`verify_partial`]) and
//! interpolates r·X = Σ λᵢ·Dᵢ from M of them ([`combine`]). A share never leaves its member.
//!
//! ```
//! use charter_crypto::{
//!     combine, deal, open_share, partial_decrypt, verify_partial, RecoveryKeyPair,
//! };
//! # use rand_core::SeedableRng;
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! // Three members, any two of whom can recover.
//! let members: Vec<RecoveryKeyPair> =
//!     (0..3).map(|_| RecoveryKeyPair::generate(&mut rng)).collect();
//! let public_keys: Vec<_> = members.iter().map(|member| member.public_key()).collect();
//! let dealt = deal(2, &public_keys, &mut rng).unwrap();
//!
//! // Members 1 and 3 each open their share and send a partial decryption.
//! let mut partials = Vec::new();
//! for k in [0, 2] {
//!     let share = open_share(&members[k], &dealt.ciphertext, &dealt.shares[k]).unwrap();
//!     let partial = partial_decrypt(&share, &dealt.ciphertext, &mut rng);
//!     // The node checks each partial against that member's verification key.
//!     verify_partial(&dealt.shares[k].verification_key, &dealt.ciphertext, &partial).unwrap();
//!     partials.push(partial);
//! }
//! let recovered = combine(dealt.threshold, &dealt.ciphertext, &partials).unwrap();
//! assert_eq!(recovered, dealt.wrapping_key);
//! ```

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_COMPRESSED;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest as _, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::aead::{AEAD_NONCE_BYTES, AEAD_TAG_BYTES};
use crate::{sha256_parts, CryptoError};

/// The most recovery members one deal may have (and so the highest member index).
pub const RECOVERY_MEMBERS_MAX: u32 = 1024;
/// Bytes of an encoded ristretto255 point or scalar.
pub const RECOVERY_POINT_BYTES: usize = 32;
/// Bytes of [`DealtShare::encrypted_share`]: ephemeral point ‖ encrypted scalar ‖ tag.
pub const ENCRYPTED_SHARE_BYTES: usize = RECOVERY_POINT_BYTES + 32 + AEAD_TAG_BYTES;
/// Bytes of an encoded [`PartialDecryption`]: index (u32, big-endian) ‖ D ‖ c ‖ z.
pub const PARTIAL_DECRYPTION_BYTES: usize = 4 + 3 * RECOVERY_POINT_BYTES;

const _: () = assert!(ENCRYPTED_SHARE_BYTES == 80);
const _: () = assert!(PARTIAL_DECRYPTION_BYTES == 100);
const _: () = assert!(RECOVERY_MEMBERS_MAX >= 1);

/// PEM label of a member's recovery private key.
const PRIVATE_KEY_PEM_LABEL: &str = "CHARTER RECOVERY PRIVATE KEY";
/// PEM label of a member's recovery public key.
const PUBLIC_KEY_PEM_LABEL: &str = "CHARTER RECOVERY PUBLIC KEY";

/// Domain separator of the wrapping key derived from r·X.
const WRAPPING_KEY_DOMAIN: &[u8] = b"charter recovery wrapping key v1";
/// Domain separator of the key that encrypts one member's share.
const SHARE_KEY_DOMAIN: &[u8] = b"charter recovery share key v1";
/// Domain separator of the associated data of one member's encrypted share.
const SHARE_AAD_DOMAIN: &[u8] = b"charter recovery share aad v1";
/// Domain separator of the Chaum-Pedersen challenge.
const DLEQ_DOMAIN: &[u8] = b"charter recovery dleq v1";
/// The share encryption key is used exactly once (it hashes a fresh ephemeral point), so a
/// fixed nonce is safe.
const SHARE_NONCE: [u8; AEAD_NONCE_BYTES] = [0; AEAD_NONCE_BYTES];

/// How often a random nonzero scalar is redrawn before the RNG is declared broken. A working
/// RNG gives zero with probability about 2⁻²⁵², so a second draw is already never needed.
const SCALAR_DRAWS_MAX: u32 = 16;

/// A uniformly random scalar, rejecting zero.
///
/// # Panics
/// If `rng` gives zero [`SCALAR_DRAWS_MAX`] times in a row, which only a broken RNG does.
fn random_nonzero_scalar(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Scalar {
    let mut wide = Zeroizing::new([0u8; 64]);
    for _ in 0..SCALAR_DRAWS_MAX {
        rng.fill_bytes(wide.as_mut());
        let scalar = Scalar::from_bytes_mod_order_wide(&wide);
        if scalar != Scalar::ZERO {
            return scalar;
        }
    }
    panic!("the RNG gave a zero scalar {SCALAR_DRAWS_MAX} times: it is broken");
}

/// Decodes a canonical, non-identity ristretto255 point; `what` names it in the error.
fn decode_point(bytes: &[u8], what: &str) -> Result<RistrettoPoint, CryptoError> {
    let compressed = CompressedRistretto::from_slice(bytes).map_err(|_| {
        CryptoError::RecoveryEncoding(format!(
            "{what} has {} bytes, not {RECOVERY_POINT_BYTES}",
            bytes.len()
        ))
    })?;
    // Decompression refuses every non-canonical encoding, so each point has one encoding.
    let point = compressed.decompress().ok_or_else(|| {
        CryptoError::RecoveryEncoding(format!("{what} is not a canonical ristretto255 point"))
    })?;
    if point.is_identity() {
        return Err(CryptoError::RecoveryEncoding(format!(
            "{what} is the identity point"
        )));
    }
    Ok(point)
}

/// Decodes a canonical (fully reduced) scalar; `what` names it in the error.
fn decode_scalar(bytes: &[u8; 32], what: &str) -> Result<Scalar, CryptoError> {
    Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))
        .ok_or_else(|| CryptoError::RecoveryEncoding(format!("{what} is not a canonical scalar")))
}

/// Parses one PEM block with `label` whose contents are exactly 32 bytes.
fn decode_pem_32(text: &str, label: &str) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let block = pem::parse(text).map_err(|error| CryptoError::Pem(error.to_string()))?;
    if block.tag() != label {
        return Err(CryptoError::Pem(format!(
            "label is {:?}, expected {label:?}",
            block.tag()
        )));
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    if block.contents().len() != bytes.len() {
        return Err(CryptoError::Pem(format!(
            "{label} has {} bytes, not 32",
            block.contents().len()
        )));
    }
    bytes.copy_from_slice(block.contents());
    // The parsed block may hold a private key: wipe it before it is freed.
    let mut contents = block.into_contents();
    contents.zeroize();
    Ok(bytes)
}

/// Encodes 32 bytes as one PEM block with `label` and LF line endings.
fn encode_pem_32(bytes: &[u8; 32], label: &str) -> String {
    let block = pem::Pem::new(label, bytes.to_vec());
    let text = pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let mut contents = block.into_contents();
    contents.zeroize();
    text
}

/// A recovery member's encryption key pair: secret scalar p and public point P = p·G. Its
/// scalar is wiped on drop, and `Debug` shows only the public key.
#[derive(Clone)]
pub struct RecoveryKeyPair {
    secret: Scalar,
    public: RecoveryPublicKey,
}

impl Drop for RecoveryKeyPair {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for RecoveryKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "RecoveryKeyPair({:?})", self.public)
    }
}

impl RecoveryKeyPair {
    /// A fresh key pair drawn from `rng`.
    ///
    /// # Panics
    /// Only if `rng` is broken (see [`deal`]).
    pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Self {
        RecoveryKeyPair::from_scalar(random_nonzero_scalar(rng))
    }

    fn from_scalar(secret: Scalar) -> Self {
        assert!(secret != Scalar::ZERO);
        let point = RistrettoPoint::mul_base(&secret);
        RecoveryKeyPair {
            secret,
            public: RecoveryPublicKey::from_point(point),
        }
    }

    /// The public key, which the member registers so that shares can be dealt to it.
    pub fn public_key(&self) -> RecoveryPublicKey {
        self.public
    }

    /// The private key as a PEM document labelled `CHARTER RECOVERY PRIVATE KEY` holding the
    /// 32-byte little-endian scalar.
    pub fn to_pem(&self) -> String {
        let bytes = Zeroizing::new(self.secret.to_bytes());
        encode_pem_32(&bytes, PRIVATE_KEY_PEM_LABEL)
    }

    /// Parses the output of [`RecoveryKeyPair::to_pem`].
    ///
    /// # Errors
    /// [`CryptoError::Pem`] if the text is not one PEM block with the right label and 32
    /// bytes; [`CryptoError::Key`] if the scalar is not canonical or is zero.
    pub fn from_pem(text: &str) -> Result<Self, CryptoError> {
        let bytes = decode_pem_32(text, PRIVATE_KEY_PEM_LABEL)?;
        let secret = Option::<Scalar>::from(Scalar::from_canonical_bytes(*bytes))
            .ok_or_else(|| CryptoError::Key("recovery private key is not canonical".into()))?;
        if secret == Scalar::ZERO {
            return Err(CryptoError::Key("recovery private key is zero".into()));
        }
        Ok(RecoveryKeyPair::from_scalar(secret))
    }
}

/// A recovery member's public encryption key: a canonical, non-identity ristretto255 point.
#[derive(Clone, Copy)]
pub struct RecoveryPublicKey {
    point: RistrettoPoint,
    bytes: [u8; 32],
}

impl PartialEq for RecoveryPublicKey {
    fn eq(&self, other: &Self) -> bool {
        // Encodings are canonical, so equal points have equal bytes.
        self.bytes == other.bytes
    }
}

impl Eq for RecoveryPublicKey {}

impl std::hash::Hash for RecoveryPublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl std::fmt::Debug for RecoveryPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryPublicKey({})", hex::encode(self.bytes))
    }
}

impl RecoveryPublicKey {
    fn from_point(point: RistrettoPoint) -> Self {
        assert!(!point.is_identity());
        RecoveryPublicKey {
            point,
            bytes: point.compress().to_bytes(),
        }
    }

    /// The 32-byte compressed point.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// Parses a 32-byte compressed point.
    ///
    /// # Errors
    /// [`CryptoError::RecoveryEncoding`] if `bytes` is not 32 bytes long, not a canonical
    /// ristretto255 encoding, or the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(RecoveryPublicKey::from_point(decode_point(
            bytes,
            "recovery public key",
        )?))
    }

    /// The public key as a PEM document labelled `CHARTER RECOVERY PUBLIC KEY`.
    pub fn to_pem(&self) -> String {
        encode_pem_32(&self.bytes, PUBLIC_KEY_PEM_LABEL)
    }

    /// Parses the output of [`RecoveryPublicKey::to_pem`].
    ///
    /// # Errors
    /// [`CryptoError::Pem`] if the text is not one PEM block with the right label and 32
    /// bytes; [`CryptoError::RecoveryEncoding`] if the point is not canonical or is the
    /// identity.
    pub fn from_pem(text: &str) -> Result<Self, CryptoError> {
        let bytes = decode_pem_32(text, PUBLIC_KEY_PEM_LABEL)?;
        RecoveryPublicKey::from_bytes(bytes.as_ref())
    }
}

/// The ElGamal ciphertext C = r·G of a deal, which every partial decryption refers to.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCiphertext {
    point: RistrettoPoint,
}

impl std::fmt::Debug for RecoveryCiphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCiphertext({})", hex::encode(self.to_bytes()))
    }
}

impl RecoveryCiphertext {
    /// The 32-byte compressed point.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.point.compress().to_bytes()
    }

    /// Parses a 32-byte compressed point.
    ///
    /// # Errors
    /// [`CryptoError::RecoveryEncoding`] if `bytes` is not 32 bytes long, not a canonical
    /// ristretto255 encoding, or the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let point = decode_point(bytes, "recovery ciphertext")?;
        Ok(RecoveryCiphertext { point })
    }
}

/// One member's part of a [`Deal`], stored where the member can fetch it (the ledger).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DealtShare {
    /// The member's share index, from 1; the x-coordinate of its Shamir share.
    pub index: u32,
    /// Yᵢ = sᵢ·G, a compressed point against which the member's partial decryptions are
    /// checked.
    pub verification_key: [u8; 32],
    /// The share sᵢ encrypted to the member's public key: ephemeral point E ‖ AES-256-GCM
    /// ciphertext ‖ tag, [`ENCRYPTED_SHARE_BYTES`] in all.
    pub encrypted_share: Vec<u8>,
}

/// The result of [`deal`]: everything public to store, and the wrapping key for the caller.
pub struct Deal {
    /// How many members must take part to recover.
    pub threshold: u32,
    /// C = r·G.
    pub ciphertext: RecoveryCiphertext,
    /// `shares[k]` belongs to the k-th member given to [`deal`] and has index k + 1.
    pub shares: Vec<DealtShare>,
    /// K, to wrap the ledger secret with; never store it.
    pub wrapping_key: [u8; 32],
}

impl std::fmt::Debug for Deal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the wrapping key.
        f.debug_struct("Deal")
            .field("threshold", &self.threshold)
            .field("ciphertext", &self.ciphertext)
            .field("shares", &self.shares)
            .finish_non_exhaustive()
    }
}

/// K = SHA-256(domain ‖ compress(r·X)).
fn wrapping_key_from(shared: &RistrettoPoint) -> [u8; 32] {
    let compressed = Zeroizing::new(shared.compress().to_bytes());
    sha256_parts(&[WRAPPING_KEY_DOMAIN, compressed.as_ref()])
}

/// The single-use AES key that encrypts share `index` to member key `member`.
fn share_key(
    shared: &RistrettoPoint,
    ephemeral: &[u8; 32],
    member: &RecoveryPublicKey,
    ciphertext: &RecoveryCiphertext,
    index: u32,
) -> Zeroizing<[u8; 32]> {
    let compressed = Zeroizing::new(shared.compress().to_bytes());
    Zeroizing::new(sha256_parts(&[
        SHARE_KEY_DOMAIN,
        compressed.as_ref(),
        ephemeral,
        &member.bytes,
        &ciphertext.to_bytes(),
        &index.to_be_bytes(),
    ]))
}

/// The associated data of share `index`: it binds the share to its deal and its index.
fn share_aad(ciphertext: &RecoveryCiphertext, index: u32, verification_key: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SHARE_AAD_DOMAIN.len() + 32 + 4 + 32);
    aad.extend_from_slice(SHARE_AAD_DOMAIN);
    aad.extend_from_slice(&ciphertext.to_bytes());
    aad.extend_from_slice(&index.to_be_bytes());
    aad.extend_from_slice(verification_key);
    aad
}

/// Deals a fresh wrapping key to `members` so that any `threshold` of them can recover it.
///
/// `shares[k]` of the result belongs to `members[k]` and has index k + 1. The caller wraps
/// the ledger secret with [`Deal::wrapping_key`] (see [`crate::wrap_key`]), stores the rest,
/// and forgets the key.
///
/// # Errors
/// [`CryptoError::RecoveryThreshold`] if `members` is empty or longer than
/// [`RECOVERY_MEMBERS_MAX`], or `threshold` is zero or above `members.len()`.
///
/// # Panics
/// Only if `rng` is broken: it gives a zero scalar sixteen times in a row.
pub fn deal(
    threshold: u32,
    members: &[RecoveryPublicKey],
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Result<Deal, CryptoError> {
    let members_count = members.len();
    if members_count == 0
        || members_count > RECOVERY_MEMBERS_MAX as usize
        || threshold == 0
        || threshold as usize > members_count
    {
        return Err(CryptoError::RecoveryThreshold {
            threshold,
            members: members_count,
        });
    }
    // f(t) = a₀ + a₁t + … + a_{M−1}t^{M−1}, with secret x = a₀; wiped when dropped.
    let mut coefficients: Zeroizing<Vec<Scalar>> = Zeroizing::new(Vec::new());
    for _ in 0..threshold {
        coefficients.push(random_nonzero_scalar(rng));
    }
    let group_key = RistrettoPoint::mul_base(&coefficients[0]);
    let r = Zeroizing::new(random_nonzero_scalar(rng));
    let ciphertext = RecoveryCiphertext {
        point: RistrettoPoint::mul_base(&r),
    };
    let wrapping_key = wrapping_key_from(&Zeroizing::new(group_key * *r));

    let mut shares = Vec::with_capacity(members_count);
    for (position, member) in members.iter().enumerate() {
        // members_count ≤ RECOVERY_MEMBERS_MAX, so the index fits in u32 and is nonzero.
        let index = u32::try_from(position + 1).expect("index is at most RECOVERY_MEMBERS_MAX");
        let share = Zeroizing::new(evaluate(&coefficients, index));
        let verification_key = RistrettoPoint::mul_base(&share).compress().to_bytes();

        let encrypted_share =
            encrypt_share(member, &ciphertext, index, &share, &verification_key, rng);
        shares.push(DealtShare {
            index,
            verification_key,
            encrypted_share,
        });
    }
    assert_eq!(shares.len(), members_count);
    Ok(Deal {
        threshold,
        ciphertext,
        shares,
        wrapping_key,
    })
}

/// ECIES: encrypts share `index` (the scalar `share`) to `member` under a fresh ephemeral key;
/// returns E ‖ ciphertext ‖ tag.
fn encrypt_share(
    member: &RecoveryPublicKey,
    ciphertext: &RecoveryCiphertext,
    index: u32,
    share: &Scalar,
    verification_key: &[u8; 32],
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Vec<u8> {
    let ephemeral = Zeroizing::new(random_nonzero_scalar(rng));
    let ephemeral_public = RistrettoPoint::mul_base(&ephemeral).compress().to_bytes();
    let shared = Zeroizing::new(member.point * *ephemeral);
    let key = share_key(&shared, &ephemeral_public, member, ciphertext, index);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let plaintext = Zeroizing::new(share.to_bytes());
    let aad = share_aad(ciphertext, index, verification_key);
    let payload = Payload {
        msg: plaintext.as_ref(),
        aad: &aad,
    };
    // AES-GCM encryption fails only for messages over 64 GiB; this one is 32 bytes.
    let sealed = cipher
        .encrypt(&Nonce::from(SHARE_NONCE), payload)
        .expect("a 32-byte plaintext is below the AES-GCM size limit");
    let mut encrypted_share = Vec::with_capacity(ENCRYPTED_SHARE_BYTES);
    encrypted_share.extend_from_slice(&ephemeral_public);
    encrypted_share.extend_from_slice(&sealed);
    assert_eq!(encrypted_share.len(), ENCRYPTED_SHARE_BYTES);
    encrypted_share
}

/// f(index) by Horner's rule.
fn evaluate(coefficients: &[Scalar], index: u32) -> Scalar {
    assert!(index != 0, "f(0) is the secret, never a share");
    let x = Scalar::from(index);
    let mut value = Scalar::ZERO;
    for coefficient in coefficients.iter().rev() {
        value = value * x + coefficient;
    }
    value
}

/// A member's opened share: its index and the scalar sᵢ. The scalar is wiped on drop and
/// never printed.
pub struct KeyShare {
    index: u32,
    scalar: Scalar,
}

impl Drop for KeyShare {
    fn drop(&mut self) {
        self.scalar.zeroize();
    }
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the share.
        f.debug_struct("KeyShare")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl KeyShare {
    /// The member's share index, from 1.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Yᵢ = sᵢ·G, compressed.
    pub fn verification_key(&self) -> [u8; 32] {
        RistrettoPoint::mul_base(&self.scalar).compress().to_bytes()
    }
}

/// Decrypts `share` with the member's `key` and checks it against its verification key.
///
/// # Errors
/// [`CryptoError::RecoveryEncoding`] if the share's index is zero or above
/// [`RECOVERY_MEMBERS_MAX`], its encrypted share is not [`ENCRYPTED_SHARE_BYTES`] long or
/// holds a bad point, or its verification key is not a valid point;
/// [`CryptoError::RecoveryShareOpen`] if it does not decrypt (wrong member key, or the share
/// or `ciphertext` altered); [`CryptoError::RecoveryShareMismatch`] if the decrypted scalar
/// does not match the verification key.
pub fn open_share(
    key: &RecoveryKeyPair,
    ciphertext: &RecoveryCiphertext,
    share: &DealtShare,
) -> Result<KeyShare, CryptoError> {
    let index = share.index;
    if index == 0 || index > RECOVERY_MEMBERS_MAX {
        return Err(CryptoError::RecoveryEncoding(format!(
            "share index {index} is outside 1..={RECOVERY_MEMBERS_MAX}"
        )));
    }
    let verification_key = decode_point(
        &share.verification_key,
        &format!("verification key of member {index}"),
    )?;
    if share.encrypted_share.len() != ENCRYPTED_SHARE_BYTES {
        return Err(CryptoError::RecoveryEncoding(format!(
            "encrypted share of member {index} has {} bytes, not {ENCRYPTED_SHARE_BYTES}",
            share.encrypted_share.len()
        )));
    }
    let (ephemeral_bytes, sealed) = share.encrypted_share.split_at(RECOVERY_POINT_BYTES);
    let ephemeral = decode_point(
        ephemeral_bytes,
        &format!("ephemeral key of the share of member {index}"),
    )?;
    let mut ephemeral_public = [0u8; 32];
    ephemeral_public.copy_from_slice(ephemeral_bytes);

    let shared = Zeroizing::new(ephemeral * key.secret);
    let aes_key = share_key(&shared, &ephemeral_public, &key.public, ciphertext, index);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*aes_key));
    let aad = share_aad(ciphertext, index, &share.verification_key);
    let payload = Payload {
        msg: sealed,
        aad: &aad,
    };
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(&Nonce::from(SHARE_NONCE), payload)
            .map_err(|_| CryptoError::RecoveryShareOpen { index })?,
    );
    let mut scalar_bytes = Zeroizing::new([0u8; 32]);
    if plaintext.len() != scalar_bytes.len() {
        // Only a dealer that encrypted something else gets here: the tag verified.
        return Err(CryptoError::RecoveryShareMismatch { index });
    }
    scalar_bytes.copy_from_slice(&plaintext);
    let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(*scalar_bytes))
        .ok_or(CryptoError::RecoveryShareMismatch { index })?;
    let opened = KeyShare { index, scalar };
    if RistrettoPoint::mul_base(&opened.scalar) != verification_key {
        return Err(CryptoError::RecoveryShareMismatch { index });
    }
    Ok(opened)
}

/// A member's partial decryption Dᵢ = sᵢ·C with a Chaum-Pedersen proof (c, z) that
/// log_G(Yᵢ) = log_C(Dᵢ). Public: it reveals nothing about sᵢ.
#[derive(Clone, PartialEq, Eq)]
pub struct PartialDecryption {
    /// The member's share index, from 1.
    pub index: u32,
    point: RistrettoPoint,
    challenge: Scalar,
    response: Scalar,
}

impl std::fmt::Debug for PartialDecryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartialDecryption")
            .field("index", &self.index)
            .field("point", &hex::encode(self.point.compress().to_bytes()))
            .field("challenge", &hex::encode(self.challenge.to_bytes()))
            .field("response", &hex::encode(self.response.to_bytes()))
            .finish()
    }
}

impl PartialDecryption {
    /// The fixed [`PARTIAL_DECRYPTION_BYTES`]-byte encoding: index (u32, big-endian) ‖ Dᵢ ‖ c ‖
    /// z.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(PARTIAL_DECRYPTION_BYTES);
        bytes.extend_from_slice(&self.index.to_be_bytes());
        bytes.extend_from_slice(&self.point.compress().to_bytes());
        bytes.extend_from_slice(&self.challenge.to_bytes());
        bytes.extend_from_slice(&self.response.to_bytes());
        assert_eq!(bytes.len(), PARTIAL_DECRYPTION_BYTES);
        bytes
    }

    /// Parses the output of [`PartialDecryption::to_bytes`]. This checks the encoding only;
    /// [`verify_partial`] checks the proof.
    ///
    /// # Errors
    /// [`CryptoError::RecoveryEncoding`] if `bytes` is not [`PARTIAL_DECRYPTION_BYTES`] long,
    /// the index is zero or above [`RECOVERY_MEMBERS_MAX`], Dᵢ is not a canonical non-identity
    /// point, or c or z is not a canonical scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != PARTIAL_DECRYPTION_BYTES {
            return Err(CryptoError::RecoveryEncoding(format!(
                "partial decryption has {} bytes, not {PARTIAL_DECRYPTION_BYTES}",
                bytes.len()
            )));
        }
        let mut index_bytes = [0u8; 4];
        index_bytes.copy_from_slice(&bytes[..4]);
        let index = u32::from_be_bytes(index_bytes);
        if index == 0 || index > RECOVERY_MEMBERS_MAX {
            return Err(CryptoError::RecoveryEncoding(format!(
                "partial decryption index {index} is outside 1..={RECOVERY_MEMBERS_MAX}"
            )));
        }
        let point = decode_point(
            &bytes[4..36],
            &format!("partial decryption of member {index}"),
        )?;
        let mut scalar_bytes = [0u8; 32];
        scalar_bytes.copy_from_slice(&bytes[36..68]);
        let challenge =
            decode_scalar(&scalar_bytes, &format!("proof challenge of member {index}"))?;
        scalar_bytes.copy_from_slice(&bytes[68..100]);
        let response = decode_scalar(&scalar_bytes, &format!("proof response of member {index}"))?;
        Ok(PartialDecryption {
            index,
            point,
            challenge,
            response,
        })
    }
}

/// The Fiat-Shamir challenge c = H(domain ‖ G ‖ C ‖ Yᵢ ‖ Dᵢ ‖ A₁ ‖ A₂ ‖ i) as a scalar.
fn dleq_challenge(
    ciphertext: &RistrettoPoint,
    verification_key: &RistrettoPoint,
    partial: &RistrettoPoint,
    commitment_base: &RistrettoPoint,
    commitment_ciphertext: &RistrettoPoint,
    index: u32,
) -> Scalar {
    let mut hasher = Sha512::new();
    hasher.update(DLEQ_DOMAIN);
    hasher.update(RISTRETTO_BASEPOINT_COMPRESSED.as_bytes());
    for point in [
        ciphertext,
        verification_key,
        partial,
        commitment_base,
        commitment_ciphertext,
    ] {
        hasher.update(point.compress().as_bytes());
    }
    hasher.update(index.to_be_bytes());
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&hasher.finalize());
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// The member's partial decryption of `ciphertext` with its proof; `rng` draws the proof's
/// nonce.
///
/// # Panics
/// Only if `rng` is broken (see [`deal`]).
pub fn partial_decrypt(
    share: &KeyShare,
    ciphertext: &RecoveryCiphertext,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> PartialDecryption {
    let verification_key = RistrettoPoint::mul_base(&share.scalar);
    let point = ciphertext.point * share.scalar;
    let nonce = Zeroizing::new(random_nonzero_scalar(rng));
    let commitment_base = RistrettoPoint::mul_base(&nonce);
    let commitment_ciphertext = ciphertext.point * *nonce;
    let challenge = dleq_challenge(
        &ciphertext.point,
        &verification_key,
        &point,
        &commitment_base,
        &commitment_ciphertext,
        share.index,
    );
    let response = *nonce + challenge * share.scalar;
    PartialDecryption {
        index: share.index,
        point,
        challenge,
        response,
    }
}

/// Checks `partial`'s proof against the member's `verification_key` (Yᵢ from its
/// [`DealtShare`]) and `ciphertext`.
///
/// # Errors
/// [`CryptoError::RecoveryEncoding`] if `verification_key` is not a valid point;
/// [`CryptoError::RecoveryPartialInvalid`], naming the claimed index, if the proof fails:
/// the partial is forged, corrupted, or for another member or ciphertext.
pub fn verify_partial(
    verification_key: &[u8; 32],
    ciphertext: &RecoveryCiphertext,
    partial: &PartialDecryption,
) -> Result<(), CryptoError> {
    let index = partial.index;
    let verification_point = decode_point(
        verification_key,
        &format!("verification key of member {index}"),
    )?;
    if index == 0 || index > RECOVERY_MEMBERS_MAX || partial.point.is_identity() {
        return Err(CryptoError::RecoveryPartialInvalid { index });
    }
    // A₁ = z·G − c·Yᵢ and A₂ = z·C − c·Dᵢ are the commitments an honest prover made.
    let commitment_base = RistrettoPoint::vartime_double_scalar_mul_basepoint(
        &(-partial.challenge),
        &verification_point,
        &partial.response,
    );
    let commitment_ciphertext =
        ciphertext.point * partial.response - partial.point * partial.challenge;
    let challenge = dleq_challenge(
        &ciphertext.point,
        &verification_point,
        &partial.point,
        &commitment_base,
        &commitment_ciphertext,
        index,
    );
    if challenge != partial.challenge {
        return Err(CryptoError::RecoveryPartialInvalid { index });
    }
    Ok(())
}

/// The Lagrange coefficient at 0 of `index` over `indices`: Π_{j ≠ i} j / (j − i).
fn lagrange_at_zero(index: u32, indices: &[u32]) -> Scalar {
    let x = Scalar::from(index);
    let mut numerator = Scalar::ONE;
    let mut denominator = Scalar::ONE;
    for &other in indices {
        if other == index {
            continue;
        }
        let other = Scalar::from(other);
        numerator *= other;
        denominator *= other - x;
    }
    // Indices are distinct and below the group order, so no factor j − i is zero.
    assert!(denominator != Scalar::ZERO);
    numerator * denominator.invert()
}

/// Recovers the wrapping key from at least `threshold` partial decryptions of `ciphertext`
/// with distinct indices, using the first `threshold` of them.
///
/// The caller must have checked each partial with [`verify_partial`] first: an unchecked bad
/// partial gives a wrong key, which the key's first use (unwrapping the ledger secret) then
/// detects.
///
/// # Errors
/// [`CryptoError::RecoveryThreshold`] if `threshold` is zero or above
/// [`RECOVERY_MEMBERS_MAX`]; [`CryptoError::RecoveryEncoding`] if an index is zero or above
/// [`RECOVERY_MEMBERS_MAX`]; [`CryptoError::RecoveryPartialDuplicate`] if two partials share
/// an index; [`CryptoError::RecoveryPartialsMissing`] if there are fewer than `threshold`.
pub fn combine(
    threshold: u32,
    ciphertext: &RecoveryCiphertext,
    partials: &[PartialDecryption],
) -> Result<[u8; 32], CryptoError> {
    if threshold == 0 || threshold > RECOVERY_MEMBERS_MAX {
        return Err(CryptoError::RecoveryThreshold {
            threshold,
            members: partials.len(),
        });
    }
    // Duplicates among all the partials are refused, not only among those used, since they
    // show that the caller mixed up its members. Distinct indices bound the count by
    // RECOVERY_MEMBERS_MAX.
    let mut seen = std::collections::BTreeSet::new();
    for partial in partials {
        let index = partial.index;
        if index == 0 || index > RECOVERY_MEMBERS_MAX {
            return Err(CryptoError::RecoveryEncoding(format!(
                "partial decryption index {index} is outside 1..={RECOVERY_MEMBERS_MAX}"
            )));
        }
        if !seen.insert(index) {
            return Err(CryptoError::RecoveryPartialDuplicate { index });
        }
    }
    let needed = threshold as usize;
    if partials.len() < needed {
        return Err(CryptoError::RecoveryPartialsMissing {
            threshold,
            have: partials.len(),
            missing: needed - partials.len(),
        });
    }
    let used = &partials[..needed];
    let indices: Vec<u32> = used.iter().map(|partial| partial.index).collect();
    let mut shared = Zeroizing::new(RistrettoPoint::default());
    for partial in used {
        *shared += partial.point * lagrange_at_zero(partial.index, &indices);
    }
    // The ciphertext only names which deal the partials belong to; the proofs (checked by the
    // caller) bind each partial to it.
    let _ = ciphertext;
    Ok(wrapping_key_from(&shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn setup(
        threshold: u32,
        members: usize,
    ) -> (rand_chacha::ChaCha20Rng, Vec<RecoveryKeyPair>, Deal) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(threshold) * 100);
        let keys: Vec<RecoveryKeyPair> = (0..members)
            .map(|_| RecoveryKeyPair::generate(&mut rng))
            .collect();
        let public: Vec<_> = keys.iter().map(RecoveryKeyPair::public_key).collect();
        let dealt = deal(threshold, &public, &mut rng).unwrap();
        (rng, keys, dealt)
    }

    #[test]
    fn evaluate_and_lagrange_agree() {
        // f(t) = 3 + 5t + 7t²: f(1) = 15, f(2) = 41, f(3) = 81.
        let coefficients = [Scalar::from(3u32), Scalar::from(5u32), Scalar::from(7u32)];
        assert_eq!(evaluate(&coefficients, 1), Scalar::from(15u32));
        assert_eq!(evaluate(&coefficients, 2), Scalar::from(41u32));
        assert_eq!(evaluate(&coefficients, 3), Scalar::from(81u32));
        let indices = [1, 2, 3];
        let at_zero: Scalar = indices
            .iter()
            .map(|&i| lagrange_at_zero(i, &indices) * evaluate(&coefficients, i))
            .sum();
        assert_eq!(at_zero, Scalar::from(3u32));
    }

    #[test]
    fn altered_point_challenge_or_response_fails_naming_the_index() {
        let (mut rng, keys, dealt) = setup(2, 3);
        let share = open_share(&keys[1], &dealt.ciphertext, &dealt.shares[1]).unwrap();
        let partial = partial_decrypt(&share, &dealt.ciphertext, &mut rng);
        let key = dealt.shares[1].verification_key;
        verify_partial(&key, &dealt.ciphertext, &partial).unwrap();

        let mut altered = partial.clone();
        altered.point += RistrettoPoint::mul_base(&Scalar::ONE);
        let mut challenged = partial.clone();
        challenged.challenge += Scalar::ONE;
        let mut responded = partial.clone();
        responded.response += Scalar::ONE;
        for bad in [altered, challenged, responded] {
            let error = verify_partial(&key, &dealt.ciphertext, &bad).unwrap_err();
            assert!(matches!(
                error,
                CryptoError::RecoveryPartialInvalid { index: 2 }
            ));
            assert!(error.to_string().contains("member 2"), "{error}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let (_, keys, dealt) = setup(1, 1);
        let share = open_share(&keys[0], &dealt.ciphertext, &dealt.shares[0]).unwrap();
        let scalar_hex = hex::encode(share.scalar.to_bytes());
        assert!(!format!("{share:?}").contains(&scalar_hex));
        assert!(!format!("{:?}", keys[0]).contains(&hex::encode(keys[0].secret.to_bytes())));
        assert!(!format!("{dealt:?}").contains(&hex::encode(dealt.wrapping_key)));
    }

    #[test]
    fn share_that_mismatches_its_verification_key_is_refused() {
        let (mut rng, keys, mut dealt) = setup(2, 3);
        // A faulty dealer encrypts a scalar other than the one Y₂ commits to.
        let wrong = Scalar::from(12345u32);
        let verification_key = dealt.shares[1].verification_key;
        dealt.shares[1].encrypted_share = encrypt_share(
            &keys[1].public_key(),
            &dealt.ciphertext,
            2,
            &wrong,
            &verification_key,
            &mut rng,
        );
        let error = open_share(&keys[1], &dealt.ciphertext, &dealt.shares[1]).unwrap_err();
        assert!(matches!(
            error,
            CryptoError::RecoveryShareMismatch { index: 2 }
        ));
        // The other shares still open.
        open_share(&keys[0], &dealt.ciphertext, &dealt.shares[0]).unwrap();
    }
}
