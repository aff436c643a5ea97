//! Benchmark of the Ethereum adapter on a running network (`charter sandbox`, 3 nodes by
//! default): signed ERC-20 transfers or plain ether transfers, sent over HTTPS with a user's
//! client certificate to the primary, reported as transactions per second *committed* and the
//! p50/p99 latency from sending a transaction to seeing it committed.
//!
//! ```text
//! cargo run --release -p charter-cli -- sandbox --workspace ws/bench --port 8600 &
//! cargo run --release -p charter-cli --example evm_bench -- --workspace ws/bench \
//!     --workload erc20 --clients 32 --transactions 40000
//! ```
//!
//! Setup (not measured): development account 0 funds one fresh account per client (and, for
//! `erc20`, deploys the test token and gives each client tokens); then every client's
//! transactions are signed ahead of time. Measurement: each client sends its transactions one
//! request at a time on its own connection (a closed loop), one transaction per request or, with
//! `--batch N`, N per JSON-RPC batch (each still its own Charter transaction and block); the
//! requests go to the primary that `/node/network` names. One poller reads `/node/commit`, and
//! a transaction counts as committed at the first poll whose committed seqno covers the
//! Charter TxID its response named (`x-ms-ccf-transaction-id`). Throughput is the committed
//! transactions over the time from the first send to the last commit. The CPU time each node
//! process and this client used is read from `/proc` (Linux), since every process shares the
//! machine's cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_primitives::{keccak256, Address, U256};
use charter_evm::transaction::{TxType, UnsignedTransaction};
use charter_host::client::Client;
use charter_ledger::TxId;
use k256::ecdsa::SigningKey;
use serde_json::{json, Value};

/// The development chain's ID.
const CHAIN_ID: u64 = 0x4348;
/// Development account 0's private key (Hardhat/Anvil; public knowledge).
const DEV_KEY_0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// The test token: `tests/ethereum/ERC20.sol` compiled by solcjs 0.8.37.
const TOKEN_HEX: &str = include_str!("../../evm/tests/fixtures/charter_token.hex");
/// `transfer(address,uint256)`.
const TRANSFER_SELECTOR: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// Clients at most (each holds one connection and one account).
const CLIENTS_MAX: usize = 1_024;
/// Transactions at most in one run (all are signed ahead of time and kept in memory).
const TRANSACTIONS_MAX: usize = 2_000_000;

struct Args {
    workspace: PathBuf,
    workload: String,
    clients: usize,
    transactions: usize,
    batch: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        workspace: PathBuf::from("workspace/sandbox"),
        workload: "erc20".to_owned(),
        clients: 32,
        transactions: 40_000,
        batch: 1,
        json: None,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--workspace" => args.workspace = PathBuf::from(value),
            "--workload" => args.workload = value,
            "--clients" => args.clients = value.parse().map_err(|_| "--clients")?,
            "--transactions" => args.transactions = value.parse().map_err(|_| "--transactions")?,
            "--batch" => args.batch = value.parse().map_err(|_| "--batch")?,
            "--json" => args.json = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !matches!(args.workload.as_str(), "erc20" | "ether") {
        return Err("--workload is erc20 or ether".to_owned());
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(format!("--clients is 1 to {CLIENTS_MAX}"));
    }
    if args.batch == 0 || args.batch > charter_evm::rpc::BATCH_CALLS_MAX {
        return Err(format!(
            "--batch is 1 to {}",
            charter_evm::rpc::BATCH_CALLS_MAX
        ));
    }
    if args.transactions < args.clients || args.transactions > TRANSACTIONS_MAX {
        return Err(format!("--transactions is --clients to {TRANSACTIONS_MAX}"));
    }
    Ok(args)
}

struct Account {
    key: SigningKey,
    address: Address,
}

impl Account {
    fn from_bytes(bytes: &[u8]) -> Account {
        let key = SigningKey::from_slice(bytes).expect("a valid secp256k1 key");
        let address = Address::from_public_key(key.verifying_key());
        Account { key, address }
    }

    /// The account of client `index`: a key derived from the index.
    fn client(index: usize) -> Account {
        let seed = keccak256(format!("charter evm_bench client {index}"));
        Account::from_bytes(seed.as_slice())
    }

    fn sign(&self, unsigned: &UnsignedTransaction) -> Vec<u8> {
        let hash = unsigned.signing_hash();
        let (signature, recovery) = self
            .key
            .sign_prehash_recoverable(hash.as_slice())
            .expect("signing a 32-byte hash");
        let r = U256::from_be_slice(&signature.r().to_bytes());
        let s = U256::from_be_slice(&signature.s().to_bytes());
        unsigned.encode_signed(r, s, recovery.is_y_odd())
    }
}

fn unsigned(
    nonce: u64,
    to: Option<Address>,
    value: U256,
    input: Vec<u8>,
    gas: u64,
) -> UnsignedTransaction {
    UnsignedTransaction {
        tx_type: TxType::DynamicFee,
        chain_id: CHAIN_ID,
        nonce,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        gas_limit: gas,
        to,
        value,
        input,
    }
}

fn transfer_call(to: &Address, amount: U256) -> Vec<u8> {
    let mut data = TRANSFER_SELECTOR.to_vec();
    data.extend_from_slice(&[0; 12]);
    data.extend_from_slice(to.as_slice());
    data.extend_from_slice(&amount.to_be_bytes::<32>());
    data
}

fn token_init_code(supply: U256) -> Vec<u8> {
    let word = |value: U256| value.to_be_bytes::<32>().to_vec();
    let short_string = |text: &str| {
        let mut out = word(U256::from(text.len()));
        let mut padded = [0u8; 32];
        padded[..text.len()].copy_from_slice(text.as_bytes());
        out.extend_from_slice(&padded);
        out
    };
    let mut code = hex::decode(TOKEN_HEX.trim()).expect("the token fixture is hex");
    code.extend(word(U256::from(0x60)));
    code.extend(word(U256::from(0xa0)));
    code.extend(word(supply));
    code.extend(short_string("Bench Token"));
    code.extend(short_string("BCH"));
    code
}

fn send_call(raw: &[u8]) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
           "params": [format!("0x{}", hex::encode(raw))]})
}

/// Request bodies of `batch` calls each (a single call is sent as an object, more as a
/// JSON-RPC batch), with how many transactions each holds.
fn batch_bodies(calls: Vec<Value>, batch: usize) -> Vec<(Vec<u8>, usize)> {
    calls
        .chunks(batch)
        .map(|chunk| {
            let body = if chunk.len() == 1 {
                chunk[0].to_string()
            } else {
                Value::Array(chunk.to_vec()).to_string()
            };
            (body.into_bytes(), chunk.len())
        })
        .collect()
}

async fn rpc(client: &mut Client, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = client
        .request("POST", "/app/ethereum", &[], body.to_string().into_bytes())
        .await
        .map_err(|error| error.to_string())?;
    let value = response.json().map_err(|error| error.to_string())?;
    match value.get("error") {
        Some(error) => Err(format!("{method}: {error}")),
        None => Ok(value["result"].clone()),
    }
}

/// Sends `raw` and returns its receipt (reads on the primary see its own writes at once).
async fn send_and_receipt(client: &mut Client, raw: &[u8]) -> Result<Value, String> {
    let hash = rpc(
        client,
        "eth_sendRawTransaction",
        json!([format!("0x{}", hex::encode(raw))]),
    )
    .await?;
    let receipt = rpc(client, "eth_getTransactionReceipt", json!([hash])).await?;
    if receipt["status"] != "0x1" {
        return Err(format!("setup transaction failed: {receipt}"));
    }
    Ok(receipt)
}

/// User plus system CPU seconds a process has used (Linux `/proc/PID/stat`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / per_second)
}

/// The client address of the primary, as any node names it in `/node/network`.
fn primary(
    nodes: &[(String, SocketAddr)],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<SocketAddr, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        for (_, address) in nodes {
            let Ok(mut client) = Client::connect(*address, "127.0.0.1", tls.clone()).await else {
                continue;
            };
            let Ok(response) = client
                .request("GET", "/node/network", &[], Vec::new())
                .await
            else {
                continue;
            };
            let id = response
                .json()
                .ok()
                .and_then(|json| json["primary_id"].as_str().map(str::to_owned));
            if let Some((_, primary)) = nodes.iter().find(|(node, _)| Some(node) == id.as_ref()) {
                return Ok(*primary);
            }
        }
        Err("no node names a primary".to_owned())
    })
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Sample {
    sent: Instant,
    answered: Instant,
    /// The Charter seqno of the request's last transaction.
    seqno: u64,
    /// Transactions the request sent.
    count: usize,
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let read = |name: &str| {
        let path = args.workspace.join(name);
        std::fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))
    };
    let sandbox: Value = serde_json::from_str(&read("sandbox.json")?)
        .map_err(|error| format!("sandbox.json: {error}"))?;
    let nodes: Vec<(String, SocketAddr)> = sandbox["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|node| {
                    let id = node["node_id"].as_str()?.to_owned();
                    Some((id, node["rpc_address"].as_str()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    if nodes.is_empty() {
        return Err("sandbox.json names no node".to_owned());
    }
    let pids: Vec<String> = sandbox["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|node| node["pid"].as_u64().map(|pid| pid.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let service = read("service_cert.pem")?;
    let (cert, key) = (read("user0_cert.pem")?, read("user0_privk.pem")?);
    charter_host::tls::install_crypto_provider();
    let tls = charter_host::tls::client_config(&service, Some((&cert, &key)))
        .map_err(|error| error.to_string())?;
    let token = args.workload == "erc20";
    let address = primary(&nodes, &tls)?;
    eprintln!("primary at {address}");
    let per_client = args.transactions / args.clients;
    let total = per_client * args.clients;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;

    // Setup: fund the clients' accounts (and give them tokens), from development account 0.
    let clients: Vec<Account> = (0..args.clients).map(Account::client).collect();
    let token_address = runtime.block_on(async {
        let mut client = Client::connect(address, "127.0.0.1", tls.clone())
            .await
            .map_err(|error| error.to_string())?;
        let owner =
            Account::from_bytes(&hex::decode(DEV_KEY_0).map_err(|error| error.to_string())?);
        let count = rpc(
            &mut client,
            "eth_getTransactionCount",
            json!([format!("{:#x}", owner.address), "latest"]),
        )
        .await?;
        let mut nonce =
            u64::from_str_radix(count.as_str().unwrap_or("0x0").trim_start_matches("0x"), 16)
                .map_err(|error| error.to_string())?;
        let mut token_address = None;
        if token {
            let raw = owner.sign(&unsigned(
                nonce,
                None,
                U256::ZERO,
                token_init_code(U256::from(u128::MAX)),
                2_000_000,
            ));
            nonce += 1;
            let receipt = send_and_receipt(&mut client, &raw).await?;
            token_address = receipt["contractAddress"]
                .as_str()
                .and_then(|text| text.parse::<Address>().ok());
        }
        for account in &clients {
            let ether = U256::from(10u128.pow(18));
            let raw = owner.sign(&unsigned(
                nonce,
                Some(account.address),
                ether,
                Vec::new(),
                21_000,
            ));
            nonce += 1;
            send_and_receipt(&mut client, &raw).await?;
            if let Some(token_address) = token_address {
                let call = transfer_call(&account.address, U256::from(10u128.pow(24)));
                let raw = owner.sign(&unsigned(
                    nonce,
                    Some(token_address),
                    U256::ZERO,
                    call,
                    100_000,
                ));
                nonce += 1;
                send_and_receipt(&mut client, &raw).await?;
            }
        }
        Ok::<Option<Address>, String>(token_address)
    })?;

    // Each client starts at its account's next nonce (an earlier run may have used it).
    let first_nonces: Vec<u64> = runtime.block_on(async {
        let mut client = Client::connect(address, "127.0.0.1", tls.clone())
            .await
            .map_err(|error| error.to_string())?;
        let mut nonces = Vec::with_capacity(clients.len());
        for account in &clients {
            let count = rpc(
                &mut client,
                "eth_getTransactionCount",
                json!([format!("{:#x}", account.address), "latest"]),
            )
            .await?;
            let text = count.as_str().unwrap_or("0x0").trim_start_matches("0x");
            nonces.push(u64::from_str_radix(text, 16).map_err(|error| error.to_string())?);
        }
        Ok::<Vec<u64>, String>(nonces)
    })?;

    // Sign every client's transactions ahead of time, on two threads.
    let signing = Instant::now();
    let recipient = Account::client(usize::MAX).address;
    let accounts: Vec<(&Account, u64)> = clients.iter().zip(first_nonces).collect();
    let bodies: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let halves: Vec<_> = accounts
            .chunks(accounts.len().div_ceil(2))
            .map(|half| {
                scope.spawn(move || {
                    half.iter()
                        .map(|(account, first)| {
                            (*first..*first + per_client as u64)
                                .map(|nonce| {
                                    let tx = match token_address {
                                        Some(token) => unsigned(
                                            nonce,
                                            Some(token),
                                            U256::ZERO,
                                            transfer_call(&recipient, U256::from(1)),
                                            60_000,
                                        ),
                                        None => unsigned(
                                            nonce,
                                            Some(recipient),
                                            U256::from(1),
                                            Vec::new(),
                                            21_000,
                                        ),
                                    };
                                    send_call(&account.sign(&tx))
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|half| half.join().expect("a signing thread"))
            .collect()
    });
    let batch = args.batch;
    let bodies: Vec<Vec<(Vec<u8>, usize)>> = bodies
        .into_iter()
        .map(|calls| batch_bodies(calls, batch))
        .collect();
    eprintln!(
        "setup done; signed {total} transactions in {:.1} s; sending",
        signing.elapsed().as_secs_f64()
    );

    let cpu_before: Vec<Option<f64>> = pids.iter().map(|pid| cpu_seconds(pid)).collect();
    let own_before = cpu_seconds("self");
    let figures = runtime.block_on(async move {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
        let commits: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut connections = Vec::with_capacity(bodies.len());
        for _ in 0..bodies.len() {
            connections.push(Client::connect(address, "127.0.0.1", tls.clone()).await.map_err(|error| error.to_string())?);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (mut client, bodies) in connections.into_iter().zip(bodies) {
            let (samples, errors) = (samples.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = Vec::with_capacity(bodies.len());
                for (body, count) in bodies {
                    let sent = Instant::now();
                    // A 503 (backpressure) is retried after its hint; anything else is an error.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match client.request("POST", "/app/ethereum", &[], body.clone()).await {
                            Ok(response) if response.status == 200 => {
                                let seqno = response.header("x-ms-ccf-transaction-id").and_then(|text| text.parse::<TxId>().ok()).map(|tx_id| tx_id.seqno);
                                let failed = response
                                    .json()
                                    .map(|value| match value {
                                        Value::Array(responses) => responses.iter().any(|one| one.get("error").is_some()),
                                        one => one.get("error").is_some(),
                                    })
                                    .unwrap_or(true);
                                match (seqno, failed) {
                                    (Some(seqno), false) => local.push(Sample { sent, answered: Instant::now(), seqno, count }),
                                    _ => { errors.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed); }
                                }
                                break;
                            }
                            Ok(response) if response.status == 503 && attempts < 100 => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            _ => {
                                errors.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                if let Ok(mut all) = samples.lock() {
                    all.extend(local);
                }
            }));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (stop, commits) = (stop.clone(), commits.clone());
            let mut poller = Client::connect(address, "127.0.0.1", tls.clone()).await.map_err(|error| error.to_string())?;
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(response) = poller.request("GET", "/node/commit", &[], Vec::new()).await {
                        let seqno = response.json().ok().and_then(|json| json["transaction_id"].as_str().and_then(|text| text.parse::<TxId>().ok()));
                        if let (Some(tx_id), Ok(mut all)) = (seqno, commits.lock()) {
                            all.push((Instant::now(), tx_id.seqno));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        for task in tasks {
            let _ = task.await;
        }
        let sent_all = started.elapsed().as_secs_f64();
        let last_seqno = samples.lock().map_err(|_| "poisoned")?.iter().map(|sample| sample.seqno).max().unwrap_or(0);
        // Wait (at most 30 s) for the last transaction to commit.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let committed = commits.lock().map_err(|_| "poisoned")?.last().map_or(0, |(_, seqno)| *seqno);
            if committed >= last_seqno {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = poller.await;
        let samples = std::mem::take(&mut *samples.lock().map_err(|_| "poisoned")?);
        let commits = std::mem::take(&mut *commits.lock().map_err(|_| "poisoned")?);
        // Latencies per transaction: a batch's transactions share its request's.
        let sent_total: usize = samples.iter().map(|sample| sample.count).sum();
        let mut commit_ms = Vec::with_capacity(sent_total);
        let mut answer_ms = Vec::with_capacity(sent_total);
        let mut last_commit = started;
        for sample in &samples {
            let answer = sample.answered.duration_since(sample.sent).as_secs_f64() * 1e3;
            answer_ms.extend(std::iter::repeat_n(answer, sample.count));
            let index = commits.partition_point(|(_, seqno)| *seqno < sample.seqno);
            if let Some((at, _)) = commits[index..].iter().find(|(at, _)| *at >= sample.sent) {
                let commit = at.duration_since(sample.sent).as_secs_f64() * 1e3;
                commit_ms.extend(std::iter::repeat_n(commit, sample.count));
                last_commit = last_commit.max(*at);
            }
        }
        commit_ms.sort_by(f64::total_cmp);
        answer_ms.sort_by(f64::total_cmp);
        let elapsed = last_commit.duration_since(started).as_secs_f64();
        Ok::<Value, String>(json!({
            "committed": commit_ms.len(),
            "not_committed": sent_total - commit_ms.len(),
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
            "seconds": elapsed,
            "sending_seconds": sent_all,
            "committed_per_s": commit_ms.len() as f64 / elapsed,
            "latency_to_commit_ms": {"p50": percentile(&commit_ms, 0.5), "p99": percentile(&commit_ms, 0.99), "max": percentile(&commit_ms, 1.0)},
            "latency_to_answer_ms": {"p50": percentile(&answer_ms, 0.5), "p99": percentile(&answer_ms, 0.99)},
        }))
    })?;
    let cpu: Vec<Value> = pids
        .iter()
        .zip(cpu_before)
        .map(|(pid, before)| match (before, cpu_seconds(pid)) {
            (Some(before), Some(after)) => json!(after - before),
            _ => Value::Null,
        })
        .collect();
    let own = match (own_before, cpu_seconds("self")) {
        (Some(before), Some(after)) => json!(after - before),
        _ => Value::Null,
    };
    let mut figures = figures;
    figures["workload"] = json!(args.workload);
    figures["clients"] = json!(args.clients);
    figures["batch"] = json!(args.batch);
    figures["nodes"] = json!(pids.len());
    figures["cpu_seconds_per_node"] = json!(cpu);
    figures["cpu_seconds_client"] = own;
    figures["ratio_to_1600"] = json!(figures["committed_per_s"].as_f64().unwrap_or(0.0) / 1_600.0);
    let text = serde_json::to_string_pretty(&figures).map_err(|error| error.to_string())?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, text).map_err(|error| format!("{}: {error}", path.display()))?;
    }
    Ok(())
}
