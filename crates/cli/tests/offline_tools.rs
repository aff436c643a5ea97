//! The offline subcommands of the real `charter` binary: `keys new`, `ledger verify` and
//! `receipt verify`.

#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
use charter_kv::WriteSet;
use charter_ledger::frame::encode_frame;
use charter_ledger::merkle::MerkleTree;
use charter_ledger::tables::{NODES_MAP, SERVICE_KEY, SERVICE_MAP, SIGNATURES_MAP, SIGNATURE_KEY};
use charter_ledger::{
    commit_evidence_digest, decode_entry, encode_entry, leaf_hash, EntryKind, EntryParts, NodeInfo,
    NodeStatus, Receipt, ServiceInfo, ServiceStatus, SignatureRecord, TxId,
};

fn charter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_charter"))
        .args(args)
        .output()
        .expect("run charter")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn spec(name: &str, is_ca: bool) -> CertificateSpec<'_> {
    CertificateSpec {
        common_name: name,
        is_ca,
        subject_alt_names: &[],
        validity: Validity {
            not_before_unix: 1_700_000_000,
            days: 365,
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn keys_new_writes_a_private_key_and_a_certificate_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys"); // Does not exist yet.
    let output = charter(&["keys", "new", "member5", "--out", path_str(&out)]);
    assert!(output.status.success(), "{}", stderr(&output));

    let key_path = out.join("member5_privk.pem");
    let cert_path = out.join("member5_cert.pem");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let cert_pem = std::fs::read_to_string(&cert_path).unwrap();
    let key = SigningKey::from_pem(&key_pem).unwrap();
    let cert = Certificate::from_pem(&cert_pem).unwrap();
    assert_eq!(cert.common_name().as_deref(), Some("member5"));
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().unwrap().to_spki_der(),
        key.verifying_key().to_spki_der()
    );
    cert.verify_signed_by(&key.verifying_key()).unwrap();
    let (not_before, not_after) = cert.validity_unix().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(not_before < now && now < not_after);
    assert!(not_after - not_before >= 364 * 86_400);
    let printed = stdout(&output);
    assert!(printed.contains(&cert.fingerprint_hex()), "{printed}");
    assert!(printed.contains(path_str(&key_path)), "{printed}");
    assert!(printed.contains(path_str(&cert_path)), "{printed}");

    // A second run refuses and leaves both files alone.
    let again = charter(&["keys", "new", "member5", "--out", path_str(&out)]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key_pem);
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);

    // Also when only the certificate is there.
    std::fs::remove_file(&key_path).unwrap();
    let again = charter(&["keys", "new", "member5", "--out", path_str(&out)]);
    assert!(!again.status.success());
    assert!(!key_path.exists());
    assert_eq!(std::fs::read_to_string(&cert_path).unwrap(), cert_pem);
}

struct Identities {
    service_cert: Certificate,
    node_key: SigningKey,
    node_cert: Certificate,
}

fn identities() -> Identities {
    let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
    let service_cert = Certificate::self_signed(&service_key, &spec("service", true)).unwrap();
    let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
    let node_cert = Certificate::issue(
        &node_key.verifying_key(),
        &spec("node", false),
        &service_key,
        &service_cert,
    )
    .unwrap();
    Identities {
        service_cert,
        node_key,
        node_cert,
    }
}

/// Builds entries the way the core does, keeping the Merkle tree alongside.
struct Builder {
    secret: LedgerSecret,
    tree: MerkleTree,
    entries: Vec<Vec<u8>>,
}

impl Builder {
    fn push(&mut self, kind: EntryKind, public: &WriteSet, private: &WriteSet) {
        let public = if public.is_empty() {
            Vec::new()
        } else {
            public.to_bytes()
        };
        let private = if private.is_empty() {
            Vec::new()
        } else {
            private.to_bytes()
        };
        let bytes = encode_entry(
            &EntryParts {
                kind,
                tx_id: TxId::new(1, self.entries.len() as u64 + 1),
                claims_digest: [0; 32],
                public: &public,
                private_plain: &private,
            },
            &self.secret,
        )
        .unwrap();
        self.tree.append(decode_entry(&bytes).unwrap().leaf());
        self.entries.push(bytes);
    }

    fn transaction(&mut self, label: &str) {
        let mut public = WriteSet::new();
        public.put("public:app.log", label.as_bytes(), b"public value");
        let mut private = WriteSet::new();
        private.put("app.secrets", label.as_bytes(), b"SECRET-MARKER");
        self.push(EntryKind::Transaction, &public, &private);
    }

    fn signature(&mut self, key: &SigningKey) {
        let root = self.tree.root().unwrap();
        let record = SignatureRecord {
            view: 1,
            seqno: self.entries.len() as u64 + 1,
            root: hex(&root),
            node_id: key.verifying_key().id_hex(),
            signature: base64(&key.sign_digest(&root).unwrap()),
        };
        let mut public = WriteSet::new();
        public.put(
            SIGNATURES_MAP,
            SIGNATURE_KEY,
            &serde_json::to_vec(&record).unwrap(),
        );
        self.push(EntryKind::Signature, &public, &WriteSet::new());
    }

    fn file(&self, from: usize, to: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, entry) in self.entries[from..to].iter().enumerate() {
            encode_frame((from + index + 1) as u64, entry, &mut bytes);
        }
        bytes
    }
}

/// Seqnos 1-4 (genesis, two transactions, a signature) in `ledger_1-4.committed`, seqno 5
/// (unsigned) in the open `ledger_5`.
fn write_ledger(ids: &Identities, dir: &Path) {
    let mut builder = Builder {
        secret: LedgerSecret::from_bytes([7; 32]),
        tree: MerkleTree::new(),
        entries: Vec::new(),
    };
    let info = NodeInfo {
        cert: ids.node_cert.to_pem(),
        status: NodeStatus::Trusted,
        rpc_address: "127.0.0.1:8000".into(),
        node_address: None,
        evidence: None,
    };
    let service = ServiceInfo {
        cert: ids.service_cert.to_pem(),
        status: ServiceStatus::Open,
    };
    let mut public = WriteSet::new();
    public.put(
        NODES_MAP,
        ids.node_key.verifying_key().id_hex().as_bytes(),
        &serde_json::to_vec(&info).unwrap(),
    );
    public.put(
        SERVICE_MAP,
        SERVICE_KEY,
        &serde_json::to_vec(&service).unwrap(),
    );
    builder.push(EntryKind::Transaction, &public, &WriteSet::new());
    builder.transaction("a");
    builder.transaction("b");
    builder.signature(&ids.node_key);
    builder.transaction("c");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ledger_1-4.committed"), builder.file(0, 4)).unwrap();
    std::fs::write(dir.join("ledger_5"), builder.file(4, 5)).unwrap();
    // Files that are not chunks are ignored.
    std::fs::write(dir.join("README"), b"not a ledger file").unwrap();
}

#[test]
fn ledger_verify_accepts_a_good_ledger_and_names_the_damaged_file() {
    let ids = identities();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    write_ledger(&ids, &ledger);
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, ids.service_cert.to_pem()).unwrap();

    let output = charter(&[
        "ledger",
        "verify",
        path_str(&ledger),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output).trim(),
        "5 transactions, 1 signatures, last signed TxID 1.4, unsigned tail 1"
    );

    // Another service's certificate did not endorse the node.
    let other_key = SigningKey::from_seed(&[3; 32]).unwrap();
    let other_cert = Certificate::self_signed(&other_key, &spec("other", true)).unwrap();
    let other_pem = dir.path().join("other_cert.pem");
    std::fs::write(&other_pem, other_cert.to_pem()).unwrap();
    let output = charter(&[
        "ledger",
        "verify",
        path_str(&ledger),
        "--service-cert",
        path_str(&other_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not endorsed"),
        "{}",
        stderr(&output)
    );

    // One flipped byte in the middle of the committed chunk.
    let chunk = ledger.join("ledger_1-4.committed");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&chunk, bytes).unwrap();
    let output = charter(&[
        "ledger",
        "verify",
        path_str(&ledger),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: ledger verification failed"),
        "{message}"
    );
    assert!(message.contains("ledger_1-4.committed"), "{message}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn ledger_verify_reports_missing_inputs() {
    let ids = identities();
    let dir = tempfile::tempdir().unwrap();
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, ids.service_cert.to_pem()).unwrap();
    let missing = dir.path().join("no_such_dir");

    let output = charter(&[
        "ledger",
        "verify",
        path_str(&missing),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("cannot read ledger directory"),
        "{message}"
    );
    assert!(message.contains("no_such_dir"), "{message}");

    // A directory without chunks.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = charter(&[
        "ledger",
        "verify",
        path_str(&empty),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no ledger_"),
        "{}",
        stderr(&output)
    );

    // A missing or invalid service certificate is named.
    write_ledger(&ids, &dir.path().join("ledger"));
    for (name, contents) in [("absent.pem", None), ("garbage.pem", Some("not a PEM"))] {
        let path = dir.path().join(name);
        if let Some(contents) = contents {
            std::fs::write(&path, contents).unwrap();
        }
        let output = charter(&[
            "ledger",
            "verify",
            path_str(&dir.path().join("ledger")),
            "--service-cert",
            path_str(&path),
        ]);
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains(name), "{}", stderr(&output));
    }
}

/// A receipt for the third of five leaves, signed by the node.
fn make_receipt(ids: &Identities) -> Receipt {
    let mut tree = MerkleTree::new();
    let mut components = Vec::new();
    for index in 0..5u8 {
        let write_set_digest = [index; 32];
        let evidence = format!("ce:1.{}:{}", index + 1, hex(&[index; 32]));
        let claims = [0u8; 32];
        tree.append(leaf_hash(
            &write_set_digest,
            &commit_evidence_digest(&evidence),
            &claims,
        ));
        components.push((write_set_digest, evidence, claims));
    }
    let root = tree.root().unwrap();
    let signature = ids.node_key.sign_digest(&root).unwrap();
    let proof = tree.proof(2, 5).unwrap();
    let (write_set_digest, evidence, claims) = &components[2];
    Receipt::new(
        &ids.node_cert,
        &signature,
        &proof,
        write_set_digest,
        evidence,
        claims,
        Vec::new(),
    )
}

#[test]
fn receipt_verify_checks_receipts_in_every_form() {
    let ids = identities();
    let dir = tempfile::tempdir().unwrap();
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, ids.service_cert.to_pem()).unwrap();
    let receipt = make_receipt(&ids);
    let root = hex(&receipt.root().unwrap());

    let forms = [
        ("ccf.json", receipt.to_json()),
        ("azure.json", receipt.to_azure_json()),
        (
            "wrapped.json",
            serde_json::json!({
                "receipt": receipt.to_azure_json(),
                "receiptEntryStatus": "Ready",
                "transactionId": "1.3",
            }),
        ),
    ];
    for (name, value) in forms {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
        let output = charter(&[
            "receipt",
            "verify",
            path_str(&path),
            "--service-cert",
            path_str(&service_pem),
        ]);
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        assert_eq!(stdout(&output).trim(), format!("receipt OK: root {root}"));
    }

    // Tampered leaf: the signature no longer covers the recomputed root.
    let mut tampered = receipt.clone();
    tampered.leaf_components.write_set_digest = hex(&[9; 32]);
    let path = dir.path().join("tampered.json");
    std::fs::write(&path, serde_json::to_vec(&tampered.to_json()).unwrap()).unwrap();
    let output = charter(&[
        "receipt",
        "verify",
        path_str(&path),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("signature does not verify"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn receipt_verify_rejects_garbage() {
    let ids = identities();
    let dir = tempfile::tempdir().unwrap();
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, ids.service_cert.to_pem()).unwrap();
    for (name, contents) in [
        ("garbage.json", &b"\x00\xffnot json at all"[..]),
        ("array.json", &b"[1, 2, 3]"[..]),
        ("partial.json", &br#"{"cert": "x", "node_id": "00"}"#[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        let output = charter(&[
            "receipt",
            "verify",
            path_str(&path),
            "--service-cert",
            path_str(&service_pem),
        ]);
        assert_eq!(output.status.code(), Some(1), "{name}");
        let message = stderr(&output);
        assert!(message.starts_with("error: "), "{message}");
        assert!(message.contains(name), "{message}");
    }
    let output = charter(&[
        "receipt",
        "verify",
        path_str(&dir.path().join("absent.json")),
        "--service-cert",
        path_str(&service_pem),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("absent.json"),
        "{}",
        stderr(&output)
    );
}

/// A node directory as a host leaves it: `ledger/` chunk files from seqno `first` and
/// `snapshots/` with the committed snapshots, written by the core in memory.
fn write_node_dir(node: &harness::Harness, dir: &Path, first: u64) {
    let ledger = dir.join("ledger");
    let snapshots = dir.join("snapshots");
    std::fs::create_dir_all(&ledger).unwrap();
    std::fs::create_dir_all(&snapshots).unwrap();
    for file in node.chunk_files(first) {
        std::fs::write(ledger.join(&file.name), &file.bytes).unwrap();
    }
    for (seqno, file) in &node.committed_snapshots {
        std::fs::write(snapshots.join(format!("snapshot_{seqno}.committed")), file).unwrap();
    }
    // An uncommitted snapshot is not checked.
    std::fs::write(snapshots.join("snapshot_1"), b"not committed").unwrap();
}

#[test]
fn ledger_verify_checks_committed_snapshots() {
    let mut node = harness::Harness::new_with(|config| {
        config.snapshot_interval_txs = 20;
        config.signature_interval_txs = 5;
    });
    for index in 0..30 {
        node.put(&format!("k{index}"), b"value");
    }
    for _ in 0..10 {
        node.tick(150);
    }
    let (&seqno, _) = node
        .committed_snapshots
        .iter()
        .next_back()
        .expect("a snapshot");
    let dir = tempfile::tempdir().unwrap();
    let service_pem = dir.path().join("service_cert.pem");
    std::fs::write(&service_pem, node.service.to_pem()).unwrap();
    let whole = dir.path().join("whole");
    write_node_dir(&node, &whole, 1);
    let verify = |ledger: &Path, extra: &[&str]| {
        let mut args = vec![
            "ledger",
            "verify",
            path_str(ledger),
            "--service-cert",
            path_str(&service_pem),
        ];
        args.extend_from_slice(extra);
        charter(&args)
    };

    // The snapshots next to the ledger are checked by default.
    let output = verify(&whole.join("ledger"), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let count = node.committed_snapshots.len();
    assert!(
        stdout(&output).contains(&format!(", {count} committed snapshots")),
        "{}",
        stdout(&output)
    );
    // --snapshots names another directory (here an empty one).
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = verify(&whole.join("ledger"), &["--snapshots", path_str(&empty)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !stdout(&output).contains("snapshots"),
        "{}",
        stdout(&output)
    );

    // A node that started from a snapshot holds the ledger after it only.
    let suffix = dir.path().join("suffix");
    write_node_dir(&node, &suffix, seqno - 2);
    let output = verify(&suffix.join("ledger"), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(&format!("verified from the snapshot at seqno {seqno}")),
        "{}",
        stdout(&output)
    );
    let output = verify(&suffix.join("ledger"), &["--snapshots", path_str(&empty)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("instead of 1"),
        "{}",
        stderr(&output)
    );

    // One flipped byte in a snapshot is reported with the file's name.
    let name = format!("snapshot_{seqno}.committed");
    let path = whole.join("snapshots").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let output = verify(&whole.join("ledger"), &[]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: ledger verification failed"),
        "{message}"
    );
    assert!(message.contains(&name), "{message}");
}
