//! Throughput of signed Ethereum transactions through the adapter's core path:
//! `eth_sendRawTransaction` JSON in, sender recovery, EVM execution, state and receipt writes,
//! one Charter commit per transaction.
//!
//! - `memory/*`: over a [`MemoryLedger`] (the key-value store only).
//! - `node/*`: through a real node core (the core harness plays the host): the request is
//!   authenticated by certificate, and each transaction becomes an encrypted ledger entry in
//!   the Merkle tree, proposed to Raft, made durable and committed by signatures.
//! - `recover_sender`: decoding and ECDSA sender recovery alone (k256), the fixed cost of every
//!   transaction.
//!
//! Transactions are signed before the clock starts. Run:
//! `cargo bench -p charter-evm --bench evm` (criterion prints elements/s = transactions/s).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use alloy_primitives::Address;
use charter_core::Method;
use charter_evm::{EthereumApp, Ledger, MemoryLedger};
use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

/// What a benchmark sends: ether transfers or ERC-20 transfers.
#[derive(Clone, Copy)]
enum Load {
    Ether,
    Token(Address),
}

fn signed(sender: &Account, load: Load, first_nonce: u64, count: u64) -> Vec<Vec<u8>> {
    let recipient = Account::seeded(77).address;
    (first_nonce..first_nonce + count)
        .map(|nonce| {
            let unsigned = match load {
                Load::Ether => tx(nonce, Some(recipient), 1, Vec::new(), 21_000),
                Load::Token(token) => {
                    tx(nonce, Some(token), 0, transfer_call(&recipient, 1), 60_000)
                }
            };
            sender.sign(&unsigned)
        })
        .collect()
}

fn request_body(raw: &[u8]) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
           "params": [format!("0x{}", hex::encode(raw))]})
    .to_string()
    .into_bytes()
}

/// The ERC-20 deployed by `owner` (nonce 0) on `ledger`.
fn deploy(app: &EthereumApp, ledger: &mut dyn Ledger, owner: &Account) -> Address {
    let raw = owner.sign(&tx(0, None, 0, token_init_code(u128::MAX >> 1), 2_000_000));
    let hash = rpc(
        app,
        ledger,
        "eth_sendRawTransaction",
        json!([format!("0x{}", hex::encode(raw))]),
    )
    .unwrap();
    let receipt = rpc(app, ledger, "eth_getTransactionReceipt", json!([hash])).unwrap();
    receipt["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    for name in ["ether_transfer", "erc20_transfer"] {
        let app = EthereumApp::dev();
        let mut ledger = MemoryLedger::new("bench-user");
        let owner = Account::dev(0);
        let load = if name == "ether_transfer" {
            Load::Ether
        } else {
            Load::Token(deploy(&app, &mut ledger, &owner))
        };
        let mut nonce = if matches!(load, Load::Ether) { 0 } else { 1 };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let bodies: Vec<Vec<u8>> = signed(&owner, load, nonce, iters).iter().map(|raw| request_body(raw)).collect();
                nonce += iters;
                let start = Instant::now();
                for body in &bodies {
                    let reply = app.serve(&mut ledger, body).unwrap();
                    assert!(matches!(reply, charter_evm::rpc::Reply::Json(ref v) if v.get("result").is_some()), "{reply:?}");
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn node(c: &mut Criterion) {
    let mut group = c.benchmark_group("node");
    group.throughput(Throughput::Elements(1));
    for name in ["ether_transfer", "erc20_transfer"] {
        let mut harness = harness::Harness::with_apps(vec![Box::new(EthereumApp::dev())]);
        let owner = Account::dev(0);
        let user = harness.user.clone();
        let load = if name == "ether_transfer" {
            Load::Ether
        } else {
            let raw = owner.sign(&tx(0, None, 0, token_init_code(u128::MAX >> 1), 2_000_000));
            let response = harness.request(
                Method::Post,
                "/app/ethereum",
                &[],
                &request_body(&raw),
                Some(&user),
            );
            let hash: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt", "params": [hash["result"]]});
            let response = harness.request(
                Method::Post,
                "/app/ethereum",
                &[],
                body.to_string().as_bytes(),
                Some(&user),
            );
            let receipt: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            Load::Token(
                receipt["result"]["contractAddress"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        };
        let mut nonce = if matches!(load, Load::Ether) { 0 } else { 1 };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let bodies: Vec<Vec<u8>> = signed(&owner, load, nonce, iters)
                    .iter()
                    .map(|raw| request_body(raw))
                    .collect();
                nonce += iters;
                let start = Instant::now();
                for (index, body) in bodies.iter().enumerate() {
                    let response =
                        harness.request(Method::Post, "/app/ethereum", &[], body, Some(&user));
                    assert_eq!(response.status, 200);
                    // Let time pass as a host's timer would, so signatures commit the entries.
                    if index % 1_000 == 999 {
                        harness.tick(10);
                    }
                }
                harness.tick(10);
                start.elapsed()
            })
        });
    }
    group.finish();
}

fn recover_sender(c: &mut Criterion) {
    let raw = Account::dev(0).sign(&tx(
        0,
        Some(Account::seeded(1).address),
        1,
        Vec::new(),
        21_000,
    ));
    let mut group = c.benchmark_group("recover_sender");
    group.throughput(Throughput::Elements(1));
    group.bench_function("eip1559", |b| {
        b.iter(|| charter_evm::transaction::decode_signed(&raw).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = recover_sender, memory, node
}
criterion_main!(benches);
