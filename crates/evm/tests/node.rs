//! The adapter registered in a real node core, driven as the host drives it: requests with
//! user certificates in, ledger entries out. Each Ethereum transaction becomes one ledger entry
//! that a signature commits, and its private maps are encrypted in the ledger.

mod common;
#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use charter_core::Method;
use charter_evm::EthereumApp;
use common::*;
use harness::Harness;
use serde_json::{json, Value};

fn post(harness: &mut Harness, body: &Value, as_user1: bool) -> (u16, Value) {
    let user = if as_user1 {
        harness.user1.clone()
    } else {
        harness.user.clone()
    };
    let response = harness.request(
        Method::Post,
        "/app/ethereum",
        &[],
        body.to_string().as_bytes(),
        Some(&user),
    );
    let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, value)
}

fn call(harness: &mut Harness, method: &str, params: Value, as_user1: bool) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, response) = post(harness, &body, as_user1);
    assert_eq!(status, 200, "{response}");
    response
}

#[test]
fn transactions_are_ledger_entries_committed_by_signatures() {
    let mut harness = Harness::with_apps(vec![Box::new(EthereumApp::dev())]);
    let alice = Account::dev(0);
    let to = Account::seeded(1).address;
    let entries_before = harness.files.len();
    let response = call(&mut harness, "eth_chainId", json!([]), false);
    assert_eq!(response["result"], "0x4348");
    let raw = alice.sign(&tx(0, Some(to), 1_000, Vec::new(), 21_000));
    let response = call(
        &mut harness,
        "eth_sendRawTransaction",
        json!([format!("0x{}", hex::encode(&raw))]),
        false,
    );
    let hash = response["result"].as_str().unwrap().to_owned();
    harness.tick(200);
    let receipt = call(
        &mut harness,
        "eth_getTransactionReceipt",
        json!([hash]),
        false,
    );
    let tx_id: charter_ledger::TxId = receipt["result"]["charterTransactionId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The Ethereum transaction's Charter transaction is committed by a signature.
    assert_eq!(harness.status(tx_id), "Committed");
    assert!(
        harness.files.len() >= entries_before + 2,
        "genesis and the transfer"
    );
    // The account maps are private: the sender's address never appears in clear in the ledger.
    let needle = alice.address.as_slice();
    assert!(harness
        .files
        .iter()
        .all(|entry| !entry.windows(needle.len()).any(|window| window == needle)));
    // user1 cannot see user0's receipt; user0 can.
    let hidden = call(
        &mut harness,
        "eth_getTransactionReceipt",
        json!([hash]),
        true,
    );
    assert_eq!(hidden["result"], Value::Null);
    assert_eq!(receipt["result"]["status"], "0x1");
}

#[test]
fn http_errors() {
    let mut harness = Harness::with_apps(vec![Box::new(EthereumApp::dev())]);
    let user = harness.user.clone();
    let response = harness.request(Method::Get, "/app/ethereum", &[], b"", Some(&user));
    assert_eq!(response.status, 405);
    // Without a user certificate the node refuses before the app sees the request.
    let response = harness.request(Method::Post, "/app/ethereum", &[], b"{}", None);
    assert_eq!(response.status, 401);
    let (status, response) = post(&mut harness, &json!("x"), false);
    assert_eq!(status, 200);
    assert_eq!(response["error"]["code"], -32600);
}

/// In a node, block timestamps come from the clock the host gives the core in its ticks.
#[test]
fn block_timestamps_come_from_the_core_clock() {
    let mut harness = Harness::with_apps(vec![Box::new(EthereumApp::dev())]);
    harness.tick(10);
    let alice = Account::dev(0);
    let raw = alice.sign(&tx(
        0,
        Some(Account::seeded(1).address),
        1,
        Vec::new(),
        21_000,
    ));
    call(
        &mut harness,
        "eth_sendRawTransaction",
        json!([format!("0x{}", hex::encode(&raw))]),
        false,
    );
    let block = call(
        &mut harness,
        "eth_getBlockByNumber",
        json!(["latest", false]),
        false,
    );
    // The harness's host clock reads 1,800,000,000 s.
    assert_eq!(block["result"]["number"], "0x1");
    assert_eq!(
        block["result"]["timestamp"],
        format!("{:#x}", 1_800_000_000u64)
    );
}
