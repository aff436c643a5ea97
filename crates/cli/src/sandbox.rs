//! `charter sandbox`: a local network with generated members and users.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use charter_crypto::{Certificate, CertificateSpec, SigningKey, Validity};
use charter_host::join::JoinConfig;
use charter_host::node::{MemberEntry, NodeFileConfig, RecoverConfig, StartKind};

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
    /// Also sign whenever no signature awaits commit: lower latency to commit, more signatures.
    #[arg(long)]
    pub signature_when_idle: bool,
    /// Write a snapshot every N committed transactions (0: never).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_interval_txs: u64,
    /// Complete a ledger chunk at the first signature after it reaches this many bytes.
    #[arg(long, default_value_t = 5_000_000)]
    pub chunk_bytes_max: u64,
    /// Number of nodes (the first starts the network, the others join it by governance).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Seconds to wait for the network to answer.
    #[arg(long, default_value_t = 60)]
    pub startup_timeout_s: u64,
    /// Recover the service of this (stopped) sandbox workspace into `--workspace`: node0
    /// starts in `recover` mode from the old node0's ledger, the members open the recovered
    /// service and submit their recovery shares, then the other nodes join.
    #[arg(long)]
    pub recover: Option<PathBuf>,
    /// Genesis file of the Ethereum chain, for every node (default: the development chain).
    #[arg(long)]
    pub evm_genesis: Option<PathBuf>,
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

/// A member's recovery key pair, kept next to its identity.
fn make_recovery_key(dir: &Path, name: &str) -> Result<(), String> {
    if dir.join(format!("{name}_enc_privk.pem")).exists() {
        return Ok(());
    }
    crate::keys::new_recovery_key(name, dir)
}

/// Copies the members' and users' key files of the old workspace into the new one.
fn copy_identities(old: &Path, new: &Path) -> Result<(), String> {
    for index in 0..MEMBERS {
        for suffix in ["cert.pem", "privk.pem", "enc_privk.pem", "enc_pubk.pem"] {
            let name = format!("member{index}_{suffix}");
            copy_if_missing(&old.join(&name), &new.join(&name))?;
        }
    }
    for index in 0..USERS {
        for suffix in ["cert.pem", "privk.pem"] {
            let name = format!("user{index}_{suffix}");
            copy_if_missing(&old.join(&name), &new.join(&name))?;
        }
    }
    Ok(())
}

fn copy_if_missing(from: &Path, to: &Path) -> Result<(), String> {
    if to.exists() || !from.exists() {
        return Ok(());
    }
    std::fs::copy(from, to).map_err(|error| format!("{}: {error}", from.display()))?;
    Ok(())
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

/// One node process of the sandbox.
struct SandboxNode {
    name: String,
    dir: PathBuf,
    rpc_address: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl SandboxNode {
    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|error| format!("{}: {error}", self.log_path.display()))?;
        let exe = std::env::current_exe().map_err(|error| error.to_string())?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|error| error.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// An error naming the node if its process has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited ({status}); log tail:\n{}",
                    self.name,
                    log_tail(&self.log_path)
                ));
            }
        }
        Ok(())
    }
}

/// Runs the sandbox until Ctrl-C or SIGTERM.
pub fn run(args: SandboxArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".to_owned());
    }
    let workspace = absolute(&args.workspace)?;
    std::fs::create_dir_all(&workspace)
        .map_err(|error| format!("{}: {error}", workspace.display()))?;
    let restarting = workspace.join("node0").join("node_privk.pem").exists();
    let recover_from = match &args.recover {
        Some(old) if !restarting => {
            let old = absolute(old)?;
            if old == workspace {
                return Err("--recover names the workspace itself; recover into a new one".into());
            }
            if !old.join("node0").join("ledger").is_dir() {
                return Err(format!("{} has no node0/ledger to recover", old.display()));
            }
            copy_identities(&old, &workspace)?;
            Some(old)
        }
        _ => None,
    };
    for index in 0..MEMBERS {
        make_identity(&workspace, &format!("member{index}"))?;
        make_recovery_key(&workspace, &format!("member{index}"))?;
    }
    for index in 0..USERS {
        make_identity(&workspace, &format!("user{index}"))?;
    }
    let service_cert_path = workspace.join("service_cert.pem");
    let evm_genesis = args.evm_genesis.as_deref().map(absolute).transpose()?;
    let first_address: SocketAddr = ([127, 0, 0, 1], args.port).into();
    let mut nodes = Vec::new();
    for index in 0..args.nodes {
        let name = format!("node{index}");
        let dir = workspace.join(&name);
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let port = u16::try_from(usize::from(args.port) + index)
            .map_err(|_| "--port + --nodes exceeds the port range".to_owned())?;
        let rpc_address: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = NodeFileConfig {
            node_dir: dir.clone(),
            rpc_address,
            node_address: None,
            mode: match (index, &recover_from) {
                (0, None) => StartKind::Start,
                (0, Some(_)) => StartKind::Recover,
                _ => StartKind::Join,
            },
            recover: recover_from
                .as_ref()
                .filter(|_| index == 0)
                .map(|old| RecoverConfig {
                    previous_ledger_dir: old.join("node0").join("ledger"),
                    previous_service_cert: old.join("service_cert.pem"),
                    previous_service_key: Some(
                        old.join("node0").join("sealed").join("service_privk.pem"),
                    )
                    .filter(|path| path.exists()),
                }),
            join: (index > 0).then(|| JoinConfig {
                target: first_address,
                service_cert: service_cert_path.clone(),
                retry_interval_ms: 200,
            }),
            service_cert_out: (index == 0).then(|| service_cert_path.clone()),
            members: (0..MEMBERS)
                .map(|i| MemberEntry::WithRecoveryKey {
                    cert: workspace.join(format!("member{i}_cert.pem")),
                    encryption_public_key: workspace.join(format!("member{i}_enc_pubk.pem")),
                })
                .collect(),
            users: Vec::new(),
            signature_interval_txs: args.signature_interval_txs,
            signature_interval_ms: args.signature_interval_ms,
            signature_when_idle: args.signature_when_idle,
            chunk_bytes_max: args.chunk_bytes_max,
            snapshot_interval_txs: args.snapshot_interval_txs,
            log_entries_kept: 50_000,
            raft_tick_ms: 100,
            body_bytes_max: 1 << 20,
            gov_request_window_s: 300,
            read_only_ledger_dirs: Vec::new(),
            evm_genesis: evm_genesis.clone(),
        };
        config.node_address()?;
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|error| error.to_string())?;
        std::fs::write(&config_path, text)
            .map_err(|error| format!("{}: {error}", config_path.display()))?;
        nodes.push(SandboxNode {
            name,
            log_path: dir.join("node.log"),
            dir,
            rpc_address,
            config_path,
            child: None,
        });
    }
    let _ = std::fs::remove_file(workspace.join("sandbox.json"));

    // Signal handlers go in before any node starts, so that a SIGTERM or Ctrl-C at any moment
    // stops the nodes too instead of killing the sandbox and orphaning them.
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
    println!(
        "{} {} node{} from {first_address} (workspace {})",
        if restarting {
            "Restarting"
        } else if recover_from.is_some() {
            "Recovering the service with"
        } else {
            "Starting"
        },
        args.nodes,
        if args.nodes == 1 { "" } else { "s" },
        workspace.display()
    );
    let timeout_s = args.startup_timeout_s;
    let result = runtime.block_on(async {
        let setup = async {
            // Nodes that already belong to the network restart together (a majority must be up
            // to elect a primary); new ones join one at a time once the service is open.
            let member_of_network =
                |node: &SandboxNode| node.dir.join("node_cert.pem").exists();
            let known: Vec<bool> = nodes.iter().map(member_of_network).collect();
            for (node, known) in nodes.iter_mut().zip(&known) {
                if *known || node.name == "node0" {
                    node.start()?;
                }
            }
            let mut node_ids = Vec::new();
            for (index, node) in nodes.iter_mut().enumerate() {
                if known[index] || index == 0 {
                    node_ids.push(wait_until_ready(node, &service_cert_path, timeout_s).await?);
                } else {
                    node_ids.push(String::new());
                }
            }
            let primary = wait_for_primary(&mut nodes, &service_cert_path, timeout_s).await?;
            if recover_from.is_some() {
                recover_service(&workspace, primary, &nodes[0], timeout_s).await?;
            }
            open_service(&workspace, primary).await?;
            for index in 1..nodes.len() {
                if known[index] {
                    continue;
                }
                nodes[index].start()?;
                let primary = wait_for_primary(&mut nodes, &service_cert_path, timeout_s).await?;
                trust_node(&workspace, primary, &mut nodes[index], timeout_s).await?;
                node_ids[index] =
                    wait_until_ready(&mut nodes[index], &service_cert_path, timeout_s).await?;
                wait_caught_up(&mut nodes[index], primary, &service_cert_path, timeout_s).await?;
            }
            Ok::<Vec<String>, String>(node_ids)
        };
        let node_ids = tokio::select! {
            ids = setup => ids?,
            _ = terminate_signal.recv() => return Ok(()),
            _ = interrupt_signal.recv() => return Ok(()),
        };
        write_sandbox_json(&workspace, &service_cert_path, &node_ids, &nodes)?;
        println!("Network is open. Service certificate: {}", service_cert_path.display());
        for (node, id) in nodes.iter().zip(&node_ids) {
            println!("  {} https://{} node_id {}", node.name, node.rpc_address, id);
        }
        println!("Try:\n  curl --cacert {ws}/service_cert.pem --cert {ws}/user0_cert.pem --key {ws}/user0_privk.pem -X PUT https://{first_address}/app/kv/hello --data-binary world",
            ws = workspace.display());
        println!("  curl --cacert {ws}/service_cert.pem --cert {ws}/user0_cert.pem --key {ws}/user0_privk.pem https://{first_address}/app/kv/hello",
            ws = workspace.display());
        println!("Press Ctrl-C to stop.");
        loop {
            tokio::select! {
                _ = interrupt_signal.recv() => return Ok(()),
                _ = terminate_signal.recv() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    // A node that dies is reported, not fatal: the others carry on while a
                    // majority is up (restart it with `charter node --config DIR/config.json`).
                    for node in nodes.iter_mut() {
                        if let Err(error) = node.check_alive() {
                            eprintln!("warning: {error}");
                            node.child = None;
                        }
                    }
                }
            }
        }
    });
    for node in nodes.iter_mut() {
        if let Some(child) = node.child.as_mut() {
            terminate(child);
        }
    }
    println!(
        "Sandbox stopped; ledgers kept in {}/node*/ledger",
        workspace.display()
    );
    result
}

/// Client address of the node that is primary, once one is.
async fn wait_for_primary(
    nodes: &mut [SandboxNode],
    service_cert_path: &Path,
    timeout_s: u64,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let pem = std::fs::read_to_string(service_cert_path)
        .map_err(|error| format!("{}: {error}", service_cert_path.display()))?;
    let tls = charter_host::tls::client_config(&pem, None).map_err(|error| error.to_string())?;
    loop {
        for node in nodes.iter_mut() {
            if node.child.is_none() {
                continue;
            }
            node.check_alive()?;
            if let Ok(mut client) =
                charter_host::client::Client::connect(node.rpc_address, "127.0.0.1", tls.clone())
                    .await
            {
                if let Ok(response) = client
                    .request("GET", "/node/network", &[], Vec::new())
                    .await
                {
                    if let Ok(json) = response.json() {
                        if json["primary_id"].is_string() {
                            return Ok(node.rpc_address);
                        }
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no primary was elected within {timeout_s} s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` asks to join, then has the members trust it by proposal and ballots.
async fn trust_node(
    workspace: &Path,
    primary: SocketAddr,
    node: &mut SandboxNode,
    timeout_s: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut members = members(workspace, primary).await?;
    let node_id = loop {
        node.check_alive()?;
        let listed = members[0].get("/node/network/nodes").await?;
        let found = listed["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| {
                entry["rpc_address"] == node.rpc_address.to_string()
                    && (entry["status"] == "Pending" || entry["status"] == "Trusted")
            });
        if let Some(entry) = found {
            if entry["status"] == "Trusted" {
                return Ok(());
            }
            break entry["node_id"].as_str().unwrap_or_default().to_owned();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not ask to join within {timeout_s} s; log tail:\n{}",
                node.name,
                log_tail(&node.log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let proposal = serde_json::json!({"actions": [
        {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
    ]})
    .to_string();
    pass(&mut members, &proposal).await
}

/// Connects every sandbox member to `address`.
async fn members(
    workspace: &Path,
    address: SocketAddr,
) -> Result<Vec<crate::gov::GovClient>, String> {
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
    Ok(members)
}

/// member0 proposes `proposal`; members vote for it until it is accepted.
async fn pass(members: &mut [crate::gov::GovClient], proposal: &str) -> Result<(), String> {
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
        return Err(format!("proposal {id} ended {state}"));
    }
    Ok(())
}

/// Opens a new service the way a consortium would: every member acknowledges the state, member0
/// proposes adding the users and opening the service, and a majority votes for it.
async fn open_service(workspace: &Path, address: SocketAddr) -> Result<(), String> {
    let read = |name: String| {
        let path = workspace.join(&name);
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
    };
    let mut members = members(workspace, address).await?;
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
    pass(&mut members, &proposal)
        .await
        .map_err(|error| format!("opening the service: {error}"))
}

/// Opens a recovering service: the members pass `transition_service_to_open`, then submit
/// recovery shares one by one until the service is open; then waits until node0 holds the
/// snapshot that nodes joining the recovered service start from.
async fn recover_service(
    workspace: &Path,
    address: SocketAddr,
    node: &SandboxNode,
    timeout_s: u64,
) -> Result<(), String> {
    let mut members = members(workspace, address).await?;
    let info = members[0].get("/gov/service/info").await?;
    if info["status"] == "Recovering" {
        let proposal = serde_json::json!({"actions": [
            {"name": "transition_service_to_open", "args": {}}
        ]})
        .to_string();
        pass(&mut members, &proposal)
            .await
            .map_err(|error| format!("opening the recovered service: {error}"))?;
    }
    for (index, member) in members.iter_mut().enumerate() {
        let info = member.get("/gov/service/info").await?;
        if info["status"] == "Open" {
            break;
        }
        let path = workspace.join(format!("member{index}_enc_privk.pem"));
        let pem = std::fs::read_to_string(&path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let key = charter_crypto::RecoveryKeyPair::from_pem(&pem)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let answer = member
            .submit_recovery_share(&key)
            .await
            .map_err(|error| format!("member{index}'s recovery share: {error}"))?;
        println!(
            "  member{index}: {}",
            answer["message"].as_str().unwrap_or_default()
        );
    }
    let info = members[0].get("/gov/service/info").await?;
    if info["status"] != "Open" {
        return Err(format!(
            "the recovered service is still {}: {}",
            info["status"],
            members[0].get("/gov/recovery/status").await?
        ));
    }
    // Joining nodes start from the snapshot taken once the private state was restored.
    let snapshots = charter_host::files::snapshot_dir_for(&node.dir.join("ledger"));
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let committed = std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .any(|item| item.file_name().to_string_lossy().ends_with(".committed"));
        if committed {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node0 wrote no committed snapshot within {timeout_s} s after the recovery"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node` has committed everything the primary at `primary` had committed when
/// the wait began, so that it serves the service's users and members at once.
async fn wait_caught_up(
    node: &mut SandboxNode,
    primary: SocketAddr,
    service_cert_path: &Path,
    timeout_s: u64,
) -> Result<(), String> {
    let pem = std::fs::read_to_string(service_cert_path)
        .map_err(|error| format!("{}: {error}", service_cert_path.display()))?;
    let tls = charter_host::tls::client_config(&pem, None).map_err(|error| error.to_string())?;
    let committed = |address: SocketAddr| {
        let tls = tls.clone();
        async move {
            let mut client = charter_host::client::Client::connect(address, "127.0.0.1", tls)
                .await
                .ok()?;
            let response = client
                .request("GET", "/node/state", &[], Vec::new())
                .await
                .ok()?;
            response.json().ok()?["last_committed_seqno"].as_u64()
        }
    };
    let target = committed(primary).await.unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        node.check_alive()?;
        if committed(node.rpc_address).await.unwrap_or(0) >= target {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not catch up with the primary within {timeout_s} s; log tail:\n{}",
                node.name,
                log_tail(&node.log_path)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` serves clients; returns its node ID.
async fn wait_until_ready(
    node: &mut SandboxNode,
    service_cert_path: &Path,
    timeout_s: u64,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    charter_host::tls::install_crypto_provider();
    loop {
        node.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer within {timeout_s} s; log tail:\n{}",
                node.name,
                log_tail(&node.log_path)
            ));
        }
        if let Ok(pem) = std::fs::read_to_string(service_cert_path) {
            if let Ok(tls) = charter_host::tls::client_config(&pem, None) {
                if let Ok(mut client) =
                    charter_host::client::Client::connect(node.rpc_address, "127.0.0.1", tls).await
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
    node_ids: &[String],
    nodes: &[SandboxNode],
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
        "nodes": nodes.iter().zip(node_ids).map(|(node, id)| serde_json::json!({
            "name": node.name,
            "node_id": id,
            "rpc_address": node.rpc_address.to_string(),
            "dir": node.dir,
            "pid": node.child.as_ref().map(Child::id),
        })).collect::<Vec<_>>(),
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
