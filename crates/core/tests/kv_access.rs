//! Per-entry confidentiality in the key-value application: entries written with `?readers=`
//! exist only for their parties and the auditors governance names.

mod harness;

use charter_core::Method;
use charter_crypto::Certificate;
use harness::Harness;

fn pass(harness: &mut Harness, actions: serde_json::Value) {
    harness.pass(actions);
}

fn status_and_body(
    harness: &mut Harness,
    method: Method,
    key: &str,
    query: &[(&str, &str)],
    body: &[u8],
    caller: &Certificate,
) -> (u16, String) {
    let path = if key.is_empty() {
        "/app/kv".to_owned()
    } else {
        format!("/app/kv/{key}")
    };
    let response = harness.request(method, &path, query, body, Some(caller));
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

fn listed_keys(harness: &mut Harness, caller: &Certificate, limit: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", limit)];
        if let Some(after) = &after {
            query.push(("start_after", after.as_str()));
        }
        let (status, body) = status_and_body(harness, Method::Get, "", &query, b"", caller);
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        for entry in json["entries"].as_array().unwrap() {
            keys.push(entry["key"].as_str().unwrap().to_owned());
        }
        match json["next_start_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return keys,
        }
    }
}

#[test]
fn restricted_entries_exist_only_for_their_parties_and_auditors() {
    let mut harness = Harness::new();
    let alice = harness.user.clone();
    let bob = harness.user1.clone();
    let (_, carol) = harness::cert(41, "carol", false);
    let (_, audrey) = harness::cert(42, "audrey", false);
    pass(
        &mut harness,
        serde_json::json!([
            {"name": "set_user", "args": {"cert": carol.to_pem()}},
            {"name": "set_user", "args": {"cert": audrey.to_pem()}},
            {"name": "set_user_data", "args": {
                "user_id": audrey.fingerprint_hex(), "user_data": {"auditor": true}}},
        ]),
    );
    let bob_id = bob.fingerprint_hex();
    let alice_id = alice.fingerprint_hex();
    // Alice writes one entry for herself and Bob, Bob one for himself alone; one entry is open.
    let readers = [("readers", bob_id.as_str())];
    let put = status_and_body(&mut harness, Method::Put, "a-deal", &readers, b"42", &alice);
    assert_eq!(put.0, 200, "{}", put.1);
    let put = status_and_body(
        &mut harness,
        Method::Put,
        "b-note",
        &[("readers", "")],
        b"7",
        &bob,
    );
    assert_eq!(put.0, 200, "{}", put.1);
    let put = status_and_body(&mut harness, Method::Put, "c-open", &[], b"hello", &carol);
    assert_eq!(put.0, 200, "{}", put.1);
    harness.tick(150);

    let get = |harness: &mut Harness, key: &str, who: &Certificate| {
        status_and_body(harness, Method::Get, key, &[], b"", who)
    };
    assert_eq!(get(&mut harness, "a-deal", &alice), (200, "42".to_owned()));
    assert_eq!(get(&mut harness, "a-deal", &bob), (200, "42".to_owned()));
    assert_eq!(get(&mut harness, "b-note", &bob), (200, "7".to_owned()));
    // Carol sees neither, exactly as if they did not exist.
    let missing = get(&mut harness, "no-such-key", &carol);
    assert_eq!(missing.0, 404);
    assert_eq!(get(&mut harness, "a-deal", &carol), missing);
    assert_eq!(get(&mut harness, "b-note", &carol), missing);
    assert_eq!(get(&mut harness, "b-note", &alice), missing);
    // The auditor sees both.
    assert_eq!(get(&mut harness, "a-deal", &audrey), (200, "42".to_owned()));
    assert_eq!(get(&mut harness, "b-note", &audrey), (200, "7".to_owned()));
    // Lists skip what the caller may not read, across pages.
    for limit in ["1", "2", "100"] {
        assert_eq!(
            listed_keys(&mut harness, &carol, limit),
            ["c-open"],
            "limit {limit}"
        );
        assert_eq!(
            listed_keys(&mut harness, &alice, limit),
            ["a-deal", "c-open"]
        );
        assert_eq!(
            listed_keys(&mut harness, &bob, limit),
            ["a-deal", "b-note", "c-open"]
        );
        assert_eq!(
            listed_keys(&mut harness, &audrey, limit),
            ["a-deal", "b-note", "c-open"]
        );
    }
    let prefixed = status_and_body(
        &mut harness,
        Method::Get,
        "",
        &[("prefix", "b")],
        b"",
        &carol,
    );
    assert_eq!(prefixed.0, 200);
    assert!(!prefixed.1.contains("b-note"), "{}", prefixed.1);
    // Outsiders can neither overwrite nor delete; auditors do not write.
    let (status, body) = status_and_body(&mut harness, Method::Put, "a-deal", &[], b"x", &carol);
    assert_eq!(status, 403, "{body}");
    let (status, _) = status_and_body(&mut harness, Method::Delete, "a-deal", &[], b"", &carol);
    assert_eq!(status, 404);
    let (status, _) = status_and_body(&mut harness, Method::Put, "a-deal", &[], b"x", &audrey);
    assert_eq!(status, 403);
    // A party writes again without readers: the parties stay.
    let (status, _) = status_and_body(&mut harness, Method::Put, "a-deal", &[], b"43", &bob);
    assert_eq!(status, 200);
    harness.tick(150);
    assert_eq!(get(&mut harness, "a-deal", &alice), (200, "43".to_owned()));
    assert_eq!(get(&mut harness, "a-deal", &carol), missing);
    // Alice widens the entry to Carol.
    let readers = format!("{bob_id},{}", carol.fingerprint_hex());
    let (status, _) = status_and_body(
        &mut harness,
        Method::Put,
        "a-deal",
        &[("readers", &readers)],
        b"44",
        &alice,
    );
    assert_eq!(status, 200);
    harness.tick(150);
    assert_eq!(get(&mut harness, "a-deal", &carol), (200, "44".to_owned()));
    // Unknown readers and readers on public entries are refused.
    let (status, body) = status_and_body(
        &mut harness,
        Method::Put,
        "z",
        &[("readers", "abcd")],
        b"v",
        &alice,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("UnknownReader"), "{body}");
    let (status, _) = status_and_body(
        &mut harness,
        Method::Put,
        "z",
        &[("readers", &alice_id), ("public", "true")],
        b"v",
        &alice,
    );
    assert_eq!(status, 400);
    // A party deletes: the entry and its parties go.
    let (status, _) = status_and_body(&mut harness, Method::Delete, "b-note", &[], b"", &bob);
    assert_eq!(status, 200);
    harness.tick(150);
    assert_eq!(get(&mut harness, "b-note", &bob).0, 404);
    assert!(harness.node.store().get("kv.access", b"b-note").is_none());
    // Neither the values nor the parties appear in clear in the ledger.
    let needle = bob_id.as_bytes();
    for bytes in &harness.files {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle) || {
                // Bob's ID appears in clear only in governance records (the users table).
                let entry = charter_ledger::decode_entry(bytes).unwrap();
                !entry
                    .public
                    .windows(needle.len())
                    .any(|w| w == b"a-deal".as_slice())
            }
        );
        assert!(!bytes.windows(6).any(|w| w == b"a-deal"), "key in clear");
    }
}
