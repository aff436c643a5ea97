//! Disaster recovery: a new service recovers an old ledger's public state at once and its
//! private state once members' partial decryptions (checked, combined) restore the secrets.

mod harness;

use charter_core::{Method, Request, StartMode, TxStatus};
use charter_crypto::{
    cose_sign1, open_share, partial_decrypt, Certificate, CertificateSpec, DealtShare,
    LedgerSecret, RecoveryCiphertext, RecoveryKeyPair, SigningKey, Validity,
};
use charter_ledger::{LedgerSecrets, TxId};
use harness::Harness;
use rand_chacha::rand_core::SeedableRng;

fn pass(harness: &mut Harness, actions: serde_json::Value) {
    harness.pass(actions);
}

/// Sends member0's signed recovery share carrying `partial` (bytes); returns status and body.
fn submit(harness: &mut Harness, partial: &[u8], created_at: u64) -> (u16, String) {
    let member_id = harness.member.fingerprint_hex();
    let payload = serde_json::json!({"partial_decryption": hex::encode(partial)}).to_string();
    let body = cose_sign1(
        &harness.member_key,
        &member_id,
        "recovery_share",
        None,
        created_at,
        payload.as_bytes(),
    );
    let request = Request {
        method: Method::Post,
        path: format!("/gov/recovery/members/{member_id}:recover"),
        query: Vec::new(),
        headers: vec![("content-type".to_owned(), "application/cose".to_owned())],
        body,
        caller_cert_der: None,
    };
    let id = harness.send(request);
    let response = harness.take_response(id).unwrap();
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

fn get(harness: &mut Harness, path: &str) -> (u16, Vec<u8>) {
    let user = harness.user.clone();
    let response = harness.request(Method::Get, path, &[], b"", Some(&user));
    (response.status, response.body)
}

#[test]
fn a_new_service_recovers_public_state_then_private_state_with_a_members_share() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let recovery_key = RecoveryKeyPair::generate(&mut rng);
    let member_id = harness::cert(5, "member0", false).1.fingerprint_hex();
    let public_pem = recovery_key.public_key().to_pem();
    // The old service: a recovery member, private and public writes across a rekey.
    let mut old = Harness::new_with(|config| {
        config
            .genesis_recovery_keys
            .insert(member_id.clone(), public_pem.clone());
    });
    let shares = |harness: &Harness| -> serde_json::Value {
        serde_json::from_slice(
            harness
                .node
                .store()
                .get(
                    charter_core::RECOVERY_SHARES_MAP,
                    charter_core::RECOVERY_SHARES_KEY,
                )
                .expect("shares are dealt"),
        )
        .unwrap()
    };
    let genesis_deal = shares(&old);
    assert_eq!(genesis_deal["members"].as_object().unwrap().len(), 1);
    // A new recovery member: shares are dealt again, to both.
    let (_, member1) = harness::cert(31, "member1", false);
    let member1_key = RecoveryKeyPair::generate(&mut rng);
    pass(
        &mut old,
        serde_json::json!([{"name": "set_member", "args": {
            "cert": member1.to_pem(), "encryption_pub_key": member1_key.public_key().to_pem()}}]),
    );
    let second_deal = shares(&old);
    assert_eq!(second_deal["members"].as_object().unwrap().len(), 2);
    assert_ne!(second_deal["ciphertext"], genesis_deal["ciphertext"]);
    let before = old.put("before", b"private before the rekey");
    let user = old.user.clone();
    let response = old.request(
        Method::Put,
        "/app/kv/open",
        &[("public", "true")],
        b"public value",
        Some(&user),
    );
    assert_eq!(response.status, 200);
    pass(
        &mut old,
        serde_json::json!([{"name": "trigger_ledger_rekey", "args": {}}]),
    );
    // A rekey deals again for the new secret.
    let third_deal = shares(&old);
    assert_ne!(third_deal["ciphertext"], second_deal["ciphertext"]);
    assert!(third_deal["secret_start_seqno"].as_u64() > second_deal["secret_start_seqno"].as_u64());
    let after = old.put("after", b"private after the rekey");
    old.tick(200);
    assert_eq!(old.node.tx_status(after), TxStatus::Committed);
    let receipt_before = old.node.receipt(before).unwrap();

    // Every node is lost. A new node with a new service identity recovers the ledger.
    let (new_service_key, new_service) = harness::cert(21, "recovered service", true);
    let new_node_key = SigningKey::from_seed(&[22; 32]).unwrap();
    let validity = Validity {
        not_before_unix: 1_600_000_000,
        days: 3_650,
    };
    let spec = CertificateSpec {
        common_name: "node",
        is_ca: false,
        subject_alt_names: &[],
        validity,
    };
    let new_node_cert = Certificate::issue(
        &new_node_key.verifying_key(),
        &spec,
        &new_service_key,
        &new_service,
    )
    .unwrap();
    let mode = StartMode::Recover {
        entries: old.ledger.clone(),
        previous_service_cert: old.service.clone(),
        endorsement: None,
    };
    let configure = |config: &mut charter_core::NodeConfig| {
        config.node_key = new_node_key.clone();
        config.node_cert = new_node_cert.clone();
        config.service_cert = new_service.clone();
        config.ledger_secrets = LedgerSecrets::new(LedgerSecret::from_bytes([77; 32]));
        config.entropy = [9; 32];
    };
    let mut new = Harness::start_with(22, Some(mode), configure);
    new.service = new_service.clone();
    new.tick(1);
    new.tick(200);
    assert_eq!(
        format!("{:?}", new.node.service_status()),
        "Some(Recovering)"
    );
    // Public state is back at once; the service is closed to users.
    assert!(new.node.store().get("public:kv", b"open").is_some());
    assert!(new.node.store().get("kv", b"before").is_none());
    assert_eq!(get(&mut new, "/app/kv/before").0, 503);
    // Shares are refused until governance opens the recovered service.
    let share: serde_json::Value = {
        let response = new.request(
            Method::Get,
            &format!("/gov/recovery/shares/{member_id}"),
            &[],
            b"",
            None,
        );
        assert_eq!(response.status, 200);
        serde_json::from_slice(&response.body).unwrap()
    };
    let field = |name: &str| hex::decode(share[name].as_str().unwrap()).unwrap();
    let ciphertext = RecoveryCiphertext::from_bytes(&field("ciphertext")).unwrap();
    let dealt = DealtShare {
        index: share["index"].as_u64().unwrap() as u32,
        verification_key: field("verificationKey").try_into().unwrap(),
        encrypted_share: field("encryptedShare"),
    };
    let opened = open_share(&recovery_key, &ciphertext, &dealt).unwrap();
    let partial = partial_decrypt(&opened, &ciphertext, &mut rng).to_bytes();
    let (status, body) = submit(&mut new, &partial, 1_800_000_000);
    assert_eq!(status, 403, "{body}");
    pass(
        &mut new,
        serde_json::json!([{"name": "transition_service_to_open", "args": {}}]),
    );
    assert_eq!(
        format!("{:?}", new.node.service_status()),
        "Some(WaitingForRecoveryShares)"
    );
    // A corrupted partial decryption is refused and named.
    let mut corrupted = partial.clone();
    corrupted[40] ^= 1;
    let (status, body) = submit(&mut new, &corrupted, 1_800_000_001);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("InvalidRecoveryShare") && body.contains(&member_id),
        "{body}"
    );
    assert_eq!(
        format!("{:?}", new.node.service_status()),
        "Some(WaitingForRecoveryShares)"
    );
    // The right one opens the service with the whole private state.
    let (status, body) = submit(&mut new, &partial, 1_800_000_002);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("restored"), "{body}");
    new.tick(200);
    assert_eq!(format!("{:?}", new.node.service_status()), "Some(Open)");
    assert_eq!(
        get(&mut new, "/app/kv/before"),
        (200, b"private before the rekey".to_vec())
    );
    assert_eq!(
        get(&mut new, "/app/kv/after"),
        (200, b"private after the rekey".to_vec())
    );
    // The recovered service writes on, under its own secret, with new shares dealt.
    let later = new.put("later", b"written after the recovery");
    new.tick(200);
    assert_eq!(new.node.tx_status(later), TxStatus::Committed);
    assert!(later.view > after.view, "{later} after {after}");
    // Receipts: old transactions verify against the previous identity, new ones against the new.
    let old_receipt = new.node.receipt(before).unwrap();
    old_receipt.verify(&old.service).unwrap();
    assert_eq!(old_receipt.to_json(), receipt_before.to_json());
    new.node
        .receipt(later)
        .unwrap()
        .verify(&new_service)
        .unwrap();
    assert!(new
        .node
        .receipt(later)
        .unwrap()
        .verify(&old.service)
        .is_err());
    let status = new.request(Method::Get, "/gov/recovery/status", &[], b"", None);
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["privateStatePending"], false, "{status}");
    // A restart replays everything with the sealed secrets.
    new.restart();
    new.tick(200);
    assert_eq!(
        get(&mut new, "/app/kv/before"),
        (200, b"private before the rekey".to_vec())
    );
    assert_eq!(new.node.tx_status(later), TxStatus::Committed);
    let _: TxId = later;
}

#[test]
fn a_service_without_recovery_members_says_it_cannot_be_recovered() {
    let mut harness = Harness::new();
    let response = harness.request(Method::Get, "/gov/recovery/status", &[], b"", None);
    assert_eq!(response.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let problem = status["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("0 recovery member"), "{status}");
    assert!(harness
        .node
        .store()
        .get(
            charter_core::RECOVERY_SHARES_MAP,
            charter_core::RECOVERY_SHARES_KEY
        )
        .is_none());
}
