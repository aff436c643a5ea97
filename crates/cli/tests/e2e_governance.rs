//! End-to-end tests of governance on the real `charter` binary: a `charter sandbox` started as a
//! process, members driving it with `charter gov ...` or with raw COSE Sign1 requests at CCF's
//! `/gov/members/...` paths, users checked through `/app/kv`, and the ledger files inspected
//! after a SIGTERM.
//!
//! Every sandbox is owned by a [`Sandbox`] guard whose `Drop` kills the sandbox process and its
//! node child, so a failing test leaks no processes. Each test has its own sandbox (several
//! change the constitution), and they run in parallel.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use charter_crypto::{cose_sign1, Certificate, CertificateSpec, SigningKey, Validity};
mod common;

use charter_host::client::{Client, ClientResponse};
use common::{alive, charter, children_of, free_port, path_str, signal, text};
use serde_json::{json, Value};

/// How long a sandbox may take to write `sandbox.json`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping sandbox may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Freshness window of governance requests in the node (`NodeConfig::gov_request_window_s`).
const GOV_WINDOW_S: u64 = 300;

// ---------------------------------------------------------------------------------------------
// Processes (after crates/cli/tests/e2e_sandbox.rs)
// ---------------------------------------------------------------------------------------------

/// A running `charter sandbox`; killed (with its node) when dropped.
struct Sandbox {
    child: Option<Child>,
    node_pid: Option<i32>,
    workspace: PathBuf,
    addr: SocketAddr,
    output_path: PathBuf,
}

impl Sandbox {
    /// Starts `charter sandbox` on `workspace` and waits for its `sandbox.json`; retries on
    /// another port if the node cannot listen.
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
                if let Ok(json) = serde_json::from_str::<Value>(&text) {
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

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.workspace.join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    /// The certificate and key of workspace identity `name` (e.g. `member1`).
    fn identity(&self, name: &str) -> (Certificate, SigningKey) {
        let cert = Certificate::from_pem(&self.read(&format!("{name}_cert.pem"))).unwrap();
        let key = SigningKey::from_pem(&self.read(&format!("{name}_privk.pem"))).unwrap();
        (cert, key)
    }

    fn member_id(&self, name: &str) -> String {
        self.identity(name).0.fingerprint_hex()
    }

    /// A client presenting identity `name` from the workspace, or none.
    async fn client_as(&self, name: Option<&str>) -> Client {
        match name {
            Some(name) => {
                let cert = self.read(&format!("{name}_cert.pem"));
                let key = self.read(&format!("{name}_privk.pem"));
                self.client_with(Some((&cert, &key))).await
            }
            None => self.client_with(None).await,
        }
    }

    async fn client_with(&self, identity: Option<(&str, &str)>) -> Client {
        let tls = charter_host::tls::client_config(&self.read("service_cert.pem"), identity)
            .expect("client TLS configuration");
        Client::connect(self.addr, "127.0.0.1", tls)
            .await
            .expect("connect to the sandbox")
    }

    /// `charter gov ARGS --workspace WS --member MEMBER`: the JSON it printed, or the exit
    /// failure's stderr.
    fn gov(&self, member: &str, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["gov"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--workspace", path_str(&self.workspace), "--member", member]);
        let output = charter(&all);
        if output.status.success() {
            Ok(
                serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
                    panic!(
                        "charter {all:?} printed no JSON ({error}): {}",
                        text(&output.stdout)
                    )
                }),
            )
        } else {
            Err(text(&output.stderr))
        }
    }

    /// `gov` that must succeed.
    fn gov_ok(&self, member: &str, args: &[&str]) -> Value {
        self.gov(member, args)
            .unwrap_or_else(|error| panic!("charter gov {args:?} as {member} failed: {error}"))
    }

    /// `gov` that must fail with HTTP `status`; returns stderr.
    fn gov_err(&self, member: &str, args: &[&str], status: u16) -> String {
        match self.gov(member, args) {
            Ok(value) => panic!("charter gov {args:?} as {member} succeeded: {value}"),
            Err(stderr) => {
                assert!(
                    stderr.contains(&format!("{status} ")),
                    "charter gov {args:?} as {member}: expected {status}, got {stderr:?}"
                );
                stderr
            }
        }
    }

    /// Proposes `proposal` as `member` through the CLI; returns (ID, response).
    fn propose(&self, dir: &Path, member: &str, proposal: &Value) -> (String, Value) {
        let path = dir.join(format!("proposal-{}.json", random_hex()));
        std::fs::write(&path, proposal.to_string()).unwrap();
        let created = self.gov_ok(member, &["propose", path_str(&path)]);
        let id = created["proposalId"]
            .as_str()
            .unwrap_or_else(|| panic!("no proposalId in {created}"))
            .to_owned();
        (id, created)
    }

    /// `charter gov vote ID --accept|--reject` as `member`.
    fn vote(&self, member: &str, id: &str, accept: bool) -> Value {
        let flag = if accept { "--accept" } else { "--reject" };
        self.gov_ok(member, &["vote", id, flag])
    }

    fn state(&self, id: &str) -> String {
        let shown = self.gov_ok("member0", &["show", id]);
        state_of(&shown)
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

fn state_of(value: &Value) -> String {
    value["proposalState"]
        .as_str()
        .unwrap_or_else(|| panic!("no proposalState in {value}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// HTTP and governance helpers
// ---------------------------------------------------------------------------------------------

async fn call(client: &mut Client, method: &str, path: &str, body: &[u8]) -> ClientResponse {
    client
        .request(method, path, &[], body.to_vec())
        .await
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
}

fn json_of(response: &ClientResponse) -> Value {
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
    let body = json_of(response);
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

async fn get_json(client: &mut Client, path: &str) -> Value {
    let response = call(client, "GET", path, b"").await;
    assert_eq!(
        response.status,
        200,
        "GET {path}: {:?}",
        text(&response.body)
    );
    json_of(&response)
}

/// POSTs a governance request body with `content_type`.
async fn post_gov(
    client: &mut Client,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> ClientResponse {
    client
        .request(
            "POST",
            path,
            &[("content-type", content_type)],
            body.to_vec(),
        )
        .await
        .unwrap_or_else(|error| panic!("POST {path}: {error}"))
}

async fn post_cose(client: &mut Client, path: &str, body: &[u8]) -> ClientResponse {
    post_gov(client, path, "application/cose", body).await
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn random_hex() -> String {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A fresh self-signed identity that nobody registered.
fn fresh_identity(name: &str) -> (Certificate, SigningKey) {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let spec = CertificateSpec {
        common_name: name,
        is_ca: false,
        subject_alt_names: &[],
        validity: Validity {
            not_before_unix: i64::try_from(now_unix_s()).unwrap() - 86_400,
            days: 365,
        },
    };
    let cert = Certificate::self_signed(&key, &spec).unwrap();
    (cert, key)
}

fn set_user_proposal(cert_pem: &str) -> Value {
    json!({"actions": [{"name": "set_user", "args": {"cert": cert_pem}}]})
}

fn ballot_payload(accept: bool) -> Vec<u8> {
    json!({"ballot": format!("export function vote(proposal, proposerId) {{ return {accept}; }}")})
        .to_string()
        .into_bytes()
}

fn ballot_path(proposal_id: &str, member_id: &str) -> String {
    format!("/gov/members/proposals/{proposal_id}/ballots/{member_id}:submit")
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

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    charter_host::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    let logs = dir.path().join("logs");
    (dir, workspace, logs)
}

/// The constitution in force, from `/gov/service/constitution`.
async fn constitution(client: &mut Client) -> String {
    let response = call(client, "GET", "/gov/service/constitution", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let source = text(&response.body);
    assert!(source.contains("export function resolve("), "{source}");
    assert!(source.contains("export function apply("), "{source}");
    source
}

/// `source` with its `name` export renamed to `default_<name>` and `replacement` (which must
/// export `name`) appended.
fn replace_export(source: &str, name: &str, replacement: &str) -> String {
    let export = format!("export function {name}(");
    assert_eq!(
        source.matches(&export).count(),
        1,
        "one {export} in the source"
    );
    let renamed = source.replace(&export, &format!("function default_{name}("));
    format!("{renamed}\n{replacement}\n")
}

fn set_constitution_proposal(source: &str) -> Value {
    json!({"actions": [{"name": "set_constitution", "args": {"constitution": source}}]})
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A new user is refused until a proposal adds it, and refused again once another removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_come_and_go_by_proposal() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);

    let keys = dir.path().join("user9-keys");
    let output = charter(&["keys", "new", "user9", "--out", path_str(&keys)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let cert_pem = std::fs::read_to_string(keys.join("user9_cert.pem")).unwrap();
    let key_pem = std::fs::read_to_string(keys.join("user9_privk.pem")).unwrap();
    let user_id = Certificate::from_pem(&cert_pem).unwrap().fingerprint_hex();
    let mut user9 = sandbox.client_with(Some((&cert_pem, &key_pem))).await;

    let response = call(&mut user9, "GET", "/app/kv/k", b"").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    let (id, created) = sandbox.propose(dir.path(), "member0", &set_user_proposal(&cert_pem));
    assert_eq!(state_of(&created), "Open", "{created}");
    assert_eq!(created["ballotCount"], 0, "{created}");
    // Not yet a user while the proposal is open.
    let response = call(&mut user9, "PUT", "/app/kv/k", b"v").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    // As in CCF, proposing is not voting: the proposer's ballot is one of the majority.
    let voted = sandbox.vote("member0", &id, true);
    assert_eq!(state_of(&voted), "Open", "{voted}");
    let voted = sandbox.vote("member1", &id, true);
    assert_eq!(state_of(&voted), "Accepted", "{voted}");
    assert_eq!(voted["ballotCount"], 2, "{voted}");
    assert_eq!(
        voted["finalVotes"][sandbox.member_id("member1")],
        true,
        "{voted}"
    );
    let shown = sandbox.gov_ok("member2", &["show", &id]);
    assert_eq!(state_of(&shown), "Accepted");
    assert_eq!(shown["actions"], set_user_proposal(&cert_pem), "{shown}");

    let mut member0 = sandbox.client_as(Some("member0")).await;
    let users = get_json(&mut member0, "/gov/service/users").await;
    assert!(
        users["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|user| user["userId"] == user_id.as_str()),
        "{users}"
    );

    let response = call(&mut user9, "PUT", "/app/kv/k", b"from user9").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let response = call(&mut user9, "GET", "/app/kv/k", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    assert_eq!(response.body, b"from user9");

    let remove = json!({"actions": [{"name": "remove_user", "args": {"user_id": user_id}}]});
    let (id, created) = sandbox.propose(dir.path(), "member2", &remove);
    assert_eq!(state_of(&created), "Open");
    assert_eq!(state_of(&sandbox.vote("member2", &id, true)), "Open");
    assert_eq!(state_of(&sandbox.vote("member0", &id, true)), "Accepted");

    // Same TLS connection, but the store no longer knows the certificate.
    let response = call(&mut user9, "GET", "/app/kv/k", b"").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    let response = call(&mut user9, "PUT", "/app/kv/k", b"again").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    // A fresh connection is refused too, and user0 is unaffected.
    let mut again = sandbox.client_with(Some((&cert_pem, &key_pem))).await;
    let response = call(&mut again, "GET", "/app/kv/k", b"").await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    let mut user0 = sandbox.client_as(Some("user0")).await;
    let response = call(&mut user0, "GET", "/app/kv/k", b"").await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    assert_eq!(response.body, b"from user9");

    drop((user9, again, user0, member0));
    sandbox.stop();
}

/// Two rejections of three reject a proposal; it then takes no more ballots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_rejection_closes_the_proposal() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let (cert, _) = fresh_identity("rejected");
    let (id, created) = sandbox.propose(dir.path(), "member0", &set_user_proposal(&cert.to_pem()));
    assert_eq!(state_of(&created), "Open");

    let voted = sandbox.vote("member1", &id, false);
    assert_eq!(state_of(&voted), "Open", "{voted}");
    assert_eq!(
        voted["finalVotes"][sandbox.member_id("member1")],
        false,
        "{voted}"
    );
    let voted = sandbox.vote("member2", &id, false);
    assert_eq!(state_of(&voted), "Rejected", "{voted}");
    assert_eq!(voted["ballotCount"], 2);

    let stderr = sandbox.gov_err("member0", &["vote", &id, "--accept"], 409);
    assert!(stderr.contains("ProposalNotOpen"), "{stderr}");
    let stderr = sandbox.gov_err("member1", &["vote", &id, "--accept"], 409);
    assert!(stderr.contains("ProposalNotOpen"), "{stderr}");
    let stderr = sandbox.gov_err("member0", &["withdraw", &id], 409);
    assert!(stderr.contains("ProposalNotOpen"), "{stderr}");
    assert_eq!(sandbox.state(&id), "Rejected");

    // Nothing was applied.
    let mut member0 = sandbox.client_as(Some("member0")).await;
    let users = get_json(&mut member0, "/gov/service/users").await;
    assert_eq!(users["value"].as_array().unwrap().len(), 2, "{users}");

    // Voting twice on an open proposal is refused as well. (The same member re-sending the
    // same ballot within the same second sends the same bytes, refused as a replay, so the
    // second ballot differs.)
    let (other, _) = fresh_identity("second");
    let (id, _) = sandbox.propose(dir.path(), "member0", &set_user_proposal(&other.to_pem()));
    assert_eq!(state_of(&sandbox.vote("member1", &id, false)), "Open");
    let stderr = sandbox.gov_err("member1", &["vote", &id, "--accept"], 409);
    assert!(stderr.contains("VoteAlreadyExists"), "{stderr}");
    assert_eq!(sandbox.state(&id), "Open");

    drop(member0);
    sandbox.stop();
}

/// Only the proposer may withdraw, and a withdrawn proposal is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_proposer_withdraws() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let (cert, _) = fresh_identity("withdrawn");
    let (id, _) = sandbox.propose(dir.path(), "member0", &set_user_proposal(&cert.to_pem()));

    let stderr = sandbox.gov_err("member1", &["withdraw", &id], 403);
    assert!(stderr.contains("AuthorizationFailed"), "{stderr}");
    assert_eq!(sandbox.state(&id), "Open");

    let withdrawn = sandbox.gov_ok("member0", &["withdraw", &id]);
    assert_eq!(state_of(&withdrawn), "Withdrawn", "{withdrawn}");
    assert_eq!(sandbox.state(&id), "Withdrawn");

    sandbox.gov_err("member1", &["vote", &id, "--accept"], 409);
    sandbox.gov_err("member0", &["withdraw", &id], 409);
    // Unknown proposals are 404.
    let unknown = "ab".repeat(32);
    sandbox.gov_err("member0", &["withdraw", &unknown], 404);
    sandbox.gov_err("member0", &["show", &unknown], 404);

    let listed = sandbox.gov_ok("member2", &["show"]);
    let entry = listed["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["proposalId"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed in {listed}"))
        .clone();
    assert_eq!(state_of(&entry), "Withdrawn");
    assert_eq!(entry["proposerId"], sandbox.member_id("member0").as_str());

    sandbox.stop();
}

/// A constitution requiring unanimity: open proposals are dropped when it comes in, and from
/// then on two of three votes are not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unanimity_constitution_drops_open_proposals_and_needs_everyone() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut member0 = sandbox.client_as(Some("member0")).await;
    let default = constitution(&mut member0).await;
    let unanimity = replace_export(
        &default,
        "resolve",
        r#"export function resolve(proposal, proposerId, votes) {
  const active = activeMemberIds();
  const yes = new Set();
  for (const { member_id: memberId, vote } of votes) {
    if (!active.includes(memberId)) {
      continue;
    }
    if (vote !== true) {
      return "Rejected";
    }
    yes.add(memberId);
  }
  return active.every((id) => yes.has(id)) ? "Accepted" : "Open";
}"#,
    );

    let (cert, _) = fresh_identity("bystander");
    let (other, _) = sandbox.propose(dir.path(), "member2", &set_user_proposal(&cert.to_pem()));
    assert_eq!(
        sandbox.vote("member2", &other, true)["proposalState"],
        "Open"
    );

    let (id, created) = sandbox.propose(
        dir.path(),
        "member0",
        &set_constitution_proposal(&unanimity),
    );
    assert_eq!(state_of(&created), "Open");
    assert_eq!(state_of(&sandbox.vote("member0", &id, true)), "Open");
    assert_eq!(state_of(&sandbox.vote("member1", &id, true)), "Accepted");
    assert_eq!(constitution(&mut member0).await, unanimity);

    assert_eq!(sandbox.state(&other), "Dropped");
    sandbox.gov_err("member0", &["vote", &other, "--accept"], 409);

    let (id, _) = sandbox.propose(dir.path(), "member1", &set_user_proposal(&cert.to_pem()));
    assert_eq!(state_of(&sandbox.vote("member0", &id, true)), "Open");
    assert_eq!(state_of(&sandbox.vote("member1", &id, true)), "Open");
    assert_eq!(sandbox.state(&id), "Open");
    let voted = sandbox.vote("member2", &id, true);
    assert_eq!(state_of(&voted), "Accepted", "{voted}");
    assert_eq!(voted["ballotCount"], 3);
    let users = get_json(&mut member0, "/gov/service/users").await;
    assert_eq!(users["value"].as_array().unwrap().len(), 3, "{users}");

    // One no now rejects.
    let (cert, _) = fresh_identity("vetoed");
    let (id, _) = sandbox.propose(dir.path(), "member1", &set_user_proposal(&cert.to_pem()));
    assert_eq!(state_of(&sandbox.vote("member0", &id, true)), "Open");
    assert_eq!(state_of(&sandbox.vote("member2", &id, false)), "Rejected");

    drop(member0);
    sandbox.stop();
}

/// Raw COSE requests that must be refused, each with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_and_misaddressed_requests_are_refused() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    // Governance is authenticated by the COSE signature alone: no client certificate.
    let mut client = sandbox.client_as(None).await;
    let (member0_cert, member0_key) = sandbox.identity("member0");
    let member0 = member0_cert.fingerprint_hex();
    let member1 = sandbox.member_id("member1");
    let (stranger_cert, stranger_key) = fresh_identity("stranger");
    let proposal = set_user_proposal(&stranger_cert.to_pem()).to_string();
    let create = "/gov/members/proposals:create";
    let now = now_unix_s();

    // A valid proposal, accepted once and refused when replayed byte for byte.
    let signed = cose_sign1(
        &member0_key,
        &member0,
        "proposal",
        None,
        now,
        proposal.as_bytes(),
    );
    let response = post_cose(&mut client, create, &signed).await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let created = json_of(&response);
    assert_eq!(state_of(&created), "Open");
    assert_eq!(created["proposerId"], member0.as_str());
    let id = created["proposalId"].as_str().unwrap().to_owned();
    let response = post_cose(&mut client, create, &signed).await;
    assert_eq!(assert_error(&response, 409), "ReplayedRequest");

    // Signed by another key under member0's kid.
    let forged = cose_sign1(
        &stranger_key,
        &member0,
        "proposal",
        None,
        now,
        proposal.as_bytes(),
    );
    let response = post_cose(&mut client, create, &forged).await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");
    let forged_ballot = cose_sign1(
        &stranger_key,
        &member1,
        "ballot",
        Some(&id),
        now,
        &ballot_payload(true),
    );
    let response = post_cose(&mut client, &ballot_path(&id, &member1), &forged_ballot).await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    // A self-signed key that is not a member's.
    let unknown = cose_sign1(
        &stranger_key,
        &stranger_cert.fingerprint_hex(),
        "proposal",
        None,
        now,
        proposal.as_bytes(),
    );
    let response = post_cose(&mut client, create, &unknown).await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    // An hour old, and an hour ahead.
    for created_at in [now - 3_600, now + 3_600] {
        let stale = cose_sign1(
            &member0_key,
            &member0,
            "proposal",
            None,
            created_at,
            proposal.as_bytes(),
        );
        let response = post_cose(&mut client, create, &stale).await;
        assert_eq!(assert_error(&response, 400), "StaleRequest");
    }
    // Just inside the window is fine.
    let recent = cose_sign1(
        &member0_key,
        &member0,
        "proposal",
        None,
        now - GOV_WINDOW_S / 2,
        proposal.as_bytes(),
    );
    let response = post_cose(&mut client, create, &recent).await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));

    // member0's ballot posted under member1's ID.
    let ballot = cose_sign1(
        &member0_key,
        &member0,
        "ballot",
        Some(&id),
        now,
        &ballot_payload(true),
    );
    let response = post_cose(&mut client, &ballot_path(&id, &member1), &ballot).await;
    assert_eq!(assert_error(&response, 403), "AuthorizationFailed");

    // A ballot message sent to proposals:create.
    let response = post_cose(&mut client, create, &ballot).await;
    assert_eq!(assert_error(&response, 400), "InvalidMessageType");

    // A ballot whose proposal_id header names another proposal.
    let elsewhere = cose_sign1(
        &member0_key,
        &member0,
        "ballot",
        Some(&"cd".repeat(32)),
        now,
        &ballot_payload(true),
    );
    let response = post_cose(&mut client, &ballot_path(&id, &member0), &elsewhere).await;
    assert_eq!(assert_error(&response, 400), "InvalidProposalId");

    // Not COSE by content-type.
    let fresh = cose_sign1(
        &member0_key,
        &member0,
        "proposal",
        None,
        now + 1,
        proposal.as_bytes(),
    );
    for content_type in ["application/json", "application/octet-stream"] {
        let response = post_gov(&mut client, create, content_type, &fresh).await;
        assert_eq!(assert_error(&response, 415), "UnsupportedContentType");
    }
    let response = post_cose(&mut client, create, proposal.as_bytes()).await;
    assert_eq!(assert_error(&response, 400), "InvalidCoseSign1");

    // A user signs a ballot with its own key: users are not members.
    let (user0_cert, user0_key) = sandbox.identity("user0");
    let user0 = user0_cert.fingerprint_hex();
    let user_ballot = cose_sign1(
        &user0_key,
        &user0,
        "ballot",
        Some(&id),
        now,
        &ballot_payload(true),
    );
    let mut user_client = sandbox.client_as(Some("user0")).await;
    let response = post_cose(&mut user_client, &ballot_path(&id, &user0), &user_ballot).await;
    assert_eq!(assert_error(&response, 401), "InvalidAuthenticationInfo");

    // None of that touched the proposal; a proper ballot still counts.
    let shown = get_json(&mut client, &format!("/gov/members/proposals/{id}")).await;
    assert_eq!(state_of(&shown), "Open");
    assert_eq!(shown["ballotCount"], 0, "{shown}");
    let response = post_cose(&mut client, &ballot_path(&id, &member0), &ballot).await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    assert_eq!(state_of(&json_of(&response)), "Open");

    drop((client, user_client));
    sandbox.stop();
}

/// Constitutions whose apply loops forever or allocates without bound fail the proposal and
/// leave the node serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_constitutions_fail_the_proposal_not_the_node() {
    let (dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut member0 = sandbox.client_as(Some("member0")).await;
    let mut user0 = sandbox.client_as(Some("user0")).await;
    let default = constitution(&mut member0).await;
    // Runaway for set_user only, so that governance can still replace the constitution.
    let runaway = |body: &str| {
        replace_export(
            &default,
            "apply",
            &format!(
                r#"export function apply(proposal, proposalId) {{
  if (JSON.parse(proposal).actions[0].name === "set_user") {{
    {body}
  }}
  return default_apply(proposal, proposalId);
}}"#
            ),
        )
    };
    let cases = [
        ("loop", runaway("while (true) {}"), "fuel"),
        (
            "allocation",
            runaway("const hoard = []; while (true) { hoard.push(new Array(65536).fill(hoard.length)); }"),
            "heap",
        ),
    ];
    for (what, source, reason) in cases {
        let (id, _) = sandbox.propose(dir.path(), "member0", &set_constitution_proposal(&source));
        sandbox.vote("member0", &id, true);
        let voted = sandbox.vote("member2", &id, true);
        assert_eq!(state_of(&voted), "Accepted", "{what}: {voted}");
        assert_eq!(constitution(&mut member0).await, source);

        let (cert, _) = fresh_identity(what);
        let (id, _) = sandbox.propose(dir.path(), "member1", &set_user_proposal(&cert.to_pem()));
        sandbox.vote("member1", &id, true);
        // Meanwhile, another client asks for the commit point (reported, not asserted: the
        // node runs governance JavaScript on its request path).
        let mut probe = sandbox.client_as(None).await;
        let probing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let response = call(&mut probe, "GET", "/node/commit", b"").await;
            (response.status, started.elapsed())
        });
        let started = Instant::now();
        let voted = sandbox.vote("member2", &id, true);
        let elapsed = started.elapsed();
        let (status, latency) = probing.await.unwrap();
        eprintln!(
            "{what}: the failing apply took {elapsed:?}; GET /node/commit meanwhile: {status} in {latency:?}"
        );
        assert_eq!(status, 200);
        assert_eq!(state_of(&voted), "Failed", "{what}: {voted}");
        let failure = voted["failure"]["reason"].as_str().unwrap_or_default();
        assert!(
            // Allocation also burns fuel (one unit per 16 KiB), so unbounded allocation may
            // exhaust the fuel before the heap: either limit must stop it.
            failure.contains("apply")
                && (failure.contains(reason) || (what == "allocation" && failure.contains("fuel"))),
            "{what}: {voted}"
        );
        assert_eq!(sandbox.state(&id), "Failed");

        // The node serves, nothing of the proposal was applied, users still write.
        let response = call(&mut member0, "GET", "/node/commit", b"").await;
        assert_eq!(response.status, 200, "{:?}", text(&response.body));
        let users = get_json(&mut member0, "/gov/service/users").await;
        assert_eq!(
            users["value"].as_array().unwrap().len(),
            2,
            "{what}: {users}"
        );
        let response = call(&mut user0, "PUT", &format!("/app/kv/{what}"), b"ok").await;
        assert_eq!(response.status, 200, "{what}: {:?}", text(&response.body));
        let response = call(&mut user0, "GET", &format!("/app/kv/{what}"), b"").await;
        assert_eq!(response.body, b"ok");
    }

    drop((member0, user0));
    sandbox.stop();
}

/// Every signed request, proposals, ballots and withdrawals, is in the ledger files verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signed_request_is_in_the_ledger_verbatim() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.client_as(Some("member0")).await;
    let members: Vec<(String, SigningKey)> = (0..3)
        .map(|index| {
            let (cert, key) = sandbox.identity(&format!("member{index}"));
            (cert.fingerprint_hex(), key)
        })
        .collect();
    let mut submitted: Vec<(&str, Vec<u8>)> = Vec::new();
    let now = now_unix_s();

    let (cert, _) = fresh_identity("ledgered");
    let proposal = set_user_proposal(&cert.to_pem()).to_string();
    let signed = cose_sign1(
        &members[0].1,
        &members[0].0,
        "proposal",
        None,
        now,
        proposal.as_bytes(),
    );
    let response = post_cose(&mut client, "/gov/members/proposals:create", &signed).await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let id = json_of(&response)["proposalId"]
        .as_str()
        .unwrap()
        .to_owned();
    submitted.push(("proposal", signed));

    // member1 against, member2 for, member0 for: Accepted on the third ballot.
    for (index, accept, expected) in [(1, false, "Open"), (2, true, "Open"), (0, true, "Accepted")]
    {
        let (member_id, key) = &members[index];
        let ballot = cose_sign1(
            key,
            member_id,
            "ballot",
            Some(&id),
            now,
            &ballot_payload(accept),
        );
        let response = post_cose(&mut client, &ballot_path(&id, member_id), &ballot).await;
        assert_eq!(response.status, 200, "{:?}", text(&response.body));
        assert_eq!(state_of(&json_of(&response)), expected);
        submitted.push(("ballot", ballot));
    }

    // A withdrawn proposal, by member2.
    let other = set_user_proposal(&fresh_identity("withdrawn").0.to_pem()).to_string();
    let signed = cose_sign1(
        &members[2].1,
        &members[2].0,
        "proposal",
        None,
        now,
        other.as_bytes(),
    );
    let response = post_cose(&mut client, "/gov/members/proposals:create", &signed).await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    let other_id = json_of(&response)["proposalId"]
        .as_str()
        .unwrap()
        .to_owned();
    submitted.push(("proposal", signed));
    let withdrawal = cose_sign1(
        &members[2].1,
        &members[2].0,
        "withdrawal",
        Some(&other_id),
        now,
        b"",
    );
    let response = post_cose(
        &mut client,
        &format!("/gov/members/proposals/{other_id}:withdraw"),
        &withdrawal,
    )
    .await;
    assert_eq!(response.status, 200, "{:?}", text(&response.body));
    assert_eq!(state_of(&json_of(&response)), "Withdrawn");
    submitted.push(("withdrawal", withdrawal));

    // A refused request is not recorded.
    let refused = cose_sign1(
        &members[1].1,
        &members[1].0,
        "ballot",
        Some(&id),
        now,
        &ballot_payload(true),
    );
    let response = post_cose(&mut client, &ballot_path(&id, &members[1].0), &refused).await;
    assert_eq!(assert_error(&response, 409), "ProposalNotOpen");

    drop(client);
    sandbox.stop();

    let ledger = workspace.join("node0").join("ledger");
    let chunks: Vec<Vec<u8>> = chunk_files(&ledger)
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(!chunks.is_empty(), "no ledger chunks in {ledger:?}");
    for (index, (what, bytes)) in submitted.iter().enumerate() {
        let found = chunks.iter().filter(|chunk| contains(chunk, bytes)).count();
        assert!(
            found >= 1,
            "request {index} ({what}, {} bytes) is in none of the ledger chunks",
            bytes.len()
        );
    }
    assert!(
        !chunks.iter().any(|chunk| contains(chunk, &refused)),
        "the refused ballot was recorded"
    );
}

/// The service, members, nodes, join policy and the node's own quote as governance sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_members_nodes_join_policy_and_quotes() {
    let (_dir, workspace, logs) = setup();
    let sandbox = Sandbox::start(&workspace, &logs);
    let mut client = sandbox.client_as(None).await;
    let sandbox_json: Value = serde_json::from_str(&sandbox.read("sandbox.json")).unwrap();
    let node_id = sandbox_json["nodes"][0]["node_id"].as_str().unwrap();

    let info = get_json(&mut client, "/gov/service/info").await;
    assert_eq!(info["status"], "Open", "{info}");
    assert_eq!(
        info["certificate"].as_str().map(str::trim),
        Some(sandbox.read("service_cert.pem").trim()),
        "{info}"
    );

    let members = get_json(&mut client, "/gov/service/members").await;
    let members = members["value"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    for index in 0..3 {
        let id = sandbox.member_id(&format!("member{index}"));
        let entry = members
            .iter()
            .find(|entry| entry["memberId"] == id.as_str())
            .unwrap_or_else(|| panic!("member{index} ({id}) missing from {members:?}"));
        assert_eq!(entry["status"], "Active", "{entry}");
        assert_eq!(sandbox_json["members"][index]["id"], id.as_str());
    }

    let users = get_json(&mut client, "/gov/service/users").await;
    let mut user_ids: Vec<&str> = users["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["userId"].as_str().unwrap())
        .collect();
    user_ids.sort_unstable();
    let mut expected: Vec<&str> = sandbox_json["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["id"].as_str().unwrap())
        .collect();
    expected.sort_unstable();
    assert_eq!(user_ids, expected);

    let nodes = get_json(&mut client, "/gov/service/nodes").await;
    let nodes = nodes["value"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["nodeId"], node_id);
    assert_eq!(nodes[0]["status"], "Trusted", "{:?}", nodes[0]);
    assert_eq!(nodes[0]["primary"], true, "{:?}", nodes[0]);

    let policy = get_json(&mut client, "/gov/service/join-policy").await;
    let platforms = policy["platforms"].as_array().unwrap();
    assert!(platforms.iter().any(|p| p == "virtual"), "{policy}");
    let measurements: Vec<&str> = policy["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let is_hex64 = |m: &str| m.len() == 64 && m.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(measurements.iter().any(|m| is_hex64(m)), "{policy}");

    let quote = get_json(&mut client, "/node/quotes/self").await;
    assert_eq!(quote["node_id"], node_id, "{quote}");
    assert_eq!(quote["format"], "Insecure_Virtual", "{quote}");
    assert_eq!(quote["hardware_protection"], false, "{quote}");
    let measurement = quote["measurement"].as_str().unwrap();
    assert!(measurements.contains(&measurement), "{quote} vs {policy}");
    let quotes = get_json(&mut client, "/node/quotes").await;
    let quotes = quotes["quotes"].as_array().unwrap();
    assert_eq!(quotes.len(), 1, "{quotes:?}");
    assert_eq!(quotes[0], quote);

    // /gov/service is read-only.
    let response = call(&mut client, "POST", "/gov/service/members", b"{}").await;
    assert_eq!(assert_error(&response, 405), "MethodNotAllowed");

    drop(client);
    sandbox.stop();
}
