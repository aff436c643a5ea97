//! Transactions per second of the adapter's core path, robust to a busy machine: sends N
//! pre-signed transactions one request each and reports both wall-clock and on-CPU rates (the
//! thread's CPU time, which excludes time the scheduler gave to other processes), with the p50
//! and p99 of each request's wall time.
//!
//! `cargo bench -p charter-evm --bench throughput [-- N]` (default N = 20,000 per scenario).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use alloy_primitives::Address;
use charter_core::Method;
use charter_evm::{EthereumApp, MemoryLedger};
use common::*;
use serde_json::json;

fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete rusage into the pointer it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn body(raw: &[u8]) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
           "params": [format!("0x{}", hex::encode(raw))]})
    .to_string()
    .into_bytes()
}

fn sign_all(owner: &Account, token: Option<Address>, first: u64, count: u64) -> Vec<Vec<u8>> {
    let recipient = Account::seeded(77).address;
    (first..first + count)
        .map(|nonce| {
            let unsigned = match token {
                None => tx(nonce, Some(recipient), 1, Vec::new(), 21_000),
                Some(token) => tx(nonce, Some(token), 0, transfer_call(&recipient, 1), 60_000),
            };
            body(&owner.sign(&unsigned))
        })
        .collect()
}

fn report(name: &str, latencies: &mut [Duration], wall: Duration, cpu: Duration) {
    latencies.sort();
    let count = latencies.len();
    let p = |q: f64| latencies[((count as f64 * q) as usize).min(count - 1)];
    println!(
        "{name:<22} {count:>7} tx  wall {:>8.0} tx/s  on-CPU {:>8.0} tx/s  p50 {:>6.1} us  p99 {:>7.1} us",
        count as f64 / wall.as_secs_f64(),
        count as f64 / cpu.as_secs_f64(),
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
    );
}

/// Runs `send` over every body, timing each.
fn measure(name: &str, bodies: &[Vec<u8>], mut send: impl FnMut(usize, &[u8])) {
    let mut latencies = Vec::with_capacity(bodies.len());
    let cpu_start = thread_cpu();
    let start = Instant::now();
    for (index, body) in bodies.iter().enumerate() {
        let sent = Instant::now();
        send(index, body);
        latencies.push(sent.elapsed());
    }
    let wall = start.elapsed();
    let cpu = thread_cpu() - cpu_start;
    report(name, &mut latencies, wall, cpu);
}

fn main() {
    let count: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(20_000);
    let owner = Account::dev(0);
    let deploy = body(&owner.sign(&tx(0, None, 0, token_init_code(u128::MAX >> 1), 2_000_000)));

    // Recovery alone.
    let raw = owner.sign(&tx(0, Some(Address::ZERO), 1, Vec::new(), 21_000));
    let bodies = vec![raw; count as usize];
    measure("recover_sender", &bodies, |_, raw| {
        charter_evm::transaction::decode_signed(raw).unwrap();
    });

    for token in [false, true] {
        let app = EthereumApp::dev();
        let mut ledger = MemoryLedger::new("bench-user");
        let token_address = token.then(|| {
            let hash = match app.serve(&mut ledger, &deploy).unwrap() {
                charter_evm::rpc::Reply::Json(value) => value["result"].clone(),
                other => panic!("{other:?}"),
            };
            let receipt = rpc(
                &app,
                &mut ledger,
                "eth_getTransactionReceipt",
                json!([hash]),
            )
            .unwrap();
            receipt["contractAddress"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        });
        let bodies = sign_all(&owner, token_address, u64::from(token), count);
        let name = if token {
            "memory/erc20_transfer"
        } else {
            "memory/ether_transfer"
        };
        measure(name, &bodies, |_, body| {
            app.serve(&mut ledger, body).unwrap();
        });
    }

    // Through a node core, then with the senders recovered ahead on two other threads, as the
    // host does on its connection threads (the core thread then only executes).
    for (token, prepared) in [(false, false), (true, false), (false, true), (true, true)] {
        let app = EthereumApp::dev();
        let senders = app.senders();
        let mut harness = harness::Harness::with_apps(vec![Box::new(app)]);
        let user = harness.user.clone();
        let token_address = token.then(|| {
            let response = harness.request(Method::Post, "/app/ethereum", &[], &deploy, Some(&user));
            let hash: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            let query = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt", "params": [hash["result"]]});
            let response = harness.request(Method::Post, "/app/ethereum", &[], query.to_string().as_bytes(), Some(&user));
            let receipt: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            receipt["result"]["contractAddress"].as_str().unwrap().parse().unwrap()
        });
        let bodies = sign_all(&owner, token_address, u64::from(token), count);
        let name = match (token, prepared) {
            (false, false) => "node/ether_transfer",
            (true, false) => "node/erc20_transfer",
            (false, true) => "node/ether_prepared",
            (true, true) => "node/erc20_prepared",
        };
        if prepared {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for half in bodies.chunks(bodies.len().div_ceil(2)) {
                    let senders = &senders;
                    scope.spawn(move || {
                        for body in half {
                            assert_eq!(senders.prepare(body), 1);
                        }
                    });
                }
            });
            println!(
                "{:<22} {count:>7} tx  wall {:>8.0} tx/s  (sender recovery on 2 threads)",
                "prepare",
                count as f64 / start.elapsed().as_secs_f64()
            );
        }
        measure(name, &bodies, |index, body| {
            let response = harness.request(Method::Post, "/app/ethereum", &[], body, Some(&user));
            assert_eq!(response.status, 200);
            if index % 1_000 == 999 {
                harness.tick(10);
            }
        });
        harness.tick(10);
        let commit = harness.request(Method::Get, "/node/commit", &[], b"", None);
        println!(
            "{:<22} committed up to {}",
            "",
            String::from_utf8_lossy(&commit.body)
        );
    }
}
