//! Hostile client requests against a node's core with every built-in application registered
//! (key-value, confidential ledger, Ethereum) and governance: whatever method, path, query,
//! headers, body and certificate a client sends, the core answers it with a status and, for an
//! error, a JSON error object, keeps working (a later well-formed write still commits) and never
//! panics.
//!
//! The host checks TLS, HTTP framing and the body size before a request reaches the core; these
//! tests start where the host stops, with requests it would hand over.

#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use charter_core::{Method, Request};
use charter_crypto::Certificate;
use harness::Harness;
use proptest::prelude::*;
use serde_json::Value;

/// Paths the node serves, with placeholders (`{}`) that the strategy fills, and a few it does
/// not.
const PATHS: &[&str] = &[
    "/app/kv/{}",
    "/app/kv",
    "/app/receipt",
    "/app/transactions",
    "/app/transactions/current",
    "/app/transactions/{}",
    "/app/transactions/{}/status",
    "/app/transactions/{}/receipt",
    "/app/transactions/{}/other",
    "/app/collections",
    "/app/users/{}",
    "/app/enclaveQuotes",
    "/app/governance/constitution",
    "/app/governance/members",
    "/app/ethereum",
    "/app/{}",
    "/node/commit",
    "/node/tx",
    "/node/state",
    "/node/network",
    "/node/network/nodes",
    "/node/consensus",
    "/node/metrics",
    "/node/version",
    "/node/quotes",
    "/node/quotes/self",
    "/node/join",
    "/node/{}",
    "/gov/service/info",
    "/gov/service/members",
    "/gov/service/users",
    "/gov/service/nodes",
    "/gov/service/constitution",
    "/gov/service/join-policy",
    "/gov/service/previous-identity",
    "/gov/members/proposals:create",
    "/gov/members/proposals/{}",
    "/gov/members/proposals/{}:withdraw",
    "/gov/members/proposals/{}/ballots/{}:submit",
    "/gov/members/state-digests/{}:update",
    "/gov/members/state-digests/{}:ack",
    "/gov/recovery/encrypted-shares/{}",
    "/gov/recovery/members/{}:recover",
    "/gov/{}",
    "/",
    "",
    "/app/kv/",
    "//app//kv",
];

/// Query parameter names the endpoints read, and one they do not.
const QUERY_NAMES: &[&str] = &[
    "transaction_id",
    "api-version",
    "prefix",
    "limit",
    "start_after",
    "readers",
    "public",
    "collectionId",
    "fromTransactionId",
    "toTransactionId",
    "after_seqno",
    "tags",
    "other",
];

/// Short strings that endpoints parse: TxIDs, numbers, IDs, booleans, and some that do not parse.
fn word() -> impl Strategy<Value = String> {
    let known = vec![
        "2.1",
        "2.3",
        "1.1",
        "0.0",
        "2.99999",
        "18446744073709551615.1",
        "2.",
        ".2",
        "a.b",
        "-1",
        "0",
        "1",
        "10",
        "1000000",
        "true",
        "false",
        "2024-12-01-preview",
        "0.1.0",
        "%00",
        "..",
        "💥",
        "",
    ];
    prop_oneof![
        3 => proptest::sample::select(known).prop_map(str::to_owned),
        2 => "[a-z0-9.:_-]{0,16}",
        1 => "[0-9a-f]{64}",
        1 => ".{0,24}",
    ]
}

/// A request body: JSON shaped like what the endpoints take, arbitrary JSON, or bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    let json = json_leaf.prop_recursive(3, 16, 4, |inner| {
        let names = proptest::sample::select(vec![
            "contents", "actions", "name", "args", "jsonrpc", "id", "method", "params", "ballot",
            "tags", "other",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(names, inner, 0..4).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    });
    prop_oneof![
        2 => json.prop_map(|value| value.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => Just(Vec::new()),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        4 => Just(Method::Get),
        2 => Just(Method::Put),
        2 => Just(Method::Post),
        1 => Just(Method::Delete),
        1 => Just(Method::Patch),
        1 => Just(Method::Other),
    ]
}

/// Who calls, mostly the service's users and member: 0 nobody, 1 user0, 2 user1, 3 the member,
/// 4 a stranger's certificate.
fn caller_index() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0), 3 => Just(1), 2 => Just(2), 2 => Just(3), 1 => Just(4)]
}

#[derive(Clone, Debug)]
struct Hostile {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    caller: usize,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let path = (
        proptest::sample::select(PATHS),
        prop::collection::vec(word(), 2),
    )
        .prop_map(|(template, fills)| {
            let mut path = template.to_owned();
            for fill in fills {
                path = path.replacen("{}", &fill, 1);
            }
            path
        });
    let query = prop::collection::vec(
        (
            proptest::sample::select(QUERY_NAMES).prop_map(str::to_owned),
            word(),
        ),
        0..4,
    );
    let headers = prop::collection::vec(
        (
            proptest::sample::select(vec![
                "content-type",
                "x-charter-read-consistency",
                "x-ms-client-request-id",
                "authorization",
            ])
            .prop_map(str::to_owned),
            prop_oneof![
                Just("application/json".to_owned()),
                Just("application/cose".to_owned()),
                Just("linearizable".to_owned()),
                word(),
            ],
        ),
        0..3,
    );
    (method(), path, query, headers, body(), caller_index()).prop_map(
        |(method, path, query, headers, body, caller)| Hostile {
            method,
            path,
            query,
            headers,
            body,
            caller,
        },
    )
}

fn all_apps() -> Harness {
    let mut apps = charter_apps::all();
    apps.push(Box::new(charter_evm::EthereumApp::dev()));
    Harness::with_apps(apps)
}

/// Sends `request` and returns its answer, giving the node a second of ticks if it defers it
/// (as `/node/commit?after_seqno=` does).
fn answer(harness: &mut Harness, request: Request) -> Option<charter_core::Response> {
    let id = harness.send(request);
    if let Some(response) = harness.take_response(id) {
        return Some(response);
    }
    for _ in 0..110 {
        harness.tick(10);
        if let Some(response) = harness.take_response(id) {
            return Some(response);
        }
    }
    None
}

/// Checks the shape of an answer: a status an HTTP client accepts and, for an error with a
/// body, a CCF-style JSON `{"error": {"code", "message"}}` object.
fn check_response(request: &Hostile, response: &charter_core::Response) {
    assert!(
        (100..600).contains(&response.status),
        "{request:?}: status {}",
        response.status
    );
    if response.status >= 400 && !response.body.is_empty() {
        let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|_| {
            panic!(
                "{request:?}: {} with a body that is not JSON: {:?}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )
        });
        let error = &body["error"];
        assert!(
            error["code"].is_string() || error["code"].is_i64(),
            "{request:?}: {} {body}",
            response.status
        );
        assert!(
            error["message"].is_string(),
            "{request:?}: {} {body}",
            response.status
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_hostile_request_is_answered_and_the_node_keeps_committing(
        requests in prop::collection::vec(hostile(), 1..40),
    ) {
        let mut harness = all_apps();
        let (_, stranger) = harness::cert(77, "stranger", false);
        let callers: [Option<Certificate>; 5] = [
            None,
            Some(harness.user.clone()),
            Some(harness.user1.clone()),
            Some(harness.member.clone()),
            Some(stranger),
        ];
        for hostile in &requests {
            let request = Request {
                method: hostile.method,
                path: hostile.path.clone(),
                query: hostile.query.clone(),
                headers: hostile.headers.clone(),
                body: hostile.body.clone(),
                caller_cert_der: callers[hostile.caller].as_ref().map(|cert| cert.der().to_vec()),
            };
            let response = answer(&mut harness, request);
            prop_assert!(response.is_some(), "{hostile:?}: no answer");
            if let Some(response) = response {
                check_response(hostile, &response);
            }
        }
        // The node still works: a write commits.
        let tx_id = harness.put("after-the-storm", b"still here");
        harness.tick(200);
        prop_assert_eq!(harness.status(tx_id), "Committed");
    }
}
