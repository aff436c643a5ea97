//! The invariants, checked after every step against what the simulator itself derived from the
//! committed ledger: the canonical committed entries, its own Merkle tree over them, and its own
//! replay of their write sets.

use std::collections::{BTreeMap, BTreeSet};

use charter_core::{Node, TxStatus};
use charter_crypto::{unwrap_from_node, Certificate, Digest, LedgerSecret, SigningKey};
use charter_kv::{Store, WriteSet};
use charter_ledger::merkle::MerkleTree;
use charter_ledger::tables::{LEDGER_SECRETS_MAP, SIGNATURES_MAP, SIGNATURE_KEY};
use charter_ledger::{
    decode_entry, node_wrap_aad, EntryKind, LedgerSecretRecord, LedgerSecrets, SignatureRecord,
    TxId,
};

use crate::host::SimNode;
use crate::Corruption;

/// A client write the primary acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub tx_id: TxId,
    pub key: String,
    pub value: Vec<u8>,
}

/// A root some committed signature transaction signed.
#[derive(Clone, Copy, Debug)]
struct SignedRoot {
    seqno: u64,
    /// Whether a receipt's signature over it was verified already.
    verified: bool,
}

/// What the checker remembers between steps.
pub(crate) struct Checker {
    corruption: Corruption,
    service_cert: Certificate,
    /// The ledger secrets of the committed ledger, learned from its rekey records with the
    /// nodes' keys.
    secrets: LedgerSecrets,
    /// Keys of every node of the simulation, to unwrap rekeyed secrets.
    node_keys: Vec<SigningKey>,
    /// The primary seen in each view.
    primaries: BTreeMap<u64, u64>,
    /// The committed ledger all nodes must agree on (entry bytes by seqno - 1).
    canonical: Vec<Vec<u8>>,
    /// The simulator's Merkle tree over the canonical ledger.
    tree: MerkleTree,
    /// The replayed store after each committed seqno (index 0: before any).
    replay: Vec<Store>,
    signed_roots: BTreeMap<Digest, SignedRoot>,
    /// Per node: the commit seqno and last TxID its store was last compared at.
    store_checked_at: Vec<(u64, TxId)>,
    /// Per node: up to where its committed entries were compared with the canonical ones.
    pub checked_upto: Vec<u64>,
    /// Writes observed committed, by seqno.
    pub committed: BTreeMap<u64, TxId>,
    /// Whether the corruption was applied already (it is applied once).
    flipped: bool,
    pub receipts_checked: u64,
}

impl Checker {
    pub fn new(
        corruption: Corruption,
        service_cert: Certificate,
        secret: [u8; 32],
        node_keys: Vec<SigningKey>,
    ) -> Checker {
        Checker {
            corruption,
            service_cert,
            secrets: LedgerSecrets::new(LedgerSecret::from_bytes(secret)),
            node_keys,
            primaries: BTreeMap::new(),
            canonical: Vec::new(),
            tree: MerkleTree::new(),
            replay: vec![Store::new()],
            signed_roots: BTreeMap::new(),
            store_checked_at: Vec::new(),
            checked_upto: Vec::new(),
            committed: BTreeMap::new(),
            flipped: false,
            receipts_checked: 0,
        }
    }

    /// The replayed committed store (the service's committed state).
    /// The ledger secrets of the committed ledger (what a node admitted now receives).
    pub fn committed_secrets(&self) -> LedgerSecrets {
        self.secrets.clone()
    }

    /// Takes the new secret of each rekey record in a committed write set, unwrapping it with
    /// the key of a node it was wrapped for; a committed rekey no node can open is a failure.
    fn learn_secrets(&mut self, write_set: &WriteSet) -> Result<(), String> {
        let Some(records) = write_set.maps.get(LEDGER_SECRETS_MAP) else {
            return Ok(());
        };
        for value in records.values().flatten() {
            let record: LedgerSecretRecord =
                serde_json::from_slice(value).map_err(|error| format!("rekey record: {error}"))?;
            let opened = self.node_keys.iter().find_map(|key| {
                let wrapped = record
                    .wrapped_for_nodes
                    .get(&key.verifying_key().id_hex())?;
                let wrapped = hex::decode(wrapped).ok()?;
                unwrap_from_node(key, &wrapped, &node_wrap_aad(record.start_seqno)).ok()
            });
            let secret: [u8; 32] =
                opened
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "the rekey from seqno {} opens for no node",
                            record.start_seqno
                        )
                    })?;
            self.secrets
                .insert(record.start_seqno, LedgerSecret::from_bytes(secret));
        }
        Ok(())
    }

    pub fn committed_store(&self) -> &Store {
        self.replay
            .last()
            .expect("the replay starts with an empty store")
    }

    /// Forgets what was compared on node `index` (it restarted from its disk).
    pub fn node_restarted(&mut self, index: usize) {
        self.grow(index + 1);
        self.checked_upto[index] = 0;
        self.store_checked_at[index] = (0, TxId::new(0, 0));
    }

    fn grow(&mut self, nodes: usize) {
        if self.checked_upto.len() < nodes {
            self.checked_upto.resize(nodes, 0);
            self.store_checked_at.resize(nodes, (0, TxId::new(0, 0)));
        }
    }

    /// Every invariant, on every live node. `receipt_samples` are (node, draw) pairs from the
    /// simulation's RNG choosing which committed transactions to ask receipts for.
    pub fn check(
        &mut self,
        nodes: &[SimNode],
        writes: &[Write],
        receipt_samples: &[(usize, u64)],
    ) -> Result<Vec<String>, String> {
        self.grow(nodes.len());
        let mut events = Vec::new();
        self.election_safety(nodes, &mut events)?;
        self.committed_prefixes(nodes)?;
        self.committed_writes(nodes, writes)?;
        self.replayed_state(nodes)?;
        self.key_values(nodes, writes)?;
        for (index, draw) in receipt_samples {
            self.receipt(nodes, *index, *draw)?;
        }
        Ok(events)
    }

    /// At most one primary per view (Raft's Election Safety, §5.2).
    fn election_safety(
        &mut self,
        nodes: &[SimNode],
        events: &mut Vec<String>,
    ) -> Result<(), String> {
        for (index, sim) in nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            if !node.is_primary() {
                continue;
            }
            let view = node.view();
            match self.primaries.get(&view) {
                Some(other) if *other != sim.raft => {
                    return Err(format!(
                        "two primaries in view {view}: {other:x} and {:x}",
                        sim.raft
                    ));
                }
                Some(_) => {}
                None => {
                    self.primaries.insert(view, sim.raft);
                    events.push(format!("n{index} is primary of view {view}"));
                }
            }
        }
        Ok(())
    }

    /// Committed prefixes never diverge (State Machine Safety, §5.4.3): each node's committed
    /// entries match the canonical committed ledger byte for byte; the canonical ledger grows
    /// with what the first node to commit an entry holds, checked as it is added.
    fn committed_prefixes(&mut self, nodes: &[SimNode]) -> Result<(), String> {
        for (index, sim) in nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            let commit = node.commit_tx_id().seqno;
            if commit as usize > sim.volatile.files.len() {
                return Err(format!(
                    "n{index} commits {commit} but holds {} entries",
                    sim.volatile.files.len()
                ));
            }
            for seqno in self.checked_upto[index] + 1..=commit {
                let mut bytes = sim.volatile.files[seqno as usize - 1].clone();
                if self.corruption == Corruption::FlipCommittedByte && index == 2 && !self.flipped {
                    let last = bytes.len() - 1;
                    bytes[last] ^= 1;
                    self.flipped = true;
                }
                match self.canonical.get(seqno as usize - 1) {
                    Some(expected) if *expected != bytes => {
                        return Err(format!(
                            "n{index}'s committed entry {seqno} differs from the committed ledger"
                        ));
                    }
                    Some(_) => {}
                    None => self.extend_canonical(seqno, bytes)?,
                }
            }
            self.checked_upto[index] = self.checked_upto[index].max(commit);
        }
        Ok(())
    }

    /// Adds the next committed entry: checks a signature's root against the simulator's own
    /// Merkle tree, and replays the entry's write set.
    fn extend_canonical(&mut self, seqno: u64, bytes: Vec<u8>) -> Result<(), String> {
        assert_eq!(self.canonical.len() as u64 + 1, seqno);
        let entry = decode_entry(&bytes)
            .map_err(|error| format!("committed entry {seqno} does not decode: {error}"))?;
        if entry.tx_id.seqno != seqno {
            return Err(format!(
                "committed entry {seqno} says it is {}",
                entry.tx_id
            ));
        }
        let write_set = write_set_of(&entry, &bytes, self.secrets.for_seqno(seqno))
            .map_err(|error| format!("committed entry {seqno}: {error}"))?;
        self.learn_secrets(&write_set)
            .map_err(|error| format!("committed entry {seqno}: {error}"))?;
        if entry.kind == EntryKind::Signature {
            // Merkle roots agree at each signature: the signed root is the simulator's root over
            // every committed entry before it.
            let record: SignatureRecord = write_set
                .get(SIGNATURES_MAP, SIGNATURE_KEY)
                .flatten()
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .ok_or_else(|| format!("committed signature {seqno} holds no signature record"))?;
            let signed = record
                .root_digest()
                .map_err(|error| format!("committed signature {seqno}: {error}"))?;
            if self.tree.root() != Some(signed) || record.seqno != seqno {
                return Err(format!(
                    "committed signature {seqno} signs root {} but the committed ledger before it has root {}",
                    record.root,
                    self.tree.root().map(hex::encode).unwrap_or_default()
                ));
            }
            self.signed_roots.insert(
                signed,
                SignedRoot {
                    seqno,
                    verified: false,
                },
            );
        }
        self.tree.append(entry.leaf());
        let mut store = self.committed_store().clone();
        let dropped = self.corruption == Corruption::DropReplayedWrite
            && !self.flipped
            && write_set.maps.contains_key("kv");
        if dropped {
            self.flipped = true;
        } else if !write_set.is_empty() {
            store.apply(&write_set, seqno);
        }
        self.replay.push(store);
        self.canonical.push(bytes);
        assert_eq!(self.tree.len(), seqno);
        assert_eq!(self.replay.len() as u64, seqno + 1);
        Ok(())
    }

    /// A write seen committed on one node is committed on every node whose commit covers it.
    fn committed_writes(&mut self, nodes: &[SimNode], writes: &[Write]) -> Result<(), String> {
        let live: Vec<&Node> = nodes.iter().filter_map(|n| n.node.as_ref()).collect();
        for write in writes {
            if self.committed.contains_key(&write.tx_id.seqno) {
                continue;
            }
            if live
                .iter()
                .any(|n| n.tx_status(write.tx_id) == TxStatus::Committed)
            {
                self.committed.insert(write.tx_id.seqno, write.tx_id);
            }
        }
        for (index, sim) in nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            let commit = node.commit_tx_id().seqno;
            for (seqno, tx_id) in self.committed.range(..=commit) {
                let status = node.tx_status(*tx_id);
                if status != TxStatus::Committed {
                    return Err(format!(
                        "{tx_id} was committed, but n{index} (commit {commit}) reports it {} at seqno {seqno}",
                        status.as_str()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every node's key-value state equals the simulator's replay of the committed write sets,
    /// followed by the replay of the node's own entries past its commit point.
    fn replayed_state(&mut self, nodes: &[SimNode]) -> Result<(), String> {
        for (index, sim) in nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            let commit = node.commit_tx_id().seqno;
            let last = node.last_tx_id();
            if self.store_checked_at[index] == (commit, last) {
                continue;
            }
            let Some(committed) = self.replay.get(commit as usize) else {
                return Err(format!(
                    "n{index} commits {commit} beyond the committed ledger"
                ));
            };
            let mut expected = committed.clone();
            for seqno in commit + 1..=last.seqno {
                let Some(bytes) = sim.volatile.files.get(seqno as usize - 1) else {
                    return Err(format!(
                        "n{index}'s ledger ends before its last entry {last}"
                    ));
                };
                let entry = decode_entry(bytes)
                    .map_err(|error| format!("n{index}'s entry {seqno}: {error}"))?;
                let write_set = write_set_of(&entry, bytes, node.ledger_secrets().for_seqno(seqno))
                    .map_err(|error| format!("n{index}'s entry {seqno}: {error}"))?;
                if !write_set.is_empty() {
                    expected.apply(&write_set, seqno);
                }
            }
            compare_stores(node.store(), &expected).map_err(|difference| {
                format!(
                    "n{index}'s state (commit {commit}, last {last}) is not the replay of the committed ledger and its own entries after it: {difference}"
                )
            })?;
            self.store_checked_at[index] = (commit, last);
        }
        Ok(())
    }

    /// Every node's value of each written key is the last write to it in that node's ledger
    /// (which includes every committed write covered by its commit).
    fn key_values(&self, nodes: &[SimNode], writes: &[Write]) -> Result<(), String> {
        let keys: BTreeSet<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        for (index, sim) in nodes.iter().enumerate() {
            let Some(node) = &sim.node else { continue };
            let mut latest: BTreeMap<&str, &Write> = BTreeMap::new();
            for write in writes {
                if !matches!(
                    node.tx_status(write.tx_id),
                    TxStatus::Pending | TxStatus::Committed
                ) {
                    continue;
                }
                let slot = latest.entry(write.key.as_str()).or_insert(write);
                if write.tx_id.seqno > slot.tx_id.seqno {
                    *slot = write;
                }
            }
            for key in &keys {
                let expected = latest.get(key);
                let actual = node.store().get("kv", key.as_bytes());
                if actual != expected.map(|w| w.value.as_slice()) {
                    return Err(format!(
                        "n{index} holds {:?} for {key}, expected {:?} from {:?}",
                        actual.map(String::from_utf8_lossy),
                        expected.map(|w| String::from_utf8_lossy(&w.value)),
                        expected.map(|w| w.tx_id),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A receipt for a committed transaction verifies, and matches the committed ledger: its
    /// leaf is the entry's, its root one a committed signature signed.
    fn receipt(&mut self, nodes: &[SimNode], index: usize, draw: u64) -> Result<(), String> {
        let Some(node) = nodes.get(index).and_then(|n| n.node.as_ref()) else {
            return Ok(());
        };
        let commit = node.commit_tx_id().seqno;
        if commit < 2 {
            return Ok(());
        }
        // Below the commit point, which is a signature.
        let seqno = 1 + draw % (commit - 1);
        let bytes = &self.canonical[seqno as usize - 1];
        let entry = decode_entry(bytes).map_err(|error| error.to_string())?;
        if entry.kind != EntryKind::Transaction {
            return Ok(());
        }
        let tx_id = entry.tx_id;
        let receipt = node.receipt(tx_id).map_err(|status| {
            format!(
                "n{index} has no receipt for committed {tx_id}: it reports it {}",
                status.as_str()
            )
        })?;
        let leaf = &receipt.leaf_components;
        if leaf.write_set_digest != hex::encode(entry.write_set_digest()) {
            return Err(format!(
                "n{index}'s receipt for {tx_id} names another entry's write set digest"
            ));
        }
        let secret = self.secrets.for_seqno(tx_id.seqno);
        if leaf.commit_evidence != charter_ledger::commit_evidence(secret, tx_id) {
            return Err(format!(
                "n{index}'s receipt for {tx_id} has the wrong commit evidence"
            ));
        }
        let root = receipt
            .root()
            .map_err(|error| format!("n{index}'s receipt for {tx_id}: {error}"))?;
        let Some(signed) = self.signed_roots.get_mut(&root) else {
            return Err(format!(
                "n{index}'s receipt for {tx_id} leads to a root no committed signature signed"
            ));
        };
        if signed.seqno <= seqno {
            return Err(format!(
                "n{index}'s receipt for {tx_id} uses the signature at {}, not after it",
                signed.seqno
            ));
        }
        if !signed.verified {
            let verified = receipt.verify(&self.service_cert).map_err(|error| {
                format!("n{index}'s receipt for {tx_id} does not verify: {error}")
            })?;
            assert_eq!(verified, root);
            signed.verified = true;
        }
        self.receipts_checked += 1;
        Ok(())
    }
}

/// The write set an entry applies, as the core ingests it: public and decrypted private
/// domains (a configuration change's public domain is Raft's, not a write set).
fn write_set_of(
    entry: &charter_ledger::Entry<'_>,
    bytes: &[u8],
    secret: &LedgerSecret,
) -> Result<WriteSet, String> {
    let mut write_set = if entry.public.is_empty() || entry.kind == EntryKind::ConfChange {
        WriteSet::new()
    } else {
        WriteSet::decode(entry.public).map_err(|error| format!("public domain: {error}"))?
    };
    let private = entry
        .decrypt_private(secret, bytes)
        .map_err(|error| error.to_string())?;
    if !private.is_empty() {
        write_set
            .merge(WriteSet::decode(&private).map_err(|error| format!("private domain: {error}"))?);
    }
    Ok(write_set)
}

/// The first difference between two stores, if any.
fn compare_stores(actual: &Store, expected: &Store) -> Result<(), String> {
    let maps = actual.map_names();
    if maps != expected.map_names() {
        return Err(format!(
            "maps {maps:?}, expected {:?}",
            expected.map_names()
        ));
    }
    for map in &maps {
        let mut theirs = expected.entries(map);
        for (key, value) in actual.entries(map) {
            match theirs.next() {
                Some((expected_key, expected_value))
                    if expected_key == key && expected_value == value => {}
                Some((expected_key, _)) => {
                    return Err(format!(
                        "{map}: {:?} where {:?} was expected",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(expected_key)
                    ))
                }
                None => {
                    return Err(format!(
                        "{map}: {:?} was never committed",
                        String::from_utf8_lossy(key)
                    ))
                }
            }
        }
        if let Some((missing, _)) = theirs.next() {
            return Err(format!(
                "{map}: {:?} is missing",
                String::from_utf8_lossy(missing)
            ));
        }
    }
    Ok(())
}
