//! The Merkle tree over transactions, shaped so that CCF receipt verifiers accept its proofs.
//!
//! A leaf is the 32-byte SHA-256 digest of one transaction; leaf index `i` is seqno `i + 1`.
//! An interior node is `SHA-256(left ‖ right)` with no domain-separation prefix, because that is
//! what CCF receipt verifiers recompute. The shape is RFC 6962's: a tree over `n > 1` leaves
//! splits at the largest power of two strictly smaller than `n`. The root of one leaf is the leaf.
//!
//! The tree stores every level of complete subtrees (about `2n` digests), so appending hashes in
//! amortized O(1), and roots and proofs for any prefix of the leaves take O(log n) hashes.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest: a leaf or an interior node of the tree.
pub type Digest = [u8; 32];

/// Levels a tree may have: level `k` holds roots of complete subtrees of `2^k` leaves, and a
/// `u64` leaf count has at most 64 significant bits.
const LEVELS_MAX: usize = 64;

/// One step of a Merkle proof, ordered from the leaf upwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofStep {
    /// The sibling is on the left: the parent is `SHA-256(sibling ‖ current)`.
    Left(Digest),
    /// The sibling is on the right: the parent is `SHA-256(current ‖ sibling)`.
    Right(Digest),
}

/// An append-only (and truncatable) Merkle tree over transaction digests.
#[derive(Clone, Debug, Default)]
pub struct MerkleTree {
    /// `levels[k][j]` is the root of the complete subtree over leaves `[j * 2^k, (j + 1) * 2^k)`;
    /// `levels[0]` holds the leaves. Invariant: `levels[k].len() == len >> k` for every `k`, and
    /// the last level is non-empty (no level is kept once it would be empty).
    levels: Vec<Vec<Digest>>,
}

impl MerkleTree {
    /// Creates an empty tree.
    pub fn new() -> Self {
        Self { levels: Vec::new() }
    }

    /// Returns the number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Returns true when the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf, hashing each complete subtree it closes (amortized one hash per leaf).
    pub fn append(&mut self, leaf: Digest) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        // Each iteration closes a subtree twice the size of the previous one, so the loop runs at
        // most LEVELS_MAX times.
        while self.levels[level].len() & 1 == 0 {
            assert!(level + 1 < LEVELS_MAX);
            let nodes = &self.levels[level];
            let parent = hash_pair(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
        self.assert_levels();
    }

    /// Returns the leaf at `index`, or `None` if `index >= len()`.
    pub fn leaf(&self, index: u64) -> Option<Digest> {
        let leaves = self.levels.first()?;
        let index = usize::try_from(index).ok()?;
        leaves.get(index).copied()
    }

    /// Returns the root over all leaves, or `None` if the tree is empty.
    pub fn root(&self) -> Option<Digest> {
        self.root_at(self.len())
    }

    /// Returns the root over the first `size` leaves, or `None` if `size` is 0 or above `len()`.
    ///
    /// Takes at most one hash per set bit of `size`.
    pub fn root_at(&self, size: u64) -> Option<Digest> {
        if size == 0 || size > self.len() {
            return None;
        }
        Some(self.node(0, size))
    }

    /// Returns the path from leaf `index` to `root_at(size)`, ordered from the leaf upwards.
    ///
    /// Returns `None` if `index >= size` or `size > len()`.
    pub fn proof(&self, index: u64, size: u64) -> Option<Vec<ProofStep>> {
        if index >= size || size > self.len() {
            return None;
        }
        // Walk from the root down to the leaf, collecting siblings, then reverse.
        let mut steps = Vec::with_capacity(LEVELS_MAX);
        let mut start = 0;
        let mut count = size;
        // Each iteration at least halves `count`, so the loop runs at most LEVELS_MAX times.
        while count > 1 {
            assert!(steps.len() < LEVELS_MAX);
            assert!(start <= index && index < start + count);
            let split = split_point(count);
            if index < start + split {
                steps.push(ProofStep::Right(self.node(start + split, count - split)));
                count = split;
            } else {
                steps.push(ProofStep::Left(self.node(start, split)));
                start += split;
                count -= split;
            }
        }
        assert!(start == index && count == 1);
        steps.reverse();
        Some(steps)
    }

    /// Drops every leaf at or after `size`; does nothing if `size >= len()`.
    ///
    /// Used when an unsigned tail of the ledger is discarded or Raft rolls back.
    pub fn truncate(&mut self, size: u64) {
        if size >= self.len() {
            return;
        }
        for (level, nodes) in self.levels.iter_mut().enumerate() {
            // `size < len()`, which fits in usize, so the shifted value does too.
            let keep = usize::try_from(size >> level).expect("below a Vec length");
            nodes.truncate(keep);
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
        self.assert_levels();
        assert!(self.len() == size);
    }

    /// Returns the root of the RFC 6962 subtree over leaves `[start, start + count)`.
    ///
    /// Callers pass only nodes of the tree's shape, whose `start` is a multiple of the smallest
    /// power of two `>= count`; complete subtrees are then stored, and the rest decompose into
    /// a stored left child and a smaller right node.
    fn node(&self, start: u64, count: u64) -> Digest {
        assert!(count > 0 && start + count <= self.len());
        // Decompose the range into complete, aligned subtrees of decreasing size (one per set bit
        // of `count`), then fold them together from the right.
        let mut parts: [Digest; LEVELS_MAX] = [[0; 32]; LEVELS_MAX];
        let mut parts_len = 0;
        let mut offset = start;
        let mut remaining = count;
        while remaining > 0 {
            let level = 63 - remaining.leading_zeros();
            let size = 1u64 << level;
            assert!(
                offset & (size - 1) == 0,
                "node start not aligned to its subtree"
            );
            parts[parts_len] = self.stored(level, offset >> level);
            parts_len += 1;
            offset += size;
            remaining -= size;
        }
        let mut root = parts[parts_len - 1];
        for part in parts[..parts_len - 1].iter().rev() {
            root = hash_pair(part, &root);
        }
        root
    }

    /// Returns the stored root of the complete subtree at `level`, position `index`.
    fn stored(&self, level: u32, index: u64) -> Digest {
        let level = level as usize;
        // Callers stay within `len()`, so the subtree is complete and its index fits in usize.
        let index = usize::try_from(index).expect("below a Vec length");
        self.levels[level][index]
    }

    /// Checks the level invariant at the two ends (cheap, and kept on in production).
    fn assert_levels(&self) {
        assert!(self.levels.len() <= LEVELS_MAX);
        if let (Some(first), Some(last)) = (self.levels.first(), self.levels.last()) {
            let top = self.levels.len() - 1;
            assert!(!last.is_empty());
            assert!(last.len() == first.len() >> top);
            assert!(first.len() >> self.levels.len() == 0);
        }
    }
}

/// Returns the largest power of two strictly smaller than `count` (`count > 1`).
fn split_point(count: u64) -> u64 {
    assert!(count > 1);
    let split = 1u64 << (63 - (count - 1).leading_zeros());
    assert!(split < count && split * 2 >= count);
    split
}

/// Returns `SHA-256(left ‖ right)`, the hash of an interior node.
pub fn hash_pair(left: &Digest, right: &Digest) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Recomputes the root from a leaf and its proof, as a CCF receipt verifier does.
pub fn root_from_proof(leaf: Digest, proof: &[ProofStep]) -> Digest {
    proof.iter().fold(leaf, |current, step| match step {
        ProofStep::Left(sibling) => hash_pair(sibling, &current),
        ProofStep::Right(sibling) => hash_pair(&current, sibling),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf_digest(i: u64) -> Digest {
        Sha256::digest(i.to_le_bytes()).into()
    }

    fn tree_of(n: u64) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for i in 0..n {
            tree.append(leaf_digest(i));
        }
        tree
    }

    /// The RFC 6962 shape without prefixes, computed straight from the definition.
    fn naive_root(leaves: &[Digest]) -> Digest {
        assert!(!leaves.is_empty());
        if leaves.len() == 1 {
            return leaves[0];
        }
        let mut split = 1;
        while split * 2 < leaves.len() {
            split *= 2;
        }
        hash_pair(&naive_root(&leaves[..split]), &naive_root(&leaves[split..]))
    }

    fn leaves_of(n: u64) -> Vec<Digest> {
        (0..n).map(leaf_digest).collect()
    }

    #[test]
    fn empty_tree_has_no_root_or_proof() {
        let tree = MerkleTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.len(), 0);
        assert_eq!(tree.root(), None);
        assert_eq!(tree.root_at(0), None);
        assert_eq!(tree.proof(0, 0), None);
        assert_eq!(tree.leaf(0), None);
    }

    #[test]
    fn known_vectors() {
        let tree = tree_of(3);
        let l = leaves_of(3);
        assert_eq!(tree.root_at(1), Some(l[0]));
        let mut two = Vec::new();
        two.extend_from_slice(&l[0]);
        two.extend_from_slice(&l[1]);
        let h01: Digest = Sha256::digest(&two).into();
        assert_eq!(tree.root_at(2), Some(h01));
        let mut three = Vec::new();
        three.extend_from_slice(&h01);
        three.extend_from_slice(&l[2]);
        let h012: Digest = Sha256::digest(&three).into();
        assert_eq!(tree.root_at(3), Some(h012));
        assert_eq!(tree.root(), Some(h012));
        assert_eq!(tree.proof(2, 3), Some(vec![ProofStep::Left(h01)]));
        assert_eq!(
            tree.proof(0, 3),
            Some(vec![ProofStep::Right(l[1]), ProofStep::Right(l[2])])
        );
        assert_eq!(tree.proof(0, 1), Some(vec![]));
    }

    #[test]
    fn fixed_root_vectors() {
        // Pins exact bytes (computed independently with Python's hashlib), so a change of shape
        // or hash is noticed. Leaf i is 32 bytes of value i.
        let mut tree = MerkleTree::new();
        for i in 0..5u8 {
            tree.append([i; 32]);
        }
        let root_3 = "a7f2fad943905535b10ccf63c832802ed84eaffb15e4fb6bee86a817c35eb833";
        let root_5 = "243937fe91b8afccf77951af4e946c993e21cfe134644fad15da302ef093ae68";
        assert_eq!(tree.root_at(3).map(hex::encode).as_deref(), Some(root_3));
        assert_eq!(tree.root().map(hex::encode).as_deref(), Some(root_5));
    }

    #[test]
    fn every_proof_matches_naive_root_up_to_70() {
        let tree = tree_of(70);
        let leaves = leaves_of(70);
        for n in 1..=70u64 {
            let expected = naive_root(&leaves[..n as usize]);
            assert_eq!(tree.root_at(n), Some(expected), "n = {n}");
            let prefix = tree_of(n);
            assert_eq!(prefix.root(), Some(expected), "n = {n}");
            for index in 0..n {
                let proof = tree.proof(index, n).expect("index < n <= len");
                assert_eq!(prefix.proof(index, n).as_ref(), Some(&proof));
                assert_eq!(root_from_proof(leaves[index as usize], &proof), expected);
                // A proof is only as long as the tree is deep.
                assert!(proof.len() as u32 <= 64 - (n - 1).leading_zeros());
            }
            assert_eq!(tree.proof(n, n), None);
            assert_eq!(prefix.proof(0, n + 1), None);
            assert_eq!(prefix.root_at(n + 1), None);
        }
    }

    #[test]
    fn leaf_returns_appended_digests() {
        let tree = tree_of(10);
        for i in 0..10 {
            assert_eq!(tree.leaf(i), Some(leaf_digest(i)));
        }
        assert_eq!(tree.leaf(10), None);
        assert_eq!(tree.leaf(u64::MAX), None);
    }

    #[test]
    fn truncate_then_append_matches_fresh_tree() {
        for n in 0..=40u64 {
            for size in 0..=n + 1 {
                let mut tree = tree_of(n);
                tree.truncate(size);
                assert_eq!(tree.len(), size.min(n));
                assert_eq!(tree.root(), tree_of(size.min(n)).root());
                for i in tree.len()..50 {
                    tree.append(leaf_digest(i));
                }
                let fresh = tree_of(50);
                assert_eq!(tree.root(), fresh.root());
                for k in 1..=50 {
                    assert_eq!(tree.root_at(k), fresh.root_at(k));
                }
            }
        }
    }

    #[test]
    fn truncate_with_different_tail_changes_root() {
        let mut tree = tree_of(9);
        let before = tree.root();
        tree.truncate(5);
        tree.append([7; 32]);
        for i in 6..9 {
            tree.append(leaf_digest(i));
        }
        assert_ne!(tree.root(), before);
        assert_eq!(tree.root_at(5), tree_of(5).root());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn random_sizes_prove_against_naive_root(
            n in 1u64..3000,
            size_seed in any::<u64>(),
            index_seed in any::<u64>(),
            cut_seed in any::<u64>(),
        ) {
            let leaves = leaves_of(n);
            let tree = tree_of(n);
            let size = size_seed % n + 1;
            let index = index_seed % size;
            let expected = naive_root(&leaves[..size as usize]);
            prop_assert_eq!(tree.root_at(size), Some(expected));
            let proof = tree.proof(index, size).expect("index < size <= len");
            prop_assert_eq!(root_from_proof(leaves[index as usize], &proof), expected);

            // A proof does not verify for a different leaf.
            let other = leaf_digest(n + 1);
            prop_assert_ne!(root_from_proof(other, &proof), expected);

            let mut cut = tree.clone();
            cut.truncate(cut_seed % (n + 1));
            for i in cut.len()..n {
                cut.append(leaves[i as usize]);
            }
            prop_assert_eq!(cut.root(), tree.root());
        }
    }
}
