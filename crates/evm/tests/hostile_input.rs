//! Hostile input: whatever bytes a client sends, the adapter answers with a JSON-RPC result or
//! error object and never panics (a panic on the core thread would stop the node).
//!
//! Property tests drive the public entry points with arbitrary and mutated input: raw
//! transactions straight into the decoder, and JSON-RPC requests of every method with generated
//! parameters into the server, over a ledger that holds a deployed ERC-20 token, so that the
//! state, block, log and call paths all see real data.

mod common;

use alloy_primitives::Address;
use charter_evm::rpc::Reply;
use charter_evm::transaction::decode_signed;
use charter_evm::{EthereumApp, MemoryLedger};
use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Every method the adapter serves, and a few it does not.
const METHODS: &[&str] = &[
    "web3_clientVersion",
    "web3_sha3",
    "net_version",
    "net_listening",
    "net_peerCount",
    "eth_chainId",
    "eth_blockNumber",
    "eth_syncing",
    "eth_mining",
    "eth_hashrate",
    "eth_accounts",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_blobBaseFee",
    "eth_feeHistory",
    "eth_getBalance",
    "eth_getTransactionCount",
    "eth_getCode",
    "eth_getStorageAt",
    "eth_call",
    "eth_estimateGas",
    "eth_sendRawTransaction",
    "eth_getTransactionByHash",
    "eth_getTransactionReceipt",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
    "eth_getBlockTransactionCountByNumber",
    "eth_getBlockTransactionCountByHash",
    "eth_getTransactionByBlockNumberAndIndex",
    "eth_getLogs",
    "eth_sendTransaction",
    "debug_traceTransaction",
    "",
];

/// A ledger with the development chain, a deployed token and two transfers in it, and the
/// token's address.
fn populated() -> (EthereumApp, MemoryLedger, Address) {
    let app = EthereumApp::dev();
    let mut ledger = MemoryLedger::new("aa11");
    let owner = Account::dev(0);
    let raw = owner.sign(&tx(0, None, 0, token_init_code(1_000_000), 2_000_000));
    let hash = send(&app, &mut ledger, &raw).expect("deploy");
    let receipt = rpc(
        &app,
        &mut ledger,
        "eth_getTransactionReceipt",
        json!([hash]),
    )
    .expect("deploy receipt");
    let token: Address = receipt["contractAddress"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("contract address");
    let to = Account::dev(1).address;
    let call = transfer_call(&to, 5);
    send(
        &app,
        &mut ledger,
        &owner.sign(&tx(1, Some(token), 0, call, 100_000)),
    )
    .expect("transfer");
    send(
        &app,
        &mut ledger,
        &owner.sign(&tx(2, Some(to), 7, Vec::new(), 21_000)),
    )
    .expect("ether");
    (app, ledger, token)
}

thread_local! {
    /// One populated ledger per test thread; each case forks it.
    static POPULATED: (EthereumApp, MemoryLedger, Address) = populated();
}

/// Runs `body` on a fork of the populated ledger.
fn with_populated<T>(body: impl FnOnce(&EthereumApp, &mut MemoryLedger, Address) -> T) -> T {
    POPULATED.with(|(app, ledger, token)| body(app, &mut ledger.clone(), *token))
}

/// Addresses: funded development accounts, the token, anything.
fn address(token: Address) -> impl Strategy<Value = String> {
    let known = vec![
        Account::dev(0).address_hex(),
        Account::dev(1).address_hex(),
        format!("0x{}", hex::encode(token)),
    ];
    prop_oneof![3 => proptest::sample::select(known), 1 => "0x[0-9a-fA-F]{40}"]
}

/// Block parameters: tags, the blocks the ledger holds, blocks past the head, and numbers too
/// large for a block number.
fn block() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "latest",
        "earliest",
        "pending",
        "safe",
        "finalized",
        "0x0",
        "0x1",
        "0x2",
        "0x3",
        "0x4",
        "0xffffffffffffffff",
        "0x10000000000000000",
    ])
    .prop_map(str::to_owned)
}

/// Strings that look like what JSON-RPC parameters hold, and some that do not.
fn text(token: Address) -> impl Strategy<Value = String> {
    let odd = vec![
        "0x".to_owned(),
        format!("0x{}", "f".repeat(65)),
        "0x0x12".to_owned(),
        "-0x1".to_owned(),
        "0X1".to_owned(),
        " 0x1".to_owned(),
    ];
    prop_oneof![
        3 => address(token),
        3 => block(),
        3 => "0x[0-9a-fA-F]{0,80}",
        1 => "0x[0-9a-f]{64}",
        1 => proptest::sample::select(odd),
        1 => ".{0,12}",
    ]
}

/// Field names of call objects, log filters and EIP-1898 block objects, and one that is none.
const FIELDS: &[&str] = &[
    "from",
    "to",
    "gas",
    "gasPrice",
    "maxFeePerGas",
    "maxPriorityFeePerGas",
    "value",
    "data",
    "input",
    "nonce",
    "fromBlock",
    "toBlock",
    "address",
    "topics",
    "blockHash",
    "blockNumber",
    "other",
];

/// JSON values up to a few levels deep, with the field names call objects and log filters use.
fn value(token: Address) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        text(token).prop_map(Value::String),
    ];
    let names = proptest::sample::select(FIELDS);
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(names.clone(), inner, 0..6).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Parameters: mostly strings and call objects or filters of strings, as tools send them, so
/// that requests get past parameter checks into the state, block and EVM paths; sometimes
/// anything.
fn param(token: Address) -> impl Strategy<Value = Value> {
    let field = proptest::sample::select(FIELDS);
    prop_oneof![
        4 => text(token).prop_map(Value::String),
        2 => prop::collection::btree_map(field, text(token), 0..5).prop_map(|fields| {
            Value::Object(
                fields.into_iter().map(|(k, v)| (k.to_owned(), Value::String(v))).collect(),
            )
        }),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop::collection::vec(text(token).prop_map(Value::String), 0..5)
            .prop_map(Value::Array),
        2 => value(token),
    ]
}

/// Checks that `response` is a JSON-RPC 2.0 response to `id`: a result or an error object with
/// an integer code and a message.
fn assert_response(response: &Value, id: &Value) {
    assert_eq!(response["jsonrpc"], "2.0", "{response}");
    assert_eq!(&response["id"], id, "{response}");
    match response.get("error") {
        Some(error) => {
            assert!(error["code"].is_i64(), "{response}");
            assert!(error["message"].is_string(), "{response}");
            assert!(response.get("result").is_none(), "{response}");
        }
        None => assert!(response.get("result").is_some(), "{response}"),
    }
}

/// A valid signed transfer to mutate.
fn valid_raw() -> Vec<u8> {
    Account::dev(0).sign(&tx(
        3,
        Some(Account::dev(2).address),
        1,
        vec![1, 2, 3],
        50_000,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(raw in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_signed(&raw);
    }

    #[test]
    fn a_mutated_transaction_never_decodes_as_sent_by_its_signer(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let original = valid_raw();
        let mut raw = original.clone();
        for (at, byte) in flips {
            let at = at.index(raw.len());
            raw[at] ^= byte | 1;
        }
        if truncate {
            raw.truncate(cut.index(raw.len()));
        }
        prop_assume!(raw != original);
        // Whatever still decodes recovers some other sender: the signature binds every byte.
        if let Ok(decoded) = decode_signed(&raw) {
            prop_assert_ne!(decoded.sender, Account::dev(0).address);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn every_method_answers_any_parameters_with_a_response(
        method in proptest::sample::select(METHODS),
        params in prop_oneof![
            // The common shape: an address, hash or call object, then a block.
            (
                prop_oneof![
                    address(Address::repeat_byte(0x42)).prop_map(Value::String),
                    param(Address::repeat_byte(0x42)),
                ],
                block(),
            )
                .prop_map(|(first, block)| vec![first, Value::String(block)]),
            prop::collection::vec(param(Address::repeat_byte(0x42)), 0..4),
        ],
        caller in proptest::sample::select(vec!["aa11", "bb22"]),
    ) {
        let outcome = with_populated(|app, ledger, token| {
            // The generated addresses name a stand-in; point them at the token for real.
            let params = Value::Array(params)
                .to_string()
                .replace(&hex::encode(Address::repeat_byte(0x42)), &hex::encode(token));
            let params: Value = serde_json::from_str(&params).expect("re-parse");
            ledger.caller = caller.to_owned();
            let body = json!({"jsonrpc": "2.0", "id": 99, "method": method, "params": params});
            let reply = app.serve(ledger, body.to_string().as_bytes());
            (body, reply)
        });
        match outcome {
            (_, Ok(Reply::Json(response))) => assert_response(&response, &json!(99)),
            (body, other) => prop_assert!(false, "{body}: {other:?}"),
        }
    }

    #[test]
    fn batches_of_anything_answer_each_call(
        calls in prop::collection::vec(value(Address::repeat_byte(0x42)), 1..6),
    ) {
        let body = Value::Array(calls).to_string();
        match with_populated(|app, ledger, _| app.serve(ledger, body.as_bytes())) {
            Ok(Reply::Json(Value::Array(responses))) => {
                prop_assert!(!responses.is_empty());
                for response in &responses {
                    prop_assert_eq!(&response["jsonrpc"], "2.0");
                }
            }
            Ok(Reply::Json(response)) => prop_assert!(response.get("error").is_some(), "{response}"),
            Ok(Reply::Empty) => {}
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn arbitrary_bodies_are_refused_as_parse_or_request_errors(
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        match with_populated(|app, ledger, _| app.serve(ledger, &body)) {
            Ok(Reply::Json(_)) | Ok(Reply::Empty) => {}
            other => prop_assert!(false, "{other:?}"),
        }
    }
}
