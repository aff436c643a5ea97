//! Confidentiality and disaster recovery through the real binaries: per-entry readers and
//! auditors, rekeys under load, no plaintext on disk, then every node killed and the service
//! recovered from the ledger with M of N members' recovery shares.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use charter_host::client::Client;
use common::network::{put, Network};
use common::{charter, free_port, path_str, text};
use serde_json::Value;

const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

fn charter_ok(args: &[&str]) -> Value {
    let output = charter(args);
    assert!(
        output.status.success(),
        "charter {args:?}: {}",
        text(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

async fn request(client: &mut Client, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let response = client
        .request(method, path, &[], body.to_vec())
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
    (response.status, response.body)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Waits until `GET /node/state` answers on `address` (whatever the service certificate).
async fn wait_answering(address: std::net::SocketAddr, service_pem_path: &Path, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(pem) = std::fs::read_to_string(service_pem_path) {
            let tls = charter_host::tls::client_config(&pem, None).unwrap();
            if let Ok(mut client) = Client::connect(address, "127.0.0.1", tls).await {
                if let Ok(response) = client.request("GET", "/node/state", &[], Vec::new()).await {
                    if response.status == 200 {
                        return;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the recovering node did not answer; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node of `network` reports `tx_id` committed, so that reads on followers
/// see it.
async fn wait_committed_everywhere(network: &Network, tx_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in 0..network.nodes.len() {
        loop {
            let path = format!("/node/tx?transaction_id={tx_id}");
            let status = network.get(index, &path).await;
            if status
                .as_ref()
                .is_some_and(|json| json["status"] == "Committed")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tx_id} not committed on node{index}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn tx_id_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["transaction_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_entries_rekeys_and_recovery_from_every_node_lost_with_m_of_n_shares() {
    let temp = tempfile::tempdir().unwrap();
    let old_ws = temp.path().join("old");
    let mut network = Network::start(&old_ws, 3, &[]);
    let ws = path_str(&old_ws).to_owned();
    // Two more users: carol (no special rights) and audrey (an auditor named by governance).
    for name in ["user2", "user3"] {
        charter_ok(&["keys", "new", name, "--out", &ws]);
    }
    let cert =
        |name: &str| std::fs::read_to_string(old_ws.join(format!("{name}_cert.pem"))).unwrap();
    let id_of = |name: &str| {
        charter_crypto::Certificate::from_pem(&cert(name))
            .unwrap()
            .fingerprint_hex()
    };
    network.pass(
        0,
        serde_json::json!([
            {"name": "set_user", "args": {"cert": cert("user2")}},
            {"name": "set_user", "args": {"cert": cert("user3"), "user_data": {"auditor": true}}},
            {"name": "set_recovery_threshold", "args": {"recovery_threshold": 2}},
        ]),
    );

    // user0 and user1 each write an entry only they (and the auditor) may read.
    let mut alice = network.client(0, Some("user0")).await;
    let mut bob = network.client(1, Some("user1")).await;
    let mut carol = network.client(2, Some("user2")).await;
    let mut audrey = network.client(0, Some("user3")).await;
    let for_bob = format!("/app/kv/deal?readers={}", id_of("user1"));
    let (status, _) = request(
        &mut alice,
        "PUT",
        &for_bob,
        format!("deal {MARKER}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = request(
        &mut bob,
        "PUT",
        "/app/kv/note?readers=",
        format!("note {MARKER}").as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    // Both entries are on every node before anyone reads (carol reads on node2, bob on node1).
    wait_committed_everywhere(&network, &tx_id_of(&body)).await;
    for (client, who) in [(&mut carol, "carol")] {
        for key in ["deal", "note"] {
            let (status, _) = request(client, "GET", &format!("/app/kv/{key}"), b"").await;
            assert_eq!(status, 404, "{who} sees {key}");
        }
        let (_, listed) = request(client, "GET", "/app/kv", b"").await;
        assert!(!contains(&listed, b"deal") && !contains(&listed, b"note"));
    }
    for key in ["deal", "note"] {
        let (status, body) = request(&mut audrey, "GET", &format!("/app/kv/{key}"), b"").await;
        assert_eq!(status, 200, "the auditor reads {key}");
        assert!(contains(&body, MARKER.as_bytes()));
    }
    let (status, _) = request(&mut bob, "GET", "/app/kv/deal", b"").await;
    assert_eq!(status, 200);

    // Writes continue while governance rekeys three times.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let writer = {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        let mut client = network.client(0, Some("user0")).await;
        tokio::spawn(async move {
            let mut sequence = 0;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let key = format!("w{sequence:05}");
                let value = format!("{MARKER} {sequence}");
                if put(&mut client, &key, &value).await.is_ok() {
                    acked.lock().unwrap().insert(key, value);
                }
            }
        })
    };
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let rekey = serde_json::json!({"name": "trigger_ledger_rekey", "args": {}});
        let pass = {
            let actions = Value::Array(vec![rekey; round + 1]);
            let network = &network;
            tokio::task::block_in_place(|| network.pass(0, actions))
        };
        assert!(pass["proposalId"].is_string());
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "only {} writes", acked.len());
    let last = put(&mut alice, "public-key", "public value").await.unwrap();
    wait_committed_everywhere(&network, &last).await;
    // Every entry reads back on every node.
    for index in 0..3 {
        let mut client = network.client(index, Some("user0")).await;
        for (key, value) in &acked {
            let (status, body) = request(&mut client, "GET", &format!("/app/kv/{key}"), b"").await;
            assert_eq!(
                (status, body),
                (200, value.as_bytes().to_vec()),
                "node{index} {key}"
            );
        }
    }
    // The ledger records three rekeys; no file holds a private value in clear.
    let records = files_under(&old_ws)
        .iter()
        .filter(|path| path.to_string_lossy().contains("ledger_"))
        .map(|path| std::fs::read(path).unwrap())
        .map(|bytes| {
            bytes
                .windows(40)
                .filter(|w| w.starts_with(b"public:charter.internal.ledger_secrets"))
                .count()
        })
        .sum::<usize>();
    assert!(records >= 3, "{records} rekey records");
    // A receipt from the first service identity, for later.
    let early_tx = {
        let (status, body) = request(&mut alice, "PUT", "/app/kv/early", b"early value").await;
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()["transaction_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old_receipt = loop {
        let (status, body) = request(
            &mut alice,
            "GET",
            &format!("/app/receipt?transaction_id={early_tx}"),
            b"",
        )
        .await;
        if status == 200 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Disaster: every node is killed.
    for index in 0..3 {
        network.kill(index);
    }
    network.stop();
    for path in files_under(&old_ws) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "{} holds plaintext",
            path.display()
        );
    }

    // Recovery into a new directory, from node0's ledger, with a new service identity.
    let new_ws = temp.path().join("new");
    std::fs::create_dir_all(new_ws.join("node0")).unwrap();
    for index in 0..3 {
        for suffix in ["cert.pem", "privk.pem", "enc_privk.pem"] {
            let name = format!("member{index}_{suffix}");
            std::fs::copy(old_ws.join(&name), new_ws.join(&name)).unwrap();
        }
    }
    for name in ["user0_cert.pem", "user0_privk.pem"] {
        std::fs::copy(old_ws.join(name), new_ws.join(name)).unwrap();
    }
    let port = free_port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node_dir = new_ws.join("node0");
    let config = serde_json::json!({
        "node_dir": node_dir,
        "rpc_address": address.to_string(),
        "node_address": format!("127.0.0.1:{}", free_port()),
        "mode": "recover",
        "recover": {
            "previous_ledger_dir": old_ws.join("node0/ledger"),
            "previous_service_cert": old_ws.join("service_cert.pem"),
            "previous_service_key": old_ws.join("node0/sealed/service_privk.pem"),
        },
        "service_cert_out": new_ws.join("service_cert.pem"),
        "signature_interval_ms": 20,
    });
    std::fs::write(node_dir.join("config.json"), config.to_string()).unwrap();
    let log_path = node_dir.join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _node = Killed(
        Command::new(env!("CARGO_BIN_EXE_charter"))
            .args(["node", "--config", path_str(&node_dir.join("config.json"))])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_answering(address, &new_ws.join("service_cert.pem"), &log_path).await;
    let new_ws_text = path_str(&new_ws).to_owned();
    let address_text = address.to_string();
    let gov = |member: &str, args: &[&str]| {
        let mut full = vec![
            "gov",
            "--workspace",
            &new_ws_text,
            "--address",
            &address_text,
            "--member",
            member,
        ];
        full.extend_from_slice(args);
        charter(&full)
    };
    let json_of = |output: std::process::Output| -> Value {
        assert!(
            output.status.success(),
            "{}\nlog:\n{}",
            text(&output.stderr),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let status = json_of(tokio::task::block_in_place(|| {
        gov("member0", &["recovery-status"])
    }));
    assert_eq!(status["serviceStatus"], "Recovering", "{status}");
    assert_eq!(status["threshold"], 2, "{status}");
    // Members open the recovered service.
    let proposal_path = new_ws.join("open.json");
    std::fs::write(
        &proposal_path,
        r#"{"actions":[{"name":"transition_service_to_open","args":{}}]}"#,
    )
    .unwrap();
    let created = json_of(tokio::task::block_in_place(|| {
        gov("member0", &["propose", path_str(&proposal_path)])
    }));
    let id = created["proposalId"].as_str().unwrap().to_owned();
    for member in ["member0", "member1"] {
        json_of(tokio::task::block_in_place(|| {
            gov(member, &["vote", &id, "--accept"])
        }));
    }
    // One share of two: still closed, and it says how many are missing.
    let answer = json_of(tokio::task::block_in_place(|| {
        gov("member0", &["recovery-share"])
    }));
    assert!(
        answer["message"].as_str().unwrap().contains("1 missing"),
        "{answer}"
    );
    let new_pem = std::fs::read_to_string(new_ws.join("service_cert.pem")).unwrap();
    let user_tls = charter_host::tls::client_config(
        &new_pem,
        Some((
            &cert("user0"),
            &std::fs::read_to_string(old_ws.join("user0_privk.pem")).unwrap(),
        )),
    )
    .unwrap();
    let mut user = Client::connect(address, "127.0.0.1", user_tls)
        .await
        .unwrap();
    let (status, _) = request(&mut user, "GET", "/app/kv/deal", b"").await;
    assert_eq!(status, 503, "closed with M-1 shares");
    // A corrupted partial decryption from member1 is refused and named.
    let member1_id = id_of("member1");
    let record = {
        let tls = charter_host::tls::client_config(&new_pem, None).unwrap();
        let mut client = Client::connect(address, "127.0.0.1", tls).await.unwrap();
        let (status, body) = request(
            &mut client,
            "GET",
            &format!("/gov/recovery/shares/{member1_id}"),
            b"",
        )
        .await;
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let field = |name: &str| hex::decode(record[name].as_str().unwrap()).unwrap();
    let ciphertext = charter_crypto::RecoveryCiphertext::from_bytes(&field("ciphertext")).unwrap();
    let dealt = charter_crypto::DealtShare {
        index: record["index"].as_u64().unwrap() as u32,
        verification_key: field("verificationKey").try_into().unwrap(),
        encrypted_share: field("encryptedShare"),
    };
    let key = charter_crypto::RecoveryKeyPair::from_pem(
        &std::fs::read_to_string(new_ws.join("member1_enc_privk.pem")).unwrap(),
    )
    .unwrap();
    let opened = charter_crypto::open_share(&key, &ciphertext, &dealt).unwrap();
    let mut partial =
        charter_crypto::partial_decrypt(&opened, &ciphertext, &mut rand_core::OsRng).to_bytes();
    partial[70] ^= 0x01;
    let member1_key = charter_crypto::SigningKey::from_pem(
        &std::fs::read_to_string(new_ws.join("member1_privk.pem")).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = charter_crypto::cose_sign1(
        &member1_key,
        &member1_id,
        "recovery_share",
        None,
        now,
        serde_json::json!({"partial_decryption": hex::encode(&partial)})
            .to_string()
            .as_bytes(),
    );
    let member1_tls = charter_host::tls::client_config(&new_pem, None).unwrap();
    let mut member1 = Client::connect(address, "127.0.0.1", member1_tls)
        .await
        .unwrap();
    let response = member1
        .request(
            "POST",
            &format!("/gov/recovery/members/{member1_id}:recover"),
            &[("content-type", "application/cose")],
            body,
        )
        .await
        .unwrap();
    let refused = text(&response.body);
    assert_eq!(response.status, 400, "{refused}");
    assert!(
        refused.contains("InvalidRecoveryShare") && refused.contains(&member1_id),
        "{refused}"
    );
    // member1's real share opens it.
    let answer = json_of(tokio::task::block_in_place(|| {
        gov("member1", &["recovery-share"])
    }));
    assert!(
        answer["message"].as_str().unwrap().contains("restored"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every committed entry, public and private, is back.
    for (key, value) in &acked {
        let (status, body) = request(&mut user, "GET", &format!("/app/kv/{key}"), b"").await;
        assert_eq!(
            (status, body),
            (200, value.as_bytes().to_vec()),
            "{key} after recovery"
        );
    }
    let (status, body) = request(&mut user, "GET", "/app/kv/deal", b"").await;
    assert_eq!(status, 200);
    assert!(contains(&body, MARKER.as_bytes()));
    let (status, body) = request(&mut user, "GET", "/app/kv/public-key", b"").await;
    assert_eq!((status, body), (200, b"public value".to_vec()));
    // Receipts from both service identities verify.
    let old_receipt_path = temp.path().join("old_receipt.json");
    std::fs::write(&old_receipt_path, &old_receipt).unwrap();
    charter_ok(&[
        "receipt",
        "verify",
        path_str(&old_receipt_path),
        "--service-cert",
        path_str(&old_ws.join("service_cert.pem")),
    ]);
    let (status, again) = request(
        &mut user,
        "GET",
        &format!("/app/receipt?transaction_id={early_tx}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let again_path = temp.path().join("old_receipt_from_new_service.json");
    std::fs::write(&again_path, &again).unwrap();
    charter_ok(&[
        "receipt",
        "verify",
        path_str(&again_path),
        "--service-cert",
        path_str(&old_ws.join("service_cert.pem")),
    ]);
    let new_tx = put(&mut user, "after-recovery", "new value").await.unwrap();
    let new_receipt = loop {
        let (status, body) = request(
            &mut user,
            "GET",
            &format!("/app/receipt?transaction_id={new_tx}"),
            b"",
        )
        .await;
        if status == 200 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_receipt_path = temp.path().join("new_receipt.json");
    std::fs::write(&new_receipt_path, &new_receipt).unwrap();
    charter_ok(&[
        "receipt",
        "verify",
        path_str(&new_receipt_path),
        "--service-cert",
        path_str(&new_ws.join("service_cert.pem")),
    ]);
    // The new identity is endorsed by the previous one.
    let (status, body) = request(&mut user, "GET", "/gov/service/previous-identity", b"").await;
    assert_eq!(status, 200);
    let record: Value = serde_json::from_slice(&body).unwrap();
    let endorsement =
        charter_crypto::Certificate::from_pem(record["endorsement"].as_str().unwrap()).unwrap();
    let old_service = charter_crypto::Certificate::from_pem(
        &std::fs::read_to_string(old_ws.join("service_cert.pem")).unwrap(),
    )
    .unwrap();
    let new_service = charter_crypto::Certificate::from_pem(&new_pem).unwrap();
    endorsement
        .verify_signed_by(&old_service.public_key().unwrap())
        .expect("the previous identity signed the endorsement");
    assert_eq!(
        endorsement.public_key().unwrap(),
        new_service.public_key().unwrap(),
        "the endorsement is for the new service key"
    );
    assert_eq!(
        record["previous_service_cert"].as_str().unwrap(),
        old_service.to_pem()
    );
    // The recovered ledger verifies end to end, the old part against the previous identity.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let verified = charter(&[
        "ledger",
        "verify",
        path_str(&node_dir.join("ledger")),
        "--service-cert",
        path_str(&new_ws.join("service_cert.pem")),
        "--previous-service-cert",
        path_str(&old_ws.join("service_cert.pem")),
    ]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    // Nothing private in clear in the recovered node's files either.
    for path in files_under(&new_ws) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "{} holds plaintext",
            path.display()
        );
    }
}
