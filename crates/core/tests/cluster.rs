//! Several cores replicating over an in-memory network: nodes join by attestation and vote,
//! the primary replicates the ledger byte for byte, commits need a majority, and a new primary
//! takes over when the old one dies without losing anything committed. Raft cases cite the
//! Raft paper (Ongaro and Ousterhout, 2014).

mod harness;

use charter_core::{raft_id, Input, Method};
use charter_ledger::TxId;
use harness::Harness;

struct Cluster {
    nodes: Vec<Harness>,
    down: Vec<bool>,
}

impl Cluster {
    fn index_of(&self, raft: u64) -> Option<usize> {
        self.nodes
            .iter()
            .position(|h| raft_id(h.node.node_id()) == raft)
    }

    /// Delivers every queued message (dropping those to or from a down node) until quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut messages = Vec::new();
            for (index, harness) in self.nodes.iter_mut().enumerate() {
                for (to, bytes) in harness.outbox.drain(..) {
                    messages.push((index, to, bytes));
                }
            }
            if messages.is_empty() {
                return;
            }
            for (from, to, bytes) in messages {
                let Some(to) = self.index_of(to) else {
                    continue;
                };
                if self.down[from] || self.down[to] {
                    continue;
                }
                let from_raft = raft_id(self.nodes[from].node.node_id());
                let mut out = Vec::new();
                self.nodes[to]
                    .node
                    .step(
                        Input::Peer {
                            from: from_raft,
                            bytes,
                        },
                        &mut out,
                    )
                    .unwrap();
                self.nodes[to].host(out);
            }
        }
        panic!("the network did not quiesce");
    }

    fn tick(&mut self, ms: u64) {
        for (index, harness) in self.nodes.iter_mut().enumerate() {
            if !self.down[index] {
                harness.tick(ms);
            }
        }
        self.pump();
    }

    /// Ticks until `done` holds, at most `ticks_max` times.
    fn tick_until(&mut self, ticks_max: usize, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..ticks_max {
            if done(self) {
                return;
            }
            self.tick(60);
        }
        assert!(done(self), "timed out waiting for {what}");
    }
}

/// A node asks the primary to join and governance trusts it.
fn admit(primary: &mut Harness, seed: u8) {
    let (key, cert) = Harness::node_identity(seed);
    let report_data = charter_attest::node_report_data(&key.verifying_key().to_spki_der());
    let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &report_data);
    let body = serde_json::json!({
        "certificate": cert.to_pem(),
        "evidence": evidence,
        "rpc_address": format!("127.0.0.1:80{seed:02}"),
    })
    .to_string();
    let response = primary.request(
        Method::Post,
        "/node/join",
        &[],
        body.as_bytes(),
        Some(&cert),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let node_id = key.verifying_key().id_hex();
    pass(
        primary,
        serde_json::json!([
            {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
        ]),
    );
}

fn three_nodes() -> Cluster {
    let mut primary = Harness::new();
    admit(&mut primary, 11);
    admit(&mut primary, 12);
    let mut cluster = Cluster {
        nodes: vec![primary, Harness::joiner(11), Harness::joiner(12)],
        down: vec![false; 3],
    };
    cluster.tick_until(300, "both joiners to become voters and catch up", |c| {
        let voters = c.nodes[0].node.voters();
        let commit = c.nodes[0].node.commit_tx_id();
        voters.len() == 3 && c.nodes[1..].iter().all(|h| h.node.commit_tx_id() == commit)
    });
    cluster
}

fn value(harness: &Harness, key: &[u8]) -> Option<Vec<u8>> {
    harness.node.store().get("kv", key).map(<[u8]>::to_vec)
}

#[test]
fn joined_nodes_replicate_byte_identical_ledgers_and_commit_by_majority() {
    let mut cluster = three_nodes();
    let tx_id = cluster.nodes[0].put("k", b"v");
    cluster.tick_until(50, "the write to commit everywhere", |c| {
        c.nodes
            .iter()
            .all(|h| h.node.tx_status(tx_id) == charter_core::TxStatus::Committed)
    });
    for harness in &cluster.nodes[1..] {
        assert_eq!(value(harness, b"k").as_deref(), Some(&b"v"[..]));
        // Followers hold exactly the primary's bytes for the range both hold (§5.3).
        let common = harness.files.len().min(cluster.nodes[0].files.len());
        assert!(common as u64 >= tx_id.seqno);
        assert_eq!(harness.files[..common], cluster.nodes[0].files[..common]);
    }
}

#[test]
fn a_minority_cannot_commit() {
    let mut cluster = three_nodes();
    cluster.down[1] = true;
    cluster.down[2] = true;
    let tx_id = cluster.nodes[0].put("lonely", b"x");
    for _ in 0..40 {
        cluster.tick(60);
    }
    // Without a majority the write stays Pending (§5.4.2: commit needs a majority).
    assert_ne!(
        cluster.nodes[0].node.tx_status(tx_id),
        charter_core::TxStatus::Committed
    );
}

#[test]
fn a_new_primary_takes_over_and_keeps_every_committed_write() {
    let mut cluster = three_nodes();
    let mut committed = Vec::new();
    for index in 0..5 {
        committed.push(cluster.nodes[0].put(&format!("before{index}"), b"1"));
    }
    cluster.tick_until(50, "the writes to commit", |c| {
        c.nodes[0].node.tx_status(*committed.last().unwrap()) == charter_core::TxStatus::Committed
    });
    // An uncommitted write on the old primary, which then dies before replicating it.
    cluster.down[1] = true;
    cluster.down[2] = true;
    let lost: TxId = cluster.nodes[0].put("lost", b"x");
    cluster.down = vec![true, false, false];
    cluster.tick_until(100, "a new primary among the survivors (§5.2)", |c| {
        c.nodes[1].node.is_primary() || c.nodes[2].node.is_primary()
    });
    let new = if cluster.nodes[1].node.is_primary() {
        1
    } else {
        2
    };
    let after = cluster.nodes[new].put("after", b"2");
    cluster.tick_until(50, "the new primary's write to commit", |c| {
        c.nodes[new].node.tx_status(after) == charter_core::TxStatus::Committed
    });
    for tx_id in &committed {
        assert_eq!(
            cluster.nodes[new].node.tx_status(*tx_id),
            charter_core::TxStatus::Committed
        );
    }
    for index in 0..5 {
        assert!(value(&cluster.nodes[new], format!("before{index}").as_bytes()).is_some());
    }
    // The old primary comes back, rolls back its unreplicated write and catches up.
    cluster.down[0] = false;
    cluster.tick_until(100, "the old primary to catch up", |c| {
        c.nodes[0].node.tx_status(after) == charter_core::TxStatus::Committed
    });
    assert_eq!(value(&cluster.nodes[0], b"lost"), None);
    assert_eq!(
        cluster.nodes[0].node.tx_status(lost),
        charter_core::TxStatus::Invalid
    );
    assert_eq!(
        value(&cluster.nodes[0], b"after").as_deref(),
        Some(&b"2"[..])
    );
}

#[test]
fn operators_see_nodes_consensus_progress_and_metrics() {
    let mut cluster = three_nodes();
    let tx_id = cluster.nodes[0].put("m", b"1");
    cluster.tick_until(50, "the write to commit everywhere", |c| {
        c.nodes
            .iter()
            .all(|h| h.node.tx_status(tx_id) == charter_core::TxStatus::Committed)
    });
    let json = |response: charter_core::Response| -> serde_json::Value {
        serde_json::from_slice(&response.body).unwrap()
    };
    let nodes = json(cluster.nodes[1].request(Method::Get, "/node/network/nodes", &[], b"", None));
    let nodes = nodes["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["status"] == "Trusted"));
    assert_eq!(nodes.iter().filter(|n| n["primary"] == true).count(), 1);
    let consensus = json(cluster.nodes[0].request(Method::Get, "/node/consensus", &[], b"", None));
    let peers = consensus["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3, "{consensus}");
    assert!(
        peers
            .iter()
            .all(|p| p["match_seqno"].as_u64().unwrap() >= tx_id.seqno),
        "{consensus}"
    );
    let follower = json(cluster.nodes[2].request(Method::Get, "/node/consensus", &[], b"", None));
    assert!(follower["peers"].as_array().unwrap().is_empty());
    assert_eq!(follower["primary_raft_id"], consensus["raft_id"]);
    let metrics = cluster.nodes[0].request(Method::Get, "/node/metrics", &[], b"", None);
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("charter_is_primary 1"), "{text}");
    assert!(text.contains(&format!(
        "charter_commit_seqno {}",
        cluster.nodes[0].node.commit_tx_id().seqno
    )));
    assert_eq!(
        text.matches("charter_replication_lag{").count(),
        3,
        "{text}"
    );
}

/// Passes a proposal with `actions` on the primary harness (one member, so one ballot).
fn pass(harness: &mut Harness, actions: serde_json::Value) {
    harness.pass(actions);
}

#[test]
fn membership_grows_to_five_and_shrinks_to_three_by_governance() {
    let mut cluster = three_nodes();
    for seed in [13, 14] {
        admit(&mut cluster.nodes[0], seed);
        cluster.nodes.push(Harness::joiner(seed));
        cluster.down.push(false);
        cluster.nodes[0].put(&format!("during-{seed}"), b"1");
        cluster.tick(60);
    }
    cluster.tick_until(300, "five voters", |c| {
        c.nodes[0].node.voters().len() == 5 && c.nodes[0].node.is_primary()
    });
    let written = cluster.nodes[0].put("five", b"5");
    // Retire the primary itself and one other original node: leadership moves first.
    let retired: Vec<String> = [0, 1]
        .iter()
        .map(|index| cluster.nodes[*index].node.node_id().to_owned())
        .collect();
    for node_id in &retired {
        pass(
            &mut cluster.nodes[0],
            serde_json::json!([{"name": "remove_node", "args": {"node_id": node_id}}]),
        );
    }
    cluster.tick_until(600, "three voters under a remaining primary", |c| {
        c.nodes[2..]
            .iter()
            .any(|h| h.node.is_primary() && h.node.voters().len() == 3)
    });
    let primary = (2..5)
        .find(|i| cluster.nodes[*i].node.is_primary())
        .unwrap();
    let after = cluster.nodes[primary].put("three", b"3");
    cluster.tick_until(100, "writes to commit on the remaining nodes", |c| {
        c.nodes[2..].iter().all(|h| {
            h.node.tx_status(after) == charter_core::TxStatus::Committed
                && h.node.tx_status(written) == charter_core::TxStatus::Committed
        })
    });
    let voters = cluster.nodes[primary].node.voters();
    for index in 0..2 {
        assert!(!voters.contains(&raft_id(cluster.nodes[index].node.node_id())));
    }
}

fn linearizable_get(harness: &Harness, key: &str) -> charter_core::Request {
    charter_core::Request {
        method: Method::Get,
        path: format!("/app/kv/{key}"),
        query: Vec::new(),
        headers: vec![(
            charter_core::READ_CONSISTENCY_HEADER.to_owned(),
            "linearizable".to_owned(),
        )],
        body: Vec::new(),
        caller_cert_der: Some(harness.user.der().to_vec()),
    }
}

#[test]
fn a_linearizable_read_waits_for_a_majority_and_a_deposed_primary_refuses_it() {
    let mut cluster = three_nodes();
    cluster.nodes[0].put("k", b"v1");
    cluster.tick(60);
    // The primary answers only once a signature written after the read has committed.
    let request = linearizable_get(&cluster.nodes[0], "k");
    let id = cluster.nodes[0].send(request);
    assert!(cluster.nodes[0].take_response(id).is_none());
    cluster.tick(60);
    let response = cluster.nodes[0].take_response(id).expect("answered");
    assert_eq!((response.status, response.body), (200, b"v1".to_vec()));

    // Cut off from the others, the primary cannot confirm a read: it waits, then refuses it
    // once it steps down (check-quorum), while the others elect a new primary and move on.
    cluster.down[1] = true;
    cluster.down[2] = true;
    let request = linearizable_get(&cluster.nodes[0], "k");
    let id = cluster.nodes[0].send(request);
    cluster.down = vec![true, false, false];
    cluster.tick_until(100, "a new primary among the others", |c| {
        c.nodes[1].node.is_primary() || c.nodes[2].node.is_primary()
    });
    let new_primary = if cluster.nodes[1].node.is_primary() {
        1
    } else {
        2
    };
    cluster.nodes[new_primary].put("k", b"v2");
    for _ in 0..40 {
        cluster.nodes[0].tick(60);
    }
    let refused = cluster.nodes[0]
        .take_response(id)
        .expect("refused once deposed");
    assert_eq!(refused.status, 503);
    // A follower forwards linearizable reads (the test host answers forwards with 503).
    let request = linearizable_get(&cluster.nodes[new_primary], "k");
    let follower = 3 - new_primary;
    let id = cluster.nodes[follower].send(request);
    let forwarded = cluster.nodes[follower].take_response(id).unwrap();
    assert_eq!(forwarded.status, 503);
}

/// Snapshots every 25 seqnos and signatures every 5 transactions, so that a few dozen writes
/// cross several snapshot points.
fn small_snapshots(config: &mut charter_core::NodeConfig) {
    config.snapshot_interval_txs = 25;
    config.signature_interval_txs = 5;
}

fn three_nodes_with(configure: fn(&mut charter_core::NodeConfig)) -> Cluster {
    let mut primary = Harness::new_with(configure);
    admit(&mut primary, 11);
    admit(&mut primary, 12);
    let mut cluster = Cluster {
        nodes: vec![
            primary,
            Harness::joiner_with(11, None, configure),
            Harness::joiner_with(12, None, configure),
        ],
        down: vec![false; 3],
    };
    cluster.tick_until(300, "both joiners to become voters and catch up", |c| {
        let voters = c.nodes[0].node.voters();
        let commit = c.nodes[0].node.commit_tx_id();
        voters.len() == 3 && c.nodes[1..].iter().all(|h| h.node.commit_tx_id() == commit)
    });
    cluster
}

/// Writes `count` keys through node `primary` and waits until every live node committed them.
fn write_and_commit(
    cluster: &mut Cluster,
    primary: usize,
    prefix: &str,
    count: usize,
) -> Vec<TxId> {
    let mut written = Vec::new();
    for index in 0..count {
        let value = format!("{prefix} value {index}");
        written.push(cluster.nodes[primary].put(&format!("{prefix}{index}"), value.as_bytes()));
        if index % 10 == 9 {
            cluster.tick(60);
        }
    }
    let last = *written.last().unwrap();
    cluster.tick_until(100, "the writes to commit everywhere", |c| {
        c.nodes
            .iter()
            .zip(&c.down)
            .all(|(h, down)| *down || h.node.tx_status(last) == charter_core::TxStatus::Committed)
    });
    written
}

/// Every snapshot written by several nodes for one seqno has the same bytes, and so has
/// every committed snapshot file.
fn assert_snapshots_agree(cluster: &Cluster) {
    let mut seen: std::collections::BTreeMap<u64, (usize, &Vec<u8>)> = Default::default();
    let mut committed: std::collections::BTreeMap<u64, (usize, &Vec<u8>)> = Default::default();
    for (index, harness) in cluster.nodes.iter().enumerate() {
        for (seqno, bytes) in &harness.snapshots {
            let (first, expected) = *seen.entry(*seqno).or_insert((index, bytes));
            assert!(
                expected == bytes,
                "nodes {first} and {index} wrote different snapshots at {seqno}"
            );
        }
        for (seqno, file) in &harness.committed_snapshots {
            let (first, expected) = *committed.entry(*seqno).or_insert((index, file));
            assert!(
                expected == file,
                "nodes {first} and {index} committed different snapshot files at {seqno}"
            );
        }
    }
}

/// The two nodes' stores hold the same maps with the same entries.
fn assert_same_state(a: &Harness, b: &Harness) {
    let (a, b) = (a.node.store().snapshot(), b.node.store().snapshot());
    assert_eq!(a.map_names(), b.map_names());
    for name in a.map_names() {
        assert!(a.entries(&name).eq(b.entries(&name)), "map {name} differs");
    }
}

fn settled(c: &Cluster) -> bool {
    let last = c.nodes[0].node.last_tx_id();
    let commit = c.nodes[0].node.commit_tx_id();
    c.nodes
        .iter()
        .all(|h| h.node.last_tx_id() == last && h.node.commit_tx_id() == commit)
        && commit == last
}

#[test]
fn every_node_writes_the_same_snapshots_and_a_late_joiner_starts_from_one() {
    let mut cluster = three_nodes_with(small_snapshots);
    // Each write adds a key, so points spread out as the state grows (a point waits for as
    // many seqnos as the previous one held keys): 120 writes still cross three.
    let before = write_and_commit(&mut cluster, 0, "before", 120);
    cluster.tick_until(100, "a snapshot to commit on every node", |c| {
        c.nodes.iter().all(|h| !h.committed_snapshots.is_empty())
    });
    assert_snapshots_agree(&cluster);
    // The primary encodes every point. A follower encodes its first point and then one once
    // FOLLOWER_SNAPSHOT_SPACING intervals have passed, always at the points the primary picked.
    let points: Vec<u64> = cluster.nodes[0].snapshots.keys().copied().collect();
    assert!(
        points.len() >= 3,
        "120 writes cross several points: {points:?}"
    );
    let spacing = 25 * charter_core::FOLLOWER_SNAPSHOT_SPACING;
    for harness in &cluster.nodes[1..] {
        let theirs: Vec<u64> = harness.snapshots.keys().copied().collect();
        assert_eq!(theirs.first(), points.first(), "{theirs:?} {points:?}");
        assert!(theirs.iter().all(|seqno| points.contains(seqno)));
        assert!(theirs.windows(2).all(|pair| pair[1] >= pair[0] + spacing));
        assert!(theirs.len() < points.len(), "{theirs:?} {points:?}");
        // Each follower committed its own snapshot with the primary's evidence.
        assert!(harness
            .committed_snapshots
            .keys()
            .all(|seqno| theirs.contains(seqno)));
    }
    // The evidence of each committed snapshot is in the ledger, bound by its claims digest.
    let (&seqno, file) = cluster.nodes[0]
        .committed_snapshots
        .last_key_value()
        .unwrap();
    let verified =
        charter_ledger::verify_committed_snapshot(file, &cluster.nodes[0].service).unwrap();
    assert_eq!(verified.snapshot.seqno, seqno);
    let record = cluster.nodes[0]
        .node
        .store()
        .get(
            charter_ledger::tables::SNAPSHOT_EVIDENCE_MAP,
            seqno.to_string().as_bytes(),
        )
        .expect("an evidence record");
    let record: charter_ledger::SnapshotEvidence = serde_json::from_slice(record).unwrap();
    assert_eq!(record.digest_bytes(), Some(verified.digest));
    assert_eq!(
        cluster.nodes[0].node.tx_status(verified.evidence_tx_id),
        charter_core::TxStatus::Committed
    );

    // A fourth node joins from the newest committed snapshot and catches up from its suffix.
    let file = file.clone();
    admit(&mut cluster.nodes[0], 13);
    let joiner = Harness::joiner_with(13, Some(file), small_snapshots);
    assert_eq!(joiner.node.base_seqno(), seqno);
    assert!(joiner.ledger.is_empty());
    cluster.nodes.push(joiner);
    cluster.down.push(false);
    cluster.tick_until(300, "the fourth node to become a voter and catch up", |c| {
        c.nodes[0].node.voters().len() == 4 && settled(c)
    });
    assert_eq!(
        cluster.nodes[3].ledger.first().map(|entry| entry.seqno),
        Some(seqno + 1),
        "the joiner's ledger starts after the snapshot"
    );
    let consensus = cluster.nodes[3].request(Method::Get, "/node/consensus", &[], b"", None);
    let consensus: serde_json::Value = serde_json::from_slice(&consensus.body).unwrap();
    assert_eq!(consensus["snapshot_base_seqno"], seqno, "{consensus}");
    assert_eq!(consensus["peers_needing_snapshot"], serde_json::json!([]));
    let after = write_and_commit(&mut cluster, 0, "after", 40);
    cluster.tick_until(100, "all four nodes to settle", settled);
    for harness in &cluster.nodes[1..] {
        assert_same_state(&cluster.nodes[0], harness);
    }
    assert_eq!(
        value(&cluster.nodes[3], b"before0").as_deref(),
        Some(&b"before value 0"[..])
    );
    // Receipts for transactions before and after the snapshot verify on the new node, and are
    // the ones the primary gives.
    for tx_id in [before[0], before[119], after[0], after[39]] {
        assert_eq!(
            cluster.nodes[3].node.tx_status(tx_id),
            charter_core::TxStatus::Committed
        );
        let receipt = cluster.nodes[3].node.receipt(tx_id).unwrap();
        receipt.verify(&cluster.nodes[0].service).unwrap();
        assert_eq!(receipt, cluster.nodes[0].node.receipt(tx_id).unwrap());
    }
    // The new node, a follower, encodes its next snapshot once FOLLOWER_SNAPSHOT_SPACING
    // intervals have passed since the one it started from, at one of the primary's points.
    write_and_commit(&mut cluster, 0, "later", 60);
    cluster.tick_until(
        100,
        "a snapshot after the join to commit on the new node",
        |c| c.nodes[3].committed_snapshots.keys().any(|s| *s > seqno),
    );
    assert_snapshots_agree(&cluster);

    // It restarts from its newest committed snapshot and the entries after it.
    cluster.nodes[3].restart();
    assert!(cluster.nodes[3].node.base_seqno() > seqno);
    let more = write_and_commit(&mut cluster, 0, "more", 10);
    cluster.tick_until(100, "all four nodes to settle after the restart", settled);
    assert_same_state(&cluster.nodes[0], &cluster.nodes[3]);
    let receipt = cluster.nodes[3].node.receipt(more[9]).unwrap();
    receipt.verify(&cluster.nodes[0].service).unwrap();
    assert_snapshots_agree(&cluster);
}

#[test]
fn a_node_that_started_from_a_snapshot_restarts_from_it_before_writing_another() {
    let mut cluster = three_nodes_with(|config| {
        small_snapshots(config);
        config.snapshot_interval_txs = 60;
    });
    write_and_commit(&mut cluster, 0, "k", 65);
    cluster.tick_until(100, "a committed snapshot", |c| {
        !c.nodes[0].committed_snapshots.is_empty()
    });
    let (&seqno, file) = cluster.nodes[0]
        .committed_snapshots
        .last_key_value()
        .unwrap();
    let file = file.clone();
    admit(&mut cluster.nodes[0], 13);
    cluster
        .nodes
        .push(Harness::joiner_with(13, Some(file), |config| {
            small_snapshots(config);
            config.snapshot_interval_txs = 60;
        }));
    cluster.down.push(false);
    cluster.tick_until(300, "the fourth node to catch up", |c| {
        c.nodes[0].node.voters().len() == 4 && settled(c)
    });
    // Restart before any later snapshot: the ledger starts at seqno + 1 and the snapshot it
    // started from covers the gap.
    cluster.nodes[3].restart();
    assert_eq!(cluster.nodes[3].node.base_seqno(), seqno);
    let written = write_and_commit(&mut cluster, 0, "after", 5);
    cluster.tick_until(100, "all nodes to settle", settled);
    assert_same_state(&cluster.nodes[0], &cluster.nodes[3]);
    assert_eq!(
        cluster.nodes[3].node.tx_status(written[4]),
        charter_core::TxStatus::Committed
    );
}

#[test]
fn the_raft_log_is_compacted_yet_old_transactions_lagging_nodes_and_joiners_are_served() {
    fn configure(config: &mut charter_core::NodeConfig) {
        small_snapshots(config);
        config.log_entries_kept = 8;
    }
    let mut cluster = three_nodes_with(configure);
    let early = write_and_commit(&mut cluster, 0, "early", 10);
    // Node 2 misses a stretch of writes: the primary keeps the entries it lacks.
    cluster.down[2] = true;
    let held = cluster.nodes[2].node.last_tx_id().seqno;
    write_and_commit(&mut cluster, 0, "while-down", 60);
    let first = cluster.nodes[0].node.log_first_seqno();
    assert!(
        first > 1 && first <= held,
        "the primary kept entries from {first}, node 2 holds up to {held}"
    );
    cluster.down[2] = false;
    write_and_commit(&mut cluster, 0, "later", 60);
    cluster.tick_until(200, "all nodes to settle", settled);
    // Followers write fewer snapshots than the primary, so they keep more.
    assert!(cluster.nodes[0].node.log_first_seqno() > early[9].seqno);
    for harness in &cluster.nodes {
        assert!(
            harness.node.log_first_seqno() > early[0].seqno,
            "a log still starts at {}",
            harness.node.log_first_seqno()
        );
        assert!(harness.node.peers_needing_snapshot().is_empty());
        // Transactions whose entries left the log keep their status and receipts.
        assert_eq!(
            harness.node.tx_status(early[0]),
            charter_core::TxStatus::Committed
        );
        let wrong_view = TxId::new(early[0].view + 1, early[0].seqno);
        assert_eq!(
            harness.node.tx_status(wrong_view),
            charter_core::TxStatus::Invalid
        );
        let receipt = harness.node.receipt(early[0]).unwrap();
        receipt.verify(&cluster.nodes[0].service).unwrap();
    }
    assert_same_state(&cluster.nodes[0], &cluster.nodes[2]);
    // A joiner starts from the primary's newest committed snapshot: the log was never
    // compacted past it, so the joiner catches up.
    let (&seqno, file) = cluster.nodes[0]
        .committed_snapshots
        .last_key_value()
        .unwrap();
    assert!(cluster.nodes[0].node.log_first_seqno() <= seqno + 1);
    let file = file.clone();
    admit(&mut cluster.nodes[0], 13);
    cluster
        .nodes
        .push(Harness::joiner_with(13, Some(file), configure));
    cluster.down.push(false);
    cluster.tick_until(300, "the joiner to catch up", |c| {
        c.nodes[0].node.voters().len() == 4 && settled(c)
    });
    let written = write_and_commit(&mut cluster, 0, "after-join", 5);
    cluster.tick_until(100, "all four nodes to settle", settled);
    assert_same_state(&cluster.nodes[0], &cluster.nodes[3]);
    assert_eq!(
        cluster.nodes[3].node.tx_status(written[4]),
        charter_core::TxStatus::Committed
    );
}

#[test]
fn a_rolled_back_snapshot_point_is_never_written() {
    let mut cluster = three_nodes_with(small_snapshots);
    write_and_commit(&mut cluster, 0, "a", 10);
    // The isolated primary passes snapshot points it can never commit.
    cluster.down[1] = true;
    cluster.down[2] = true;
    for index in 0..40 {
        cluster.nodes[0].put(&format!("lost{index}"), b"x");
    }
    cluster.tick(60);
    cluster.down = vec![true, false, false];
    cluster.tick_until(100, "a new primary among the survivors", |c| {
        c.nodes[1].node.is_primary() || c.nodes[2].node.is_primary()
    });
    let new = if cluster.nodes[1].node.is_primary() {
        1
    } else {
        2
    };
    write_and_commit(&mut cluster, new, "b", 60);
    cluster.down[0] = false;
    cluster.tick_until(200, "the old primary to catch up", settled);
    write_and_commit(&mut cluster, new, "c", 30);
    cluster.tick_until(100, "everyone to settle", settled);
    assert_eq!(value(&cluster.nodes[0], b"lost0"), None);
    // The old primary wrote no snapshot of its rolled-back state: every snapshot it wrote is
    // the one the others wrote for that seqno.
    assert_snapshots_agree(&cluster);
    let others: std::collections::BTreeSet<u64> = cluster.nodes[1..]
        .iter()
        .flat_map(|h| h.snapshots.keys().copied())
        .collect();
    for seqno in cluster.nodes[0].snapshots.keys() {
        assert!(
            others.contains(seqno),
            "only the old primary wrote snapshot {seqno}"
        );
    }
}

/// Entries of `harness`'s ledger with a private domain: seqno and bytes.
fn private_entries(harness: &Harness) -> Vec<(u64, Vec<u8>)> {
    harness
        .files
        .iter()
        .enumerate()
        .filter_map(|(index, bytes)| {
            let entry = charter_ledger::decode_entry(bytes).ok()?;
            (!entry.private.is_empty()).then(|| (harness.base + index as u64 + 1, bytes.clone()))
        })
        .collect()
}

#[test]
fn rekeys_by_governance_give_every_node_each_new_secret_and_old_entries_stay_readable() {
    let mut cluster = three_nodes();
    let mut written = 0;
    for round in 0..3 {
        write_and_commit(&mut cluster, 0, &format!("era{round}-"), 12);
        written += 12;
        // Proposals must differ (the harness signs them at one fixed time); a proposal that
        // asks for several rekeys gets one.
        let rekey = serde_json::json!({"name": "trigger_ledger_rekey", "args": {}});
        pass(
            &mut cluster.nodes[0],
            serde_json::Value::Array(vec![rekey; round + 1]),
        );
        cluster.tick(60);
    }
    write_and_commit(&mut cluster, 0, "era3-", 12);
    written += 12;
    cluster.tick_until(100, "every node to settle", settled);
    let primary = &cluster.nodes[0];
    let starts: Vec<u64> = primary
        .node
        .ledger_secrets()
        .iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(starts.len(), 4, "three rekeys: {starts:?}");
    let first = primary.node.ledger_secrets().for_seqno(1).clone();
    for (index, harness) in cluster.nodes.iter().enumerate() {
        // Every node unwrapped its own copy of each new secret from the ledger...
        let theirs: Vec<u64> = harness
            .node
            .ledger_secrets()
            .iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(theirs, starts, "node {index}");
        for (start, secret) in harness.node.ledger_secrets().iter() {
            let expected = primary.node.ledger_secrets().for_seqno(start);
            assert_eq!(secret.as_bytes(), expected.as_bytes(), "node {index}");
        }
        // ...and applied every private write, whichever secret encrypted it.
        for round in 0..4 {
            for key in 0..12 {
                let key = format!("era{round}-{key}");
                assert!(
                    value(harness, key.as_bytes()).is_some(),
                    "node {index} lacks {key}"
                );
            }
        }
    }
    // Entries after a rekey are encrypted under the new secret only; every entry opens under
    // the secret for its seqno.
    let entries = private_entries(primary);
    assert!(entries.len() >= written);
    let mut under_new = 0;
    for (seqno, bytes) in &entries {
        let entry = charter_ledger::decode_entry(bytes).unwrap();
        let secret = primary.node.ledger_secrets().for_seqno(*seqno);
        entry.decrypt_private(secret, bytes).unwrap();
        if *seqno >= starts[1] {
            assert!(entry.decrypt_private(&first, bytes).is_err(), "{seqno}");
            under_new += 1;
        }
    }
    assert!(under_new >= 36, "{under_new}");
    // A restarted follower learns the later secrets again from the ledger.
    cluster.nodes[1].restart();
    let after: Vec<u64> = cluster.nodes[1]
        .node
        .ledger_secrets()
        .iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(after, starts);
}

/// How many signature entries a node's ledger holds.
fn signatures_in(harness: &harness::Harness) -> usize {
    harness
        .files
        .iter()
        .filter(|bytes| {
            charter_ledger::decode_entry(bytes).unwrap().kind
                == charter_ledger::EntryKind::Signature
        })
        .count()
}

/// With `signature_when_idle`, a write is signed at the end of the round that wrote it and
/// commits one replication round later, with no tick, although neither interval is near. A
/// second signature waits until the first is committed, and goes out as soon as it is.
#[test]
fn signing_when_idle_commits_at_once_with_one_signature_in_flight() {
    fn configure(config: &mut charter_core::NodeConfig) {
        config.signature_interval_txs = 1_000_000;
        config.signature_interval_ms = 1_000_000;
        config.signature_when_idle = true;
    }
    let mut cluster = three_nodes_with(configure);
    cluster.tick(1);
    let signed_before = signatures_in(&cluster.nodes[0]);
    let first = cluster.nodes[0].put("idle-a", b"1");
    assert_eq!(signatures_in(&cluster.nodes[0]), signed_before + 1);
    cluster.pump();
    assert_eq!(
        cluster.nodes[0].node.tx_status(first),
        charter_core::TxStatus::Committed
    );
    // The next write is signed at once; the followers have not seen that signature yet, so
    // the write after it, and a tick, do not sign again.
    let second = cluster.nodes[0].put("idle-b", b"2");
    let third = cluster.nodes[0].put("idle-c", b"3");
    cluster.nodes[0].tick(1);
    assert_eq!(
        signatures_in(&cluster.nodes[0]),
        signed_before + 2,
        "a second signature was made while the first was in flight"
    );
    assert_ne!(
        cluster.nodes[0].node.tx_status(third),
        charter_core::TxStatus::Committed
    );
    // The followers' answers commit the second write and release the third's signature at
    // once: no tick is needed for the third to commit.
    cluster.pump();
    assert_eq!(
        cluster.nodes[0].node.tx_status(second),
        charter_core::TxStatus::Committed
    );
    assert_eq!(
        cluster.nodes[0].node.tx_status(third),
        charter_core::TxStatus::Committed
    );
    assert_eq!(signatures_in(&cluster.nodes[0]), signed_before + 3);
}

/// Without it, the same writes wait for an interval.
#[test]
fn without_signing_when_idle_a_write_waits_for_the_interval() {
    fn configure(config: &mut charter_core::NodeConfig) {
        config.signature_interval_txs = 1_000_000;
        config.signature_interval_ms = 1_000;
    }
    let mut cluster = three_nodes_with(configure);
    let write = cluster.nodes[0].put("interval-a", b"1");
    for _ in 0..8 {
        cluster.tick(60);
    }
    assert_ne!(
        cluster.nodes[0].node.tx_status(write),
        charter_core::TxStatus::Committed
    );
    cluster.tick_until(20, "the interval's signature", |c| {
        c.nodes[0].node.tx_status(write) == charter_core::TxStatus::Committed
    });
}
