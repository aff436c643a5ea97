//! Replication end to end through the real binaries on loopback (issue 5): a 3-node network
//! commits writes sent to any node; the primary is killed with SIGKILL mid-stream and a new one
//! takes over without losing anything committed; the killed node restarts and catches up;
//! membership grows 3→5→3 by governance while writes continue; retired and unendorsed nodes are
//! refused on the node channel; a node whose attestation is not allowed cannot join.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::network::{put, Network};
use common::{charter, path_str, text};
use serde_json::{json, Value};

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    (dir, workspace)
}

/// Acknowledged writes: key → (value, TxID).
type Acked = Arc<Mutex<BTreeMap<String, (String, String)>>>;

/// Writes unique keys through the nodes in `targets` (round robin, skipping failures) until
/// `stop`; records every acknowledged write.
fn start_writer(
    network: &Network,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> tokio::task::JoinHandle<u64> {
    let tls = network.tls(Some("user0"));
    tokio::spawn(async move {
        let mut sequence = 0u64;
        let mut failures = 0u64;
        let mut turn = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let live = targets.lock().unwrap().clone();
            let address = live[turn % live.len()];
            turn += 1;
            let Ok(mut client) =
                charter_host::client::Client::connect(address, "127.0.0.1", tls.clone()).await
            else {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            for _ in 0..10 {
                sequence += 1;
                let key = format!("{prefix}{sequence:06}");
                let value = format!("v{sequence}");
                match put(&mut client, &key, &value).await {
                    Ok(tx_id) => {
                        acked.lock().unwrap().insert(key, (value, tx_id));
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        break;
                    }
                }
            }
        }
        failures
    })
}

/// The status of `tx_id` as node `index` reports it.
async fn tx_status(network: &Network, index: usize, tx_id: &str) -> String {
    network
        .get(index, &format!("/node/tx?transaction_id={tx_id}"))
        .await
        .map(|json| json["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Waits until node `index` has committed at least `seqno`.
async fn wait_committed(network: &Network, index: usize, seqno: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(json) = network.get(index, "/node/state").await {
            if json["last_committed_seqno"].as_u64().unwrap_or(0) >= seqno {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not commit {seqno} within {timeout:?}:\n{}",
            network.nodes[index].name,
            network.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn commit_seqno(network: &Network, index: usize) -> u64 {
    network
        .get(index, "/node/state")
        .await
        .and_then(|json| json["last_committed_seqno"].as_u64())
        .unwrap_or(0)
}

/// Every write that `status_node` reports Committed is readable with its value on each node of
/// `readers`; returns how many were checked.
async fn check_committed_everywhere(
    network: &Network,
    acked: &Acked,
    status_node: usize,
    readers: &[usize],
) -> usize {
    let writes = acked.lock().unwrap().clone();
    let mut committed = Vec::new();
    for (key, (value, tx_id)) in &writes {
        match tx_status(network, status_node, tx_id).await.as_str() {
            "Committed" => committed.push((key.clone(), value.clone(), tx_id.clone())),
            "Invalid" => {}
            other => panic!("write {key} at {tx_id} is {other} after the network settled"),
        }
    }
    for &reader in readers {
        let mut client = network.client(reader, Some("user0")).await;
        for (key, value, tx_id) in &committed {
            let response = client
                .request("GET", &format!("/app/kv/{key}"), &[], Vec::new())
                .await
                .unwrap();
            assert_eq!(
                (response.status, text(&response.body)),
                (200, value.clone()),
                "{key} (committed at {tx_id}) on {}",
                network.nodes[reader].name
            );
        }
    }
    committed.len()
}

/// Concatenated ledger chunk files of a node, in seqno order.
fn ledger_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut chunks: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.join("ledger"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let first = name
                .strip_prefix("ledger_")?
                .split(['-', '.'])
                .next()?
                .parse()
                .ok()?;
            Some((first, entry.path()))
        })
        .collect();
    chunks.sort();
    chunks
        .into_iter()
        .flat_map(|(_, path)| std::fs::read(path).unwrap())
        .collect()
}

fn verify_ledger(network: &Network, index: usize) {
    let dir = network.nodes[index].dir.join("ledger");
    let cert = network.workspace.join("service_cert.pem");
    let output = charter(&[
        "ledger",
        "verify",
        path_str(&dir),
        "--service-cert",
        path_str(&cert),
    ]);
    assert!(
        output.status.success(),
        "ledger of {} does not verify: {}{}",
        network.nodes[index].name,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_killing_the_primary_and_the_killed_node_catches_up() {
    let (_dir, workspace) = setup();
    let mut network = Network::start(&workspace, 3, &[]);
    let all = [0, 1, 2];

    // Writes to any node commit: followers forward them to the primary.
    for index in all {
        let mut client = network.client(index, Some("user0")).await;
        put(&mut client, &format!("first-{index}"), "hello")
            .await
            .unwrap_or_else(|error| panic!("write through node{index}: {error}"));
    }
    // The caller's identity travels with a forwarded write and is checked by the primary: a
    // member is not a user (403), an anonymous caller is refused (401), on every node.
    for index in all {
        for (identity, status) in [(Some("member0"), 403), (None, 401)] {
            let mut client = network.client(index, identity).await;
            let response = client
                .request("PUT", "/app/kv/not-a-user", &[], b"x".to_vec())
                .await
                .unwrap();
            assert_eq!(
                response.status,
                status,
                "{identity:?} through node{index}: {}",
                text(&response.body)
            );
        }
    }
    let listed = network.get(1, "/node/network/nodes").await.unwrap();
    let statuses: Vec<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Trusted"; 3], "{listed}");

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let targets = Arc::new(Mutex::new(network.addresses(&all)));
    let writer = start_writer(&network, targets.clone(), "w", stop.clone(), acked.clone());
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Kill the primary mid-stream; note what was Committed just before.
    let old_primary = network
        .wait_for_primary(&all, Duration::from_secs(10))
        .await;
    let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != old_primary).collect();
    *targets.lock().unwrap() = network.addresses(&survivors);
    let committed_before = commit_seqno(&network, old_primary).await;
    assert!(committed_before > 0);
    network.kill(old_primary);
    let killed_at = Instant::now();
    let new_primary = network
        .wait_for_primary(&survivors, Duration::from_secs(30))
        .await;
    let failover = killed_at.elapsed();
    assert_ne!(new_primary, old_primary);
    // Election timeouts are 10-20 ticks of 50 ms: a few of them at most.
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let writes_at_kill = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() <= writes_at_kill + 10 {
        assert!(
            Instant::now() < deadline,
            "writes did not resume after the failover:\n{}",
            network.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Restart the killed node: it catches up with everything committed since.
    network.restart(old_primary);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let _failures = writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = commit_seqno(&network, new_primary).await;
    assert!(target > committed_before);
    for index in all {
        wait_committed(&network, index, target, Duration::from_secs(60)).await;
    }
    let checked = check_committed_everywhere(&network, &acked, new_primary, &all).await;
    assert!(checked > 20, "only {checked} writes committed");
    eprintln!(
        "failover in {failover:?}; {checked} committed writes checked on every node; {} acknowledged",
        acked.lock().unwrap().len()
    );

    // Followers' ledgers hold the same bytes as the primary's for the range they share.
    let primary_bytes = ledger_bytes(&network.nodes[new_primary].dir);
    for index in survivors.iter().copied().filter(|i| *i != new_primary) {
        let bytes = ledger_bytes(&network.nodes[index].dir);
        let common = bytes.len().min(primary_bytes.len());
        assert!(common > 1_000);
        assert!(
            bytes[..common] == primary_bytes[..common],
            "{} and the primary's ledgers differ",
            network.nodes[index].name
        );
    }
    network.stop();
    for index in all {
        verify_ledger(&network, index);
    }
}

/// Opens a TLS connection to a node channel with the node identity in `dir` (or the given
/// PEMs) and says whether the listener keeps it open (accepted) or closes it (refused).
async fn node_channel_accepts(address: SocketAddr, cert_pem: &str, key_pem: &str) -> bool {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"charter-peer/1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = match tokio::net::TcpStream::connect(address).await {
        Ok(tcp) => tcp,
        Err(error) => {
            eprintln!("node channel {address}: connect: {error}");
            return false;
        }
    };
    let mut tls = match connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
    {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("node channel {address}: handshake: {error}");
            return false;
        }
    };
    // The listener never writes: a refused client sees an alert or the connection close, an
    // accepted one sees nothing.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(1_500), tls.read(&mut byte)).await {
        Err(_) => true,
        Ok(outcome) => {
            eprintln!("node channel {address}: closed: {outcome:?}");
            false
        }
    }
}

fn node_pems(dir: &std::path::Path) -> (String, String) {
    (
        std::fs::read_to_string(dir.join("node_cert.pem")).unwrap(),
        std::fs::read_to_string(dir.join("node_privk.pem")).unwrap(),
    )
}

async fn voters(network: &Network, index: usize) -> Vec<u64> {
    network
        .get(index, "/node/consensus")
        .await
        .map(|json| {
            json["voters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_voters(network: &Network, candidates: &[usize], count: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(primary) = network.primary_among(candidates).await {
            if voters(network, primary).await.len() == count {
                return primary;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the configuration never reached {count} voters:\n{}",
            network.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `index` has asked to join and returns its node ID.
async fn pending_node_id(network: &Network, index: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = network.nodes[index].rpc_address.to_string();
    loop {
        if let Some(json) = network.get(0, "/node/network/nodes").await {
            if let Some(node) = json["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|node| node["rpc_address"] == address.as_str())
            {
                assert_eq!(node["status"], "Pending");
                return node["node_id"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never asked to join:\n{}",
            network.nodes[index].name,
            network.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_to_five_and_shrinks_to_three_while_writes_continue() {
    let (_dir, workspace) = setup();
    let mut network = Network::start(&workspace, 3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let targets = Arc::new(Mutex::new(network.addresses(&[0, 1, 2])));
    let writer = start_writer(&network, targets.clone(), "m", stop.clone(), acked.clone());

    // Two more nodes ask to join; they wait as Pending until governance trusts them.
    let added: Vec<usize> = (0..2).map(|_| network.add_joining_node()).collect();
    for &index in &added {
        let node_id = pending_node_id(&network, index).await;
        network.nodes[index].node_id = node_id.clone();
        network.pass(
            1,
            json!([{"name": "transition_node_to_trusted", "args": {"node_id": node_id}}]),
        );
    }
    let all: Vec<usize> = (0..5).collect();
    wait_voters(&network, &all, 5).await;
    targets.lock().unwrap().extend(network.addresses(&added));
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Retire the primary and one other original node: leadership moves first.
    let old_primary = network
        .wait_for_primary(&all, Duration::from_secs(10))
        .await;
    let other = [0, 1, 2]
        .into_iter()
        .find(|index| *index != old_primary)
        .unwrap();
    let retired = [old_primary, other];
    let remaining: Vec<usize> = all
        .iter()
        .copied()
        .filter(|index| !retired.contains(index))
        .collect();
    *targets.lock().unwrap() = network.addresses(&remaining);
    let via = remaining[0];
    for index in retired {
        let node_id = network.nodes[index].node_id.clone();
        network.pass(
            via,
            json!([{"name": "remove_node", "args": {"node_id": node_id}}]),
        );
    }
    let primary = wait_voters(&network, &remaining, 3).await;
    assert!(!retired.contains(&primary));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target = commit_seqno(&network, primary).await;
    for &index in &remaining {
        wait_committed(&network, index, target, Duration::from_secs(60)).await;
    }
    let checked = check_committed_everywhere(&network, &acked, primary, &remaining).await;
    assert!(checked > 20, "only {checked} writes committed");
    let listed = network.get(primary, "/node/network/nodes").await.unwrap();
    for index in retired {
        let entry = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["node_id"] == network.nodes[index].node_id.as_str())
            .unwrap();
        assert_eq!(entry["status"], "Retired");
    }

    // The node channel refuses a retired node and a certificate the service never endorsed,
    // and still accepts a trusted node.
    let listener = network.nodes[primary].node_address;
    let other = remaining.iter().copied().find(|i| *i != primary).unwrap();
    let (cert, key) = node_pems(&network.nodes[other].dir);
    assert!(
        node_channel_accepts(listener, &cert, &key).await,
        "a trusted node was refused:\n{}",
        network.diagnostics()
    );
    let (cert, key) = node_pems(&network.nodes[retired[1]].dir);
    assert!(!node_channel_accepts(listener, &cert, &key).await);
    let key = charter_crypto::SigningKey::generate(&mut rand_core::OsRng);
    let spec = charter_crypto::CertificateSpec {
        common_name: "impostor",
        is_ca: false,
        subject_alt_names: &[],
        validity: charter_crypto::Validity {
            not_before_unix: 1_700_000_000,
            days: 3_650,
        },
    };
    let self_signed = charter_crypto::Certificate::self_signed(&key, &spec).unwrap();
    assert!(!node_channel_accepts(listener, &self_signed.to_pem(), &key.to_pem()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_disallowed_measurement_cannot_join() {
    let (_dir, workspace) = setup();
    let network = Network::start(&workspace, 1, &[]);
    let key = charter_crypto::SigningKey::generate(&mut rand_core::OsRng);
    let spec = charter_crypto::CertificateSpec {
        common_name: "joiner",
        is_ca: false,
        subject_alt_names: &[],
        validity: charter_crypto::Validity {
            not_before_unix: 1_700_000_000,
            days: 3_650,
        },
    };
    let cert = charter_crypto::Certificate::self_signed(&key, &spec).unwrap();
    let tls = charter_host::tls::client_config(
        &network.service_pem,
        Some((&cert.to_pem(), &key.to_pem())),
    )
    .unwrap();
    let mut client =
        charter_host::client::Client::connect(network.nodes[0].rpc_address, "127.0.0.1", tls)
            .await
            .unwrap();
    let report_data = charter_attest::node_report_data(&key.verifying_key().to_spki_der());
    let join = |measurement: &str| {
        json!({
            "certificate": cert.to_pem(),
            "evidence": charter_attest::virtual_evidence(measurement, &report_data),
            "rpc_address": "127.0.0.1:1",
            "node_address": "127.0.0.1:2",
        })
        .to_string()
        .into_bytes()
    };
    let refused = client
        .request(
            "POST",
            "/node/join",
            &[("content-type", "application/json")],
            join(&"00".repeat(32)),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", text(&refused.body));
    assert!(text(&refused.body).contains("JoinRefused"));
    let listed = network.get(0, "/node/network/nodes").await.unwrap();
    assert_eq!(listed["nodes"].as_array().unwrap().len(), 1);

    // A node in join mode with allowed evidence waits as Pending: until governance trusts it,
    // it receives no endorsement and no secret, and serves no client.
    let mut network = network;
    let index = network.add_joining_node();
    let node_id = pending_node_id(&network, index).await;
    assert!(!node_id.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = &network.nodes[index].dir;
    assert!(!dir.join("node_cert.pem").exists());
    assert!(!dir.join("sealed/ledger_secrets.json").exists());
    // The pending node does not serve clients yet.
    assert!(network.get(index, "/node/state").await.is_none());
    network.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_ten_thousand_transactions_starts_from_a_snapshot() {
    let (_dir, workspace) = setup();
    let mut network = Network::start(&workspace, 3, &["--snapshot-interval-txs", "5000"]);
    // 10,000 writes from concurrent clients, spread over every node.
    let total = 10_000usize;
    let tls = network.tls(Some("user0"));
    let addresses = network.addresses(&[0, 1, 2]);
    let mut writers = Vec::new();
    for worker in 0..32usize {
        let tls = tls.clone();
        let address = addresses[worker % addresses.len()];
        writers.push(tokio::spawn(async move {
            let mut client = charter_host::client::Client::connect(address, "127.0.0.1", tls)
                .await
                .unwrap();
            for index in (worker..total).step_by(32) {
                put(&mut client, &format!("s{index:05}"), &format!("v{index}"))
                    .await
                    .unwrap_or_else(|error| panic!("write {index}: {error}"));
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let primary = network
        .wait_for_primary(&[0, 1, 2], Duration::from_secs(10))
        .await;
    let target = commit_seqno(&network, primary).await;
    assert!(target > total as u64);
    // The primary encodes every snapshot point; wait until its snapshot is committed.
    let snapshots = network.nodes[primary].dir.join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed_snapshot = loop {
        let found = std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_prefix("snapshot_")?
                    .strip_suffix(".committed")?
                    .parse::<u64>()
                    .ok()
            })
            .max();
        if let Some(seqno) = found {
            break seqno;
        }
        assert!(
            Instant::now() < deadline,
            "no committed snapshot:\n{}",
            network.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(committed_snapshot >= 5_000);

    let index = network.add_joining_node();
    let node_id = pending_node_id(&network, index).await;
    network.nodes[index].node_id = node_id.clone();
    network.pass(
        0,
        json!([{"name": "transition_node_to_trusted", "args": {"node_id": node_id}}]),
    );
    // The snapshot may be newer than `target`; the governance transactions above come after
    // its evidence, so once the joiner commits what the primary has committed now, it holds
    // entries past the snapshot (and thus a ledger chunk).
    let target = target.max(commit_seqno(&network, primary).await);
    assert!(target > committed_snapshot);
    wait_committed(&network, index, target, Duration::from_secs(120)).await;
    let consensus = network.get(index, "/node/consensus").await.unwrap();
    let base = consensus["snapshot_base_seqno"].as_u64().unwrap_or(0);
    assert!(
        base >= 5_000,
        "the joined node did not start from a snapshot: {consensus}"
    );
    let log = std::fs::read_to_string(network.nodes[index].dir.join("node.log")).unwrap();
    assert!(log.contains("joining from a committed snapshot"), "{log}");
    // Its ledger files start after the snapshot; the state before it came from the snapshot.
    let first_chunk = std::fs::read_dir(network.nodes[index].dir.join("ledger"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .into_string()
                .ok()?
                .strip_prefix("ledger_")?
                .split(['-', '.'])
                .next()?
                .parse::<u64>()
                .ok()
        })
        .min()
        .unwrap_or_else(|| {
            let listing: Vec<_> = std::fs::read_dir(network.nodes[index].dir.join("ledger"))
                .unwrap()
                .flatten()
                .map(|entry| entry.file_name())
                .collect();
            panic!("no ledger chunk on the joined node: {listing:?}\n{consensus}\n{log}")
        });
    assert_eq!(first_chunk, base + 1, "{consensus}");
    let mut client = network.client(index, Some("user0")).await;
    for key in [0usize, 1, 4_999, 9_999] {
        let response = client
            .request("GET", &format!("/app/kv/s{key:05}"), &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(
            (response.status, text(&response.body)),
            (200, format!("v{key}"))
        );
    }
    // Writes keep committing with the new node, and its ledger verifies from its snapshot.
    let mut client = network.client(index, Some("user0")).await;
    put(&mut client, "after-join", "x").await.unwrap();
    // Its metrics show the core's state and the host's timings of the ledger it synced.
    let metrics = client
        .request("GET", "/node/metrics", &[], Vec::new())
        .await
        .unwrap();
    let text = text(&metrics.body);
    assert_eq!(metrics.status, 200, "{text}");
    assert!(text.contains("charter_commit_seqno "), "{text}");
    let fsyncs: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("charter_ledger_fsync_duration_seconds_count "))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no fsync count: {text}"));
    assert!(fsyncs > 0, "{text}");
    assert!(
        text.contains("# TYPE charter_core_round_duration_seconds histogram"),
        "{text}"
    );
    network.stop();
    verify_ledger(&network, index);
}
