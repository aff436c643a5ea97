//! The store of named ordered maps, and its O(1) snapshots.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use imbl::OrdMap;
use ref_cast::RefCast;

use crate::{KvError, Tx, Version, WriteSet};

/// One key's state: its value (`None` once removed) and the version that last wrote it.
///
/// Removed keys stay as tombstones so that conflict detection sees removals.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) value: Option<Arc<[u8]>>,
    pub(crate) version: Version,
}

/// A key in a map of the store: its bytes, ordered as byte strings are.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key(Arc<[u8]>);

/// The borrowed form of [`Key`], to look keys up by `&[u8]`.
#[derive(Debug, PartialEq, Eq, RefCast)]
#[repr(transparent)]
struct KeyRef([u8]);

impl Borrow<KeyRef> for Key {
    fn borrow(&self) -> &KeyRef {
        KeyRef::ref_cast(&self.0)
    }
}

impl Ord for KeyRef {
    fn cmp(&self, other: &KeyRef) -> Ordering {
        compare_bytes(&self.0, &other.0)
    }
}

impl PartialOrd for KeyRef {
    fn partial_cmp(&self, other: &KeyRef) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        compare_bytes(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `a.cmp(b)` for byte strings, eight bytes at a time and inline. The maps' B-trees compare
/// keys a few dozen times per write; as `[u8]`'s `cmp` each comparison was a call to `memcmp`,
/// which was 11% of a follower's CPU under the Ethereum load (storage keys share a 20-byte
/// contract address, so most comparisons read past it).
fn compare_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.len().min(b.len());
    let (mut a_rest, mut b_rest) = (&a[..common], &b[..common]);
    while let (Some((a_word, a_tail)), Some((b_word, b_tail))) = (
        a_rest.split_first_chunk::<8>(),
        b_rest.split_first_chunk::<8>(),
    ) {
        let (x, y) = (u64::from_be_bytes(*a_word), u64::from_be_bytes(*b_word));
        if x != y {
            return x.cmp(&y);
        }
        (a_rest, b_rest) = (a_tail, b_tail);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// One map: its entries (tombstones included) and how many of them are present.
#[derive(Clone, Debug, Default)]
pub(crate) struct MapState {
    entries: OrdMap<Key, Entry>,
    present_keys: usize,
}

/// An immutable, cheaply cloned view of the store at one version.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    maps: OrdMap<String, MapState>,
    version: Version,
}

impl Snapshot {
    /// The version (seqno of the last applied write set) this snapshot shows.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The value of `key` in `map`, or `None` if it is absent or removed.
    pub fn get(&self, map: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.get_ref(map, key).map(<[u8]>::to_vec)
    }

    /// Like [`Snapshot::get`], without copying the value.
    pub fn get_ref(&self, map: &str, key: &[u8]) -> Option<&[u8]> {
        self.entry(map, key)?.value.as_deref()
    }

    /// The version that last wrote `key` in `map` (removals included); 0 if never written.
    pub fn key_version(&self, map: &str, key: &[u8]) -> Version {
        self.entry(map, key).map_or(0, |entry| entry.version)
    }

    /// Names of the maps holding at least one present key, in order.
    pub fn map_names(&self) -> Vec<String> {
        let names = self.maps.iter().filter(|(_, state)| state.present_keys > 0);
        names.map(|(name, _)| name.clone()).collect()
    }

    /// The present entries of `map` in key order.
    pub fn entries<'a>(&'a self, map: &str) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let entries = self
            .maps
            .get(map)
            .into_iter()
            .flat_map(|state| state.entries.iter());
        entries.filter_map(|(key, entry)| Some((&key.0[..], entry.value.as_deref()?)))
    }

    /// A write set that rebuilds this snapshot's present entries into an empty store.
    pub fn to_write_set(&self) -> WriteSet {
        let mut write_set = WriteSet::new();
        for name in self.map_names() {
            let entries = self
                .entries(&name)
                .map(|(key, value)| (key.to_vec(), Some(value.to_vec())));
            write_set.maps.insert(name, entries.collect());
        }
        write_set
    }

    pub(crate) fn entry(&self, map: &str, key: &[u8]) -> Option<&Entry> {
        self.maps.get(map)?.entries.get(KeyRef::ref_cast(key))
    }

    /// Entries of `map` (tombstones included) from `lower` upwards, in key order.
    pub(crate) fn entries_from<'a>(
        &'a self,
        map: &str,
        lower: Bound<&[u8]>,
    ) -> impl Iterator<Item = (&'a [u8], &'a Entry)> + 'a {
        let state = self.maps.get(map);
        let lower = lower.map(KeyRef::ref_cast);
        let range = state.map(|state| state.entries.range::<_, KeyRef>((lower, Bound::Unbounded)));
        range
            .into_iter()
            .flatten()
            .map(|(key, entry)| (&key.0[..], entry))
    }
}

/// The whole store: named ordered maps of byte keys to byte values.
///
/// Clone is O(1): maps are persistent (`imbl::OrdMap`). Maps with no present key are not
/// listed by [`Store::map_names`]. Rollback is done by the host keeping older stores.
#[derive(Clone, Default, Debug)]
pub struct Store {
    state: Snapshot,
}

impl Store {
    /// An empty store at version 0.
    pub fn new() -> Store {
        Store::default()
    }

    /// The seqno of the last write set applied (0 for an empty store).
    pub fn version(&self) -> Version {
        self.state.version
    }

    /// An O(1) consistent snapshot for a transaction.
    pub fn snapshot(&self) -> Snapshot {
        self.state.clone()
    }

    /// Applies a committed, ordered write set at `version`.
    ///
    /// # Panics
    ///
    /// If `version <= self.version()`, or if the write set breaks the limits (possible only
    /// by filling [`WriteSet::maps`] directly): both are bugs in the caller.
    pub fn apply(&mut self, write_set: &WriteSet, version: Version) {
        assert!(
            version > self.state.version,
            "apply at {version} after {}",
            self.state.version
        );
        for (name, entries) in &write_set.maps {
            if entries.is_empty() {
                continue;
            }
            if self.state.maps.get(name.as_str()).is_none() {
                self.state.maps.insert(name.clone(), MapState::default());
            }
            let Some(state) = self.state.maps.get_mut(name.as_str()) else {
                unreachable!("map {name:?} was inserted just above");
            };
            for (key, value) in entries {
                if let Err(error) = crate::write_set::check_limits(name, key, value.as_deref()) {
                    panic!("applying a write set that breaks the limits: {error}");
                }
                let entry = Entry {
                    value: value.as_deref().map(Arc::from),
                    version,
                };
                let present_now = entry.value.is_some();
                let previous = state.entries.insert(Key(Arc::from(key.as_slice())), entry);
                let present_before = previous.is_some_and(|entry| entry.value.is_some());
                match (present_before, present_now) {
                    (false, true) => state.present_keys += 1,
                    (true, false) => state.present_keys -= 1,
                    _ => {}
                }
                assert!(state.present_keys <= state.entries.len());
            }
        }
        self.state.version = version;
    }

    /// Optimistic concurrency check of `tx` against this store. Does not apply anything.
    ///
    /// # Errors
    ///
    /// [`KvError::Conflict`] if a key the transaction read, or any key inside a range it
    /// scanned, was written (or removed) after the transaction's snapshot;
    /// [`KvError::SnapshotAhead`] if the snapshot is newer than this store.
    pub fn check_conflicts(&self, tx: &Tx) -> Result<(), KvError> {
        let snapshot_version = tx.snapshot().version();
        if snapshot_version > self.version() {
            return Err(KvError::SnapshotAhead {
                snapshot_version,
                store_version: self.version(),
            });
        }
        if snapshot_version == self.version() {
            return Ok(());
        }
        let conflict = |map: &str, key: &[u8]| KvError::Conflict {
            map: map.to_owned(),
            key: key.to_vec(),
        };
        for (map, keys) in &tx.reads {
            for key in keys.keys() {
                if self.state.key_version(map, key) > snapshot_version {
                    return Err(conflict(map, key));
                }
            }
        }
        for range in &tx.range_reads {
            let lower = match &range.start_after {
                Some(start_after) if start_after.as_slice() >= range.prefix.as_slice() => {
                    Bound::Excluded(start_after.as_slice())
                }
                _ => Bound::Included(range.prefix.as_slice()),
            };
            let entries = self.state.entries_from(&range.map, lower);
            let in_range = entries.take_while(|(key, _)| {
                let within_page = match &range.last {
                    Some(last) => *key <= last.as_slice(),
                    None => true,
                };
                key.starts_with(&range.prefix) && within_page
            });
            for (key, entry) in in_range {
                if entry.version > snapshot_version {
                    return Err(conflict(&range.map, key));
                }
            }
        }
        Ok(())
    }

    /// Checks `tx` for conflicts and, if there are none, applies its write set at `version`.
    ///
    /// # Errors
    ///
    /// As [`Store::check_conflicts`]; nothing is applied then.
    ///
    /// # Panics
    ///
    /// As [`Store::apply`].
    pub fn commit(&mut self, tx: Tx, version: Version) -> Result<WriteSet, KvError> {
        self.check_conflicts(&tx)?;
        let write_set = tx.into_write_set();
        self.apply(&write_set, version);
        Ok(write_set)
    }

    /// Reads without a transaction: the value of `key` in `map`, or `None`.
    pub fn get(&self, map: &str, key: &[u8]) -> Option<&[u8]> {
        self.state.get_ref(map, key)
    }

    /// Names of the maps holding at least one present key, in order.
    pub fn map_names(&self) -> Vec<String> {
        self.state.map_names()
    }

    /// The present entries of `map` in key order.
    pub fn entries<'a>(&'a self, map: &str) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.state.entries(map)
    }

    /// How many keys are present across all maps (tombstones not counted): the number of
    /// entries a snapshot of this store holds. O(number of maps).
    pub fn present_keys(&self) -> u64 {
        let counts = self
            .state
            .maps
            .values()
            .map(|state| state.present_keys as u64);
        counts.sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The store's key order is the byte-string order, whatever the lengths and shared
        /// prefixes (the small alphabet makes long common prefixes likely).
        #[test]
        fn keys_compare_as_byte_strings(
            prefix in proptest::collection::vec(any::<u8>(), 0..24),
            a in proptest::collection::vec(0u8..3, 0..20),
            b in proptest::collection::vec(0u8..3, 0..20),
        ) {
            let a = [prefix.as_slice(), &a].concat();
            let b = [prefix.as_slice(), &b].concat();
            prop_assert_eq!(compare_bytes(&a, &b), a.cmp(&b));
            prop_assert_eq!(compare_bytes(&b, &a), b.cmp(&a));
            prop_assert_eq!(compare_bytes(&a, &a), Ordering::Equal);
            let (key_a, key_b) = (Key(Arc::from(a.as_slice())), Key(Arc::from(b.as_slice())));
            prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
            prop_assert_eq!(KeyRef::ref_cast(&a[..]).cmp(KeyRef::ref_cast(&b[..])), a.cmp(&b));
        }
    }

    fn write(map: &str, key: &[u8], value: Option<&[u8]>) -> WriteSet {
        let mut ws = WriteSet::new();
        match value {
            Some(value) => ws.put(map, key, value),
            None => ws.remove(map, key),
        }
        ws
    }

    #[test]
    fn apply_and_get() {
        let mut store = Store::new();
        assert_eq!(store.version(), 0);
        store.apply(&write("m", b"k", Some(b"v")), 1);
        assert_eq!(store.version(), 1);
        assert_eq!(store.get("m", b"k"), Some(&b"v"[..]));
        assert_eq!(store.get("m", b"x"), None);
        assert_eq!(store.get("other", b"k"), None);
        assert_eq!(store.map_names(), ["m"]);
        store.apply(&write("m", b"k", None), 2);
        assert_eq!(store.get("m", b"k"), None);
        assert_eq!(store.snapshot().key_version("m", b"k"), 2);
        assert!(store.map_names().is_empty());
    }

    #[test]
    fn present_keys_counts_live_keys_of_every_map() {
        let mut store = Store::new();
        assert_eq!(store.present_keys(), 0);
        let mut ws = write("a", b"1", Some(b"x"));
        ws.put("a", b"2", b"y");
        ws.put("b", b"1", b"z");
        store.apply(&ws, 1);
        assert_eq!(store.present_keys(), 3);
        // Overwriting keeps the count; removing (and removing again) drops it once.
        store.apply(&write("a", b"1", Some(b"new")), 2);
        assert_eq!(store.present_keys(), 3);
        store.apply(&write("a", b"2", None), 3);
        store.apply(&write("a", b"2", None), 4);
        assert_eq!(store.present_keys(), 2);
        assert_eq!(
            store.present_keys(),
            store
                .snapshot()
                .to_write_set()
                .maps
                .values()
                .map(|m| m.len() as u64)
                .sum::<u64>()
        );
    }

    #[test]
    fn removing_absent_key_and_empty_maps_list_nothing() {
        let mut store = Store::new();
        let mut ws = write("m", b"k", None);
        ws.maps.insert("empty".to_owned(), Default::default());
        store.apply(&ws, 1);
        assert!(store.map_names().is_empty());
        assert_eq!(store.entries("m").count(), 0);
        assert_eq!(store.snapshot().to_write_set(), WriteSet::new());
    }

    #[test]
    #[should_panic(expected = "apply at 1 after 1")]
    fn apply_requires_increasing_version() {
        let mut store = Store::new();
        store.apply(&WriteSet::new(), 1);
        store.apply(&WriteSet::new(), 1);
    }

    #[test]
    fn snapshot_isolation() {
        let mut store = Store::new();
        store.apply(&write("m", b"a", Some(b"1")), 1);
        let before = store.snapshot();
        store.apply(&write("m", b"a", Some(b"2")), 2);
        store.apply(&write("m", b"b", Some(b"3")), 3);
        store.apply(&write("m", b"a", None), 4);
        assert_eq!(before.version(), 1);
        assert_eq!(before.get("m", b"a"), Some(b"1".to_vec()));
        assert_eq!(before.get("m", b"b"), None);
        let after = store.snapshot();
        assert_eq!(after.get("m", b"a"), None);
        assert_eq!(after.get("m", b"b"), Some(b"3".to_vec()));
        // A cloned store is independent too.
        let mut fork = store.clone();
        fork.apply(&write("m", b"b", Some(b"fork")), 5);
        assert_eq!(store.get("m", b"b"), Some(&b"3"[..]));
        assert_eq!(fork.get("m", b"b"), Some(&b"fork"[..]));
    }

    #[test]
    fn to_write_set_rebuilds_the_store() {
        let mut store = Store::new();
        let mut ws = WriteSet::new();
        ws.put("public:a", b"1", b"x");
        ws.put("b", b"2", b"y");
        ws.put("b", b"3", b"z");
        store.apply(&ws, 1);
        store.apply(&write("b", b"3", None), 2);
        let mut rebuilt = Store::new();
        rebuilt.apply(&store.snapshot().to_write_set(), 1);
        assert_eq!(rebuilt.map_names(), store.map_names());
        for name in store.map_names() {
            assert!(rebuilt.entries(&name).eq(store.entries(&name)));
        }
    }
}
