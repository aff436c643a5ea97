//! The opened network every seed starts from: built once per process, as the core's cluster test
//! builds one (a genesis node, members acknowledging, two joiners admitted by attestation and a
//! governance vote), with immediate delivery and durability.

use std::sync::OnceLock;

use charter_core::{Input, Method, NodeConfig, Request, RequestId, StartMode};
use charter_crypto::{
    cose_sign1, Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity,
};

use crate::host::{Disk, SimNode};

const VALIDITY: Validity = Validity {
    not_before_unix: 1_700_000_000,
    days: 365,
};
/// The wall clock at simulated time zero (governance requests are signed at this time).
pub(crate) const UNIX_TIME_S: u64 = 1_800_000_000;
/// Key seeds of the three founding nodes.
pub(crate) const FOUNDING_NODE_SEEDS: [u8; 3] = [2, 11, 12];
/// Key seed of the node that may join during a run.
pub(crate) const JOINER_SEED: u8 = 13;
/// Key seeds of the members.
const MEMBER_SEEDS: [u8; 3] = [5, 6, 7];
/// The ledger secret every node of the service shares.
pub(crate) const LEDGER_SECRET: [u8; 32] = [3; 32];

/// A member's identity.
#[derive(Clone)]
pub(crate) struct Member {
    pub key: SigningKey,
    pub cert: Certificate,
    pub id: String,
}

impl Member {
    /// A COSE Sign1 governance request body, created at `created_at` (Unix seconds).
    pub fn sign(
        &self,
        msg_type: &str,
        proposal_id: Option<&str>,
        created_at: u64,
        payload: &[u8],
    ) -> Vec<u8> {
        cose_sign1(
            &self.key,
            &self.id,
            msg_type,
            proposal_id,
            created_at,
            payload,
        )
    }
}

fn cert(seed: u8, name: &str, ca: bool) -> (SigningKey, Certificate) {
    let key = SigningKey::from_seed(&[seed; 32]).expect("key");
    let spec = CertificateSpec {
        common_name: name,
        is_ca: ca,
        subject_alt_names: &[],
        validity: VALIDITY,
    };
    let cert = Certificate::self_signed(&key, &spec).expect("certificate");
    (key, cert)
}

/// The service certificate.
pub(crate) fn service_cert() -> Certificate {
    cert(1, "service", true).1
}

/// The key and service-endorsed certificate of the node with key seed `seed`.
pub(crate) fn node_identity(seed: u8) -> (SigningKey, Certificate) {
    let (service_key, service) = cert(1, "service", true);
    let node_key = SigningKey::from_seed(&[seed; 32]).expect("key");
    let spec = CertificateSpec {
        common_name: "node",
        is_ca: false,
        subject_alt_names: &[],
        validity: VALIDITY,
    };
    let node_cert = Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service)
        .expect("node certificate");
    (node_key, node_cert)
}

/// The core configuration of the node with key seed `seed`.
pub(crate) fn node_config(seed: u8) -> NodeConfig {
    let (node_key, node_cert) = node_identity(seed);
    let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &[7; 32]);
    NodeConfig::new(
        node_key,
        node_cert,
        service_cert(),
        LedgerSecret::from_bytes(LEDGER_SECRET),
        evidence,
    )
}

/// The body of `POST /node/join` for the node with key seed `seed`, and its certificate.
pub(crate) fn join_request(seed: u8) -> Request {
    let (key, cert) = node_identity(seed);
    let report_data = charter_attest::node_report_data(&key.verifying_key().to_spki_der());
    let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &report_data);
    let body = serde_json::json!({
        "certificate": cert.to_pem(),
        "evidence": evidence,
        "rpc_address": format!("127.0.0.1:80{seed:02}"),
    })
    .to_string();
    Request {
        method: Method::Post,
        path: "/node/join".to_owned(),
        query: Vec::new(),
        headers: Vec::new(),
        body: body.into_bytes(),
        caller_cert_der: Some(cert.der().to_vec()),
    }
}

/// A governance request to `path`, as the host hands it to the core.
pub(crate) fn gov_request(path: &str, body: Vec<u8>) -> Request {
    Request {
        method: Method::Post,
        path: path.to_owned(),
        query: Vec::new(),
        headers: vec![("content-type".to_owned(), "application/cose".to_owned())],
        body,
        caller_cert_der: None,
    }
}

/// The opened three-node network every seed restarts from.
pub(crate) struct Baseline {
    /// Each founding node's configuration and disk.
    pub nodes: Vec<(NodeConfig, Disk)>,
    /// The user that writes.
    pub user: Certificate,
    /// The three active members.
    pub members: Vec<Member>,
    /// The simulated time the network was opened at.
    pub now_ms: u64,
}

/// The baseline, built on first use.
pub(crate) fn baseline() -> &'static Baseline {
    static BASELINE: OnceLock<Baseline> = OnceLock::new();
    BASELINE.get_or_init(Setup::run)
}

/// Opens the network with immediate delivery and durability.
struct Setup {
    nodes: Vec<SimNode>,
    now_ms: u64,
    next_id: u64,
    members: Vec<Member>,
}

impl Setup {
    fn id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn gov(
        &mut self,
        member: usize,
        path: &str,
        msg_type: &str,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> serde_json::Value {
        let body = self.members[member].sign(msg_type, proposal_id, UNIX_TIME_S, payload);
        let id = self.id();
        let response = self.nodes[0]
            .request(id, gov_request(path, body))
            .expect("governance request");
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        serde_json::from_slice(&response.body).expect("json")
    }

    fn activate(&mut self, member: usize) {
        let id = self.members[member].id.clone();
        let digest = self.gov(
            member,
            &format!("/gov/members/state-digests/{id}:update"),
            "state_digest",
            None,
            b"",
        );
        let ack = serde_json::json!({"stateDigest": digest["stateDigest"]}).to_string();
        self.gov(
            member,
            &format!("/gov/members/state-digests/{id}:ack"),
            "ack",
            None,
            ack.as_bytes(),
        );
    }

    /// Proposes `actions` as member 0 and votes for them with as many members as it takes.
    fn propose_and_accept(&mut self, actions: serde_json::Value) {
        let proposal = serde_json::json!({ "actions": actions }).to_string();
        let created = self.gov(
            0,
            "/gov/members/proposals:create",
            "proposal",
            None,
            proposal.as_bytes(),
        );
        let id = created["proposalId"]
            .as_str()
            .expect("proposal id")
            .to_owned();
        let ballot = serde_json::json!({"ballot": "export function vote(p, id) { return true; }"})
            .to_string();
        for member in 0..self.members.len() {
            let member_id = self.members[member].id.clone();
            let voted = self.gov(
                member,
                &format!("/gov/members/proposals/{id}/ballots/{member_id}:submit"),
                "ballot",
                Some(&id),
                ballot.as_bytes(),
            );
            if voted["proposalState"] == "Accepted" {
                return;
            }
            assert_eq!(voted["proposalState"], "Open", "{voted}");
        }
        panic!("every member voted for {id}, yet it is not accepted");
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        for node in &mut self.nodes {
            node.step(Input::Tick {
                now_ms: self.now_ms,
                unix_time_s: UNIX_TIME_S,
            })
            .expect("tick");
        }
        for _ in 0..10_000 {
            let mut messages = Vec::new();
            for (index, node) in self.nodes.iter_mut().enumerate() {
                for (to, bytes) in node.outbox.drain(..) {
                    messages.push((index, to, bytes));
                }
            }
            if messages.is_empty() {
                return;
            }
            for (from, to, bytes) in messages {
                let from = self.nodes[from].raft;
                if let Some(to) = self.nodes.iter_mut().find(|n| n.raft == to) {
                    to.step(Input::Peer { from, bytes }).expect("peer message");
                }
            }
        }
        panic!("the setup network did not quiesce");
    }

    fn admit(&mut self, seed: u8) {
        let id = self.id();
        let response = self.nodes[0].request(id, join_request(seed)).expect("join");
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let node_id = node_identity(seed).0.verifying_key().id_hex();
        self.propose_and_accept(serde_json::json!([
            {"name": "transition_node_to_trusted", "args": {"node_id": node_id}}
        ]));
    }

    fn run() -> Baseline {
        let members: Vec<Member> = MEMBER_SEEDS
            .iter()
            .enumerate()
            .map(|(index, seed)| {
                let (key, cert) = cert(*seed, &format!("member{index}"), false);
                let id = cert.fingerprint_hex();
                Member { key, cert, id }
            })
            .collect();
        let (_, user) = cert(4, "user0", false);
        let genesis = SimNode::start(
            node_config(FOUNDING_NODE_SEEDS[0]),
            StartMode::Genesis {
                members: vec![members[0].cert.clone()],
            },
            Disk::default(),
            false,
        )
        .expect("genesis");
        let mut setup = Setup {
            nodes: vec![genesis],
            now_ms: 1,
            next_id: 0,
            members,
        };
        setup.tick(1);
        setup.activate(0);
        let others: Vec<serde_json::Value> = setup.members[1..]
            .iter()
            .map(|member| {
                serde_json::json!({"name": "set_member", "args": {"cert": member.cert.to_pem()}})
            })
            .collect();
        let mut actions = vec![
            serde_json::json!({"name": "set_user", "args": {"cert": user.to_pem(), "user_data": {"role": "Administrator"}}}),
            serde_json::json!({"name": "transition_service_to_open", "args": {}}),
        ];
        actions.extend(others);
        setup.propose_and_accept(serde_json::Value::Array(actions));
        setup.activate(1);
        setup.activate(2);
        setup.tick(150);
        for seed in &FOUNDING_NODE_SEEDS[1..] {
            setup.admit(*seed);
        }
        for seed in &FOUNDING_NODE_SEEDS[1..] {
            let joiner = SimNode::start(
                node_config(*seed),
                StartMode::Join { snapshot: None },
                Disk::default(),
                true,
            )
            .expect("joiner");
            setup.nodes.push(joiner);
        }
        for _ in 0..300 {
            let primary = setup.nodes[0].node.as_ref().expect("primary");
            let commit = primary.commit_tx_id();
            if primary.voters().len() == 3
                && setup.nodes[1..].iter().all(|n| {
                    n.node
                        .as_ref()
                        .is_some_and(|node| node.commit_tx_id() == commit)
                })
            {
                return Baseline {
                    nodes: setup
                        .nodes
                        .into_iter()
                        .map(|n| (n.config, n.durable))
                        .collect(),
                    user,
                    members: setup.members,
                    now_ms: setup.now_ms,
                };
            }
            setup.tick(60);
        }
        panic!("the joiners did not become voters");
    }
}
