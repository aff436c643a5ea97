//! The adapter's JSON-RPC driven as tooling drives it, over an in-memory ledger: transfers,
//! contract deployment and calls, refused transactions, reverts, confidentiality between users,
//! batches and malformed requests.

mod common;

use alloy_primitives::{Address, U256};
use charter_evm::chain::{DEV_BALANCE_WEI, DEV_CHAIN_ID};
use charter_evm::rpc::Reply;
use charter_evm::{EthereumApp, MemoryLedger};
use common::*;
use serde_json::{json, Value};

const ALICE: &str = "aa11";
const BOB: &str = "bb22";

fn setup() -> (EthereumApp, MemoryLedger) {
    (EthereumApp::dev(), MemoryLedger::new(ALICE))
}

fn as_user(ledger: &mut MemoryLedger, user: &str) {
    ledger.caller = user.to_owned();
}

fn balance(app: &EthereumApp, ledger: &mut MemoryLedger, address: &str) -> U256 {
    hex_u256(&rpc(app, ledger, "eth_getBalance", json!([address, "latest"])).unwrap())
}

fn deploy_token(
    app: &EthereumApp,
    ledger: &mut MemoryLedger,
    owner: &Account,
    nonce: u64,
) -> (String, Address) {
    let raw = owner.sign(&tx(nonce, None, 0, token_init_code(1_000_000), 2_000_000));
    let hash = send(app, ledger, &raw).unwrap();
    let receipt = rpc(app, ledger, "eth_getTransactionReceipt", json!([hash])).unwrap();
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let address: Address = receipt["contractAddress"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (hash, address)
}

fn token_balance(
    app: &EthereumApp,
    ledger: &mut MemoryLedger,
    token: &Address,
    owner: &Address,
) -> U256 {
    let data = format!("0x{}", hex::encode(balance_of_call(owner)));
    let to = format!("0x{}", hex::encode(token));
    hex_u256(
        &rpc(
            app,
            ledger,
            "eth_call",
            json!([{"to": to, "data": data}, "latest"]),
        )
        .unwrap(),
    )
}

#[test]
fn chain_basics_and_genesis() {
    let (app, mut ledger) = setup();
    assert_eq!(
        rpc(&app, &mut ledger, "eth_chainId", json!([])).unwrap(),
        "0x4348"
    );
    // The first request wrote the genesis block as its own Charter transaction.
    assert_eq!(ledger.commits(), 1);
    assert_eq!(
        rpc(&app, &mut ledger, "net_version", json!([])).unwrap(),
        DEV_CHAIN_ID.to_string()
    );
    assert_eq!(
        rpc(&app, &mut ledger, "eth_blockNumber", json!([])).unwrap(),
        "0x0"
    );
    assert_eq!(
        rpc(&app, &mut ledger, "eth_accounts", json!([])).unwrap(),
        json!([])
    );
    assert_eq!(
        rpc(&app, &mut ledger, "eth_gasPrice", json!([])).unwrap(),
        "0x0"
    );
    let genesis = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["0x0", false]),
    )
    .unwrap();
    assert_eq!(genesis["number"], "0x0");
    assert_eq!(genesis["transactions"], json!([]));
    assert_eq!(genesis["charterTransactionId"], "1.1");
    let by_hash = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByHash",
        json!([genesis["hash"], false]),
    )
    .unwrap();
    assert_eq!(by_hash, genesis);
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockByNumber",
            json!(["0x5", false])
        )
        .unwrap(),
        Value::Null
    );
    let history = rpc(
        &app,
        &mut ledger,
        "eth_feeHistory",
        json!(["0x4", "latest", [50]]),
    )
    .unwrap();
    assert_eq!(history["oldestBlock"], "0x0");
    assert_eq!(history["baseFeePerGas"], json!(["0x0", "0x0"]));
    assert_eq!(history["reward"], json!([["0x0"]]));
    // A second request does not write genesis again.
    rpc(&app, &mut ledger, "eth_blockNumber", json!([])).unwrap();
    assert_eq!(ledger.commits(), 1);
    // The development accounts derive from the published keys.
    for index in 0..DEV_KEYS.len() {
        assert_eq!(
            Account::dev(index).address_hex(),
            charter_evm::chain::DEV_ACCOUNTS[index].to_lowercase()
        );
    }
}

#[test]
fn value_transfer() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let fresh = Account::seeded(1);
    let raw = alice.sign(&tx(0, Some(fresh.address), 1_000, Vec::new(), 21_000));
    let hash = send(&app, &mut ledger, &raw).unwrap();
    assert_eq!(ledger.commits(), 2, "genesis, then one Charter transaction");
    assert_eq!(
        rpc(&app, &mut ledger, "eth_blockNumber", json!([])).unwrap(),
        "0x1"
    );
    assert_eq!(
        balance(&app, &mut ledger, &alice.address_hex()),
        U256::from(DEV_BALANCE_WEI - 1_000)
    );
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getTransactionCount",
            json!([alice.address_hex(), "pending"])
        )
        .unwrap(),
        "0x1"
    );
    let receipt = rpc(
        &app,
        &mut ledger,
        "eth_getTransactionReceipt",
        json!([hash]),
    )
    .unwrap();
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(receipt["gasUsed"], "0x5208");
    assert_eq!(receipt["blockNumber"], "0x1");
    assert_eq!(receipt["from"], alice.address_hex());
    assert_eq!(receipt["to"], fresh.address_hex());
    assert_eq!(receipt["contractAddress"], Value::Null);
    assert_eq!(receipt["charterTransactionId"], "1.2");
    let transaction = rpc(&app, &mut ledger, "eth_getTransactionByHash", json!([hash])).unwrap();
    assert_eq!(transaction["value"], "0x3e8");
    assert_eq!(transaction["type"], "0x2");
    assert_eq!(transaction["nonce"], "0x0");
    assert_eq!(transaction["blockHash"], receipt["blockHash"]);
    let block = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["latest", true]),
    )
    .unwrap();
    assert_eq!(block["transactions"][0]["hash"], hash);
    assert_eq!(block["gasUsed"], "0x5208");
    let genesis = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["earliest", false]),
    )
    .unwrap();
    assert_eq!(block["parentHash"], genesis["hash"]);

    // A legacy (EIP-155) transaction with a gas price pays for its gas.
    let raw = alice.sign(&legacy_tx(1, Some(fresh.address), 5, 2));
    let hash = send(&app, &mut ledger, &raw).unwrap();
    let transaction = rpc(&app, &mut ledger, "eth_getTransactionByHash", json!([hash])).unwrap();
    assert_eq!(transaction["type"], "0x0");
    let v = hex_u256(&transaction["v"]).to::<u64>();
    assert!(
        v == DEV_CHAIN_ID * 2 + 35 || v == DEV_CHAIN_ID * 2 + 36,
        "{v}"
    );
    assert_eq!(
        balance(&app, &mut ledger, &alice.address_hex()),
        U256::from(DEV_BALANCE_WEI - 1_000 - 5 - 21_000 * 2)
    );
}

#[test]
fn nonce_errors_and_duplicates() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let to = Some(Account::seeded(2).address);
    let first = alice.sign(&tx(0, to, 1, Vec::new(), 21_000));
    send(&app, &mut ledger, &first).unwrap();
    let commits = ledger.commits();
    // The same transaction again.
    let error = send(&app, &mut ledger, &first).unwrap_err();
    assert_eq!(error["code"], -32000);
    assert_eq!(error["message"], "already known");
    // A used nonce, and a nonce from the future (no mempool: refused, not queued).
    let low = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(0, to, 2, Vec::new(), 21_000)),
    )
    .unwrap_err();
    assert_eq!(low["code"], -32000);
    assert!(
        low["message"]
            .as_str()
            .unwrap()
            .starts_with("nonce too low"),
        "{low}"
    );
    let high = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(5, to, 2, Vec::new(), 21_000)),
    )
    .unwrap_err();
    assert!(
        high["message"]
            .as_str()
            .unwrap()
            .starts_with("nonce too high"),
        "{high}"
    );
    // Another chain's transaction.
    let mut other_chain = tx(1, to, 1, Vec::new(), 21_000);
    other_chain.chain_id = 1;
    let wrong = send(&app, &mut ledger, &alice.sign(&other_chain)).unwrap_err();
    assert!(
        wrong["message"].as_str().unwrap().contains("chain"),
        "{wrong}"
    );
    // Too little gas for the intrinsic cost.
    let starved = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(1, to, 1, Vec::new(), 20_000)),
    )
    .unwrap_err();
    assert_eq!(starved["code"], -32000);
    // Nothing refused was written.
    assert_eq!(ledger.commits(), commits);
    assert_eq!(
        rpc(&app, &mut ledger, "eth_blockNumber", json!([])).unwrap(),
        "0x1"
    );
}

#[test]
fn insufficient_funds() {
    let (app, mut ledger) = setup();
    let poor = Account::seeded(3);
    let to = Some(Account::dev(1).address);
    let error = send(
        &app,
        &mut ledger,
        &poor.sign(&tx(0, to, 1, Vec::new(), 21_000)),
    )
    .unwrap_err();
    assert_eq!(error["code"], -32000);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("insufficient funds"),
        "{error}"
    );
    let rich = Account::dev(0);
    let too_much = DEV_BALANCE_WEI + 1;
    let error = send(
        &app,
        &mut ledger,
        &rich.sign(&tx(0, to, too_much, Vec::new(), 21_000)),
    )
    .unwrap_err();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("insufficient funds"),
        "{error}"
    );
    // Gas at a price also counts.
    let pricey = rich.sign(&legacy_tx(0, to, DEV_BALANCE_WEI - 1_000, 1));
    let error = send(&app, &mut ledger, &pricey).unwrap_err();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("insufficient funds"),
        "{error}"
    );
    assert_eq!(ledger.commits(), 1, "only genesis");
}

#[test]
fn contract_deploy_call_and_logs() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let bob = Account::dev(1);
    let (deploy_hash, token) = deploy_token(&app, &mut ledger, &alice, 0);
    let token_hex = format!("0x{}", hex::encode(token));
    let code = rpc(
        &app,
        &mut ledger,
        "eth_getCode",
        json!([token_hex, "latest"]),
    )
    .unwrap();
    assert!(code.as_str().unwrap().len() > 100);
    assert_eq!(
        token_balance(&app, &mut ledger, &token, &alice.address),
        U256::from(1_000_000)
    );
    // Storage slot 2 is totalSupply.
    let supply = rpc(
        &app,
        &mut ledger,
        "eth_getStorageAt",
        json!([token_hex, "0x2", "latest"]),
    )
    .unwrap();
    assert_eq!(hex_u256(&supply), U256::from(1_000_000));

    let data = transfer_call(&bob.address, 250);
    let gas = rpc(
        &app,
        &mut ledger,
        "eth_estimateGas",
        json!([{"from": alice.address_hex(), "to": token_hex, "data": format!("0x{}", hex::encode(&data))}]),
    )
    .unwrap();
    let gas = hex_u256(&gas).to::<u64>();
    assert!((30_000..80_000).contains(&gas), "{gas}");
    // The estimate is enough.
    let hash = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(1, Some(token), 0, data, gas)),
    )
    .unwrap();
    let receipt = rpc(
        &app,
        &mut ledger,
        "eth_getTransactionReceipt",
        json!([hash]),
    )
    .unwrap();
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    assert_eq!(receipt["logs"][0]["topics"][0], TRANSFER_TOPIC);
    assert_eq!(receipt["logs"][0]["address"], token_hex);
    assert_eq!(hex_u256(&receipt["logs"][0]["data"]), U256::from(250));
    assert_ne!(receipt["logsBloom"], format!("0x{}", "0".repeat(512)));
    assert_eq!(
        token_balance(&app, &mut ledger, &token, &bob.address),
        U256::from(250)
    );
    assert_eq!(
        token_balance(&app, &mut ledger, &token, &alice.address),
        U256::from(999_750)
    );

    // Both Transfer events (mint and transfer) by topic and address.
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x0", "toBlock": "latest", "address": token_hex, "topics": [TRANSFER_TOPIC]}]),
    )
    .unwrap();
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["transactionHash"], deploy_hash);
    assert_eq!(logs[1]["transactionHash"], hash);
    // Filtered by the recipient topic: only the transfer to bob.
    let bob_topic = format!("0x{}{}", "0".repeat(24), hex::encode(bob.address));
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x0", "topics": [Value::Null, Value::Null, [bob_topic]]}]),
    )
    .unwrap();
    assert_eq!(logs.as_array().unwrap().len(), 1);
    // A range past the head holds nothing yet.
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x64"}]),
    )
    .unwrap();
    assert_eq!(logs, json!([]));
}

#[test]
fn reverts_carry_their_data() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let bob = Account::dev(1);
    let (_, token) = deploy_token(&app, &mut ledger, &alice, 0);
    let token_hex = format!("0x{}", hex::encode(token));
    // Bob has no tokens: transfer reverts with Error("balance too low").
    let data = format!("0x{}", hex::encode(transfer_call(&alice.address, 1)));
    let call = json!({"from": bob.address_hex(), "to": token_hex, "data": data});
    let error = rpc(&app, &mut ledger, "eth_call", json!([call, "latest"])).unwrap_err();
    assert_eq!(error["code"], 3);
    assert_eq!(error["message"], "execution reverted: balance too low");
    let data = error["data"].as_str().unwrap();
    assert!(data.starts_with("0x08c379a0"), "{data}");
    let error = rpc(&app, &mut ledger, "eth_estimateGas", json!([call])).unwrap_err();
    assert_eq!(error["code"], 3);
    // Sent as a transaction it is included, with status 0 and no logs.
    as_user(&mut ledger, BOB);
    let raw = bob.sign(&tx(
        0,
        Some(token),
        0,
        transfer_call(&alice.address, 1),
        100_000,
    ));
    let hash = send(&app, &mut ledger, &raw).unwrap();
    let receipt = rpc(
        &app,
        &mut ledger,
        "eth_getTransactionReceipt",
        json!([hash]),
    )
    .unwrap();
    assert_eq!(receipt["status"], "0x0");
    assert_eq!(receipt["logs"], json!([]));
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getTransactionCount",
            json!([bob.address_hex(), "latest"])
        )
        .unwrap(),
        "0x1"
    );
}

#[test]
fn confidentiality_between_users() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let bob_account = Account::dev(1);
    let carol = Account::seeded(9);
    // Before anyone sends from it, a funded account is bound to nobody: nobody sees it.
    assert_eq!(balance(&app, &mut ledger, &alice.address_hex()), U256::ZERO);
    let hash = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(0, Some(carol.address), 7, Vec::new(), 21_000)),
    )
    .unwrap();
    assert_eq!(
        balance(&app, &mut ledger, &alice.address_hex()),
        U256::from(DEV_BALANCE_WEI - 7)
    );
    let (deploy_hash, token) = deploy_token(&app, &mut ledger, &alice, 1);
    let transfer = alice.sign(&tx(
        2,
        Some(token),
        0,
        transfer_call(&bob_account.address, 40),
        100_000,
    ));
    let transfer_hash = send(&app, &mut ledger, &transfer).unwrap();

    // Bob's user sees none of alice's account, transactions or receipts.
    as_user(&mut ledger, BOB);
    assert_eq!(balance(&app, &mut ledger, &alice.address_hex()), U256::ZERO);
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getTransactionCount",
            json!([alice.address_hex(), "latest"])
        )
        .unwrap(),
        "0x0"
    );
    for method in ["eth_getTransactionByHash", "eth_getTransactionReceipt"] {
        for hash in [&hash, &deploy_hash, &transfer_hash] {
            assert_eq!(
                rpc(&app, &mut ledger, method, json!([hash])).unwrap(),
                Value::Null,
                "{method}"
            );
        }
    }
    // Blocks show their header but not alice's transaction.
    let block = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["0x1", true]),
    )
    .unwrap();
    assert_eq!(block["transactions"], json!([]));
    assert_eq!(block["gasUsed"], "0x0");
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockTransactionCountByNumber",
            json!(["0x1"])
        )
        .unwrap(),
        "0x0"
    );
    // eth_call cannot read alice's balance through BALANCE: init code `BALANCE(alice)` returned.
    let mut probe = vec![0x73];
    probe.extend_from_slice(alice.address.as_slice());
    probe.extend_from_slice(&[0x31, 0x60, 0x00, 0x52, 0x60, 0x20, 0x60, 0x00, 0xf3]);
    let probe_hex = format!("0x{}", hex::encode(&probe));
    let seen = rpc(
        &app,
        &mut ledger,
        "eth_call",
        json!([{"data": probe_hex}, "latest"]),
    )
    .unwrap();
    assert_eq!(hex_u256(&seen), U256::ZERO);
    // Contracts are public: bob reads the token's balances, code and storage.
    assert_eq!(
        token_balance(&app, &mut ledger, &token, &bob_account.address),
        U256::from(40)
    );
    // Logs: bob sees the transfer that names his address, not the mint to alice.
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x0"}]),
    )
    .unwrap();
    assert_eq!(
        logs.as_array().unwrap().len(),
        0,
        "bob is bound to no address yet"
    );
    let bob_first = bob_account.sign(&tx(0, Some(carol.address), 1, Vec::new(), 21_000));
    send(&app, &mut ledger, &bob_first).unwrap();
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x0"}]),
    )
    .unwrap();
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0]["transactionHash"], transfer_hash);
    // Bob cannot send from alice's account even holding its key.
    let stolen = alice.sign(&tx(3, Some(carol.address), 1, Vec::new(), 21_000));
    let error = send(&app, &mut ledger, &stolen).unwrap_err();
    assert_eq!(error["code"], -32000);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("bound to another user"),
        "{error}"
    );

    // Alice still sees all of hers, and the same call gives her her balance.
    as_user(&mut ledger, ALICE);
    let receipt = rpc(
        &app,
        &mut ledger,
        "eth_getTransactionReceipt",
        json!([transfer_hash]),
    )
    .unwrap();
    assert_eq!(receipt["status"], "0x1");
    let seen = rpc(
        &app,
        &mut ledger,
        "eth_call",
        json!([{"data": probe_hex}, "latest"]),
    )
    .unwrap();
    assert_eq!(
        hex_u256(&seen),
        balance(&app, &mut ledger, &alice.address_hex())
    );
    let logs = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"fromBlock": "0x0"}]),
    )
    .unwrap();
    assert_eq!(
        logs.as_array().unwrap().len(),
        2,
        "the mint and the transfer"
    );
}

#[test]
fn batches() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let to = Some(Account::seeded(4).address);
    let raws: Vec<String> = (0..3)
        .map(|nonce| {
            format!(
                "0x{}",
                hex::encode(alice.sign(&tx(nonce, to, 1, Vec::new(), 21_000)))
            )
        })
        .collect();
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [raws[0]]},
        {"jsonrpc": "2.0", "id": "two", "method": "eth_sendRawTransaction", "params": [raws[1]]},
        {"jsonrpc": "2.0", "method": "eth_sendRawTransaction", "params": [raws[2]]},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber"},
        {"jsonrpc": "2.0", "id": 5, "method": "eth_nope", "params": []},
        {"id": 6, "method": "eth_blockNumber"},
        17,
    ]);
    let Reply::Json(Value::Array(responses)) =
        raw_call(&app, &mut ledger, batch.to_string().as_bytes())
    else {
        panic!("a batch answers with an array");
    };
    // The notification (no id) has no response; everything else does, in order.
    assert_eq!(responses.len(), 6);
    assert_eq!(responses[0]["id"], 1);
    assert!(responses[0]["result"].as_str().unwrap().starts_with("0x"));
    assert_eq!(responses[1]["id"], "two");
    assert_eq!(
        responses[2]["result"], "0x3",
        "the notification was executed too"
    );
    assert_eq!(responses[3]["error"]["code"], -32601);
    assert_eq!(responses[4]["error"]["code"], -32600);
    assert_eq!(responses[5]["error"]["code"], -32600);
    assert_eq!(
        ledger.commits(),
        4,
        "genesis and one Charter transaction per Ethereum transaction"
    );
    // Empty and oversized batches.
    let Reply::Json(empty) = raw_call(&app, &mut ledger, b"[]") else {
        panic!()
    };
    assert_eq!(empty["error"]["code"], -32600);
    let many = Value::Array(vec![
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"});
        1_001
    ]);
    let Reply::Json(many) = raw_call(&app, &mut ledger, many.to_string().as_bytes()) else {
        panic!()
    };
    assert_eq!(many["error"]["code"], -32600);
    // Only notifications: nothing to answer.
    let quiet = json!([{"jsonrpc": "2.0", "method": "eth_chainId"}]);
    assert_eq!(
        raw_call(&app, &mut ledger, quiet.to_string().as_bytes()),
        Reply::Empty
    );
}

#[test]
fn malformed_requests() {
    let (app, mut ledger) = setup();
    for body in [&b"{"[..], b"", b"not json", b"\xff\xfe"] {
        let Reply::Json(response) = raw_call(&app, &mut ledger, body) else {
            panic!()
        };
        assert_eq!(response["error"]["code"], -32700, "{response}");
        assert_eq!(response["id"], Value::Null);
    }
    let Reply::Json(response) = raw_call(&app, &mut ledger, b"\"eth_chainId\"") else {
        panic!()
    };
    assert_eq!(response["error"]["code"], -32600);
    let Reply::Json(response) = raw_call(
        &app,
        &mut ledger,
        br#"{"jsonrpc": "1.0", "id": 1, "method": "eth_chainId"}"#,
    ) else {
        panic!()
    };
    assert_eq!(response["error"]["code"], -32600);
    let Reply::Json(response) = raw_call(
        &app,
        &mut ledger,
        br#"{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": {"a": 1}}"#,
    ) else {
        panic!()
    };
    assert_eq!(response["error"]["code"], -32602);
    // Bad parameters.
    let cases = [
        ("eth_getBalance", json!(["0x12", "latest"])),
        ("eth_getBalance", json!([])),
        (
            "eth_getBalance",
            json!([Account::dev(0).address_hex(), "nonsense"]),
        ),
        ("eth_getTransactionByHash", json!(["0x1234"])),
        ("eth_sendRawTransaction", json!(["0xzz"])),
        ("eth_sendRawTransaction", json!(["0xf86c0102"])),
        ("eth_sendRawTransaction", json!([format!("0x03{}", "c0")])),
        ("eth_call", json!(["not an object"])),
        ("eth_getLogs", json!([{"address": "0x1"}])),
        ("eth_getLogs", json!([{"topics": [1, 2, 3, 4, 5]}])),
        // EIP-1898: a block object names a hash or a number.
        (
            "eth_getBalance",
            json!([Account::dev(0).address_hex(), {"requireCanonical": true}]),
        ),
        ("eth_getBlockTransactionCountByNumber", json!([{}])),
    ];
    for (method, params) in cases {
        let error = rpc(&app, &mut ledger, method, params.clone()).unwrap_err();
        assert_eq!(error["code"], -32602, "{method} {params}: {error}");
    }
    // State of a past block is not kept.
    let alice = Account::dev(0);
    send(
        &app,
        &mut ledger,
        &alice.sign(&tx(
            0,
            Some(Account::seeded(5).address),
            1,
            Vec::new(),
            21_000,
        )),
    )
    .unwrap();
    let error = rpc(
        &app,
        &mut ledger,
        "eth_getBalance",
        json!([alice.address_hex(), "0x0"]),
    )
    .unwrap_err();
    assert_eq!(error["code"], -32000);
    // Unknown things are null, not errors.
    let unknown = format!("0x{}", "ab".repeat(32));
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getTransactionReceipt",
            json!([unknown])
        )
        .unwrap(),
        Value::Null
    );
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockByHash",
            json!([unknown, false])
        )
        .unwrap(),
        Value::Null
    );
}

#[test]
fn block_hashes_name_their_block() {
    let (app, mut ledger) = setup();
    let raw = Account::dev(0).sign(&tx(
        0,
        Some(Account::seeded(1).address),
        1,
        Vec::new(),
        21_000,
    ));
    send(&app, &mut ledger, &raw).unwrap();
    let block = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["0x1", false]),
    )
    .unwrap();
    let hash = block["hash"].as_str().unwrap().to_owned();
    assert!(hash.ends_with("0000000000000001"), "{hash}");
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockByHash",
            json!([hash, false])
        )
        .unwrap(),
        block
    );
    // The last 8 bytes name block 1, which exists, but the rest is not its hash.
    let flipped = if hash.as_bytes()[2] == b'0' { "1" } else { "0" };
    let forged = format!("0x{flipped}{}", &hash[3..]);
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockByHash",
            json!([forged, false])
        )
        .unwrap(),
        Value::Null
    );
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getBlockTransactionCountByHash",
            json!([forged])
        )
        .unwrap(),
        Value::Null
    );
    let error = rpc(
        &app,
        &mut ledger,
        "eth_getLogs",
        json!([{"blockHash": forged}]),
    )
    .unwrap_err();
    assert_eq!(error["message"], "unknown block");
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getLogs",
            json!([{"blockHash": hash}])
        )
        .unwrap(),
        json!([])
    );
    // No map from block hashes to numbers is written.
    assert!(!ledger
        .store()
        .map_names()
        .iter()
        .any(|name| name.contains("hash")));
}

#[test]
fn block_records_are_compact() {
    // An ether transfer as tooling sends it: EIP-1559 with fees, from a user whose ID is a
    // hex SHA-256 as Charter derives it.
    let user = "3f".repeat(32);
    let mut ledger = MemoryLedger::new(&user);
    let app = EthereumApp::dev();
    let mut transfer = tx(
        0,
        Some(Account::seeded(1).address),
        10u128.pow(18),
        Vec::new(),
        21_000,
    );
    transfer.max_fee_per_gas = 2_000_000_000;
    transfer.max_priority_fee_per_gas = 1_000_000_000;
    let raw = Account::dev(0).sign(&transfer);
    send(&app, &mut ledger, &raw).unwrap();
    let bytes = ledger
        .store()
        .get(charter_evm::chain::BLOCKS_MAP, &1u64.to_be_bytes())
        .unwrap()
        .to_vec();
    let record = charter_evm::record::decode_block(&bytes).unwrap();
    assert_eq!(record.transaction.as_ref().unwrap().user, user);
    let json = serde_json::to_vec(&record).unwrap();
    // The block's 99 bytes (its TxID as two numbers), then the transaction's 118 (its user ID
    // as 32 bytes) and the raw transaction.
    assert_eq!(bytes.len(), 99 + 118 + raw.len());
    assert!(
        bytes.len() * 2 < json.len(),
        "{} vs {}",
        bytes.len(),
        json.len()
    );
}

#[test]
fn followers_refuse_writes_but_answer_reads() {
    let (app, mut ledger) = setup();
    rpc(&app, &mut ledger, "eth_chainId", json!([])).unwrap();
    ledger.primary = false;
    let raw = Account::dev(0).sign(&tx(
        0,
        Some(Account::seeded(6).address),
        1,
        Vec::new(),
        21_000,
    ));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [format!("0x{}", hex::encode(raw))]});
    assert_eq!(
        raw_call(&app, &mut ledger, body.to_string().as_bytes()),
        Reply::Refused(charter_evm::WriteRefusal::NotPrimary)
    );
    let response =
        charter_evm::http_response(Reply::Refused(charter_evm::WriteRefusal::NotPrimary));
    assert_eq!(response.status, 503);
    assert_eq!(
        rpc(&app, &mut ledger, "eth_blockNumber", json!([])).unwrap(),
        "0x0"
    );
    assert_eq!(ledger.commits(), 1);
}

/// A chain from a genesis file, as the node's `evm_genesis` gives it: its chain ID, a funded
/// account that can send, and a contract with code and storage that calls read.
#[test]
fn genesis_file_chain() {
    let funded = Account::seeded(42);
    // Returns storage slot 0: PUSH1 0 SLOAD PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN.
    let code = "0x60005460005260206000f3";
    let contract = "0x00000000000000000000000000000000000c0de0";
    let genesis = format!(
        r#"{{"config": {{"chainId": 1337, "berlinBlock": 0}}, "timestamp": "0x6553f100",
            "alloc": {{"{}": {{"balance": "5000000000000000000"}},
                      "{contract}": {{"code": "{code}", "nonce": "0x1",
                                      "storage": {{"0x0": "0x2a"}}}}}}}}"#,
        funded.address_hex()
    );
    let config = charter_evm::chain::ChainConfig::from_genesis_json(genesis.as_bytes()).unwrap();
    let app = EthereumApp::new(config);
    let mut ledger = MemoryLedger::new(ALICE);
    assert_eq!(
        rpc(&app, &mut ledger, "eth_chainId", json!([])).unwrap(),
        "0x539"
    );
    let block = rpc(
        &app,
        &mut ledger,
        "eth_getBlockByNumber",
        json!(["0x0", false]),
    )
    .unwrap();
    assert_eq!(block["timestamp"], "0x6553f100");
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getCode",
            json!([contract, "latest"])
        )
        .unwrap(),
        code
    );
    assert_eq!(
        hex_u256(
            &rpc(
                &app,
                &mut ledger,
                "eth_getStorageAt",
                json!([contract, "0x0", "latest"])
            )
            .unwrap()
        ),
        U256::from(42)
    );
    assert_eq!(
        rpc(
            &app,
            &mut ledger,
            "eth_getTransactionCount",
            json!([contract, "latest"])
        )
        .unwrap(),
        "0x1"
    );
    let output = rpc(
        &app,
        &mut ledger,
        "eth_call",
        json!([{"to": contract}, "latest"]),
    )
    .unwrap();
    assert_eq!(hex_u256(&output), U256::from(42));
    // The development accounts are not funded on this chain.
    assert_eq!(
        balance(&app, &mut ledger, &Account::dev(0).address_hex()),
        U256::ZERO
    );
    // The funded account sends on chain 1337 (and not with a development-chain signature).
    let to = Account::seeded(43).address;
    let wrong_chain = funded.sign(&tx(0, Some(to), 1_000, Vec::new(), 21_000));
    let error = send(&app, &mut ledger, &wrong_chain).unwrap_err();
    assert!(
        error["message"].as_str().unwrap().contains("chain"),
        "{error}"
    );
    let mut unsigned = tx(0, Some(to), 1_000, Vec::new(), 21_000);
    unsigned.chain_id = 1337;
    send(&app, &mut ledger, &funded.sign(&unsigned)).unwrap();
    assert_eq!(
        balance(&app, &mut ledger, &funded.address_hex()),
        U256::from(5_000_000_000_000_000_000u128 - 1_000)
    );
}

/// Block timestamps follow the ledger's clock (the primary's, through the core) and never go
/// back; `TIMESTAMP` in a call sees the next block's.
#[test]
fn block_timestamps_follow_the_clock_and_never_go_back() {
    let (app, mut ledger) = setup();
    let alice = Account::dev(0);
    let to = Account::seeded(9).address;
    let timestamp_of = |ledger: &mut MemoryLedger, hash: &str| {
        let receipt = rpc(&app, ledger, "eth_getTransactionReceipt", json!([hash])).unwrap();
        let block = rpc(
            &app,
            ledger,
            "eth_getBlockByNumber",
            json!([receipt["blockNumber"], false]),
        )
        .unwrap();
        hex_u256(&block["timestamp"]).to::<u64>()
    };
    // Before the core has a clock (zero), blocks keep the genesis timestamp.
    let first = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(0, Some(to), 1, Vec::new(), 21_000)),
    )
    .unwrap();
    assert_eq!(
        timestamp_of(&mut ledger, &first),
        charter_evm::chain::DEV_GENESIS_TIMESTAMP
    );
    ledger.unix_time_s = 1_800_000_000;
    let second = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(1, Some(to), 1, Vec::new(), 21_000)),
    )
    .unwrap();
    assert_eq!(timestamp_of(&mut ledger, &second), 1_800_000_000);
    // A clock that goes back (a new primary's, say) does not take timestamps back.
    ledger.unix_time_s = 1_700_000_000;
    let third = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(2, Some(to), 1, Vec::new(), 21_000)),
    )
    .unwrap();
    assert_eq!(timestamp_of(&mut ledger, &third), 1_800_000_000);
    // TIMESTAMP in eth_call: PUSH the timestamp, store it, return 32 bytes (as init code).
    ledger.unix_time_s = 1_800_000_123;
    let output = rpc(
        &app,
        &mut ledger,
        "eth_call",
        json!([{"data": "0x4260005260206000f3"}, "latest"]),
    )
    .unwrap();
    assert_eq!(hex_u256(&output), U256::from(1_800_000_123u64));
    let fourth = send(
        &app,
        &mut ledger,
        &alice.sign(&tx(3, Some(to), 1, Vec::new(), 21_000)),
    )
    .unwrap();
    assert_eq!(timestamp_of(&mut ledger, &fourth), 1_800_000_123);
}

/// Senders recovered ahead of the core (as the host does on its connection threads) are used
/// once each, and the chain comes out exactly as without them.
#[test]
fn senders_recovered_ahead_give_the_same_chain() {
    let alice = Account::dev(0);
    let to = Account::seeded(5).address;
    let raws: Vec<Vec<u8>> = (0..4)
        .map(|nonce| alice.sign(&tx(nonce, Some(to), 7, Vec::new(), 21_000)))
        .collect();
    let body = |raw: &[u8]| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction",
               "params": [format!("0x{}", hex::encode(raw))]})
    };
    let mut chains = Vec::new();
    for prepared in [false, true] {
        let (app, mut ledger) = setup();
        ledger.unix_time_s = 1_800_000_000;
        let senders = app.senders();
        // One single request and one batch of three.
        let single = body(&raws[0]).to_string();
        let batch = Value::Array(raws[1..].iter().map(|raw| body(raw)).collect()).to_string();
        if prepared {
            assert_eq!(senders.prepare(single.as_bytes()), 1);
            assert_eq!(senders.prepare(batch.as_bytes()), 3);
            assert_eq!(senders.len(), 4);
        }
        raw_call(&app, &mut ledger, single.as_bytes());
        raw_call(&app, &mut ledger, batch.as_bytes());
        assert!(senders.is_empty(), "each sender is taken once");
        let blocks: Vec<Value> = (0..=4)
            .map(|number| {
                rpc(
                    &app,
                    &mut ledger,
                    "eth_getBlockByNumber",
                    json!([format!("{number:#x}"), true]),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(blocks[4]["transactions"][0]["from"], alice.address_hex());
        chains.push(blocks);
    }
    assert_eq!(chains[0], chains[1]);
}
