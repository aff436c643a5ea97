//! Encode, decode and apply of a write set with one 16-byte key and a 100-byte value.

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

criterion_group!(benches, bench_write_set);
criterion_main!(benches);
