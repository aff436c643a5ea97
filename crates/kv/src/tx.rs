//! Transactions: reads over a snapshot plus own writes, with a recorded read set.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::store::Entry;
use crate::{KvError, Snapshot, Version, WriteSet};

/// A prefix scan the transaction made, recorded so that commit can detect phantoms.
#[derive(Clone, Debug)]
pub(crate) struct RangeRead {
    pub(crate) map: String,
    pub(crate) prefix: Vec<u8>,
    pub(crate) start_after: Option<Vec<u8>>,
    /// The last key returned when the scan stopped at its limit (inclusive end of what it
    /// saw); `None` if it saw the whole prefix.
    pub(crate) last: Option<Vec<u8>>,
}

/// A transaction: reads see the snapshot plus the transaction's own writes; writes are
/// buffered in a [`WriteSet`] until the host commits it.
#[derive(Clone, Debug)]
pub struct Tx {
    snapshot: Snapshot,
    writes: WriteSet,
    /// Keys read from the snapshot, with the version observed.
    pub(crate) reads: BTreeMap<String, BTreeMap<Vec<u8>, Version>>,
    pub(crate) range_reads: Vec<RangeRead>,
}

impl Tx {
    /// A transaction over `snapshot`.
    pub fn new(snapshot: Snapshot) -> Tx {
        Tx {
            snapshot,
            writes: WriteSet::new(),
            reads: BTreeMap::new(),
            range_reads: Vec::new(),
        }
    }

    /// The snapshot this transaction reads.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The value of `key` in `map`: the transaction's own write if any, otherwise the
    /// snapshot's value, in which case the read (key and version) goes into the read set.
    pub fn get(&mut self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(own) = self.writes.get(map, key) {
            return own.map(<[u8]>::to_vec);
        }
        let entry = self.snapshot.entry(map, key);
        let version = entry.map_or(0, |entry| entry.version);
        assert!(version <= self.snapshot.version());
        let keys = match self.reads.get_mut(map) {
            Some(keys) => keys,
            None => self.reads.entry(map.to_owned()).or_default(),
        };
        keys.entry(key.to_vec()).or_insert(version);
        entry
            .and_then(|entry| entry.value.as_deref())
            .map(<[u8]>::to_vec)
    }

    /// Buffers setting `key` in `map` to `value`.
    ///
    /// # Panics
    ///
    /// If the map name is empty or a length is above its maximum; use [`Tx::try_put`] for
    /// outside input.
    pub fn put(&mut self, map: &str, key: &[u8], value: &[u8]) {
        self.writes.put(map, key, value);
    }

    /// Like [`Tx::put`], but returns an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`KvError::MapNameEmpty`] or [`KvError::TooLarge`].
    pub fn try_put(&mut self, map: &str, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.writes.try_put(map, key, value)
    }

    /// Buffers removing `key` from `map` (recorded even if the key does not exist).
    ///
    /// # Panics
    ///
    /// As [`Tx::put`]; use [`Tx::try_remove`] for outside input.
    pub fn remove(&mut self, map: &str, key: &[u8]) {
        self.writes.remove(map, key);
    }

    /// Like [`Tx::remove`], but returns an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`KvError::MapNameEmpty`] or [`KvError::TooLarge`].
    pub fn try_remove(&mut self, map: &str, key: &[u8]) -> Result<(), KvError> {
        self.writes.try_remove(map, key)
    }

    /// Ordered scan of the keys of `map` that start with `prefix` and are greater than
    /// `start_after` (if given), over the snapshot with this transaction's own writes laid on
    /// top; at most `limit` `(key, value)` pairs. The scanned range goes into the read set.
    pub fn scan_prefix(
        &mut self,
        map: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        // Keys with a given prefix are contiguous and not below the prefix itself.
        let lower = match start_after {
            Some(start_after) if start_after >= prefix => Bound::Excluded(start_after),
            _ => Bound::Included(prefix),
        };
        let in_prefix = |key: &&[u8]| key.starts_with(prefix);
        let mut stored = self
            .snapshot
            .entries_from(map, lower)
            .take_while(|(key, _)| in_prefix(key))
            .peekable();
        let own_entries = self.writes.maps.get(map).into_iter();
        let own_range =
            own_entries.flat_map(|entries| entries.range::<[u8], _>((lower, Bound::Unbounded)));
        let mut own = own_range
            .map(|(key, value)| (key.as_slice(), value.as_deref()))
            .take_while(|(key, _)| in_prefix(key))
            .peekable();
        let mut limit_reached = false;
        // Each iteration consumes at least one item of one of the two finite iterators. The
        // `expect`s below only follow a `peek` that returned `Some`, so they cannot fail.
        loop {
            let next: (&[u8], Option<&[u8]>) = match (stored.peek(), own.peek()) {
                (None, None) => break,
                (Some(_), None) => next_stored(&mut stored),
                (None, Some(_)) => own.next().expect("peeked"),
                (Some((stored_key, _)), Some((own_key, _))) => {
                    if stored_key < own_key {
                        next_stored(&mut stored)
                    } else {
                        if stored_key == own_key {
                            // The transaction's own write hides the stored entry.
                            stored.next();
                        }
                        own.next().expect("peeked")
                    }
                }
            };
            if let (key, Some(value)) = next {
                out.push((key.to_vec(), value.to_vec()));
                if out.len() == limit {
                    limit_reached = true;
                    break;
                }
            }
        }
        assert!(out.len() <= limit);
        assert!(out.windows(2).all(|pair| pair[0].0 < pair[1].0));
        self.range_reads.push(RangeRead {
            map: map.to_owned(),
            prefix: prefix.to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            last: if limit_reached {
                out.last().map(|(key, _)| key.clone())
            } else {
                None
            },
        });
        out
    }

    /// True if the transaction has written nothing.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes buffered so far.
    pub fn write_set(&self) -> &WriteSet {
        &self.writes
    }

    /// Consumes the transaction, returning its writes.
    pub fn into_write_set(self) -> WriteSet {
        self.writes
    }
}

fn next_stored<'a>(
    stored: &mut impl Iterator<Item = (&'a [u8], &'a Entry)>,
) -> (&'a [u8], Option<&'a [u8]>) {
    let (key, entry) = stored.next().expect("peeked");
    (key, entry.value.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use proptest::prelude::*;

    fn store_with(entries: &[(&str, &[u8], &[u8])]) -> Store {
        let mut ws = WriteSet::new();
        for (map, key, value) in entries {
            ws.put(map, key, value);
        }
        let mut store = Store::new();
        store.apply(&ws, 1);
        store
    }

    fn pairs(items: &[(&[u8], &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items
            .iter()
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect()
    }

    #[test]
    fn read_your_writes() {
        let store = store_with(&[("m", b"a", b"1"), ("m", b"b", b"2")]);
        let mut tx = Tx::new(store.snapshot());
        assert!(tx.is_read_only());
        assert_eq!(tx.get("m", b"a"), Some(b"1".to_vec()));
        tx.put("m", b"a", b"new");
        assert_eq!(tx.get("m", b"a"), Some(b"new".to_vec()));
        tx.remove("m", b"b");
        assert_eq!(tx.get("m", b"b"), None);
        tx.put("other", b"c", b"3");
        assert_eq!(tx.get("other", b"c"), Some(b"3".to_vec()));
        tx.remove("m", b"never");
        assert!(!tx.is_read_only());
        assert_eq!(tx.write_set().get("m", b"never"), Some(None));
        // The snapshot is untouched by buffered writes.
        assert_eq!(tx.snapshot().get("m", b"a"), Some(b"1".to_vec()));
        assert_eq!(store.get("m", b"b"), Some(&b"2"[..]));
        let ws = tx.into_write_set();
        assert_eq!(ws.len(), 4);
    }

    #[test]
    fn try_put_rejects_outside_input() {
        let mut tx = Tx::new(Store::new().snapshot());
        assert!(tx
            .try_put("m", b"k", &vec![0; crate::VALUE_BYTES_MAX + 1])
            .is_err());
        assert!(tx.try_remove("", b"k").is_err());
        assert!(tx.is_read_only());
        tx.try_put("m", b"k", b"v").expect("within limits");
        assert!(!tx.is_read_only());
    }

    #[test]
    fn scan_prefix_orders_overlays_and_pages() {
        let store = store_with(&[
            ("m", b"a", b"0"),
            ("m", b"p1", b"1"),
            ("m", b"p3", b"3"),
            ("m", b"p5", b"5"),
            ("m", b"q", b"9"),
            ("n", b"p2", b"x"),
        ]);
        let mut tx = Tx::new(store.snapshot());
        let all = tx.scan_prefix("m", b"p", None, 100);
        assert_eq!(all, pairs(&[(b"p1", b"1"), (b"p3", b"3"), (b"p5", b"5")]));
        tx.put("m", b"p2", b"2");
        tx.put("m", b"p3", b"33");
        tx.remove("m", b"p5");
        tx.put("m", b"p6", b"6");
        tx.put("m", b"r", b"no");
        let all = tx.scan_prefix("m", b"p", None, 100);
        assert_eq!(
            all,
            pairs(&[(b"p1", b"1"), (b"p2", b"2"), (b"p3", b"33"), (b"p6", b"6")])
        );
        // Paging with limit and start_after walks the same sequence.
        let first = tx.scan_prefix("m", b"p", None, 2);
        assert_eq!(first, pairs(&[(b"p1", b"1"), (b"p2", b"2")]));
        let second = tx.scan_prefix("m", b"p", Some(b"p2"), 2);
        assert_eq!(second, pairs(&[(b"p3", b"33"), (b"p6", b"6")]));
        assert!(tx.scan_prefix("m", b"p", Some(b"p6"), 2).is_empty());
        // start_after outside the prefix range.
        assert_eq!(
            tx.scan_prefix("m", b"p", Some(b"a"), 1),
            pairs(&[(b"p1", b"1")])
        );
        assert!(tx.scan_prefix("m", b"p", Some(b"z"), 5).is_empty());
        assert!(tx.scan_prefix("m", b"p", None, 0).is_empty());
        // The empty prefix scans the whole map; other maps are separate.
        assert_eq!(tx.scan_prefix("m", b"", None, 100).len(), 7);
        assert_eq!(tx.scan_prefix("n", b"", None, 100), pairs(&[(b"p2", b"x")]));
        assert!(tx.scan_prefix("absent", b"", None, 100).is_empty());
    }

    #[test]
    fn scan_prefix_with_high_bytes() {
        let store = store_with(&[
            ("m", b"\xff", b"1"),
            ("m", b"\xff\xff", b"2"),
            ("m", b"\xfe", b"0"),
        ]);
        let mut tx = Tx::new(store.snapshot());
        assert_eq!(
            tx.scan_prefix("m", b"\xff", None, 10),
            pairs(&[(b"\xff", b"1"), (b"\xff\xff", b"2")])
        );
    }

    #[test]
    fn conflict_on_read_key_written_later() {
        let mut store = store_with(&[("m", b"k", b"1"), ("m", b"j", b"1")]);
        let mut reader = Tx::new(store.snapshot());
        assert_eq!(reader.get("m", b"k"), Some(b"1".to_vec()));
        let mut other_reader = Tx::new(store.snapshot());
        other_reader.get("m", b"j");
        other_reader.get("m", b"absent");
        other_reader.put("m", b"k", b"blind write");
        let mut ws = WriteSet::new();
        ws.put("m", b"k", b"2");
        store.apply(&ws, 2);
        match store.check_conflicts(&reader) {
            Err(KvError::Conflict { map, key }) => {
                assert_eq!((map.as_str(), key.as_slice()), ("m", &b"k"[..]))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        store
            .check_conflicts(&other_reader)
            .expect("read other keys only");
        store.commit(other_reader, 3).expect("no conflict");
        assert_eq!(store.get("m", b"k"), Some(&b"blind write"[..]));
    }

    #[test]
    fn conflict_on_removal_and_absent_key_creation() {
        let mut store = store_with(&[("m", b"k", b"1")]);
        let mut tx = Tx::new(store.snapshot());
        tx.get("m", b"k");
        tx.get("m", b"new");
        let mut removal = WriteSet::new();
        removal.remove("m", b"k");
        store.apply(&removal, 2);
        assert!(store.check_conflicts(&tx).is_err());

        let mut tx = Tx::new(store.snapshot());
        assert_eq!(tx.get("m", b"new"), None);
        let mut creation = WriteSet::new();
        creation.put("m", b"new", b"v");
        store.apply(&creation, 3);
        assert!(store.check_conflicts(&tx).is_err());
    }

    #[test]
    fn own_writes_are_not_reads() {
        let mut store = store_with(&[("m", b"k", b"1")]);
        let mut tx = Tx::new(store.snapshot());
        tx.put("m", b"k", b"mine");
        assert_eq!(tx.get("m", b"k"), Some(b"mine".to_vec()));
        let mut ws = WriteSet::new();
        ws.put("m", b"k", b"theirs");
        store.apply(&ws, 2);
        store
            .check_conflicts(&tx)
            .expect("a blind write does not conflict");
    }

    #[test]
    fn conflict_on_phantom_in_scanned_range() {
        let mut store = store_with(&[("m", b"p1", b"1"), ("m", b"p5", b"5"), ("m", b"p9", b"9")]);
        let snapshot = store.snapshot();
        let mut whole = Tx::new(snapshot.clone());
        whole.scan_prefix("m", b"p", None, 10);
        let mut paged = Tx::new(snapshot.clone());
        assert_eq!(paged.scan_prefix("m", b"p", None, 2).len(), 2);
        let mut other_prefix = Tx::new(snapshot);
        other_prefix.scan_prefix("m", b"q", None, 10);
        let mut ws = WriteSet::new();
        ws.put("m", b"p7", b"phantom");
        ws.put("m", b"o", b"outside");
        store.apply(&ws, 2);
        assert!(store.check_conflicts(&whole).is_err());
        // The page ended at p5, so p7 is beyond what it saw.
        store.check_conflicts(&paged).expect("p7 is past the page");
        store
            .check_conflicts(&other_prefix)
            .expect("disjoint prefix");
        let mut ws = WriteSet::new();
        ws.remove("m", b"p1");
        store.apply(&ws, 3);
        assert!(store.check_conflicts(&paged).is_err());
    }

    #[test]
    fn snapshot_ahead_of_store_is_an_error() {
        let store = store_with(&[("m", b"k", b"1")]);
        let tx = Tx::new(store.snapshot());
        let old = Store::new();
        assert!(matches!(
            old.check_conflicts(&tx),
            Err(KvError::SnapshotAhead { .. })
        ));
        store.check_conflicts(&tx).expect("same version");
    }

    proptest! {
        /// scan_prefix agrees with a plain BTreeMap model of snapshot plus own writes.
        #[test]
        fn scan_prefix_matches_model(
            stored in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..4), proptest::collection::vec(any::<u8>(), 0..3), 0..20),
            own in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..4), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)), 0..10),
            prefix in proptest::collection::vec(0u8..4, 0..3),
            start_after in proptest::option::of(proptest::collection::vec(0u8..4, 0..4)),
            limit in 0usize..25,
        ) {
            let mut ws = WriteSet::new();
            for (key, value) in &stored {
                ws.put("m", key, value);
            }
            let mut store = Store::new();
            store.apply(&ws, 1);
            let mut tx = Tx::new(store.snapshot());
            let mut model = stored.clone();
            for (key, value) in &own {
                match value {
                    Some(value) => {
                        tx.put("m", key, value);
                        model.insert(key.clone(), value.clone());
                    }
                    None => {
                        tx.remove("m", key);
                        model.remove(key);
                    }
                }
            }
            let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                .into_iter()
                .filter(|(key, _)| key.starts_with(&prefix))
                .filter(|(key, _)| start_after.iter().all(|after| key > after))
                .take(limit)
                .collect();
            prop_assert_eq!(tx.scan_prefix("m", &prefix, start_after.as_deref(), limit), expected);
        }
    }
}
