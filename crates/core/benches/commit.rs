//! The commit path through the core: execute a PUT, build and encrypt its ledger entry, append
//! it through Raft, add its Merkle leaf; and a signature transaction.

use charter_core::{Action, Input, Method, Node, NodeConfig, Request, RequestId, StartMode};
use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn node() -> (Node, Certificate) {
    let validity = Validity {
        not_before_unix: 1_700_000_000,
        days: 365,
    };
    let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
    let spec = CertificateSpec {
        common_name: "service",
        is_ca: true,
        subject_alt_names: &[],
        validity,
    };
    let service = Certificate::self_signed(&service_key, &spec).unwrap();
    let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
    let spec = CertificateSpec {
        common_name: "node",
        is_ca: false,
        subject_alt_names: &[],
        validity,
    };
    let node_cert =
        Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service).unwrap();
    let user_key = SigningKey::from_seed(&[4; 32]).unwrap();
    let spec = CertificateSpec {
        common_name: "user",
        is_ca: false,
        subject_alt_names: &[],
        validity,
    };
    let user = Certificate::self_signed(&user_key, &spec).unwrap();
    let mut config = NodeConfig::new(
        node_key,
        node_cert,
        service,
        LedgerSecret::from_bytes([3; 32]),
    );
    config.signature_interval_txs = u64::MAX;
    config.signature_interval_ms = u64::MAX;
    let mut out = Vec::new();
    let mode = StartMode::Genesis {
        members: vec![],
        users: vec![user.clone()],
    };
    let mut node = Node::new(config, mode, &mut out).unwrap();
    settle(&mut node, out);
    (node, user)
}

/// Plays a host whose disk syncs at once.
fn settle(node: &mut Node, mut actions: Vec<Action>) {
    for _ in 0..16 {
        let token = actions
            .iter()
            .filter_map(|action| match action {
                Action::Sync { token } => Some(*token),
                _ => None,
            })
            .max();
        actions.clear();
        match token {
            Some(token) => node.step(Input::Durable { token }, &mut actions).unwrap(),
            None => return,
        }
    }
}

fn put_request(user: &Certificate, key: u64) -> Request {
    Request {
        method: Method::Put,
        path: format!("/app/kv/{key:016x}"),
        query: Vec::new(),
        headers: Vec::new(),
        body: vec![b'v'; 100],
        caller_cert_der: Some(user.der().to_vec()),
    }
}

fn bench_commit_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    let (mut node, user) = node();
    let mut key = 0u64;
    group.bench_function("put_100B_with_durable", |b| {
        b.iter(|| {
            key += 1;
            let mut out = Vec::new();
            node.step(
                Input::Client {
                    id: RequestId(key),
                    request: put_request(&user, key),
                },
                &mut out,
            )
            .unwrap();
            settle(&mut node, out);
        })
    });
    group.bench_function("put_batch_64_one_sync", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut out = Vec::new();
                for _ in 0..64 {
                    key += 1;
                    node.step(
                        Input::Client {
                            id: RequestId(key),
                            request: put_request(&user, key),
                        },
                        &mut out,
                    )
                    .unwrap();
                }
                settle(&mut node, out);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_commit_path);
criterion_main!(benches);
