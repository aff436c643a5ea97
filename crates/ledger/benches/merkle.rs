//! Benchmarks of the Merkle tree: appending, computing the root, and proving a leaf.

use charter_ledger::merkle::{Digest, MerkleTree};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};

/// A distinct leaf per index; leaves need not be real hashes to time the tree.
fn leaf(index: u64) -> Digest {
    let mut digest = [0xA5; 32];
    digest[..8].copy_from_slice(&index.to_le_bytes());
    digest
}

fn tree_of(count: u64) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for index in 0..count {
        tree.append(leaf(index));
    }
    tree
}

fn bench_merkle(c: &mut Criterion) {
    const LEAVES_BIG: u64 = 1_000_000;
    let big = tree_of(LEAVES_BIG);
    // One below a power of two, so the root folds many stored subtrees.
    let odd = tree_of((1 << 20) - 1);

    c.bench_function("append 1000 leaves", |b| {
        b.iter_batched(
            MerkleTree::new,
            |mut tree| {
                for index in 0..1000 {
                    tree.append(leaf(index));
                }
                tree
            },
            BatchSize::SmallInput,
        )
    });
    c.bench_function("root of 1M leaves", |b| b.iter(|| black_box(&big).root()));
    c.bench_function("root of 2^20-1 leaves", |b| {
        b.iter(|| black_box(&odd).root())
    });
    c.bench_function("root_at 999,999 of 1M leaves", |b| {
        b.iter(|| black_box(&big).root_at(black_box(LEAVES_BIG - 1)))
    });
    let mut index = 0u64;
    c.bench_function("proof in 1M leaves", |b| {
        b.iter(|| {
            index = (index + 7_919) % LEAVES_BIG;
            black_box(&big).proof(index, LEAVES_BIG)
        })
    });
}

criterion_group!(benches, bench_merkle);
criterion_main!(benches);
