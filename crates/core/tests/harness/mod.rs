//! A single node's core driven in memory: the harness plays the host (durability at once) and
//! opens the service through real governance requests, adding user0 as an Administrator and
//! user1 as a Contributor (`user_data.role`). Shared by tests and benchmarks of several crates.
#![allow(dead_code)]

use std::collections::BTreeMap;

use charter_core::{
    Action, HardStateRecord, Input, LogEntry, LogKind, Method, Node, NodeConfig, Request,
    RequestId, Restored, StartMode,
};
use charter_crypto::{
    cose_sign1, Certificate, CertificateSpec, LedgerSecret, SigningKey, Validity,
};
use charter_ledger::TxId;

const VALIDITY: Validity = Validity {
    not_before_unix: 1_700_000_000,
    days: 365,
};

pub struct Harness {
    pub node: Node,
    pub ledger: Vec<LogEntry>,
    pub hard_state: HardStateRecord,
    pub responses: Vec<(RequestId, charter_core::Response)>,
    pub now_ms: u64,
    pub next_id: u64,
    pub user: Certificate,
    pub user1: Certificate,
    /// Every appended entry's bytes, as the ledger files would hold them.
    pub files: Vec<Vec<u8>>,
    /// Consensus messages the node sent: (recipient Raft ID, bytes).
    pub outbox: Vec<(u64, Vec<u8>)>,
    pub member: Certificate,
    pub member_key: SigningKey,
    pub service: Certificate,
    pub config: NodeConfig,
    /// Seqno of the snapshot the ledger continues (0: `ledger[0]` is seqno 1).
    pub base: u64,
    /// Snapshots the node wrote, by seqno.
    pub snapshots: BTreeMap<u64, Vec<u8>>,
    /// Committed snapshot files, by seqno.
    pub committed_snapshots: BTreeMap<u64, Vec<u8>>,
}

pub fn cert(seed: u8, name: &str, ca: bool) -> (SigningKey, Certificate) {
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
    pub fn new() -> Harness {
        Harness::with_apps(Vec::new())
    }

    /// An opened single-node service whose configuration `configure` adjusts.
    pub fn new_with(configure: impl Fn(&mut NodeConfig)) -> Harness {
        let mut harness = Harness::start_with(2, None, configure);
        harness.tick(1);
        harness.open_service();
        harness
    }

    /// Like [`Harness::joiner`], starting from a committed snapshot file when one is given.
    pub fn joiner_with(
        seed: u8,
        snapshot: Option<Vec<u8>>,
        configure: impl Fn(&mut NodeConfig),
    ) -> Harness {
        let base = match &snapshot {
            Some(file) => {
                let parts = charter_ledger::split_committed_snapshot(file).unwrap();
                charter_ledger::decode_snapshot(parts.snapshot)
                    .unwrap()
                    .seqno
            }
            None => 0,
        };
        let mode = StartMode::Join {
            snapshot: snapshot.clone(),
        };
        let mut harness = Harness::start_with(seed, Some(mode), configure);
        if let Some(file) = snapshot {
            harness.base = base;
            harness.committed_snapshots.insert(base, file);
        }
        harness
    }

    /// Restarts the node from what its host kept: the whole ledger, or (for a node that
    /// started from a snapshot) the newest committed snapshot its ledger continues and the
    /// entries after it.
    pub fn restart(&mut self) {
        let mut snapshot = None;
        if self.base > 0 {
            let last = self.base + self.ledger.len() as u64;
            let (&seqno, file) = self
                .committed_snapshots
                .range(self.base..=last)
                .next_back()
                .expect("a committed snapshot covers the ledger's start");
            let skip = (seqno - self.base) as usize;
            self.ledger.drain(..skip);
            self.files.drain(..skip);
            self.base = seqno;
            snapshot = Some(file.clone());
        }
        let restored = Restored {
            entries: self.ledger.clone(),
            hard_state: self.hard_state,
            snapshot,
        };
        let mut out = Vec::new();
        self.node = Node::new(self.config.clone(), StartMode::Restart(restored), &mut out).unwrap();
        self.outbox.clear();
        self.host(out);
    }

    /// The ledger as its host would store it: complete chunks ending at signatures every
    /// few entries and the rest in an open chunk, from seqno `first` on.
    pub fn chunk_files(&self, first: u64) -> Vec<charter_ledger::LedgerFile> {
        use charter_ledger::frame::encode_frame;
        let mut files = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_first = first;
        for (index, bytes) in self.files.iter().enumerate() {
            let seqno = self.base + index as u64 + 1;
            if seqno < first {
                continue;
            }
            encode_frame(seqno, bytes, &mut chunk);
            let entry = charter_ledger::decode_entry(bytes).unwrap();
            if entry.kind == charter_ledger::EntryKind::Signature && seqno - chunk_first >= 8 {
                files.push(charter_ledger::LedgerFile {
                    name: format!("ledger_{chunk_first}-{seqno}.committed"),
                    bytes: std::mem::take(&mut chunk),
                });
                chunk_first = seqno + 1;
            }
        }
        files.push(charter_ledger::LedgerFile {
            name: format!("ledger_{chunk_first}"),
            bytes: chunk,
        });
        files
    }

    /// A harness whose node serves `apps` besides the built-in key-value app.
    pub fn with_apps(apps: Vec<Box<dyn charter_core::Application>>) -> Harness {
        let mut harness = Harness::start(2, None);
        for app in apps {
            harness.node.register_app(app);
        }
        harness.tick(1);
        harness.open_service();
        harness
    }

    /// A node (key seed `seed`) of the same service that joins it: it holds the ledger secret
    /// and the service certificate, and waits for the primary to replicate to it.
    pub fn joiner(seed: u8) -> Harness {
        Harness::start(seed, Some(StartMode::Join { snapshot: None }))
    }

    /// The node's key, certificate endorsed by the service, and its join request evidence.
    pub fn node_identity(seed: u8) -> (SigningKey, Certificate) {
        let (service_key, service) = cert(1, "service", true);
        let node_key = SigningKey::from_seed(&[seed; 32]).unwrap();
        let spec = CertificateSpec {
            common_name: "node",
            is_ca: false,
            subject_alt_names: &[],
            validity: VALIDITY,
        };
        let node_cert =
            Certificate::issue(&node_key.verifying_key(), &spec, &service_key, &service).unwrap();
        (node_key, node_cert)
    }

    /// The configuration of the node with key seed `seed`, adjusted by `configure`.
    pub fn node_config(seed: u8, configure: impl Fn(&mut NodeConfig)) -> NodeConfig {
        let (node_key, node_cert) = Harness::node_identity(seed);
        let (_, service) = cert(1, "service", true);
        let evidence = charter_attest::virtual_evidence(&"ab".repeat(32), &[7; 32]);
        let mut config = NodeConfig::new(
            node_key,
            node_cert,
            service,
            LedgerSecret::from_bytes([3; 32]),
            evidence,
        );
        configure(&mut config);
        config
    }

    fn start(seed: u8, mode: Option<StartMode>) -> Harness {
        Harness::start_with(seed, mode, |_| {})
    }

    pub fn start_with(
        seed: u8,
        mode: Option<StartMode>,
        configure: impl Fn(&mut NodeConfig),
    ) -> Harness {
        let (_, service) = cert(1, "service", true);
        let config = Harness::node_config(seed, configure);
        let (_, user) = cert(4, "user0", false);
        let (_, user1) = cert(6, "user1", false);
        let (member_key, member) = cert(5, "member0", false);
        let mut out = Vec::new();
        let mode = mode.unwrap_or(StartMode::Genesis {
            members: vec![member.clone()],
        });
        // A recovering node's host holds a copy of the old ledger files.
        let (ledger, files) = match &mode {
            StartMode::Recover { entries, .. } => (entries.clone(), Vec::new()),
            _ => (Vec::new(), Vec::new()),
        };
        let node = Node::new(config.clone(), mode, &mut out).unwrap();
        let mut harness = Harness {
            node,
            ledger,
            hard_state: HardStateRecord::default(),
            responses: Vec::new(),
            now_ms: 1,
            next_id: 0,
            user,
            user1,
            files,
            outbox: Vec::new(),
            member,
            member_key,
            service,
            config,
            base: 0,
            snapshots: BTreeMap::new(),
            committed_snapshots: BTreeMap::new(),
        };
        harness.host(out);
        harness
    }

    /// Sends a signed governance request as member0.
    pub fn gov(
        &mut self,
        path: &str,
        msg_type: &str,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> serde_json::Value {
        let body = cose_sign1(
            &self.member_key,
            &self.member.fingerprint_hex(),
            msg_type,
            proposal_id,
            1_800_000_000,
            payload,
        );
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let request = Request {
            method: Method::Post,
            path: path.to_owned(),
            query: Vec::new(),
            headers: vec![("content-type".to_owned(), "application/cose".to_owned())],
            body,
            caller_cert_der: None,
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
        let response = self.responses.remove(index).1;
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        serde_json::from_slice(&response.body).unwrap()
    }

    /// member0 proposes `actions` and votes for them; the proposal must pass.
    pub fn pass(&mut self, actions: serde_json::Value) {
        let member_id = self.member.fingerprint_hex();
        let proposal = serde_json::json!({ "actions": actions }).to_string();
        let created = self.gov(
            "/gov/members/proposals:create",
            "proposal",
            None,
            proposal.as_bytes(),
        );
        let id = created["proposalId"].as_str().unwrap().to_owned();
        let ballot = serde_json::json!({"ballot": "export function vote(p, id) { return true; }"})
            .to_string();
        let voted = self.gov(
            &format!("/gov/members/proposals/{id}/ballots/{member_id}:submit"),
            "ballot",
            Some(&id),
            ballot.as_bytes(),
        );
        assert_eq!(voted["proposalState"], "Accepted", "{voted}");
    }

    /// The member acknowledges, proposes adding user0 and opening the service, and votes.
    pub fn open_service(&mut self) {
        let member_id = self.member.fingerprint_hex();
        let digest = self.gov(
            &format!("/gov/members/state-digests/{member_id}:update"),
            "state_digest",
            None,
            b"",
        );
        let ack = serde_json::json!({"stateDigest": digest["stateDigest"]}).to_string();
        self.gov(
            &format!("/gov/members/state-digests/{member_id}:ack"),
            "ack",
            None,
            ack.as_bytes(),
        );
        self.pass(serde_json::json!([
            {"name": "set_user", "args": {"cert": self.user.to_pem(), "user_data": {"role": "Administrator"}}},
            {"name": "set_user", "args": {"cert": self.user1.to_pem(), "user_data": {"role": "Contributor"}}},
            {"name": "transition_service_to_open", "args": {}},
        ]));
        self.tick(150);
    }

    /// Plays the host: applies actions, reports durability at once.
    pub fn host(&mut self, mut actions: Vec<Action>) {
        // The end of a batch of inputs, as for a real host.
        self.node.flush(&mut actions).unwrap();
        let mut reads: Vec<Vec<(u64, Option<Vec<u8>>)>> = Vec::new();
        let mut encoded: Vec<(u64, charter_crypto::Digest)> = Vec::new();
        for _ in 0..100 {
            let mut sync = None;
            for action in actions.drain(..) {
                match action {
                    Action::Append { seqno, bytes } => {
                        assert_eq!(seqno, self.base + self.ledger.len() as u64 + 1);
                        let entry = charter_ledger::decode_entry(&bytes).unwrap();
                        let (data, kind) = match entry.kind {
                            charter_ledger::EntryKind::Noop => (Vec::new(), LogKind::Normal),
                            charter_ledger::EntryKind::ConfChange => {
                                (entry.public.to_vec(), LogKind::ConfChange)
                            }
                            _ => (bytes.clone(), LogKind::Normal),
                        };
                        self.ledger.push(LogEntry {
                            view: entry.tx_id.view,
                            seqno,
                            data,
                            kind,
                        });
                        self.files.push(bytes);
                    }
                    Action::Truncate { from_seqno } => {
                        assert!(from_seqno > self.base, "truncation into the snapshot");
                        let keep = (from_seqno - self.base - 1) as usize;
                        self.ledger.truncate(keep);
                        self.files.truncate(keep);
                    }
                    Action::EncodeSnapshot(work) => {
                        let seqno = work.seqno;
                        let bytes = work.encode();
                        let digest = charter_crypto::sha256(&bytes);
                        if let Some(earlier) = self.snapshots.insert(seqno, bytes.clone()) {
                            assert_eq!(
                                earlier, bytes,
                                "snapshot {seqno} written twice, differently"
                            );
                        }
                        encoded.push((seqno, digest));
                    }
                    Action::CommitSnapshot { seqno, evidence } => {
                        let bytes = self.snapshots.get(&seqno).expect("a written snapshot");
                        let file = charter_ledger::encode_committed_snapshot(bytes, &evidence);
                        self.committed_snapshots.insert(seqno, file);
                    }
                    Action::Send { to, bytes } => self.outbox.push((to, bytes)),
                    Action::SaveHardState(state) => self.hard_state = state,
                    Action::Sync { token } => sync = Some(token),
                    Action::Respond { id, response } => self.responses.push((id, response)),
                    // This host has no node channel to forward on; the client sees what a
                    // node without forwarding would answer.
                    Action::Forward { id, .. } => self.responses.push((
                        id,
                        charter_core::Response::error(503, "NotPrimary", "not the primary"),
                    )),
                    Action::CloseChunk { .. } => {}
                    Action::SealLedgerSecrets { secrets } => {
                        self.config.ledger_secrets =
                            charter_ledger::LedgerSecrets::from_json(&secrets).unwrap();
                    }
                    Action::ReadEntries {
                        from_seqno,
                        to_seqno,
                    } => {
                        let entries = (from_seqno..=to_seqno)
                            .map(|seqno| {
                                let index = seqno.checked_sub(self.base + 1);
                                let bytes = index.and_then(|index| self.files.get(index as usize));
                                (seqno, bytes.cloned())
                            })
                            .collect();
                        reads.push(entries);
                    }
                }
            }
            for entries in reads.drain(..) {
                self.node
                    .step(Input::EntriesRead { entries }, &mut actions)
                    .unwrap();
            }
            for (seqno, digest) in encoded.drain(..) {
                self.node
                    .step(Input::SnapshotEncoded { seqno, digest }, &mut actions)
                    .unwrap();
            }
            match sync {
                Some(token) => self
                    .node
                    .step(Input::Durable { token }, &mut actions)
                    .unwrap(),
                None if actions.is_empty() => return,
                None => {}
            }
        }
        panic!("host loop did not settle");
    }

    pub fn request(
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

    /// Sends a request without waiting for its answer.
    pub fn send(&mut self, request: Request) -> RequestId {
        self.next_id += 1;
        let id = RequestId(self.next_id);
        let mut out = Vec::new();
        self.node
            .step(Input::Client { id, request }, &mut out)
            .unwrap();
        self.host(out);
        id
    }

    /// The answer to `id`, if it came.
    pub fn take_response(&mut self, id: RequestId) -> Option<charter_core::Response> {
        let index = self.responses.iter().position(|(rid, _)| *rid == id)?;
        Some(self.responses.remove(index).1)
    }

    pub fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        let mut out = Vec::new();
        self.node
            .step(
                Input::Tick {
                    now_ms: self.now_ms,
                    unix_time_s: 1_800_000_000,
                },
                &mut out,
            )
            .unwrap();
        self.host(out);
    }

    pub fn put(&mut self, key: &str, value: &[u8]) -> TxId {
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

    pub fn status(&mut self, tx_id: TxId) -> String {
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
