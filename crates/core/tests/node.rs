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
        snapshot: None,
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
    harness.files.truncate(unsigned.seqno as usize - 1);
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

fn join_request(
    harness: &mut Harness,
    measurement: &str,
    seed: u8,
) -> (charter_core::Response, String) {
    let (key, node_cert) = cert(seed, "joining node", false);
    let report_data = charter_attest::node_report_data(&key.verifying_key().to_spki_der());
    let evidence = charter_attest::virtual_evidence(measurement, &report_data);
    let body = serde_json::json!({
        "certificate": node_cert.to_pem(),
        "evidence": evidence,
        "rpc_address": "127.0.0.1:8001",
    })
    .to_string();
    let response = harness.request(
        Method::Post,
        "/node/join",
        &[],
        body.as_bytes(),
        Some(&node_cert),
    );
    (response, key.verifying_key().id_hex())
}

#[test]
fn join_is_checked_against_the_manifests_and_trusted_by_vote() {
    let mut harness = Harness::new();
    // The harness's genesis evidence names measurement "abab…"; another one is not allowed.
    let (refused, _) = join_request(&mut harness, &"cd".repeat(32), 20);
    assert_eq!(refused.status, 403);
    let body = String::from_utf8_lossy(&refused.body);
    assert!(
        body.contains("JoinRefused") && body.contains("measurement"),
        "{body}"
    );

    let (accepted, node_id) = join_request(&mut harness, &"ab".repeat(32), 21);
    assert_eq!(
        accepted.status,
        200,
        "{}",
        String::from_utf8_lossy(&accepted.body)
    );
    let json: serde_json::Value = serde_json::from_slice(&accepted.body).unwrap();
    assert_eq!(json["node_status"], "Pending");

    // A join whose TLS certificate is not the one in the request is refused.
    let (_, other) = cert(22, "other", false);
    let (key, node_cert) = cert(23, "joining node", false);
    let evidence = charter_attest::virtual_evidence(
        &"ab".repeat(32),
        &charter_attest::node_report_data(&key.verifying_key().to_spki_der()),
    );
    let body = serde_json::json!({"certificate": node_cert.to_pem(), "evidence": evidence, "rpc_address": "x"}).to_string();
    assert_eq!(
        harness
            .request(
                Method::Post,
                "/node/join",
                &[],
                body.as_bytes(),
                Some(&other)
            )
            .status,
        401
    );

    // Governance trusts the pending node.
    harness.pass(serde_json::json!([
        {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
    ]));
    let nodes = harness.request(Method::Get, "/gov/service/nodes", &[], b"", None);
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.body).unwrap();
    let joined = nodes["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["nodeId"] == node_id.as_str())
        .unwrap();
    assert_eq!(joined["status"], "Trusted");
}

/// An application that serves `/app/hist/V.S` from historical transactions.
struct HistoryApp;

impl charter_core::Application for HistoryApp {
    fn handle(
        &self,
        ctx: &mut charter_core::AppContext<'_>,
        path: &str,
        _request: &charter_core::Request,
    ) -> Option<Result<charter_core::Response, charter_core::CoreError>> {
        let tx_id: TxId = path.strip_prefix("/hist/")?.parse().ok()?;
        let response = match ctx.historical(tx_id) {
            charter_core::Historical::Loading => {
                charter_core::Response::json(202, &serde_json::json!({"state": "Loading"}))
            }
            charter_core::Historical::Ready(found) => {
                let value = found
                    .write_set
                    .get("kv", b"a")
                    .flatten()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                charter_core::Response::json(
                    200,
                    &serde_json::json!({"state": "Ready", "value": value, "caller": ctx.caller_id()}),
                )
            }
            charter_core::Historical::Unknown => {
                charter_core::Response::error(404, "Unknown", "unknown")
            }
            charter_core::Historical::Corrupt(reason) => {
                charter_core::Response::error(500, "Corrupt", reason)
            }
        };
        Some(Ok(response))
    }
}

#[test]
fn applications_read_historical_transactions_from_the_ledger() {
    let mut harness = Harness::new();
    harness.node.register_app(Box::new(HistoryApp));
    let first = harness.put("a", b"old");
    harness.put("a", b"new");
    harness.tick(150);
    let user = harness.user.clone();
    // The harness plays a host that reads at once, so the first answer is already Ready or
    // Loading; ask until Ready.
    let mut answer = serde_json::Value::Null;
    for _ in 0..3 {
        let response = harness.request(
            Method::Get,
            &format!("/app/hist/{first}"),
            &[],
            b"",
            Some(&user),
        );
        answer = serde_json::from_slice(&response.body).unwrap();
        if answer["state"] == "Ready" {
            break;
        }
    }
    assert_eq!(answer["state"], "Ready", "{answer}");
    assert_eq!(answer["value"], "old");
    assert_eq!(answer["caller"], harness.user.fingerprint_hex());
    let unknown = harness.request(Method::Get, "/app/hist/9.9999", &[], b"", Some(&user));
    assert_eq!(unknown.status, 404);
    // A tampered entry in the "files" is caught against the Merkle tree.
    let victim = harness.put("a", b"x");
    harness.tick(150);
    let entry = &mut harness.files[victim.seqno as usize - 1];
    let last = entry.len() - 1;
    entry[last] ^= 1;
    let mut status = 0;
    for _ in 0..3 {
        status = harness
            .request(
                Method::Get,
                &format!("/app/hist/{victim}"),
                &[],
                b"",
                Some(&user),
            )
            .status;
        if status != 202 {
            break;
        }
    }
    assert_eq!(status, 500);
    // Paths no application serves are 404.
    assert_eq!(
        harness
            .request(Method::Get, "/app/nothing", &[], b"", Some(&user))
            .status,
        404
    );
}

/// A host may answer `GET /node/commit` itself from the core's commit point: the answer is the
/// very one the core gives, and only plain commit queries qualify.
#[test]
fn the_commit_answer_a_host_gives_is_the_core_s() {
    let mut harness = Harness::new();
    harness.put("a", b"1");
    harness.tick(150);
    let from_core = harness.request(Method::Get, "/node/commit", &[], b"", None);
    let commit = harness.node.commit_tx_id();
    assert!(commit.seqno > 0);
    assert_eq!(charter_core::commit_response(commit), from_core);
    let plain = charter_core::Request {
        method: Method::Get,
        path: "/node/commit".to_owned(),
        query: Vec::new(),
        headers: Vec::new(),
        body: Vec::new(),
        caller_cert_der: None,
    };
    assert!(charter_core::is_commit_query(&plain));
    let mut linearizable = plain.clone();
    linearizable.headers.push((
        charter_core::READ_CONSISTENCY_HEADER.to_owned(),
        "linearizable".to_owned(),
    ));
    assert!(!charter_core::is_commit_query(&linearizable));
    let mut other = plain.clone();
    other.path = "/node/tx".to_owned();
    assert!(!charter_core::is_commit_query(&other));
    let mut put = plain.clone();
    put.method = Method::Put;
    assert!(!charter_core::is_commit_query(&put));
    // `after_seqno` is for hosts that wait; the core answers at once, and refuses a bad one.
    let mut waiting = plain;
    assert_eq!(charter_core::commit_wait_after(&waiting), Ok(None));
    waiting
        .query
        .push(("after_seqno".to_owned(), "12".to_owned()));
    assert!(charter_core::is_commit_query(&waiting));
    assert_eq!(charter_core::commit_wait_after(&waiting), Ok(Some(12)));
    let answer = harness.request(
        Method::Get,
        "/node/commit",
        &[("after_seqno", "12")],
        b"",
        None,
    );
    assert_eq!(answer, from_core);
    let bad = harness.request(
        Method::Get,
        "/node/commit",
        &[("after_seqno", "-1")],
        b"",
        None,
    );
    assert_eq!(bad.status, 400);
    waiting.query[0].1 = "x".to_owned();
    assert!(charter_core::commit_wait_after(&waiting).is_err());
}
