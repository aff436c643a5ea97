//! Encode, decode and apply of a write set with one 16-byte key and a 100-byte value; applying
//! and reading storage-like keys (a shared 20-byte prefix, then 32 varying bytes) in a map of
//! 200,000.

use charter_kv::{Store, WriteSet};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn one_entry() -> WriteSet {
    let mut write_set = WriteSet::new();
    write_set.put("public:bench", &[7; 16], &[9; 100]);
    write_set
}

fn bench_write_set(c: &mut Criterion) {
    let write_set = one_entry();
    let bytes = write_set.to_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    c.bench_function("write_set/encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&write_set).encode(&mut out);
            black_box(out.len())
        })
    });
    c.bench_function("write_set/decode", |b| {
        b.iter(|| WriteSet::decode(black_box(&bytes)).expect("valid encoding"))
    });
    // Apply into a store that keeps growing in version, overwriting the same key.
    let mut store = Store::new();
    let mut version = 0;
    c.bench_function("store/apply", |b| {
        b.iter(|| {
            version += 1;
            store.apply(black_box(&write_set), version);
        })
    });
}

/// A key like the Ethereum adapter's storage keys: one contract's address, then a slot hash.
fn storage_key(index: u64) -> Vec<u8> {
    let mut key = vec![0x5a; 20];
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for _ in 0..4 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        key.extend_from_slice(&state.to_be_bytes());
    }
    key
}

fn bench_large_map(c: &mut Criterion) {
    const KEYS: u64 = 200_000;
    let mut store = Store::new();
    let mut version = 0;
    for chunk in 0..KEYS / 1_000 {
        let mut write_set = WriteSet::new();
        for index in chunk * 1_000..(chunk + 1) * 1_000 {
            write_set.put("private:storage", &storage_key(index), &[1; 32]);
        }
        version += 1;
        store.apply(&write_set, version);
    }
    let mut next = 0u64;
    c.bench_function("store/apply storage key, 200k keys", |b| {
        b.iter(|| {
            next = (next + 7_919) % KEYS;
            let mut write_set = WriteSet::new();
            write_set.put("private:storage", &storage_key(next), &[2; 32]);
            version += 1;
            store.apply(black_box(&write_set), version);
        })
    });
    let snapshot = store.snapshot();
    c.bench_function("store/get storage key, 200k keys", |b| {
        b.iter(|| {
            next = (next + 7_919) % KEYS;
            black_box(
                snapshot
                    .get_ref("private:storage", &storage_key(next))
                    .is_some(),
            )
        })
    });
}

criterion_group!(benches, bench_write_set, bench_large_map);
criterion_main!(benches);
