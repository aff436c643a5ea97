//! The commit path through the core: execute a PUT, build and encrypt its ledger entry, append
//! it through Raft, add its Merkle leaf, with a signature every 5,000 transactions.

#[path = "../tests/harness/mod.rs"]
mod harness;

use charter_core::{Input, Method, Request, RequestId};
use charter_crypto::Certificate;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn put_request(user: &Certificate, path: String) -> Request {
    Request {
        method: Method::Put,
        path,
        query: Vec::new(),
        headers: Vec::new(),
        body: vec![b'v'; 100],
        caller_cert_der: Some(user.der().to_vec()),
    }
}

/// Steps a 100-byte PUT of `/app/kv/{key}` as request `id`, collecting the actions in `out`.
fn put(harness: &mut harness::Harness, id: u64, key: String, out: &mut Vec<charter_core::Action>) {
    let request = put_request(&harness.user, format!("/app/kv/{key}"));
    let input = Input::Client {
        id: RequestId(id),
        request,
    };
    harness.node.step(input, out).unwrap();
}

fn bench_commit_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    let mut harness = harness::Harness::new();
    let mut key = 1_000_000u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_100B_then_durable", |b| {
        b.iter(|| {
            key += 1;
            let mut out = Vec::new();
            put(&mut harness, key, format!("{key:016x}"), &mut out);
            harness.host(out);
            harness.responses.clear();
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("put_batch_64_one_durable", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for _ in 0..64 {
                key += 1;
                put(&mut harness, key, format!("{key:016x}"), &mut out);
            }
            harness.host(out);
            harness.responses.clear();
        })
    });
    // 64 clients writing their own ascending keys, interleaved, as the network benchmark
    // does: 64 places in the store's B-tree are written at once, so every store clone (a
    // rollback point) makes the writes after it copy those 64 nodes. Without snapshots, which
    // the harness would encode on this thread (a node encodes them on another).
    let mut harness = harness::Harness::new_with(|config| config.snapshot_interval_txs = 0);
    let mut counter = 0u64;
    group.throughput(Throughput::Elements(64));
    group.bench_function("put_64_clients_interleaved", |b| {
        b.iter(|| {
            counter += 1;
            let mut out = Vec::new();
            for client in 0..64u64 {
                key += 1;
                put(
                    &mut harness,
                    key,
                    format!("{client:06x}{counter:010x}"),
                    &mut out,
                );
            }
            harness.host(out);
            harness.responses.clear();
        })
    });
    group.finish();
}

criterion_group!(benches, bench_commit_path);
criterion_main!(benches);
