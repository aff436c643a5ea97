//! `charter sandbox`: a local network with generated members and users.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use charter_crypto::{Certificate, CertificateSpec, SigningKey, Validity};
use charter_host::node::NodeFileConfig;

/// Arguments of `charter sandbox`.
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Workspace directory (created if missing; reused to restart from its ledger).
    #[arg(long, default_value = "workspace/sandbox")]
    pub workspace: PathBuf,
    /// Client port of the first node.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Signature every N transactions.
    #[arg(long, default_value_t = 5_000)]
    pub signature_interval_txs: u64,
    /// Signature every T milliseconds.
    #[arg(long, default_value_t = 100)]
    pub signature_interval_ms: u64,
    /// Complete a ledger chunk at the first signature after it reaches this many bytes.
    #[arg(long, default_value_t = 5_000_000)]
    pub chunk_bytes_max: u64,
    /// Seconds to wait for the network to answer.
    #[arg(long, default_value_t = 60)]
    pub startup_timeout_s: u64,
}

const MEMBERS: usize = 3;
const USERS: usize = 2;

fn make_identity(dir: &Path, name: &str) -> Result<(), String> {
    let cert_path = dir.join(format!("{name}_cert.pem"));
    let key_path = dir.join(format!("{name}_privk.pem"));
    if cert_path.exists() && key_path.exists() {
        return Ok(());
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let spec = CertificateSpec {
        common_name: name,
        is_ca: false,
        subject_alt_names: &[],
        validity: Validity {
            not_before_unix: now - 86_400,
            days: 3_650,
        },
    };
    let cert = Certificate::self_signed(&key, &spec).map_err(|error| error.to_string())?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(|error| format!("{}: {error}", key_path.display()))?;
        file.write_all(key.to_pem().as_bytes())
            .map_err(|error| error.to_string())?;
    }
    std::fs::write(&cert_path, cert.to_pem())
        .map_err(|error| format!("{}: {error}", cert_path.display()))
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|error| format!("{}: {error}", path.display()))
}

fn terminate(child: &mut Child) {
    // SIGTERM lets the node flush its ledger; fall back to SIGKILL if it hangs.
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a child's PID and a signal number has no memory effects.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs the sandbox until Ctrl-C or SIGTERM.
pub fn run(args: SandboxArgs) -> Result<(), String> {
    let workspace = absolute(&args.workspace)?;
    std::fs::create_dir_all(&workspace)
        .map_err(|error| format!("{}: {error}", workspace.display()))?;
    let restarting = workspace.join("node0").join("node_privk.pem").exists();
    for index in 0..MEMBERS {
        make_identity(&workspace, &format!("member{index}"))?;
    }
    for index in 0..USERS {
        make_identity(&workspace, &format!("user{index}"))?;
    }
    let node_dir = workspace.join("node0");
    std::fs::create_dir_all(&node_dir)
        .map_err(|error| format!("{}: {error}", node_dir.display()))?;
    let rpc_address: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let service_cert_path = workspace.join("service_cert.pem");
    let config = NodeFileConfig {
        node_dir: node_dir.clone(),
        rpc_address,
        service_cert_out: Some(service_cert_path.clone()),
        members: (0..MEMBERS)
            .map(|i| workspace.join(format!("member{i}_cert.pem")))
            .collect(),
        users: (0..USERS)
            .map(|i| workspace.join(format!("user{i}_cert.pem")))
            .collect(),
        signature_interval_txs: args.signature_interval_txs,
        signature_interval_ms: args.signature_interval_ms,
        chunk_bytes_max: args.chunk_bytes_max,
        body_bytes_max: 1 << 20,
        gov_request_window_s: 300,
    };
    let config_path = node_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|error| error.to_string())?;
    std::fs::write(&config_path, text)
        .map_err(|error| format!("{}: {error}", config_path.display()))?;
    let _ = std::fs::remove_file(workspace.join("sandbox.json"));

    let log_path = node_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| format!("{}: {error}", log_path.display()))?;
    // Signal handlers go in before the node starts, so that a SIGTERM or Ctrl-C at any moment
    // stops the node too instead of killing the sandbox and orphaning it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    let (mut terminate_signal, mut interrupt_signal) = {
        let _guard = runtime.enter();
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate()).map_err(|error| error.to_string())?;
        let interrupt = signal(SignalKind::interrupt()).map_err(|error| error.to_string())?;
        (terminate, interrupt)
    };
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|error| error.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|error| format!("cannot start node: {error}"))?;
    println!(
        "{} node0 on {rpc_address} (workspace {})",
        if restarting { "Restarting" } else { "Starting" },
        workspace.display()
    );

    let result = runtime.block_on(async {
        let ready = wait_until_ready(&mut child, rpc_address, &service_cert_path, &log_path, args.startup_timeout_s);
        let node_id = tokio::select! {
            node_id = ready => node_id?,
            _ = terminate_signal.recv() => return Ok(()),
            _ = interrupt_signal.recv() => return Ok(()),
        };
        open_service(&workspace, rpc_address).await?;
        write_sandbox_json(&workspace, &service_cert_path, &node_id, rpc_address, &node_dir)?;
        println!("Network is open. Service certificate: {}", service_cert_path.display());
        println!("Try:\n  curl --cacert {ws}/service_cert.pem --cert {ws}/user0_cert.pem --key {ws}/user0_privk.pem -X PUT https://{rpc_address}/app/kv/hello --data-binary world",
            ws = workspace.display());
        println!("  curl --cacert {ws}/service_cert.pem --cert {ws}/user0_cert.pem --key {ws}/user0_privk.pem https://{rpc_address}/app/kv/hello",
            ws = workspace.display());
        println!("Press Ctrl-C to stop.");
        loop {
            tokio::select! {
                _ = interrupt_signal.recv() => return Ok(()),
                _ = terminate_signal.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("node0 exited ({status}); log tail:\n{}", log_tail(&log_path)));
                    }
                }
            }
        }
    });
    terminate(&mut child);
    println!(
        "Sandbox stopped; ledger kept in {}",
        node_dir.join("ledger").display()
    );
    result
}

/// Opens a new service the way a consortium would: every member acknowledges the state, member0
/// proposes adding the users and opening the service, and a majority votes for it.
async fn open_service(workspace: &Path, address: SocketAddr) -> Result<(), String> {
    let read = |name: String| {
        let path = workspace.join(&name);
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
    };
    let service = read("service_cert.pem".to_owned())?;
    let mut members = Vec::new();
    for index in 0..MEMBERS {
        let cert = read(format!("member{index}_cert.pem"))?;
        let key = read(format!("member{index}_privk.pem"))?;
        members.push(crate::gov::GovClient::connect_to(address, &service, &cert, &key).await?);
    }
    let info = members[0].get("/gov/service/info").await?;
    if info["status"] == "Open" {
        return Ok(());
    }
    let member_list = members[0].get("/gov/service/members").await?;
    for member in &mut members {
        let active = member_list["value"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| entry["memberId"] == member.member_id() && entry["status"] == "Active");
        if !active {
            member
                .ack()
                .await
                .map_err(|error| format!("member ack failed: {error}"))?;
        }
    }
    let mut actions = Vec::new();
    for index in 0..USERS {
        // The confidential-ledger app reads a user's role from `user_data.role` until an
        // Administrator assigns one through `/app/users`: user0 administers, others contribute.
        let role = if index == 0 {
            "Administrator"
        } else {
            "Contributor"
        };
        actions.push(serde_json::json!({"name": "set_user", "args": {
            "cert": read(format!("user{index}_cert.pem"))?,
            "user_data": {"role": role},
        }}));
    }
    actions.push(serde_json::json!({"name": "transition_service_to_open", "args": {}}));
    let proposal = serde_json::json!({ "actions": actions }).to_string();
    let created = members[0]
        .propose(proposal.as_bytes())
        .await
        .map_err(|error| format!("proposal failed: {error}"))?;
    let id = created["proposalId"]
        .as_str()
        .ok_or("the proposal has no ID")?
        .to_owned();
    let majority = MEMBERS / 2 + 1;
    let mut state = created["proposalState"].clone();
    for member in members.iter_mut().take(majority) {
        if state != "Open" {
            break;
        }
        let voted = member
            .vote(&id, crate::gov::ACCEPT_BALLOT)
            .await
            .map_err(|error| format!("ballot failed: {error}"))?;
        state = voted["proposalState"].clone();
    }
    if state != "Accepted" {
        return Err(format!("the proposal to open the service ended {state}"));
    }
    Ok(())
}

async fn wait_until_ready(
    child: &mut Child,
    address: SocketAddr,
    service_cert_path: &Path,
    log_path: &Path,
    timeout_s: u64,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    charter_host::tls::install_crypto_provider();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "node0 exited during start-up ({status}); log tail:\n{}",
                log_tail(log_path)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node0 did not answer within {timeout_s} s; log tail:\n{}",
                log_tail(log_path)
            ));
        }
        if let Ok(pem) = std::fs::read_to_string(service_cert_path) {
            if let Ok(tls) = charter_host::tls::client_config(&pem, None) {
                if let Ok(mut client) =
                    charter_host::client::Client::connect(address, "127.0.0.1", tls).await
                {
                    if let Ok(response) =
                        client.request("GET", "/node/state", &[], Vec::new()).await
                    {
                        if response.status == 200 {
                            if let Ok(json) = response.json() {
                                if let Some(node_id) = json["node_id"].as_str() {
                                    return Ok(node_id.to_owned());
                                }
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_sandbox_json(
    workspace: &Path,
    service_cert: &Path,
    node_id: &str,
    address: SocketAddr,
    node_dir: &Path,
) -> Result<(), String> {
    let identity = |name: String| -> Result<serde_json::Value, String> {
        let cert_path = workspace.join(format!("{name}_cert.pem"));
        let pem = std::fs::read_to_string(&cert_path).map_err(|error| error.to_string())?;
        let cert = Certificate::from_pem(&pem).map_err(|error| error.to_string())?;
        Ok(serde_json::json!({
            "name": name,
            "id": cert.fingerprint_hex(),
            "cert": cert_path,
            "key": workspace.join(format!("{name}_privk.pem")),
        }))
    };
    let members = (0..MEMBERS)
        .map(|i| identity(format!("member{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let users = (0..USERS)
        .map(|i| identity(format!("user{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let json = serde_json::json!({
        "service_cert": service_cert,
        "nodes": [{"node_id": node_id, "rpc_address": address.to_string(), "dir": node_dir}],
        "members": members,
        "users": users,
    });
    let path = workspace.join("sandbox.json");
    let temporary = workspace.join("sandbox.json.tmp");
    std::fs::write(
        &temporary,
        serde_json::to_string_pretty(&json).map_err(|error| error.to_string())?,
    )
    .map_err(|error| error.to_string())?;
    std::fs::rename(&temporary, &path).map_err(|error| error.to_string())
}
