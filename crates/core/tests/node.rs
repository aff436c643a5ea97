//! Drives a single node's core through genesis, governance, writes, signatures, commit,
//! receipts and restart.

mod harness;

use charter_core::{Action, Method, Node, Restored, StartMode};
use charter_ledger::{Receipt, TxId};
use harness::{cert, Harness};

#[test]
fn write_commit_and_receipt() {
    let mut harness = Harness::new();
    let tx_id = harness.put("a", b"hello");
    assert_eq!(harness.status(tx_id), "Pending");
    harness.tick(150);
    assert_eq!(harness.status(tx_id), "Committed");
    let user = harness.user.clone();
    let response = harness.request(Method::Get, "/app/kv/a", &[], b"", Some(&user));
    assert_eq!(response.body, b"hello");
    let response = harness.request(
        Method::Get,
        "/app/receipt",
        &[("transaction_id", &tx_id.to_string())],
        b"",
        Some(&user),
    );
    assert_eq!(response.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let receipt = Receipt::from_json(&json).unwrap();
    receipt.verify(&harness.service).unwrap();
    // A later, uncommitted write has no receipt yet.
    let pending = harness.put("b", b"x");
    let response = harness.request(
        Method::Get,
        "/app/receipt",
        &[("transaction_id", &pending.to_string())],
        b"",
        Some(&user),
    );
    assert_eq!(response.status, 202);
    // Unknown and invalid TxIDs.
    assert_eq!(harness.status(TxId::new(tx_id.view, 1000)), "Unknown");
    assert_eq!(harness.status(TxId::new(tx_id.view + 5, 2)), "Invalid");
}

#[test]
fn authentication_on_app() {
    let mut harness = Harness::new();
    let member = harness.member.clone();
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", None)
            .status,
        401
    );
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&member))
            .status,
        403
    );
    let (_, stranger) = cert(9, "stranger", false);
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&stranger))
            .status,
        401
    );
    assert_eq!(
        harness
            .request(Method::Get, "/node/commit", &[], b"", None)
            .status,
        200
    );
    assert_eq!(
        harness
            .request(
                Method::Get,
                "/node/tx",
                &[("transaction_id", "x")],
                b"",
                None
            )
            .status,
        400
    );
}

#[test]
fn restart_keeps_committed_writes_and_drops_unsigned_tail() {
    let mut harness = Harness::new();
    let committed = harness.put("a", b"1");
    harness.tick(150);
    assert_eq!(harness.status(committed), "Committed");
    let unsigned = harness.put("b", b"2");
    let restored = Restored {
        entries: harness.ledger.clone(),
        hard_state: harness.hard_state,
    };
    let mut out = Vec::new();
    let node = Node::new(
        harness.config.clone(),
        StartMode::Restart(restored),
        &mut out,
    )
    .unwrap();
    assert!(out.contains(&Action::Truncate {
        from_seqno: unsigned.seqno
    }));
    harness.node = node;
    harness.ledger.truncate(unsigned.seqno as usize - 1);
    harness.host(out);
    let user = harness.user.clone();
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&user))
            .body,
        b"1"
    );
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/b", &[], b"", Some(&user))
            .status,
        404
    );
    let next = harness.put("c", b"3");
    assert!(next.view > committed.view && next.seqno > committed.seqno);
    assert_eq!(harness.status(committed), "Committed");
    harness.tick(150);
    assert_eq!(harness.status(next), "Committed");
}
