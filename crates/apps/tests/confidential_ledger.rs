//! The confidential-ledger application driven through the core's public API, as the host drives
//! it: requests in, responses and ledger writes out, historical entries read back from the
//! in-memory ledger.

#[path = "../../core/tests/harness/mod.rs"]
mod harness;

use base64::Engine;
use charter_apps::confidential_ledger::{
    ledger_entry_claims_digest, CONTENTS_BYTES_MAX, LIST_PAGE_ENTRIES_MAX,
};
use charter_core::Method;
use charter_crypto::Certificate;
use charter_ledger::Receipt;
use harness::Harness;
use serde_json::{json, Value};

struct Answer {
    status: u16,
    body: Value,
    tx_header: Option<String>,
}

fn call(
    harness: &mut Harness,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    caller: &Certificate,
) -> Answer {
    let mut query = query.to_vec();
    query.push(("api-version", "2022-05-13"));
    let response = harness.request(method, path, &query, body, Some(caller));
    let tx_header = response
        .headers
        .iter()
        .find(|(name, _)| name == "x-ms-ccf-transaction-id")
        .map(|(_, value)| value.clone());
    let body = if response.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&response.body).unwrap()
    };
    Answer {
        status: response.status,
        body,
        tx_header,
    }
}

fn admin(harness: &Harness) -> Certificate {
    harness.user.clone()
}

fn create(harness: &mut Harness, collection: Option<&str>, contents: &str) -> String {
    let query: Vec<(&str, &str)> = collection
        .map(|c| ("collectionId", c))
        .into_iter()
        .collect();
    let user = admin(harness);
    let body = json!({ "contents": contents }).to_string();
    let answer = call(
        harness,
        Method::Post,
        "/app/transactions",
        &query,
        body.as_bytes(),
        &user,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let tx_id = answer.body["transactionId"].as_str().unwrap().to_owned();
    assert_eq!(answer.tx_header.as_deref(), Some(tx_id.as_str()));
    assert_eq!(
        answer.body["collectionId"],
        collection.unwrap_or("subledger:0")
    );
    tx_id
}

/// Asks until the state is Ready (the harness answers reads at once, so twice is enough).
fn get_ready(harness: &mut Harness, path: &str, query: &[(&str, &str)]) -> Value {
    let user = admin(harness);
    for _ in 0..3 {
        let answer = call(harness, Method::Get, path, query, b"", &user);
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        if answer.body["state"] == "Ready" {
            return answer.body;
        }
        assert_eq!(answer.body["state"], "Loading", "{}", answer.body);
    }
    panic!("{path} never became Ready");
}

#[test]
fn entries_are_written_read_back_and_listed() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let first = create(&mut harness, None, "hello");
    let second = create(&mut harness, Some("other"), "in other");
    let third = create(&mut harness, None, "again");

    let user = admin(&harness);
    let status = call(
        &mut harness,
        Method::Get,
        &format!("/app/transactions/{first}/status"),
        &[],
        b"",
        &user,
    );
    assert_eq!(status.body["state"], "Pending");
    // An uncommitted entry is not read back yet.
    let pending = call(
        &mut harness,
        Method::Get,
        &format!("/app/transactions/{first}"),
        &[],
        b"",
        &user,
    );
    assert_eq!(pending.body["state"], "Loading");

    harness.tick(150);
    let status = call(
        &mut harness,
        Method::Get,
        &format!("/app/transactions/{first}/status"),
        &[],
        b"",
        &user,
    );
    assert_eq!(
        status.body,
        json!({"state": "Committed", "transactionId": first})
    );

    let entry = get_ready(&mut harness, &format!("/app/transactions/{first}"), &[]);
    assert_eq!(
        entry["entry"],
        json!({"contents": "hello", "collectionId": "subledger:0", "transactionId": first})
    );
    let entry = get_ready(
        &mut harness,
        &format!("/app/transactions/{second}"),
        &[("collectionId", "other")],
    );
    assert_eq!(entry["entry"]["contents"], "in other");
    // The entry is not in the default collection.
    let wrong = call(
        &mut harness,
        Method::Get,
        &format!("/app/transactions/{second}"),
        &[],
        b"",
        &user,
    );
    assert_eq!(wrong.status, 404);

    let current = call(
        &mut harness,
        Method::Get,
        "/app/transactions/current",
        &[],
        b"",
        &user,
    );
    assert_eq!(
        current.body,
        json!({"contents": "again", "collectionId": "subledger:0", "transactionId": third})
    );

    let listed = get_ready(&mut harness, "/app/transactions", &[]);
    let contents: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["contents"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["hello", "again"]);
    assert!(listed.get("nextLink").is_none());
    let listed = get_ready(
        &mut harness,
        "/app/transactions",
        &[("fromTransactionId", &third), ("toTransactionId", &third)],
    );
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1);

    let collections = call(
        &mut harness,
        Method::Get,
        "/app/collections",
        &[],
        b"",
        &user,
    );
    assert_eq!(
        collections.body,
        json!({"collections": [{"collectionId": "other"}, {"collectionId": "subledger:0"}]})
    );
}

#[test]
fn listing_pages_follow_next_link() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let total = LIST_PAGE_ENTRIES_MAX + 5;
    for index in 0..total {
        create(&mut harness, Some("paged"), &format!("entry {index}"));
    }
    create(&mut harness, None, "elsewhere");
    harness.tick(150);
    let mut seen = Vec::new();
    let mut query: Vec<(String, String)> = vec![("collectionId".into(), "paged".into())];
    for _ in 0..10 {
        let borrowed: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let page = get_ready(&mut harness, "/app/transactions", &borrowed);
        for entry in page["entries"].as_array().unwrap() {
            assert_eq!(entry["collectionId"], "paged");
            seen.push(entry["contents"].as_str().unwrap().to_owned());
        }
        let Some(link) = page["nextLink"].as_str() else {
            break;
        };
        assert_eq!(page["@nextLink"], page["nextLink"]);
        let (_, params) = link.split_once('?').unwrap();
        query = params
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (k.to_owned(), v.replace("%3A", ":"))
            })
            .collect();
    }
    let expected: Vec<String> = (0..total).map(|index| format!("entry {index}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn receipts_carry_the_entry_claims() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let tx_id = create(&mut harness, Some("claims"), "proven");
    let user = admin(&harness);
    let early = call(
        &mut harness,
        Method::Get,
        &format!("/app/transactions/{tx_id}/receipt"),
        &[],
        b"",
        &user,
    );
    assert_eq!(early.body["state"], "Loading");
    harness.tick(150);
    let body = get_ready(
        &mut harness,
        &format!("/app/transactions/{tx_id}/receipt"),
        &[],
    );
    assert_eq!(body["transactionId"], tx_id.as_str());
    let receipt = Receipt::from_json(&body["receipt"]).unwrap();
    receipt.verify(&harness.service).unwrap();
    let claims = &body["applicationClaims"];
    assert_eq!(claims[0]["kind"], "LedgerEntry");
    let entry = &claims[0]["ledgerEntry"];
    assert_eq!(entry["protocol"], "LedgerEntryV1");
    assert_eq!(entry["collectionId"], "claims");
    assert_eq!(entry["contents"], "proven");
    let key = base64::engine::general_purpose::STANDARD
        .decode(entry["secretKey"].as_str().unwrap())
        .unwrap();
    let digest = ledger_entry_claims_digest(&key, "claims", "proven");
    assert_eq!(receipt.leaf_components.claims_digest, hex::encode(digest));

    // Another entry gets another secret key.
    let other = create(&mut harness, Some("claims"), "proven");
    harness.tick(150);
    let body = get_ready(
        &mut harness,
        &format!("/app/transactions/{other}/receipt"),
        &[],
    );
    assert_ne!(
        body["applicationClaims"][0]["ledgerEntry"]["secretKey"],
        entry["secretKey"]
    );
}

#[test]
fn limits_are_enforced_and_nothing_is_written() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let user = admin(&harness);
    let before = harness.node.last_tx_id();
    let big = json!({ "contents": "x".repeat(CONTENTS_BYTES_MAX + 1) }).to_string();
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[],
        big.as_bytes(),
        &user,
    );
    assert_eq!(answer.status, 413);
    assert!(answer.body["error"]["code"].is_string());
    let long = "c".repeat(257);
    let body = json!({"contents": "x"}).to_string();
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[("collectionId", &long)],
        body.as_bytes(),
        &user,
    );
    assert_eq!(answer.status, 400);
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[],
        b"{",
        &user,
    );
    assert_eq!(answer.status, 400);
    let answer = call(
        &mut harness,
        Method::Get,
        "/app/transactions/nonsense",
        &[],
        b"",
        &user,
    );
    assert_eq!(answer.status, 400);
    assert_eq!(harness.node.last_tx_id(), before);
    // Exactly at the limits is fine.
    let at_limit = json!({ "contents": "x".repeat(CONTENTS_BYTES_MAX) }).to_string();
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[("collectionId", &"c".repeat(256))],
        at_limit.as_bytes(),
        &user,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[test]
fn roles_are_enforced() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let admin_cert = admin(&harness);
    let contributor = harness.user1.clone();
    let contributor_id = contributor.fingerprint_hex();
    let admin_id = admin_cert.fingerprint_hex();
    let entry = json!({"contents": "x"}).to_string();

    // The governance role applies until one is assigned.
    let answer = call(
        &mut harness,
        Method::Get,
        &format!("/app/users/{contributor_id}"),
        &[],
        b"",
        &admin_cert,
    );
    assert_eq!(
        answer.body,
        json!({"assignedRole": "Contributor", "userId": contributor_id})
    );
    // A Contributor writes but does not manage users.
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[],
        entry.as_bytes(),
        &contributor,
    );
    assert_eq!(answer.status, 200);
    let answer = call(
        &mut harness,
        Method::Get,
        &format!("/app/users/{admin_id}"),
        &[],
        b"",
        &contributor,
    );
    assert_eq!(answer.status, 403);

    // Made a Reader, the user reads but does not write.
    let patch = json!({"assignedRole": "Reader"}).to_string();
    let answer = call(
        &mut harness,
        Method::Patch,
        &format!("/app/users/{contributor_id}"),
        &[],
        patch.as_bytes(),
        &admin_cert,
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["assignedRole"], "Reader");
    let answer = call(
        &mut harness,
        Method::Post,
        "/app/transactions",
        &[],
        entry.as_bytes(),
        &contributor,
    );
    assert_eq!(answer.status, 403);
    let answer = call(
        &mut harness,
        Method::Get,
        "/app/collections",
        &[],
        b"",
        &contributor,
    );
    assert_eq!(answer.status, 200);

    // Deleted, the user has no role at all, even though governance gave one.
    let answer = call(
        &mut harness,
        Method::Delete,
        &format!("/app/users/{contributor_id}"),
        &[],
        b"",
        &admin_cert,
    );
    assert_eq!(answer.status, 204);
    let answer = call(
        &mut harness,
        Method::Get,
        "/app/collections",
        &[],
        b"",
        &contributor,
    );
    assert_eq!(answer.status, 403);
    let answer = call(
        &mut harness,
        Method::Get,
        &format!("/app/users/{contributor_id}"),
        &[],
        b"",
        &admin_cert,
    );
    assert_eq!(answer.status, 404);

    // A role for an identity governance has not added yet is kept for later.
    let future = "ab".repeat(32);
    let answer = call(
        &mut harness,
        Method::Patch,
        &format!("/app/users/{future}"),
        &[],
        json!({"assignedRole": "Contributor"})
            .to_string()
            .as_bytes(),
        &admin_cert,
    );
    assert_eq!(answer.status, 200);
    let answer = call(
        &mut harness,
        Method::Patch,
        &format!("/app/users/{future}"),
        &[],
        json!({"assignedRole": "Owner"}).to_string().as_bytes(),
        &admin_cert,
    );
    assert_eq!(answer.status, 400);

    // Unknown certificates never reach the app.
    let (_, stranger) = harness::cert(9, "stranger", false);
    let answer = call(
        &mut harness,
        Method::Get,
        "/app/collections",
        &[],
        b"",
        &stranger,
    );
    assert_eq!(answer.status, 401);
}

#[test]
fn service_views() {
    let mut harness = Harness::with_apps(charter_apps::all());
    let user = admin(&harness);
    let quotes = call(
        &mut harness,
        Method::Get,
        "/app/enclaveQuotes",
        &[],
        b"",
        &user,
    );
    assert_eq!(quotes.status, 200);
    let current = quotes.body["currentNodeId"].as_str().unwrap().to_owned();
    assert!(!current.is_empty());
    assert_eq!(
        quotes.body["enclaveQuotes"][&current]["nodeId"],
        current.as_str()
    );
    assert!(quotes.body["enclaveQuotes"][&current]["raw"].is_string());

    let constitution = call(
        &mut harness,
        Method::Get,
        "/app/governance/constitution",
        &[],
        b"",
        &user,
    );
    let script = constitution.body["script"].as_str().unwrap();
    assert_eq!(
        constitution.body["digest"],
        hex::encode(charter_crypto::sha256(script.as_bytes()))
    );

    let members = call(
        &mut harness,
        Method::Get,
        "/app/governance/members",
        &[],
        b"",
        &user,
    );
    assert_eq!(
        members.body["members"],
        json!([{"certificate": harness.member.to_pem(), "id": harness.member.fingerprint_hex()}])
    );
    let wrong = call(
        &mut harness,
        Method::Delete,
        "/app/collections",
        &[],
        b"",
        &user,
    );
    assert_eq!(wrong.status, 405);
    // Paths that are not the app's still reach the others (the kv app is the core's).
    let missing = call(&mut harness, Method::Get, "/app/nothing", &[], b"", &user);
    assert_eq!(missing.status, 404);
}
