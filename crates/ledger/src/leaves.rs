//! The per-transaction leaf records a node keeps for receipts and snapshots, in a list whose
//! clone is cheap: a snapshot of a long ledger takes its leaves without copying them.

use std::sync::Arc;

use crate::SnapshotLeaf;

/// Leaves per shared chunk: a clone copies at most this many leaves (the open chunk) and one
/// pointer per full chunk.
pub const LEAF_CHUNK: usize = 1024;

/// An append-only (and truncatable) list of [`SnapshotLeaf`], index `i` for seqno `i + 1`.
///
/// Full chunks of [`LEAF_CHUNK`] leaves are shared between clones and never change; only the
/// open chunk at the end is copied by a clone. Truncating into a full chunk copies that chunk
/// back into the open one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotLeaves {
    full: Vec<Arc<[SnapshotLeaf]>>,
    open: Vec<SnapshotLeaf>,
}

impl SnapshotLeaves {
    /// An empty list.
    pub fn new() -> SnapshotLeaves {
        SnapshotLeaves::default()
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.full.len() * LEAF_CHUNK + self.open.len()
    }

    /// True when there is no leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf.
    pub fn push(&mut self, leaf: SnapshotLeaf) {
        if self.open.capacity() == 0 {
            self.open.reserve_exact(LEAF_CHUNK);
        }
        self.open.push(leaf);
        if self.open.len() == LEAF_CHUNK {
            let chunk = std::mem::take(&mut self.open);
            self.full.push(Arc::from(chunk));
        }
    }

    /// The leaf at `index`, if there is one.
    pub fn get(&self, index: usize) -> Option<&SnapshotLeaf> {
        match self.full.get(index / LEAF_CHUNK) {
            Some(chunk) => chunk.get(index % LEAF_CHUNK),
            None => self.open.get(index - self.full.len() * LEAF_CHUNK),
        }
    }

    /// Drops every leaf at or after `len`; does nothing if `len >= self.len()`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let full = len / LEAF_CHUNK;
        if full < self.full.len() {
            self.open = self.full[full][..len % LEAF_CHUNK].to_vec();
            self.full.truncate(full);
        } else {
            self.open.truncate(len - full * LEAF_CHUNK);
        }
        assert_eq!(self.len(), len);
    }

    /// The first `len` leaves (all of them if there are fewer), sharing the full chunks.
    pub fn prefix(&self, len: usize) -> SnapshotLeaves {
        let full = (len / LEAF_CHUNK).min(self.full.len());
        let mut prefix = SnapshotLeaves {
            full: self.full[..full].to_vec(),
            open: Vec::new(),
        };
        let rest = len.min(self.len()) - full * LEAF_CHUNK;
        let source = self
            .full
            .get(full)
            .map_or(&self.open[..], |chunk| &chunk[..]);
        prefix.open.reserve_exact(LEAF_CHUNK);
        prefix.open.extend_from_slice(&source[..rest]);
        prefix
    }

    /// The leaves in order, as slices (one per chunk).
    pub fn chunks(&self) -> impl Iterator<Item = &[SnapshotLeaf]> + '_ {
        let open = (!self.open.is_empty()).then_some(&self.open[..]);
        self.full.iter().map(|chunk| &chunk[..]).chain(open)
    }

    /// The leaves in order.
    pub fn iter(&self) -> impl Iterator<Item = &SnapshotLeaf> + '_ {
        self.chunks().flatten()
    }
}

impl FromIterator<SnapshotLeaf> for SnapshotLeaves {
    fn from_iter<I: IntoIterator<Item = SnapshotLeaf>>(iter: I) -> SnapshotLeaves {
        let mut leaves = SnapshotLeaves::new();
        for leaf in iter {
            leaves.push(leaf);
        }
        leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf(index: usize) -> SnapshotLeaf {
        let byte = |salt: usize| {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(index as u64).to_le_bytes());
            digest[8] = salt as u8;
            digest
        };
        SnapshotLeaf {
            write_set_digest: byte(1),
            claims_digest: byte(2),
            leaf: byte(3),
        }
    }

    proptest! {
        /// Any sequence of pushes, truncations and prefixes leaves the list equal to a plain
        /// `Vec` driven the same way, and clones taken along the way keep their contents.
        #[test]
        fn behaves_like_a_vec(steps in proptest::collection::vec((0usize..3, 0usize..3000), 1..40)) {
            let mut list = SnapshotLeaves::new();
            let mut model: Vec<SnapshotLeaf> = Vec::new();
            let mut clones = Vec::new();
            let mut next = 0;
            for (kind, amount) in steps {
                match kind {
                    0 => for _ in 0..amount {
                        list.push(leaf(next));
                        model.push(leaf(next));
                        next += 1;
                    },
                    1 => {
                        list.truncate(amount);
                        model.truncate(amount);
                    }
                    _ => {
                        let prefix = list.prefix(amount);
                        let expected = &model[..amount.min(model.len())];
                        prop_assert_eq!(prefix.iter().copied().collect::<Vec<_>>(), expected);
                        clones.push((prefix, expected.to_vec()));
                    }
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.iter().copied().collect::<Vec<_>>(), model.clone());
                for index in [0, model.len() / 2, model.len().saturating_sub(1), model.len()] {
                    prop_assert_eq!(list.get(index), model.get(index));
                }
            }
            for (clone, expected) in clones {
                prop_assert_eq!(clone.iter().copied().collect::<Vec<_>>(), expected);
            }
        }
    }

    #[test]
    fn a_prefix_shares_the_full_chunks() {
        let leaves: SnapshotLeaves = (0..3 * LEAF_CHUNK + 5).map(leaf).collect();
        let prefix = leaves.prefix(2 * LEAF_CHUNK + 1);
        assert_eq!(prefix.len(), 2 * LEAF_CHUNK + 1);
        assert!(Arc::ptr_eq(&prefix.full[0], &leaves.full[0]));
        assert!(Arc::ptr_eq(&prefix.full[1], &leaves.full[1]));
        assert_eq!(prefix.get(2 * LEAF_CHUNK), Some(&leaf(2 * LEAF_CHUNK)));
        assert_eq!(prefix.get(2 * LEAF_CHUNK + 1), None);
    }
}
