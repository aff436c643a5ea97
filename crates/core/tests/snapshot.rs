//! Snapshots on a single node: the snapshot and its evidence are written once, a node joins
//! from the committed file only if every byte of it is intact and it belongs to this service,
//! and a node holding the whole ledger still restarts by replaying it.

mod harness;

use charter_core::{CoreError, Node, StartMode};
use harness::Harness;

fn small_snapshots(config: &mut charter_core::NodeConfig) {
    config.snapshot_interval_txs = 20;
    config.signature_interval_txs = 5;
}

/// A single node with a committed snapshot.
fn node_with_snapshot() -> Harness {
    let mut harness = Harness::new_with(small_snapshots);
    let user = harness.user.clone();
    for index in 0..30 {
        harness.put(&format!("k{index}"), b"private value");
        let public = harness.request(
            charter_core::Method::Put,
            &format!("/app/kv/p{index}"),
            &[("public", "true")],
            b"public value",
            Some(&user),
        );
        assert_eq!(public.status, 200);
    }
    for _ in 0..10 {
        harness.tick(150);
    }
    assert!(
        !harness.committed_snapshots.is_empty(),
        "written: {:?}",
        harness.snapshots.keys().collect::<Vec<_>>()
    );
    harness
}

fn join(file: Vec<u8>) -> Result<Node, CoreError> {
    join_as(&Harness::node_config(13, small_snapshots), file)
}

fn join_as(config: &charter_core::NodeConfig, file: Vec<u8>) -> Result<Node, CoreError> {
    let config = config.clone();
    Node::new(
        config,
        StartMode::Join {
            snapshot: Some(file),
        },
        &mut Vec::new(),
    )
}

#[test]
fn evidence_is_written_once_and_a_full_ledger_still_restarts_by_replaying() {
    let mut harness = node_with_snapshot();
    let evidence_records = harness
        .node
        .store()
        .entries(charter_ledger::tables::SNAPSHOT_EVIDENCE_MAP)
        .count();
    assert_eq!(evidence_records, harness.committed_snapshots.len());
    let committed_before = harness.committed_snapshots.clone();
    let last = harness.node.last_tx_id();
    harness.restart();
    assert_eq!(harness.node.base_seqno(), 0, "a full ledger is replayed");
    harness.tick(150);
    // Replaying rewrites no evidence and no different snapshot (the harness checks that a
    // rewritten snapshot has the same bytes).
    let after = harness
        .node
        .store()
        .entries(charter_ledger::tables::SNAPSHOT_EVIDENCE_MAP)
        .count();
    assert_eq!(after, evidence_records);
    assert_eq!(harness.committed_snapshots, committed_before);
    assert!(harness.node.last_tx_id().seqno >= last.seqno);
}

#[test]
fn a_joiner_takes_the_state_of_an_intact_snapshot() {
    let harness = node_with_snapshot();
    let (&seqno, file) = harness.committed_snapshots.last_key_value().unwrap();
    let node = join(file.clone()).unwrap();
    assert_eq!(node.base_seqno(), seqno);
    assert_eq!(node.commit_tx_id().seqno, seqno);
    assert_eq!(
        node.store().get("kv", b"k0"),
        Some(&b"private value"[..]),
        "private maps come from the snapshot"
    );
    assert_eq!(
        node.store().get("public:kv", b"p0"),
        Some(&b"public value"[..])
    );
}

#[test]
fn a_snapshot_with_any_flipped_byte_is_refused() {
    let harness = node_with_snapshot();
    let file = harness
        .committed_snapshots
        .values()
        .next_back()
        .unwrap()
        .clone();
    let parts = charter_ledger::split_committed_snapshot(&file).unwrap();
    let snapshot_end = 16 + parts.snapshot.len();
    // Making a node's certificate costs a signature: once for every attempt.
    let config = Harness::node_config(13, small_snapshots);
    // Every byte of the container and snapshot headers and of the end of the snapshot (its
    // private maps); a spread of the rest of the snapshot and of the evidence receipt, whose
    // every flip costs a signature check (the ledger crate's tests flip every byte of both).
    let mut positions: Vec<usize> = (0..64).collect();
    positions.extend((64..snapshot_end).step_by(97));
    positions.extend(snapshot_end - 64..snapshot_end + 4);
    positions.extend((snapshot_end + 4..file.len()).step_by(7));
    positions.push(file.len() - 1);
    for position in positions {
        let mut tampered = file.clone();
        tampered[position] ^= 0x01;
        match join_as(&config, tampered) {
            Err(CoreError::Snapshot(reason)) => assert!(!reason.is_empty()),
            Err(other) => panic!("byte {position}: unexpected error {other}"),
            Ok(_) => panic!("a flip of byte {position} of {} went unnoticed", file.len()),
        }
    }
}

#[test]
fn a_snapshot_of_another_service_or_secret_is_refused() {
    let harness = node_with_snapshot();
    let file = harness
        .committed_snapshots
        .values()
        .next_back()
        .unwrap()
        .clone();
    // Another service certificate: the evidence is not endorsed by it.
    let mut config = Harness::node_config(13, small_snapshots);
    config.service_cert = harness::cert(9, "other service", true).1;
    let error = Node::new(
        config,
        StartMode::Join {
            snapshot: Some(file.clone()),
        },
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("not endorsed"), "{error}");
    // Another ledger secret: the commit evidence does not match.
    let mut config = Harness::node_config(13, small_snapshots);
    config.ledger_secrets =
        charter_ledger::LedgerSecrets::new(charter_crypto::LedgerSecret::from_bytes([4; 32]));
    let error = Node::new(
        config,
        StartMode::Join {
            snapshot: Some(file),
        },
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("ledger secret"), "{error}");
    // Not a committed snapshot at all.
    let error = join(b"garbage".to_vec()).unwrap_err();
    assert!(error.to_string().contains("snapshot refused"), "{error}");
}

fn snapshot_files(harness: &Harness) -> Vec<charter_ledger::LedgerFile> {
    let mut files: Vec<charter_ledger::LedgerFile> = harness
        .committed_snapshots
        .iter()
        .map(|(seqno, bytes)| charter_ledger::LedgerFile {
            name: format!("snapshot_{seqno}.committed"),
            bytes: bytes.clone(),
        })
        .collect();
    // Uncommitted snapshots are not checked.
    files.push(charter_ledger::LedgerFile {
        name: "snapshot_1".into(),
        bytes: b"not checked".to_vec(),
    });
    files
}

#[test]
fn ledger_verification_checks_snapshots_against_the_replay() {
    use charter_ledger::verify_ledger_with_snapshots;
    let harness = node_with_snapshot();
    let ledger = harness.chunk_files(1);
    let snapshots = snapshot_files(&harness);
    let summary = verify_ledger_with_snapshots(&ledger, &snapshots, &harness.service).unwrap();
    assert_eq!(summary.snapshots, harness.committed_snapshots.len());
    assert_eq!(summary.started_from, None);
    assert_eq!(summary.transactions, harness.files.len() as u64);
    assert!(
        summary.to_string().contains("committed snapshots"),
        "{summary}"
    );

    // A flipped byte anywhere in a snapshot file is reported with the file's name.
    let (&seqno, file) = harness.committed_snapshots.iter().next_back().unwrap();
    let name = format!("snapshot_{seqno}.committed");
    for position in [0, 20, file.len() / 2, file.len() - 10] {
        let mut tampered = snapshots.clone();
        let target = tampered.iter_mut().find(|f| f.name == name).unwrap();
        target.bytes[position] ^= 0x01;
        let failure =
            verify_ledger_with_snapshots(&ledger, &tampered, &harness.service).unwrap_err();
        assert_eq!(failure.file, name, "byte {position}: {failure}");
        assert!(failure.to_string().contains(&name), "{failure}");
    }

    // A ledger that starts after seqno 1 verifies from a snapshot covering its start: the
    // entries up to the snapshot must be the ones it records.
    let first = seqno - 3;
    let suffix = harness.chunk_files(first);
    let failure = charter_ledger::verify_ledger(&suffix, &harness.service).unwrap_err();
    assert!(failure.reason.contains("instead of 1"), "{failure}");
    let summary = verify_ledger_with_snapshots(&suffix, &snapshots, &harness.service).unwrap();
    assert_eq!(summary.started_from, Some(seqno));
    assert_eq!(
        summary.transactions,
        harness.files.len() as u64 - (first - 1)
    );
}

#[test]
fn ledger_verification_catches_a_valid_snapshot_of_another_history() {
    use charter_ledger::verify_ledger_with_snapshots;
    // Two runs of the same service that differ in one value: same seqnos, same keys, valid
    // evidence each, different states.
    let run = |value: &[u8]| {
        let mut harness = Harness::new_with(small_snapshots);
        for index in 0..30 {
            harness.put(&format!("k{index}"), if index == 3 { value } else { b"v" });
        }
        for _ in 0..10 {
            harness.tick(150);
        }
        harness
    };
    let ours = run(b"aaaa");
    let theirs = run(b"bbbb");
    let (&seqno, _) = ours.committed_snapshots.iter().next_back().unwrap();
    let foreign = theirs
        .committed_snapshots
        .get(&seqno)
        .expect("the same points");
    assert_ne!(Some(foreign), ours.committed_snapshots.get(&seqno));
    let name = format!("snapshot_{seqno}.committed");
    let snapshots = vec![charter_ledger::LedgerFile {
        name: name.clone(),
        bytes: foreign.clone(),
    }];
    let failure =
        verify_ledger_with_snapshots(&ours.chunk_files(1), &snapshots, &ours.service).unwrap_err();
    assert_eq!(failure.file, name);
    assert!(
        failure.reason.contains("disagrees with the ledger"),
        "{failure}"
    );
    // A ledger starting after 1 whose covered entries differ from the snapshot's leaves.
    let failure =
        verify_ledger_with_snapshots(&ours.chunk_files(seqno - 3), &snapshots, &ours.service)
            .unwrap_err();
    assert!(failure.reason.contains("Merkle leaf mismatch"), "{failure}");
}

/// Snapshot points: every `snapshot_interval_txs` seqnos while the state stays small, but
/// never closer than the previous point's key count while the state grows, so that snapshot
/// encoding stays proportional to the ledger instead of to (state size x writes).
#[test]
fn snapshot_points_spread_out_as_the_state_grows() {
    let mut harness = Harness::new_with(|config| {
        config.snapshot_interval_txs = 40;
        config.signature_interval_txs = 5;
    });
    // Rewriting three keys: the state (the genesis maps and these) stays under 40 keys, so
    // points come every 40 seqnos, give or take a signature interval.
    for round in 0..100 {
        harness.put(&format!("same{}", round % 3), b"value");
    }
    harness.tick(150);
    let keys_then = harness.node.store().present_keys();
    assert!(keys_then < 40, "{keys_then} keys");
    let steady: Vec<u64> = harness.snapshots.keys().copied().collect();
    assert!(steady.len() >= 2, "{steady:?}");
    assert!(
        steady
            .windows(2)
            .all(|pair| (40..=45).contains(&(pair[1] - pair[0]))),
        "{steady:?}"
    );
    // Now every write adds a key: each gap is at least the key count at the point before it,
    // so the gaps keep growing.
    for index in 0..400 {
        harness.put(&format!("new{index}"), b"value");
        if index % 50 == 49 {
            harness.tick(150);
        }
    }
    harness.tick(150);
    let points: Vec<u64> = harness.snapshots.keys().copied().collect();
    let last_steady = steady[steady.len() - 1];
    let growing: Vec<u64> = points
        .iter()
        .copied()
        .filter(|p| *p > last_steady)
        .collect();
    assert!(growing.len() >= 3, "{points:?}");
    let gaps: Vec<u64> = growing.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(
        gaps.windows(2).all(|pair| pair[1] > pair[0]),
        "gaps grow: {points:?}"
    );
    // The interval alone would have put a point every 40 seqnos.
    let span = growing[growing.len() - 1] - last_steady;
    assert!((growing.len() as u64) < span / 40, "{points:?}");
}
