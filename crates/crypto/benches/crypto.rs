//! Hot cryptographic paths of the write path: AES-256-GCM of a private write set, SHA-256 of an
//! entry (a Merkle leaf), and ECDSA P-384 signing and verifying (ledger signatures, user
//! requests).

use charter_crypto::{sha256, LedgerSecret, PrecomputedVerifyingKey, SigningKey};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn bench_crypto(c: &mut Criterion) {
    let secret = LedgerSecret::from_bytes([7u8; 32]);
    let nonce = [1u8; 12];
    let aad = [2u8; 32];
    // A 100-byte value under a 16-byte key, with the write set's framing: about 160 bytes.
    let plaintext = vec![3u8; 160];
    let mut group = c.benchmark_group("aes_gcm_256");
    group.throughput(Throughput::Bytes(plaintext.len() as u64));
    group.bench_function("encrypt 160 B", |b| {
        b.iter(|| secret.encrypt(black_box(&nonce), &aad, black_box(&plaintext)))
    });
    let ciphertext = secret.encrypt(&nonce, &aad, &plaintext);
    group.bench_function("decrypt 160 B", |b| {
        b.iter(|| secret.decrypt(black_box(&nonce), &aad, black_box(&ciphertext)))
    });
    group.finish();

    c.bench_function("sha256 of a 200 B entry", |b| {
        let entry = vec![4u8; 200];
        b.iter(|| sha256(black_box(&entry)))
    });

    let key = SigningKey::from_seed(&[9u8; 32]).expect("a valid seed");
    let verifying = key.verifying_key();
    let message = [5u8; 48];
    let signature = key.sign(&message);
    c.bench_function("ecdsa_p384 sign", |b| {
        b.iter(|| key.sign(black_box(&message)))
    });
    c.bench_function("ecdsa_p384 verify", |b| {
        b.iter(|| verifying.verify(black_box(&message), black_box(&signature)))
    });
    // A Merkle root's signature, as replicas check it at every signature transaction.
    let root = sha256(b"root");
    let root_signature = key.sign_digest(&root).expect("a 32-byte prehash");
    c.bench_function("ecdsa_p384 verify_digest", |b| {
        b.iter(|| verifying.verify_digest(black_box(&root), black_box(&root_signature)))
    });
    let precomputed = PrecomputedVerifyingKey::new(&verifying);
    c.bench_function("ecdsa_p384 verify_digest, precomputed key", |b| {
        b.iter(|| precomputed.verify_digest(black_box(&root), black_box(&root_signature)))
    });
    c.bench_function("ecdsa_p384 precompute a key", |b| {
        b.iter(|| PrecomputedVerifyingKey::new(black_box(&verifying)))
    });
}

criterion_group!(benches, bench_crypto);
criterion_main!(benches);
