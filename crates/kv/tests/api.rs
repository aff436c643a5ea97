//! Public-API tests: the store against a model, followers, and soundness of conflict checks.

use std::collections::BTreeMap;

use charter_kv::{Store, Tx, WriteSet};
use proptest::prelude::*;

const MAPS: [&str; 3] = ["public:a", "b", "c"];

type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn arb_write_set() -> impl Strategy<Value = WriteSet> {
    let op = (
        0..MAPS.len(),
        proptest::collection::vec(0u8..3, 0..3),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)),
    );
    proptest::collection::vec(op, 0..6).prop_map(|ops| {
        let mut write_set = WriteSet::new();
        for (map, key, value) in ops {
            match value {
                Some(value) => write_set.put(MAPS[map], &key, &value),
                None => write_set.remove(MAPS[map], &key),
            }
        }
        write_set
    })
}

fn apply_to_model(model: &mut Model, write_set: &WriteSet) {
    for (map, entries) in &write_set.maps {
        for (key, value) in entries {
            match value {
                Some(value) => model.insert((map.clone(), key.clone()), value.clone()),
                None => model.remove(&(map.clone(), key.clone())),
            };
        }
    }
}

fn assert_matches_model(store: &Store, model: &Model) {
    for map in MAPS {
        let stored: Vec<(Vec<u8>, Vec<u8>)> = store
            .entries(map)
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .iter()
            .filter(|((name, _), _)| name == map)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect();
        assert_eq!(stored, expected, "map {map}");
    }
    let mut names: Vec<String> = model.keys().map(|(name, _)| name.clone()).collect();
    names.dedup();
    assert_eq!(store.map_names(), names);
}

/// A read a transaction can make: a point read or a prefix scan.
#[derive(Clone, Debug)]
enum Read {
    Get(usize, Vec<u8>),
    Scan(usize, Vec<u8>, Option<Vec<u8>>, usize),
}

fn arb_read() -> impl Strategy<Value = Read> {
    let key = || proptest::collection::vec(0u8..3, 0..3);
    prop_oneof![
        (0..MAPS.len(), key()).prop_map(|(map, key)| Read::Get(map, key)),
        (0..MAPS.len(), key(), proptest::option::of(key()), 0usize..4)
            .prop_map(|(map, prefix, after, limit)| Read::Scan(map, prefix, after, limit)),
    ]
}

fn run_reads(tx: &mut Tx, reads: &[Read]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let run = |read: &Read, tx: &mut Tx| match read {
        Read::Get(map, key) => tx
            .get(MAPS[*map], key)
            .map(|value| vec![(key.clone(), value)])
            .unwrap_or_default(),
        Read::Scan(map, prefix, after, limit) => {
            tx.scan_prefix(MAPS[*map], prefix, after.as_deref(), *limit)
        }
    };
    reads.iter().map(|read| run(read, tx)).collect()
}

proptest! {
    #[test]
    fn store_follows_model_and_snapshots_stay_fixed(
        write_sets in proptest::collection::vec(arb_write_set(), 1..12),
    ) {
        let mut store = Store::new();
        let mut follower = Store::new();
        let mut model = Model::new();
        let mut history = vec![(store.snapshot(), model.clone())];
        for (index, write_set) in write_sets.iter().enumerate() {
            let version = index as u64 + 1;
            store.apply(write_set, version);
            let decoded = WriteSet::decode(&write_set.to_bytes()).expect("valid encoding");
            follower.apply(&decoded, version);
            apply_to_model(&mut model, write_set);
            assert_matches_model(&store, &model);
            assert_matches_model(&follower, &model);
            history.push((store.snapshot(), model.clone()));
        }
        for (version, (snapshot, model)) in history.iter().enumerate() {
            prop_assert_eq!(snapshot.version(), version as u64);
            for ((map, key), value) in model {
                prop_assert_eq!(snapshot.get(map, key), Some(value.clone()));
            }
            let mut rebuilt = Store::new();
            rebuilt.apply(&snapshot.to_write_set(), 1);
            assert_matches_model(&rebuilt, model);
        }
    }

    /// If a transaction passes the conflict check, every read it made returns the same result
    /// on the newer store: committing it there is serializable.
    #[test]
    fn passing_conflict_check_means_reads_still_hold(
        before in arb_write_set(),
        reads in proptest::collection::vec(arb_read(), 0..6),
        own in arb_write_set(),
        concurrent in proptest::collection::vec(arb_write_set(), 0..3),
    ) {
        let mut store = Store::new();
        store.apply(&before, 1);
        // Own writes first, so reads see them laid over the snapshot.
        let mut tx = Tx::new(store.snapshot());
        for (map, entries) in &own.maps {
            for (key, value) in entries {
                match value {
                    Some(value) => tx.put(map, key, value),
                    None => tx.remove(map, key),
                }
            }
        }
        let seen = run_reads(&mut tx, &reads);
        for (index, write_set) in concurrent.iter().enumerate() {
            store.apply(write_set, index as u64 + 2);
        }
        if store.check_conflicts(&tx).is_ok() {
            let mut again = Tx::new(store.snapshot());
            for (map, entries) in &own.maps {
                for (key, value) in entries {
                    match value {
                        Some(value) => again.put(map, key, value),
                        None => again.remove(map, key),
                    }
                }
            }
            prop_assert_eq!(run_reads(&mut again, &reads), seen);
        }
        // With no concurrent writes there is never a conflict.
        if concurrent.iter().all(WriteSet::is_empty) {
            prop_assert!(store.check_conflicts(&tx).is_ok());
        }
    }
}
