//! Threshold recovery through the public API: dealing, opening shares, partial decryptions,
//! their proofs, combining, key encodings, and wrapping the ledger secret.

use charter_crypto::{
    combine, deal, open_share, partial_decrypt, unwrap_key, verify_partial, wrap_key, CryptoError,
    Deal, DealtShare, PartialDecryption, RecoveryCiphertext, RecoveryKeyPair, RecoveryPublicKey,
    ENCRYPTED_SHARE_BYTES, PARTIAL_DECRYPTION_BYTES,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Setup {
    rng: ChaCha20Rng,
    keys: Vec<RecoveryKeyPair>,
    dealt: Deal,
}

fn setup(threshold: u32, members: usize, seed: u64) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<RecoveryKeyPair> = (0..members)
        .map(|_| RecoveryKeyPair::generate(&mut rng))
        .collect();
    let public: Vec<RecoveryPublicKey> = keys.iter().map(RecoveryKeyPair::public_key).collect();
    let dealt = deal(threshold, &public, &mut rng).unwrap();
    Setup { rng, keys, dealt }
}

/// Every member opens its share and gives a checked partial decryption.
fn all_partials(setup: &mut Setup) -> Vec<PartialDecryption> {
    let dealt = &setup.dealt;
    let mut partials = Vec::new();
    for (key, share) in setup.keys.iter().zip(&dealt.shares) {
        let opened = open_share(key, &dealt.ciphertext, share).unwrap();
        assert_eq!(opened.index(), share.index);
        assert_eq!(opened.verification_key(), share.verification_key);
        let partial = partial_decrypt(&opened, &dealt.ciphertext, &mut setup.rng);
        verify_partial(&share.verification_key, &dealt.ciphertext, &partial).unwrap();
        partials.push(partial);
    }
    partials
}

/// Every `size`-element subset of `0..count`, as sorted positions.
fn subsets(count: usize, size: usize) -> Vec<Vec<usize>> {
    let mut all = Vec::new();
    for mask in 0u32..(1 << count) {
        if mask.count_ones() as usize == size {
            all.push((0..count).filter(|bit| mask & (1 << bit) != 0).collect());
        }
    }
    all
}

#[test]
fn every_threshold_subset_recovers_the_dealt_key() {
    for (threshold, members) in [(1, 1), (2, 3), (3, 5), (5, 5)] {
        let mut setup = setup(threshold, members, 10 + u64::from(threshold));
        let dealt_key = setup.dealt.wrapping_key;
        assert_eq!(setup.dealt.threshold, threshold);
        assert_eq!(setup.dealt.shares.len(), members);
        for (position, share) in setup.dealt.shares.iter().enumerate() {
            assert_eq!(share.index as usize, position + 1);
            assert_eq!(share.encrypted_share.len(), ENCRYPTED_SHARE_BYTES);
        }
        let partials = all_partials(&mut setup);
        let chosen = subsets(members, threshold as usize);
        assert!(!chosen.is_empty());
        for subset in chosen {
            let mut picked: Vec<PartialDecryption> =
                subset.iter().map(|&k| partials[k].clone()).collect();
            let key = combine(threshold, &setup.dealt.ciphertext, &picked).unwrap();
            assert_eq!(key, dealt_key, "({threshold}, {members}) subset {subset:?}");
            // The order in which partials arrive does not matter.
            picked.reverse();
            let key = combine(threshold, &setup.dealt.ciphertext, &picked).unwrap();
            assert_eq!(
                key, dealt_key,
                "({threshold}, {members}) reversed {subset:?}"
            );
        }
        // More than the threshold is fine too.
        let key = combine(threshold, &setup.dealt.ciphertext, &partials).unwrap();
        assert_eq!(key, dealt_key);
    }
}

#[test]
fn partials_survive_their_encoding() {
    let mut setup = setup(2, 3, 20);
    let partials = all_partials(&mut setup);
    let decoded: Vec<PartialDecryption> = partials
        .iter()
        .map(|partial| {
            let bytes = partial.to_bytes();
            assert_eq!(bytes.len(), PARTIAL_DECRYPTION_BYTES);
            assert_eq!(bytes[..4], partial.index.to_be_bytes());
            PartialDecryption::from_bytes(&bytes).unwrap()
        })
        .collect();
    assert_eq!(decoded, partials);
    let ciphertext = RecoveryCiphertext::from_bytes(&setup.dealt.ciphertext.to_bytes()).unwrap();
    assert_eq!(ciphertext, setup.dealt.ciphertext);
    assert_eq!(
        combine(2, &ciphertext, &decoded[1..]).unwrap(),
        setup.dealt.wrapping_key
    );
}

#[test]
fn deals_differ_and_repeat_with_the_seed() {
    let first = setup(2, 3, 30);
    let again = setup(2, 3, 30);
    let other = setup(2, 3, 31);
    assert_eq!(first.dealt.wrapping_key, again.dealt.wrapping_key);
    assert_eq!(first.dealt.ciphertext, again.dealt.ciphertext);
    assert_ne!(first.dealt.wrapping_key, other.dealt.wrapping_key);
    assert_ne!(first.dealt.ciphertext, other.dealt.ciphertext);
}

#[test]
fn too_few_partials_say_how_many_are_missing() {
    for (threshold, members) in [(2, 3), (3, 5), (5, 5)] {
        let mut setup = setup(threshold, members, 40 + u64::from(threshold));
        let partials = all_partials(&mut setup);
        let short = &partials[..threshold as usize - 1];
        let error = combine(threshold, &setup.dealt.ciphertext, short).unwrap_err();
        assert!(
            matches!(
                error,
                CryptoError::RecoveryPartialsMissing { missing: 1, .. }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("1 missing"), "{error}");
        let error = combine(threshold, &setup.dealt.ciphertext, &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("has 0: {threshold} missing")),
            "{error}"
        );
    }
}

#[test]
fn duplicate_indices_are_refused() {
    let mut setup = setup(2, 3, 50);
    let partials = all_partials(&mut setup);
    let twice = [partials[0].clone(), partials[0].clone()];
    let error = combine(2, &setup.dealt.ciphertext, &twice).unwrap_err();
    assert!(matches!(
        error,
        CryptoError::RecoveryPartialDuplicate { index: 1 }
    ));
    // Refused even when enough distinct partials come first.
    let padded = [
        partials[0].clone(),
        partials[1].clone(),
        partials[1].clone(),
    ];
    let error = combine(2, &setup.dealt.ciphertext, &padded).unwrap_err();
    assert!(matches!(
        error,
        CryptoError::RecoveryPartialDuplicate { index: 2 }
    ));
}

#[test]
fn combine_refuses_a_zero_threshold_or_index() {
    let mut setup = setup(2, 3, 55);
    let mut partials = all_partials(&mut setup);
    assert!(matches!(
        combine(0, &setup.dealt.ciphertext, &partials),
        Err(CryptoError::RecoveryThreshold { .. })
    ));
    partials[0].index = 0;
    assert!(matches!(
        combine(2, &setup.dealt.ciphertext, &partials),
        Err(CryptoError::RecoveryEncoding(_))
    ));
}

#[test]
fn every_flipped_byte_of_a_partial_is_caught() {
    let mut setup = setup(2, 3, 60);
    let partials = all_partials(&mut setup);
    let partial = &partials[1];
    let key = setup.dealt.shares[1].verification_key;
    let bytes = partial.to_bytes();
    let mut proof_failures = 0;
    // Bytes 4.. are D, c and z; the index is covered by the next test.
    for position in 4..PARTIAL_DECRYPTION_BYTES {
        for bit in [0x01, 0x80] {
            let mut altered = bytes.clone();
            altered[position] ^= bit;
            match PartialDecryption::from_bytes(&altered) {
                // Non-canonical points and scalars are refused by the decoder.
                Err(error) => assert!(matches!(error, CryptoError::RecoveryEncoding(_))),
                Ok(decoded) => {
                    let error =
                        verify_partial(&key, &setup.dealt.ciphertext, &decoded).unwrap_err();
                    assert!(
                        matches!(error, CryptoError::RecoveryPartialInvalid { index: 2 }),
                        "{error:?}"
                    );
                    assert!(error.to_string().contains("member 2"), "{error}");
                    proof_failures += 1;
                }
            }
        }
    }
    // Most flips decode and so reach the proof check, in each of D, c and z.
    assert!(
        proof_failures > 96,
        "only {proof_failures} reached the proof check"
    );
}

#[test]
fn a_partial_under_another_index_fails() {
    let mut setup = setup(2, 3, 70);
    let partials = all_partials(&mut setup);
    let mut relabelled = partials[1].clone();
    relabelled.index = 3;
    for share in &setup.dealt.shares {
        let error = verify_partial(
            &share.verification_key,
            &setup.dealt.ciphertext,
            &relabelled,
        )
        .unwrap_err();
        assert!(
            matches!(error, CryptoError::RecoveryPartialInvalid { index: 3 }),
            "{error:?}"
        );
    }
    // The same through the wire encoding.
    let mut bytes = partials[1].to_bytes();
    bytes[..4].copy_from_slice(&3u32.to_be_bytes());
    let decoded = PartialDecryption::from_bytes(&bytes).unwrap();
    let error = verify_partial(
        &setup.dealt.shares[2].verification_key,
        &setup.dealt.ciphertext,
        &decoded,
    )
    .unwrap_err();
    assert!(error.to_string().contains("member 3"), "{error}");
}

#[test]
fn a_partial_of_another_deal_fails() {
    let mut first = setup(2, 3, 80);
    let mut second = setup(2, 3, 81);
    let first_partials = all_partials(&mut first);
    let second_partials = all_partials(&mut second);
    // Checked against the other deal's ciphertext, or the other deal's verification key.
    assert!(verify_partial(
        &first.dealt.shares[0].verification_key,
        &second.dealt.ciphertext,
        &first_partials[0]
    )
    .is_err());
    assert!(verify_partial(
        &first.dealt.shares[0].verification_key,
        &first.dealt.ciphertext,
        &second_partials[0]
    )
    .is_err());
    // Mixing deals in combine gives a wrong key, which is why callers verify first.
    let mixed = [first_partials[0].clone(), second_partials[1].clone()];
    let key = combine(2, &first.dealt.ciphertext, &mixed).unwrap();
    assert_ne!(key, first.dealt.wrapping_key);
}

#[test]
fn verify_partial_refuses_a_bad_verification_key() {
    let mut setup = setup(1, 1, 85);
    let partials = all_partials(&mut setup);
    for key in [[0u8; 32], [0xff; 32]] {
        assert!(matches!(
            verify_partial(&key, &setup.dealt.ciphertext, &partials[0]),
            Err(CryptoError::RecoveryEncoding(_))
        ));
    }
}

#[test]
fn shares_open_only_for_their_member_deal_and_index() {
    let setup = setup(2, 3, 90);
    let dealt = &setup.dealt;
    // The wrong member's key.
    let error = open_share(&setup.keys[0], &dealt.ciphertext, &dealt.shares[1]).unwrap_err();
    assert!(
        matches!(error, CryptoError::RecoveryShareOpen { index: 2 }),
        "{error:?}"
    );
    assert!(error.to_string().contains("member 2"), "{error}");
    // A stranger's key.
    let mut rng = ChaCha20Rng::seed_from_u64(91);
    let stranger = RecoveryKeyPair::generate(&mut rng);
    assert!(open_share(&stranger, &dealt.ciphertext, &dealt.shares[0]).is_err());
    // Another deal's ciphertext.
    let other = deal(2, &[setup.keys[0].public_key()], &mut rng);
    assert!(other.is_err(), "threshold above the member count");
    let other = deal(1, &[setup.keys[0].public_key()], &mut rng).unwrap();
    assert!(open_share(&setup.keys[0], &other.ciphertext, &dealt.shares[0]).is_err());
    // A share moved to another index, or given another member's verification key.
    let mut moved = dealt.shares[0].clone();
    moved.index = 2;
    assert!(open_share(&setup.keys[0], &dealt.ciphertext, &moved).is_err());
    let mut swapped = dealt.shares[0].clone();
    swapped.verification_key = dealt.shares[1].verification_key;
    assert!(open_share(&setup.keys[0], &dealt.ciphertext, &swapped).is_err());
    // Every flipped byte of the encrypted share.
    for position in 0..ENCRYPTED_SHARE_BYTES {
        let mut altered = dealt.shares[0].clone();
        altered.encrypted_share[position] ^= 0x04;
        assert!(open_share(&setup.keys[0], &dealt.ciphertext, &altered).is_err());
    }
    // Truncated, extended, or with index zero.
    let mut short = dealt.shares[0].clone();
    short.encrypted_share.pop();
    assert!(matches!(
        open_share(&setup.keys[0], &dealt.ciphertext, &short),
        Err(CryptoError::RecoveryEncoding(_))
    ));
    let mut long = dealt.shares[0].clone();
    long.encrypted_share.push(0);
    assert!(open_share(&setup.keys[0], &dealt.ciphertext, &long).is_err());
    let mut zero = dealt.shares[0].clone();
    zero.index = 0;
    assert!(open_share(&setup.keys[0], &dealt.ciphertext, &zero).is_err());
    // The untouched share still opens.
    open_share(&setup.keys[0], &dealt.ciphertext, &dealt.shares[0]).unwrap();
}

#[test]
fn deal_refuses_bad_thresholds() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let members: Vec<RecoveryPublicKey> = (0..3)
        .map(|_| RecoveryKeyPair::generate(&mut rng).public_key())
        .collect();
    for (threshold, count) in [(0, 3), (4, 3), (1, 0), (0, 0)] {
        let error = deal(threshold, &members[..count], &mut rng).unwrap_err();
        assert!(
            matches!(
                error,
                CryptoError::RecoveryThreshold { threshold: t, members: m } if t == threshold && m == count
            ),
            "{error:?}"
        );
    }
    assert!(deal(3, &members, &mut rng).is_ok());
}

#[test]
fn keys_survive_pem_and_bytes() {
    let mut rng = ChaCha20Rng::seed_from_u64(110);
    let key = RecoveryKeyPair::generate(&mut rng);
    let private_pem = key.to_pem();
    assert!(private_pem.starts_with("-----BEGIN CHARTER RECOVERY PRIVATE KEY-----\n"));
    let parsed = RecoveryKeyPair::from_pem(&private_pem).unwrap();
    assert_eq!(parsed.public_key(), key.public_key());
    assert_eq!(parsed.to_pem(), private_pem);

    let public = key.public_key();
    let public_pem = public.to_pem();
    assert!(public_pem.starts_with("-----BEGIN CHARTER RECOVERY PUBLIC KEY-----\n"));
    assert_eq!(RecoveryPublicKey::from_pem(&public_pem).unwrap(), public);
    assert_eq!(
        RecoveryPublicKey::from_bytes(&public.to_bytes()).unwrap(),
        public
    );
    // Debug shows the public key only.
    assert!(format!("{key:?}").contains(&hex::encode(public.to_bytes())));

    // A parsed key opens what was dealt to the original.
    let dealt = deal(1, &[public], &mut rng).unwrap();
    open_share(&parsed, &dealt.ciphertext, &dealt.shares[0]).unwrap();
}

fn pem_of(label: &str, contents: Vec<u8>) -> String {
    pem::encode(&pem::Pem::new(label, contents))
}

#[test]
fn malformed_keys_are_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(120);
    let key = RecoveryKeyPair::generate(&mut rng);
    let private_label = "CHARTER RECOVERY PRIVATE KEY";
    let public_label = "CHARTER RECOVERY PUBLIC KEY";
    // Swapped labels.
    assert!(matches!(
        RecoveryKeyPair::from_pem(&key.public_key().to_pem()),
        Err(CryptoError::Pem(_))
    ));
    assert!(matches!(
        RecoveryPublicKey::from_pem(&key.to_pem()),
        Err(CryptoError::Pem(_))
    ));
    // Not PEM, wrong lengths, a foreign label.
    for text in [
        String::new(),
        "garbage".to_string(),
        "-----BEGIN CHARTER RECOVERY PRIVATE KEY-----\n!!!!\n-----END CHARTER RECOVERY PRIVATE KEY-----\n"
            .to_string(),
        pem_of(private_label, vec![1; 31]),
        pem_of(private_label, vec![1; 33]),
        pem_of("PRIVATE KEY", vec![1; 32]),
    ] {
        assert!(RecoveryKeyPair::from_pem(&text).is_err(), "{text:?}");
    }
    // A zero or non-canonical scalar.
    assert!(RecoveryKeyPair::from_pem(&pem_of(private_label, vec![0; 32])).is_err());
    assert!(RecoveryKeyPair::from_pem(&pem_of(private_label, vec![0xff; 32])).is_err());
    // The identity, a non-canonical encoding, wrong lengths.
    let public_bad: [Vec<u8>; 4] = [vec![0; 32], vec![0xff; 32], vec![1; 31], vec![]];
    for bytes in public_bad {
        assert!(RecoveryPublicKey::from_bytes(&bytes).is_err(), "{bytes:?}");
        assert!(RecoveryCiphertext::from_bytes(&bytes).is_err(), "{bytes:?}");
        assert!(RecoveryPublicKey::from_pem(&pem_of(public_label, bytes.clone())).is_err());
    }
    // An odd field element is never a canonical ristretto255 encoding.
    let mut odd = key.public_key().to_bytes();
    odd[0] |= 1;
    assert!(RecoveryPublicKey::from_bytes(&odd).is_err());
}

#[test]
fn partial_from_bytes_refuses_bad_fields() {
    let mut setup = setup(1, 1, 130);
    let partials = all_partials(&mut setup);
    let bytes = partials[0].to_bytes();
    assert!(PartialDecryption::from_bytes(&bytes[..99]).is_err());
    assert!(PartialDecryption::from_bytes(&[bytes.clone(), vec![0]].concat()).is_err());
    let mut zero_index = bytes.clone();
    zero_index[..4].copy_from_slice(&[0; 4]);
    assert!(PartialDecryption::from_bytes(&zero_index).is_err());
    let mut huge_index = bytes.clone();
    huge_index[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(PartialDecryption::from_bytes(&huge_index).is_err());
    let mut identity = bytes.clone();
    identity[4..36].copy_from_slice(&[0; 32]);
    assert!(PartialDecryption::from_bytes(&identity).is_err());
    for range in [36..68, 68..100] {
        let mut unreduced = bytes.clone();
        unreduced[range].copy_from_slice(&[0xff; 32]);
        assert!(PartialDecryption::from_bytes(&unreduced).is_err());
    }
}

#[test]
fn wrapping_key_wraps_a_ledger_secret() {
    let mut setup = setup(2, 3, 140);
    let secret = [0x5a; 32];
    let wrapped = wrap_key(
        &setup.dealt.wrapping_key,
        &secret,
        b"ledger secret 1",
        &mut setup.rng,
    );
    let partials = all_partials(&mut setup);
    let recovered = combine(2, &setup.dealt.ciphertext, &partials[1..]).unwrap();
    assert_eq!(
        unwrap_key(&recovered, &wrapped, b"ledger secret 1").unwrap(),
        secret
    );
    assert!(matches!(
        unwrap_key(&recovered, &wrapped, b"ledger secret 2"),
        Err(CryptoError::Decrypt)
    ));
    let mut altered = wrapped.clone();
    altered[20] ^= 1;
    assert!(unwrap_key(&recovered, &altered, b"ledger secret 1").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..130)) {
        let _ = RecoveryPublicKey::from_bytes(&bytes);
        let _ = RecoveryCiphertext::from_bytes(&bytes);
        let _ = PartialDecryption::from_bytes(&bytes);
        let _ = unwrap_key(&[1; 32], &bytes, b"");
        let label = "CHARTER RECOVERY PUBLIC KEY";
        let _ = RecoveryPublicKey::from_pem(&pem_of(label, bytes.clone()));
        let label = "CHARTER RECOVERY PRIVATE KEY";
        let _ = RecoveryKeyPair::from_pem(&pem_of(label, bytes.clone()));
    }

    #[test]
    fn pem_parsers_never_panic(text in ".{0,200}") {
        let _ = RecoveryPublicKey::from_pem(&text);
        let _ = RecoveryKeyPair::from_pem(&text);
    }

    #[test]
    fn decoded_partials_reencode_identically(
        bytes in proptest::collection::vec(any::<u8>(), PARTIAL_DECRYPTION_BYTES)
    ) {
        if let Ok(partial) = PartialDecryption::from_bytes(&bytes) {
            prop_assert_eq!(partial.to_bytes(), bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_dealt_shares_never_open(
        index in 0u32..8,
        verification_key in any::<[u8; 32]>(),
        encrypted_share in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(150);
        let key = RecoveryKeyPair::generate(&mut rng);
        let dealt = deal(1, &[key.public_key()], &mut rng).unwrap();
        let share = DealtShare { index, verification_key, encrypted_share };
        prop_assert!(open_share(&key, &dealt.ciphertext, &share).is_err());
    }
}
