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
    let member_id = primary.member.fingerprint_hex();
    let proposal = serde_json::json!({"actions": [
        {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
    ]})
    .to_string();
    let created = primary.gov(
        "/gov/members/proposals:create",
        "proposal",
        None,
        proposal.as_bytes(),
    );
    let id = created["proposalId"].as_str().unwrap().to_owned();
    let ballot =
        serde_json::json!({"ballot": "export function vote(p, id) { return true; }"}).to_string();
    let voted = primary.gov(
        &format!("/gov/members/proposals/{id}/ballots/{member_id}:submit"),
        "ballot",
        Some(&id),
        ballot.as_bytes(),
    );
    assert_eq!(voted["proposalState"], "Accepted", "{voted}");
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
fn pass(primary: &mut Harness, actions: serde_json::Value) {
    let member_id = primary.member.fingerprint_hex();
    let proposal = serde_json::json!({ "actions": actions }).to_string();
    let created = primary.gov(
        "/gov/members/proposals:create",
        "proposal",
        None,
        proposal.as_bytes(),
    );
    let id = created["proposalId"].as_str().unwrap().to_owned();
    let ballot =
        serde_json::json!({"ballot": "export function vote(p, id) { return true; }"}).to_string();
    let voted = primary.gov(
        &format!("/gov/members/proposals/{id}/ballots/{member_id}:submit"),
        "ballot",
        Some(&id),
        ballot.as_bytes(),
    );
    assert_eq!(voted["proposalState"], "Accepted", "{voted}");
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
