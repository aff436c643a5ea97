//! Drives a single node's core through genesis, writes, signatures, commit, receipts and restart,
//! playing the host's part in memory.

use charter_core::{
    Action, HardStateRecord, Input, LogEntry, Method, Node, NodeConfig, Request, RequestId,
    Restored, StartMode,
};
use charter_crypto::{Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity};
use charter_ledger::{Receipt, TxId};

const VALIDITY: Validity = Validity {
    not_before_unix: 1_700_000_000,
    days: 365,
};

struct Harness {
    node: Node,
    ledger: Vec<LogEntry>,
    hard_state: HardStateRecord,
    responses: Vec<(RequestId, charter_core::Response)>,
    now_ms: u64,
    next_id: u64,
    user: Certificate,
    member: Certificate,
    service: Certificate,
    config: NodeConfig,
}

fn cert(seed: u8, name: &str, ca: bool) -> (SigningKey, Certificate) {
    let key = SigningKey::from_seed(&[seed; 32]).unwrap();
    let spec = CertificateSpec {
        common_name: name,
        is_ca: ca,
        subject_alt_names: &[],
        validity: VALIDITY,
    };
    let cert = Certificate::self_signed(&key, &spec).unwrap();
    (key, cert)
}

impl Harness {
    fn new() -> Harness {
        let (service_key, service) = cert(1, "service", true);
        let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
        let spec = CertificateSpec {
            common_name: "node",
            is_ca: false,
            subject_alt_names: &[],
            validity: VALIDITY,
        };
        let node_cert =
            Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service).unwrap();
        let config = NodeConfig::new(
            node_key,
            node_cert,
            service.clone(),
            LedgerSecret::from_bytes([3; 32]),
        );
        let (_, user) = cert(4, "user0", false);
        let (_, member) = cert(5, "member0", false);
        let mut out = Vec::new();
        let mode = StartMode::Genesis {
            members: vec![member.clone()],
            users: vec![user.clone()],
        };
        let node = Node::new(config.clone(), mode, &mut out).unwrap();
        let mut harness = Harness {
            node,
            ledger: Vec::new(),
            hard_state: HardStateRecord::default(),
            responses: Vec::new(),
            now_ms: 1,
            next_id: 0,
            user,
            member,
            service,
            config,
        };
        harness.host(out);
        harness
    }

    /// Plays the host: applies actions, reports durability at once.
    fn host(&mut self, mut actions: Vec<Action>) {
        for _ in 0..100 {
            let mut sync = None;
            for action in actions.drain(..) {
                match action {
                    Action::Append { seqno, bytes } => {
                        assert_eq!(seqno, self.ledger.len() as u64 + 1);
                        let entry = charter_ledger::decode_entry(&bytes).unwrap();
                        let data = if entry.kind == charter_ledger::EntryKind::Noop {
                            Vec::new()
                        } else {
                            bytes.clone()
                        };
                        self.ledger.push(LogEntry {
                            view: entry.tx_id.view,
                            seqno,
                            data,
                        });
                    }
                    Action::Truncate { from_seqno } => {
                        self.ledger.truncate(from_seqno as usize - 1)
                    }
                    Action::SaveHardState(state) => self.hard_state = state,
                    Action::Sync { token } => sync = Some(token),
                    Action::Respond { id, response } => self.responses.push((id, response)),
                    Action::CloseChunk { .. } => {}
                }
            }
            match sync {
                Some(token) => self
                    .node
                    .step(Input::Durable { token }, &mut actions)
                    .unwrap(),
                None => return,
            }
        }
        panic!("host loop did not settle");
    }

    fn request(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: &[u8],
        caller: Option<&Certificate>,
    ) -> charter_core::Response {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let request = Request {
            method,
            path: path.to_owned(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            headers: Vec::new(),
            body: body.to_vec(),
            caller_cert_der: caller.map(|cert| cert.der().to_vec()),
        };
        let mut out = Vec::new();
        self.node
            .step(Input::Client { id, request }, &mut out)
            .unwrap();
        self.host(out);
        let index = self
            .responses
            .iter()
            .position(|(rid, _)| *rid == id)
            .unwrap();
        self.responses.remove(index).1
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let mut out = Vec::new();
        self.node
            .step(
                Input::Tick {
                    now_ms: self.now_ms,
                },
                &mut out,
            )
            .unwrap();
        self.host(out);
    }

    fn put(&mut self, key: &str, value: &[u8]) -> TxId {
        let user = self.user.clone();
        let response = self.request(
            Method::Put,
            &format!("/app/kv/{key}"),
            &[],
            value,
            Some(&user),
        );
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        json["transaction_id"].as_str().unwrap().parse().unwrap()
    }

    fn status(&mut self, tx_id: TxId) -> String {
        let response = self.request(
            Method::Get,
            "/node/tx",
            &[("transaction_id", &tx_id.to_string())],
            b"",
            None,
        );
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        json["status"].as_str().unwrap().to_owned()
    }
}

#[test]
fn write_commit_and_receipt() {
    let mut harness = Harness::new();
    let tx_id = harness.put("a", b"hello");
    assert_eq!(harness.status(tx_id), "Pending");
    harness.tick(150);
    assert_eq!(harness.status(tx_id), "Committed");
    let user = harness.user.clone();
    let response = harness.request(Method::Get, "/app/kv/a", &[], b"", Some(&user));
    assert_eq!(response.body, b"hello");
    let response = harness.request(
        Method::Get,
        "/app/receipt",
        &[("transaction_id", &tx_id.to_string())],
        b"",
        Some(&user),
    );
    assert_eq!(response.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    let receipt = Receipt::from_json(&json).unwrap();
    receipt.verify(&harness.service).unwrap();
    // A later, uncommitted write has no receipt yet.
    let pending = harness.put("b", b"x");
    let response = harness.request(
        Method::Get,
        "/app/receipt",
        &[("transaction_id", &pending.to_string())],
        b"",
        Some(&user),
    );
    assert_eq!(response.status, 202);
    // Unknown and invalid TxIDs.
    assert_eq!(harness.status(TxId::new(tx_id.view, 1000)), "Unknown");
    assert_eq!(harness.status(TxId::new(tx_id.view + 5, 2)), "Invalid");
}

#[test]
fn authentication_on_app() {
    let mut harness = Harness::new();
    let member = harness.member.clone();
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", None)
            .status,
        401
    );
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&member))
            .status,
        403
    );
    let (_, stranger) = cert(9, "stranger", false);
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&stranger))
            .status,
        401
    );
    assert_eq!(
        harness
            .request(Method::Get, "/node/commit", &[], b"", None)
            .status,
        200
    );
    assert_eq!(
        harness
            .request(
                Method::Get,
                "/node/tx",
                &[("transaction_id", "x")],
                b"",
                None
            )
            .status,
        400
    );
}

#[test]
fn restart_keeps_committed_writes_and_drops_unsigned_tail() {
    let mut harness = Harness::new();
    let committed = harness.put("a", b"1");
    harness.tick(150);
    assert_eq!(harness.status(committed), "Committed");
    let unsigned = harness.put("b", b"2");
    let restored = Restored {
        entries: harness.ledger.clone(),
        hard_state: harness.hard_state,
    };
    let mut out = Vec::new();
    let node = Node::new(
        harness.config.clone(),
        StartMode::Restart(restored),
        &mut out,
    )
    .unwrap();
    assert!(out.contains(&Action::Truncate {
        from_seqno: unsigned.seqno
    }));
    harness.node = node;
    harness.ledger.truncate(unsigned.seqno as usize - 1);
    harness.host(out);
    let user = harness.user.clone();
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/a", &[], b"", Some(&user))
            .body,
        b"1"
    );
    assert_eq!(
        harness
            .request(Method::Get, "/app/kv/b", &[], b"", Some(&user))
            .status,
        404
    );
    let next = harness.put("c", b"3");
    assert!(next.view > committed.view && next.seqno > committed.seqno);
    assert_eq!(harness.status(committed), "Committed");
    harness.tick(150);
    assert_eq!(harness.status(next), "Committed");
}
