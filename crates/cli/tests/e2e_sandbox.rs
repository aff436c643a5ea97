//! End-to-end tests of the real `charter` binary: `charter sandbox` started as a process, driven
//! over HTTPS with `charter_host::client::Client`, stopped with SIGTERM, and its workspace
//! inspected with the offline `charter ledger verify` and `charter receipt verify` tools.
//!
//! Every sandbox is owned by a [`Sandbox`] guard whose `Drop` kills the sandbox process and its
//! node child, so a failing test leaks no processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use charter_crypto::Certificate;
mod common;

use charter_host::client::{Client, ClientResponse};
use charter_ledger::frame::parse_frames;
use charter_ledger::{Receipt, TxId};
use common::{alive, charter, children_of, free_port, path_str, signal, text};

/// How long a sandbox may take to write `sandbox.json`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a transaction may take to commit (signatures every 20 ms).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping sandbox may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A running `charter sandbox`; killed (with its node) when dropped.
struct Sandbox {
    child: Option<Child>,
    /// PID of the node process the sandbox started.
    node_pid: Option<i32>,
    workspace: PathBuf,
    addr: SocketAddr,
    /// The sandbox's own stdout and stderr (kept outside the workspace).
    output_path: PathBuf,
}

impl Sandbox {
    /// Starts `charter sandbox` on `workspace` and waits until it has written `sandbox.json`
    /// naming the port it was given. Retries on another port if the node cannot listen.
    fn start(workspace: &Path, logs: &Path) -> Sandbox {
        std::fs::create_dir_all(logs).unwrap();
        let mut failures = Vec::new();
        for attempt in 0..3 {
            let port = free_port();
            let output_path = logs.join(format!("sandbox-{port}-{attempt}.log"));
            let output = std::fs::File::create(&output_path).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_charter"))
                .args([
                    "sandbox",
                    "--nodes",
                    "1",
                    "--workspace",
                    path_str(workspace),
                    "--port",
                    &port.to_string(),
                    "--signature-interval-ms",
                    "20",
                ])
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .expect("spawn charter sandbox");
            let mut sandbox = Sandbox {
                child: Some(child),
                node_pid: None,
                workspace: workspace.to_owned(),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                output_path,
            };
            match sandbox.wait_ready() {
                Ok(()) => return sandbox,
                Err(error) => failures.push(error),
            }
            // Drop kills whatever is left of this attempt.
        }
        panic!("the sandbox did not start:\n{}", failures.join("\n---\n"));
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("running").id()).unwrap()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let json_path = self.workspace.join("sandbox.json");
        let expected = self.addr.to_string();
        loop {
            if self.node_pid.is_none() {
                self.node_pid = children_of(self.pid()).first().copied();
            }
            if let Ok(text) = std::fs::read_to_string(&json_path) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                    if json["nodes"][0]["rpc_address"] == expected.as_str() {
                        if self.node_pid.is_none() {
                            self.node_pid = children_of(self.pid()).first().copied();
                        }
                        return Ok(());
                    }
                }
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "sandbox on {expected} exited ({status}):\n{}",
                    self.diagnostics()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no sandbox.json for {expected} after {START_TIMEOUT:?}:\n{}",
                    self.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sandbox's output and the tail of the node's log.
    fn diagnostics(&self) -> String {
        let sandbox = std::fs::read_to_string(&self.output_path).unwrap_or_default();
        let node = std::fs::read_to_string(self.workspace.join("node0").join("node.log"))
            .unwrap_or_default();
        let node_tail: Vec<&str> = node.lines().rev().take(30).collect();
        format!(
            "sandbox output:\n{sandbox}\nnode.log tail:\n{}",
            node_tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Stops the sandbox with SIGTERM and asserts that it and its node exit cleanly.
    fn stop(mut self) {
        let pid = self.pid();
        signal(pid, libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sandbox did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "sandbox exited with {status} after SIGTERM:\n{}",
            self.diagnostics()
        );
        let node_pid = self.node_pid.expect("the sandbox started a node process");
        assert!(
            !alive(node_pid),
            "node process {node_pid} outlived its sandbox"
        );
    }

    fn service_cert_pem(&self) -> String {
        std::fs::read_to_string(self.workspace.join("service_cert.pem")).unwrap()
    }

    /// A client presenting identity `name` (e.g. `user0`) from the workspace, or none.
    async fn client_as(&self, name: Option<&str>) -> Client {
        match name {
            Some(name) => {
                let cert = std::fs::read_to_string(self.workspace.join(format!("{name}_cert.pem")))
                    .unwrap();
                let key = std::fs::read_to_string(self.workspace.join(format!("{name}_privk.pem")))
                    .unwrap();
                self.client_with(Some((&cert, &key))).await
            }
            None => self.client_with(None).await,
        }
    }

    async fn client_with(&self, identity: Option<(&str, &str)>) -> Client {
        let tls = charter_host::tls::client_config(&self.service_cert_pem(), identity)
            .expect("client TLS configuration");
        Client::connect(self.addr, "127.0.0.1", tls)
            .await
            .expect("connect to the sandbox")
    }

    async fn user(&self) -> Client {
        self.client_as(Some("user0")).await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            let mut nodes = children_of(pid);
            nodes.extend(self.node_pid);
            let _ = child.kill();
            let _ = child.wait();
            for node in nodes {
                if alive(node) {
                    signal(node, libc::SIGKILL);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

async fn call(client: &mut Client, method: &str, path: &str, body: &[u8]) -> ClientResponse {
    client
        .request(method, path, &[], body.to_vec())
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
}

fn json(response: &ClientResponse) -> serde_json::Value {
    response.json().unwrap_or_else(|error| {
        panic!(
            "status {} body {:?} is not JSON: {error}",
            response.status,
            text(&response.body)
        )
    })
}

/// Asserts a JSON error response with `status` and returns its `error.code`.
fn assert_error(response: &ClientResponse, status: u16) -> String {
    assert_eq!(
        response.status,
        status,
        "expected {status}, got body {:?}",
        text(&response.body)
    );
    let body = json(response);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no error.message in {body}"
    );
    code.to_owned()
}

/// PUTs `value` at `path` and returns the TxID, checking body and header agree.
async fn put(client: &mut Client, path: &str, value: &[u8]) -> TxId {
    let response = call(client, "PUT", path, value).await;
    assert_eq!(
        response.status,
        200,
        "PUT {path}: {:?}",
        text(&response.body)
    );
    let body = json(&response);
    let from_body = body["transaction_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no transaction_id in {body}"));
    let from_header = response
        .header("x-ms-ccf-transaction-id")
        .expect("x-ms-ccf-transaction-id header");
    assert_eq!(from_body, from_header);
    from_body.parse().expect("a VIEW.SEQNO transaction ID")
}

async fn tx_status(client: &mut Client, tx_id: TxId) -> String {
    let response = call(
        client,
        "GET",
        &format!("/node/tx?transaction_id={tx_id}"),
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let body = json(&response);
    assert_eq!(body["transaction_id"], tx_id.to_string().as_str());
    body["status"].as_str().expect("status").to_owned()
}

/// Polls `/node/tx` until `tx_id` is Committed (bounded).
async fn wait_committed(client: &mut Client, tx_id: TxId) {
    let deadline = Instant::now() + COMMIT_TIMEOUT;
    loop {
        let status = tx_status(client, tx_id).await;
        match status.as_str() {
            "Committed" => return,
            "Pending" => {}
            other => panic!("{tx_id} is {other}, expected it to commit"),
        }
        assert!(
            Instant::now() < deadline,
            "{tx_id} not committed after {COMMIT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_value(client: &mut Client, path: &str) -> Option<Vec<u8>> {
    let response = call(client, "GET", path, b"").await;
    match response.status {
        200 => Some(response.body),
        404 => {
            assert_eq!(assert_error(&response, 404), "KeyNotFound");
            None
        }
        other => panic!("GET {path}: {other} {:?}", text(&response.body)),
    }
}

async fn commit_tx_id(client: &mut Client) -> TxId {
    let response = call(client, "GET", "/node/commit", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let body = json(&response);
    let tx_id = body["transaction_id"].as_str().expect("transaction_id");
    assert_eq!(response.header("x-ms-ccf-transaction-id"), Some(tx_id));
    tx_id.parse().unwrap()
}

fn list_keys(body: &serde_json::Value) -> Vec<String> {
    body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {body}"))
        .iter()
        .map(|entry| entry["key"].as_str().unwrap().to_owned())
        .collect()
}

fn random_hex() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The ledger chunk files of a directory, sorted by name.
fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("ledger_"))
        })
        .collect();
    files.sort();
    files
}

/// The open chunk (a `ledger_N` file without `.committed`).
fn open_chunk(dir: &Path) -> PathBuf {
    let open: Vec<PathBuf> = chunk_files(dir)
        .into_iter()
        .filter(|path| !path.to_str().unwrap().ends_with(".committed"))
        .collect();
    assert_eq!(
        open.len(),
        1,
        "expected one open chunk in {dir:?}: {open:?}"
    );
    open.into_iter().next().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn ledger_verify(ledger: &Path, service_cert: &Path) -> Output {
    charter(&[
        "ledger",
        "verify",
        path_str(ledger),
        "--service-cert",
        path_str(service_cert),
    ])
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    charter_host::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    let logs = dir.path().join("logs");
    (dir, workspace, logs)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_commit_delete_list_and_public_map() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;

    let tx_id = put(&mut client, "/app/kv/a", b"hello").await;
    assert!(tx_id.seqno > 0 && tx_id.view > 0, "{tx_id}");
    assert_eq!(
        get_value(&mut client, "/app/kv/a").await.as_deref(),
        Some(&b"hello"[..])
    );
    wait_committed(&mut client, tx_id).await;
    let committed = commit_tx_id(&mut client).await;
    assert!(
        committed.seqno >= tx_id.seqno,
        "commit {committed} is behind committed {tx_id}"
    );

    // Overwrite, then delete: a DELETE is a transaction too, and the key is gone.
    let overwrite = put(&mut client, "/app/kv/a", b"again").await;
    assert!(overwrite.seqno > tx_id.seqno);
    assert_eq!(
        get_value(&mut client, "/app/kv/a").await.as_deref(),
        Some(&b"again"[..])
    );
    let response = call(&mut client, "DELETE", "/app/kv/a", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let delete: TxId = json(&response)["transaction_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(delete.seqno > overwrite.seqno);
    assert_eq!(get_value(&mut client, "/app/kv/a").await, None);
    wait_committed(&mut client, delete).await;
    assert_eq!(get_value(&mut client, "/app/kv/a").await, None);

    // Listing: keys in order, limited, with a continuation.
    for key in ["list/c", "list/a", "other/x", "list/b", "list/d"] {
        put(&mut client, &format!("/app/kv/{key}"), key.as_bytes()).await;
    }
    let response = call(&mut client, "GET", "/app/kv?prefix=list/&limit=3", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let body = json(&response);
    assert_eq!(list_keys(&body), ["list/a", "list/b", "list/c"]);
    assert_eq!(body["entries"][1]["value"], "list/b");
    assert_eq!(body["next_start_after"], "list/c");
    let response = call(
        &mut client,
        "GET",
        "/app/kv?prefix=list/&limit=3&start_after=list/c",
        b"",
    )
    .await;
    let body = json(&response);
    assert_eq!(list_keys(&body), ["list/d"]);
    assert!(body["next_start_after"].is_null(), "{body}");
    let response = call(&mut client, "GET", "/app/kv?prefix=&limit=100", b"").await;
    let all = list_keys(&json(&response));
    assert_eq!(all, ["list/a", "list/b", "list/c", "list/d", "other/x"]);
    let response = call(&mut client, "GET", "/app/kv?limit=0", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidQueryParameterValue");

    // The public map is separate from the private one.
    let public = put(&mut client, "/app/kv/shared?public=true", b"in the clear").await;
    assert_eq!(get_value(&mut client, "/app/kv/shared").await, None);
    assert_eq!(
        get_value(&mut client, "/app/kv/shared?public=false").await,
        None
    );
    assert_eq!(
        get_value(&mut client, "/app/kv/shared?public=true")
            .await
            .as_deref(),
        Some(&b"in the clear"[..])
    );
    assert_eq!(
        get_value(&mut client, "/app/kv/list/a?public=true").await,
        None
    );
    let response = call(&mut client, "GET", "/app/kv?public=true", b"").await;
    assert_eq!(list_keys(&json(&response)), ["shared"]);
    let response = call(&mut client, "GET", "/app/kv/shared?public=yes", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidQueryParameterValue");
    wait_committed(&mut client, public).await;

    // Waiting for the commit point to move: at once if it is past the seqno already, on the
    // commit of the next write if not, and after about a second with the commit point as it
    // is if nothing commits.
    let response = call(&mut client, "GET", "/node/commit?after_seqno=soon", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidQueryParameterValue");
    let current = commit_tx_id(&mut client).await;
    let started = std::time::Instant::now();
    let path = format!("/node/commit?after_seqno={}", current.seqno - 1);
    let response = call(&mut client, "GET", &path, b"").await;
    assert_eq!(json(&response)["transaction_id"], current.to_string());
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
    let started = std::time::Instant::now();
    let path = format!("/node/commit?after_seqno={}", current.seqno);
    let response = call(&mut client, "GET", &path, b"").await;
    let answered: TxId = json(&response)["transaction_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        answered.seqno > current.seqno
            || started.elapsed() >= std::time::Duration::from_millis(900),
        "answered {answered} after {:?} without waiting",
        started.elapsed()
    );
    let current = commit_tx_id(&mut client).await;
    let mut waiter = sandbox.user().await;
    let wait = tokio::spawn(async move {
        let path = format!("/node/commit?after_seqno={}", current.seqno);
        let started = std::time::Instant::now();
        let response = call(&mut waiter, "GET", &path, b"").await;
        (
            json(&response)["transaction_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            started.elapsed(),
        )
    });
    let written = put(&mut client, "/app/kv/wakes-the-waiter", b"x").await;
    let (answered, waited) = wait.await.unwrap();
    let answered: TxId = answered.parse().unwrap();
    assert!(answered.seqno > current.seqno, "{answered} after {current}");
    assert!(written.seqno > current.seqno);
    assert!(waited < std::time::Duration::from_millis(900), "{waited:?}");

    drop(client);
    sandbox.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_verify_online_and_with_the_cli() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;
    let service_cert_path = workspace.join("service_cert.pem");
    let service_cert = Certificate::from_pem(&sandbox.service_cert_pem()).unwrap();

    let tx_id = put(&mut client, "/app/kv/receipted", b"value").await;
    wait_committed(&mut client, tx_id).await;
    let response = call(
        &mut client,
        "GET",
        &format!("/app/receipt?transaction_id={tx_id}"),
        b"",
    )
    .await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let value = json(&response);
    let receipt = Receipt::from_json(&value).expect("a receipt");
    receipt
        .verify(&service_cert)
        .expect("the receipt verifies against the service certificate");

    let receipt_path = dir.path().join("receipt.json");
    std::fs::write(&receipt_path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    let output = charter(&[
        "receipt",
        "verify",
        path_str(&receipt_path),
        "--service-cert",
        path_str(&service_cert_path),
    ]);
    assert!(
        output.status.success(),
        "receipt verify failed: {}",
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).contains("receipt OK"),
        "{}",
        text(&output.stdout)
    );

    // One hex digit of the write set digest changed: the CLI must refuse.
    let mut tampered = value.clone();
    let digest = tampered["leaf_components"]["write_set_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut chars: Vec<char> = digest.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == '0' { '1' } else { '0' };
    let changed: String = chars.into_iter().collect();
    assert_ne!(changed, digest);
    tampered["leaf_components"]["write_set_digest"] = changed.into();
    assert!(Receipt::from_json(&tampered)
        .unwrap()
        .verify(&service_cert)
        .is_err());
    let tampered_path = dir.path().join("tampered.json");
    std::fs::write(&tampered_path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let output = charter(&[
        "receipt",
        "verify",
        path_str(&tampered_path),
        "--service-cert",
        path_str(&service_cert_path),
    ]);
    assert!(
        !output.status.success(),
        "a tampered receipt was accepted: {}",
        text(&output.stdout)
    );
    assert!(!text(&output.stderr).is_empty());

    // Unknown and malformed transaction IDs.
    let unknown = TxId::new(tx_id.view, 999_999);
    let response = call(
        &mut client,
        "GET",
        &format!("/app/receipt?transaction_id={unknown}"),
        b"",
    )
    .await;
    assert_eq!(assert_error(&response, 404), "TransactionNotFound");
    let response = call(
        &mut client,
        "GET",
        "/app/receipt?transaction_id=1.999999",
        b"",
    )
    .await;
    assert_eq!(assert_error(&response, 404), "TransactionNotFound");
    let response = call(&mut client, "GET", "/app/receipt?transaction_id=abc", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidQueryParameterValue");
    let response = call(&mut client, "GET", "/app/receipt", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidQueryParameterValue");

    drop(client);
    sandbox.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_users_may_call_the_application() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut user = sandbox.user().await;
    put(&mut user, "/app/kv/x", b"secret").await;

    // No client certificate.
    let mut anonymous = sandbox.client_as(None).await;
    let response = call(&mut anonymous, "GET", "/app/kv/x", b"").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    let response = call(&mut anonymous, "PUT", "/app/kv/x", b"overwritten").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    // The /node endpoints need no client certificate.
    let response = call(&mut anonymous, "GET", "/node/commit", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    assert!(json(&response)["transaction_id"].is_string());

    // A member is known but may not use the application.
    let mut member = sandbox.client_as(Some("member0")).await;
    let response = call(&mut member, "GET", "/app/kv/x", b"").await;
    assert_eq!(assert_error(&response, 403), "AuthorizationFailed");
    let response = call(&mut member, "PUT", "/app/kv/x", b"overwritten").await;
    assert_eq!(assert_error(&response, 403), "AuthorizationFailed");

    // A valid certificate nobody registered.
    let keys = dir.path().join("stranger-keys");
    let output = charter(&["keys", "new", "stranger", "--out", path_str(&keys)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let cert = std::fs::read_to_string(keys.join("stranger_cert.pem")).unwrap();
    let key = std::fs::read_to_string(keys.join("stranger_privk.pem")).unwrap();
    let mut stranger = sandbox.client_with(Some((&cert, &key))).await;
    let response = call(&mut stranger, "GET", "/app/kv/x", b"").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    let response = call(&mut stranger, "PUT", "/app/kv/x", b"overwritten").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    // None of the refused writes happened; the second user shares the same store.
    let mut user1 = sandbox.client_as(Some("user1")).await;
    assert_eq!(
        get_value(&mut user1, "/app/kv/x").await.as_deref(),
        Some(&b"secret"[..])
    );

    drop((user, anonymous, member, stranger, user1));
    sandbox.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_bad_paths_are_refused() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;

    let big = vec![b'z'; 2 << 20];
    let response = call(&mut client, "PUT", "/app/kv/big", &big).await;
    assert_eq!(assert_error(&response, 413), "RequestTooLarge");
    // The client reconnects after the server closed the connection.
    assert_eq!(get_value(&mut client, "/app/kv/big").await, None);

    // Exactly at the limit is fine.
    let limit = vec![b'y'; 1 << 20];
    let tx_id = put(&mut client, "/app/kv/limit", &limit).await;
    assert_eq!(
        get_value(&mut client, "/app/kv/limit")
            .await
            .map(|v| v.len()),
        Some(1 << 20)
    );

    for path in ["/app/kv/%zz", "/app/kv/%ff", "/app/kv/%c3", "/app/kv/a%2"] {
        let response = call(&mut client, "GET", path, b"").await;
        assert_eq!(assert_error(&response, 400), "InvalidInput", "{path}");
    }
    let response = call(&mut client, "PUT", "/app/kv/%ff", b"v").await;
    assert_eq!(assert_error(&response, 400), "InvalidInput");
    let response = call(&mut client, "GET", "/app/kv?prefix=%zz", b"").await;
    assert_eq!(assert_error(&response, 400), "InvalidInput");

    // Percent-encoding that is valid decodes into the key.
    put(&mut client, "/app/kv/with%20space", b"spaced").await;
    let response = call(&mut client, "GET", "/app/kv?prefix=with", b"").await;
    assert_eq!(list_keys(&json(&response)), ["with space"]);

    // The node still answers and commits.
    wait_committed(&mut client, tx_id).await;
    let after = put(&mut client, "/app/kv/after", b"ok").await;
    wait_committed(&mut client, after).await;
    assert_eq!(
        get_value(&mut client, "/app/kv/after").await.as_deref(),
        Some(&b"ok"[..])
    );

    drop(client);
    sandbox.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_committed_writes_and_continues_the_ledger() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let first_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.join("sandbox.json")).unwrap())
            .unwrap();
    let first_service_cert = sandbox.service_cert_pem();
    let mut client = sandbox.user().await;
    let mut last = TxId::default();
    for index in 0..50 {
        last = put(
            &mut client,
            &format!("/app/kv/key{index:02}"),
            format!("value{index}").as_bytes(),
        )
        .await;
    }
    wait_committed(&mut client, last).await;
    drop(client);
    sandbox.stop();
    // Leave a stale sandbox.json behind: the restarted sandbox must replace it.
    std::fs::write(workspace.join("sandbox.json"), "{\"stale\": true}").unwrap();

    let sandbox = Sandbox::start(&workspace, &logs);
    let second_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.join("sandbox.json")).unwrap())
            .unwrap();
    // sandbox.json is rewritten for the new run; the identity is the same.
    assert!(second_json.get("stale").is_none(), "{second_json}");
    assert_eq!(
        second_json["nodes"][0]["rpc_address"],
        sandbox.addr.to_string().as_str()
    );
    assert_eq!(
        second_json["nodes"][0]["node_id"],
        first_json["nodes"][0]["node_id"]
    );
    assert_eq!(second_json["users"], first_json["users"]);
    assert_eq!(sandbox.service_cert_pem(), first_service_cert);

    let mut client = sandbox.user().await;
    for index in 0..50 {
        assert_eq!(
            get_value(&mut client, &format!("/app/kv/key{index:02}")).await,
            Some(format!("value{index}").into_bytes()),
            "key{index:02} after restart"
        );
    }
    assert_eq!(tx_status(&mut client, last).await, "Committed");
    let next = put(&mut client, "/app/kv/after-restart", b"new").await;
    assert!(next.seqno > last.seqno, "{next} does not follow {last}");
    assert!(
        next.view >= last.view,
        "{next} went back a view from {last}"
    );
    wait_committed(&mut client, next).await;
    drop(client);
    sandbox.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_values_never_reach_the_disk_in_the_clear() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;
    let private_marker = format!("MARKER-private-{}", random_hex());
    let private_key_marker = format!("MARKER-key-{}", random_hex());
    let public_marker = format!("MARKER-public-{}", random_hex());

    put(
        &mut client,
        "/app/kv/secret",
        format!("before {private_marker} after").as_bytes(),
    )
    .await;
    put(
        &mut client,
        &format!("/app/kv/{private_key_marker}"),
        b"private key name",
    )
    .await;
    let last = put(
        &mut client,
        "/app/kv/announcement?public=true",
        format!("before {public_marker} after").as_bytes(),
    )
    .await;
    wait_committed(&mut client, last).await;
    drop(client);
    sandbox.stop();

    let files = files_under(&workspace);
    let ledger_dir = workspace.join("node0").join("ledger");
    let mut public_found_in = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for marker in [&private_marker, &private_key_marker] {
            assert!(
                !contains(&bytes, marker.as_bytes()),
                "private data {marker} is in the clear in {}",
                file.display()
            );
        }
        if contains(&bytes, public_marker.as_bytes()) {
            public_found_in.push(file.clone());
        }
    }
    // The search does find what is there: the public value is in the ledger.
    assert!(
        public_found_in
            .iter()
            .any(|file| file.starts_with(&ledger_dir)),
        "public marker not found in the ledger; files searched: {files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_verify_detects_tampering_and_tolerates_a_torn_tail() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;
    let mut kept = TxId::default();
    for index in 0..20 {
        kept = put(
            &mut client,
            &format!("/app/kv/k{index:02}"),
            format!("v{index}").as_bytes(),
        )
        .await;
    }
    wait_committed(&mut client, kept).await;
    // A last write, committed by the signature that the torn tail below damages. A real torn
    // write is one the node never synced, so it was never reported committed; here the test
    // tears a synced frame and makes no claim about this key.
    let sacrificed = put(&mut client, "/app/kv/sacrificed", b"x").await;
    wait_committed(&mut client, sacrificed).await;
    drop(client);
    sandbox.stop();

    let service_cert = workspace.join("service_cert.pem");
    let ledger = workspace.join("node0").join("ledger");
    let output = ledger_verify(&ledger, &service_cert);
    assert!(
        output.status.success(),
        "verify of an intact ledger failed: {}",
        text(&output.stderr)
    );
    let summary = text(&output.stdout);
    assert!(summary.contains("transactions"), "{summary}");
    assert!(!summary.contains("torn tail"), "{summary}");
    let count: u64 = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in {summary:?}"));
    assert!(
        count >= sacrificed.seqno,
        "{summary} but {sacrificed} exists"
    );

    // One byte flipped inside an entry in the middle of a chunk.
    let tampered = dir.path().join("tampered-ledger");
    copy_dir(&ledger, &tampered);
    let chunk = chunk_files(&tampered)
        .into_iter()
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap();
    let chunk_name = chunk.file_name().unwrap().to_str().unwrap().to_owned();
    let mut bytes = std::fs::read(&chunk).unwrap();
    let (frame_offset, flip_at) = {
        let (frames, error) = parse_frames(&bytes, None);
        assert_eq!(error, None, "{chunk_name} does not parse");
        assert!(
            frames.len() >= 3,
            "{chunk_name} has {} frames",
            frames.len()
        );
        let frame = &frames[frames.len() / 2];
        let payload_start = frame.payload.as_ptr() as usize - bytes.as_ptr() as usize;
        (frame.offset, payload_start + frame.payload.len() / 2)
    };
    bytes[flip_at] ^= 0x01;
    std::fs::write(&chunk, &bytes).unwrap();
    let output = ledger_verify(&tampered, &service_cert);
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "a tampered ledger verified: {}",
        text(&output.stdout)
    );
    assert!(
        stderr.contains(&format!("({chunk_name}, byte {frame_offset})")),
        "stderr should name {chunk_name} and byte {frame_offset}: {stderr}"
    );

    // A torn tail on the open chunk is reported, not failed.
    let torn = dir.path().join("torn-ledger");
    copy_dir(&ledger, &torn);
    let open = open_chunk(&torn);
    let length = std::fs::metadata(&open).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&open)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    let output = ledger_verify(&torn, &service_cert);
    assert!(
        output.status.success(),
        "a torn tail failed verification: {}",
        text(&output.stderr)
    );
    let summary = text(&output.stdout);
    assert!(summary.contains("transactions"), "{summary}");
    let open_name = open.file_name().unwrap().to_str().unwrap();
    assert!(
        summary.contains(&format!("torn tail in {open_name}")),
        "{summary}"
    );

    // The sandbox restarts from a workspace whose open chunk has a torn tail.
    let open = open_chunk(&ledger);
    let length = std::fs::metadata(&open).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&open)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;
    for index in 0..20 {
        assert_eq!(
            get_value(&mut client, &format!("/app/kv/k{index:02}")).await,
            Some(format!("v{index}").into_bytes()),
            "k{index:02} after restarting from a torn tail"
        );
    }
    assert_eq!(tx_status(&mut client, kept).await, "Committed");
    let next = put(&mut client, "/app/kv/after-torn-tail", b"ok").await;
    assert!(next.seqno > kept.seqno);
    wait_committed(&mut client, next).await;
    drop(client);
    sandbox.stop();
}

/// Restarting twice: the ledger written after the first restart must extend the ledger on disk,
/// so that it still verifies and a second restart reads everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_stays_valid_across_two_restarts() {
    let (_dir, workspace, logs) = setup();
    let service_cert = workspace.join("service_cert.pem");
    let ledger = workspace.join("node0").join("ledger");
    for round in 0..2 {
        let sandbox = Sandbox::start(&workspace, &logs);
        let mut client = sandbox.user().await;
        let mut last = TxId::default();
        for index in 0..10 {
            last = put(
                &mut client,
                &format!("/app/kv/r{round}-{index}"),
                format!("v{round}-{index}").as_bytes(),
            )
            .await;
        }
        wait_committed(&mut client, last).await;
        drop(client);
        sandbox.stop();
        let output = ledger_verify(&ledger, &service_cert);
        assert!(
            output.status.success(),
            "ledger does not verify after run {round}: {}",
            text(&output.stderr)
        );
    }
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.user().await;
    for round in 0..2 {
        for index in 0..10 {
            assert_eq!(
                get_value(&mut client, &format!("/app/kv/r{round}-{index}")).await,
                Some(format!("v{round}-{index}").into_bytes()),
                "r{round}-{index} after the second restart"
            );
        }
    }
    drop(client);
    sandbox.stop();
}

/// SIGTERM while the sandbox still waits for its node to answer must stop the node too, not
/// leave it running (holding the port and the ledger) after the sandbox has gone.
#[test]
fn sigterm_during_start_up_stops_the_node() {
    let (dir, workspace, logs) = setup();
    std::fs::create_dir_all(&logs).unwrap();
    let port = free_port();
    let output_path = logs.join("sandbox.log");
    let output = std::fs::File::create(&output_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_charter"))
        .args([
            "sandbox",
            "--nodes",
            "1",
            "--workspace",
            path_str(&workspace),
            "--port",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("spawn charter sandbox");
    let mut sandbox = Sandbox {
        child: Some(child),
        node_pid: None,
        workspace: workspace.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        output_path,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while sandbox.node_pid.is_none() {
        assert!(Instant::now() < deadline, "no node process started");
        sandbox.node_pid = children_of(sandbox.pid()).first().copied();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !workspace.join("sandbox.json").exists(),
        "the sandbox was ready before the test could interrupt its start-up"
    );
    let node_pid = sandbox.node_pid.unwrap();
    signal(sandbox.pid(), libc::SIGTERM);
    let mut child = sandbox.child.take().unwrap();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sandbox ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(node_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let leaked = alive(node_pid);
    if leaked {
        signal(node_pid, libc::SIGKILL);
    }
    assert!(
        !leaked,
        "node process {node_pid} kept running after its sandbox got SIGTERM during start-up"
    );
    drop(dir);
}
