//! Disaster recovery and recovery shares.
//!
//! While the service runs, the primary deals recovery shares whenever their inputs change
//! (recovery members' keys, the threshold, the latest ledger secret): a fresh wrapping key
//! protected by threshold ElGamal on ristretto255 (`charter_crypto::deal`) wraps the latest
//! ledger secret, and each recovery member's share is encrypted to that member's recovery key.
//! All of it is public ([`RECOVERY_SHARES_MAP`]); fewer than the threshold of members learn
//! nothing from it.
//!
//! When every node is lost, [`StartMode::Recover`](super::StartMode::Recover) replays one old
//! ledger's public state and starts a new service (new identity, this node alone) in status
//! `Recovering`. Members pass `transition_service_to_open` (status `WaitingForRecoveryShares`)
//! and submit partial decryptions with proofs, never their shares. With enough valid ones the
//! node restores the wrapping key, unwraps the old latest secret, follows the chain of rekey
//! records back to the first secret, decrypts the old private state, and writes it in one
//! transaction that also opens the service, chains its own secret to the old ones and deals new
//! shares.

use std::collections::BTreeMap;

use charter_consensus::{Consensus, ConsensusConfig, HardStateRecord, LogBase, LogEntry, Restored};
use charter_crypto::{
    combine, deal, unwrap_key, verify_partial, wrap_key, Certificate, LedgerSecret,
    PartialDecryption, RecoveryCiphertext, RecoveryPublicKey,
};
use charter_gov::tables::{
    MemberInfo, ServiceConfig, MEMBERS_MAP, SERVICE_CONFIG_KEY, SERVICE_CONFIG_MAP,
};
use charter_kv::{Tx, WriteSet};
use charter_ledger::snapshot::view_at;
use charter_ledger::tables::{LEDGER_SECRETS_MAP, NODES_MAP, SERVICE_KEY, SERVICE_MAP};
use charter_ledger::{
    decode_entry, follow_chain, ledger_secrets_key, node_wrap_aad, seal_previous, EntryKind,
    LedgerSecretRecord, LedgerSecrets, NodeInfo, NodeStatus, ServiceInfo, ServiceStatus,
};
use serde::{Deserialize, Serialize};

use super::{Action, Node, RAFT_MAP};
use crate::CoreError;

/// The current recovery shares, under [`RECOVERY_SHARES_KEY`]: JSON [`RecoveryShares`].
pub const RECOVERY_SHARES_MAP: &str = "public:charter.internal.recovery_shares";
/// Key of the record in [`RECOVERY_SHARES_MAP`].
pub const RECOVERY_SHARES_KEY: &[u8] = b"current";
/// A recovered service's link to the service it recovered, under [`PREVIOUS_SERVICE_KEY`]:
/// JSON [`PreviousServiceIdentity`].
pub const PREVIOUS_SERVICE_MAP: &str = "public:charter.internal.previous_service_identity";
/// Key of the record in [`PREVIOUS_SERVICE_MAP`].
pub const PREVIOUS_SERVICE_KEY: &[u8] = b"identity";
/// Written (with the seqno) by the transaction that restored the old private state.
const PRIVATE_STATE_RESTORED_KEY: &[u8] = b"private_state_restored";
/// Key in [`RAFT_MAP`] of the last seqno of the old ledger a recovered service continues.
pub const RECOVERED_AT_KEY: &[u8] = charter_ledger::tables::RECOVERED_AT_KEY;
/// Who submitted a recovery share, when, and the digest of the signed request (the request
/// itself, which carries the partial decryption, goes to a private map).
pub const RECOVERY_SUBMISSIONS_MAP: &str = "public:charter.gov.recovery_submissions";
/// The signed recovery-share requests, by member: private, since enough partial decryptions
/// open the old ledger secret.
pub const RECOVERY_REQUESTS_MAP: &str = "charter.gov.recovery_requests";

/// One recovery member's share in [`RecoveryShares`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberShare {
    /// The member's index in the sharing (1-based).
    pub index: u32,
    /// Hex of the share's public verification key.
    pub verification_key: String,
    /// Hex of the share encrypted to the member's recovery key.
    pub encrypted_share: String,
}

/// The recovery shares dealt last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryShares {
    /// Shares needed.
    pub threshold: u32,
    /// Hex of the ElGamal ciphertext members partially decrypt.
    pub ciphertext: String,
    /// First seqno of the ledger secret wrapped here.
    pub secret_start_seqno: u64,
    /// Hex of that secret wrapped under the recovered wrapping key.
    pub wrapped_ledger_secret: String,
    /// Shares by member ID.
    pub members: BTreeMap<String, MemberShare>,
    /// Digest of what the shares were dealt for; a change triggers a new deal.
    pub inputs_digest: String,
}

/// A recovered service's record of the service it continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousServiceIdentity {
    /// PEM of the previous service certificate (receipts from before the recovery verify
    /// against it).
    pub previous_service_cert: String,
    /// PEM of a certificate for the new service key issued by the previous service key, if
    /// the recovering operator had the previous key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement: Option<String>,
    /// Last seqno of the old ledger.
    pub recovered_at: u64,
}

/// Progress of a recovery.
#[derive(Clone, Debug, Default)]
pub(crate) struct RecoveryProgress {
    /// Old entries with private domains, waiting for the old secrets.
    pub pending: Vec<(u64, Vec<u8>)>,
    /// Valid partial decryptions by member ID (never written anywhere).
    pub partials: BTreeMap<String, PartialDecryption>,
}

fn recovery_aad(start: u64) -> Vec<u8> {
    format!("charter recovery: ledger secret from {start}").into_bytes()
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

impl Node {
    /// Last seqno of the old ledger, if this service is a recovered one.
    pub(crate) fn recovered_at(&self) -> Option<u64> {
        self.store
            .get(RAFT_MAP, RECOVERED_AT_KEY)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
    }

    /// Recovery members (with a valid recovery key) and threshold, as `tx` sees them.
    fn recovery_inputs(tx: &mut Tx) -> (u32, Vec<(String, RecoveryPublicKey)>) {
        let threshold = tx
            .get(SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY.as_bytes())
            .and_then(|bytes| serde_json::from_slice::<ServiceConfig>(&bytes).ok())
            .map_or(1, |config| config.recovery_threshold);
        let mut members = Vec::new();
        for (id, value) in tx.scan_prefix(MEMBERS_MAP, b"", None, usize::MAX) {
            let Ok(info) = serde_json::from_slice::<MemberInfo>(&value) else {
                continue;
            };
            let key = info
                .public_encryption_key
                .as_deref()
                .and_then(|pem| RecoveryPublicKey::from_pem(pem).ok());
            if let Some(key) = key {
                members.push((String::from_utf8_lossy(&id).into_owned(), key));
            }
        }
        (threshold, members)
    }

    /// Deals new recovery shares in `tx` if their inputs changed since the last deal; `latest`
    /// is the newest ledger secret (one recorded by `tx` itself, if it rekeys).
    pub(crate) fn deal_if_needed(&mut self, tx: &mut Tx, latest: (u64, &LedgerSecret)) {
        let (threshold, members) = Node::recovery_inputs(tx);
        let mut digest_input = format!("{threshold}|{}", latest.0);
        for (id, key) in &members {
            digest_input.push_str(&format!("|{id}:{}", hex::encode(key.to_bytes())));
        }
        let inputs_digest = hex::encode(charter_crypto::sha256(digest_input.as_bytes()));
        let current: Option<RecoveryShares> = tx
            .get(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        match &current {
            Some(shares) if shares.inputs_digest == inputs_digest => return,
            // Nothing dealt and nothing to deal to.
            None if members.is_empty() || (members.len() as u32) < threshold => return,
            _ => {}
        }
        let keys: Vec<RecoveryPublicKey> = members.iter().map(|(_, key)| *key).collect();
        let Ok(dealt) = deal(threshold, &keys, &mut self.rng) else {
            // Fewer recovery members than the threshold: nothing can protect the secret; the
            // recovery status endpoint says so.
            tx.remove(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY);
            return;
        };
        let wrapped = wrap_key(
            &dealt.wrapping_key,
            latest.1.as_bytes(),
            &recovery_aad(latest.0),
            &mut self.rng,
        );
        let shares = RecoveryShares {
            threshold,
            ciphertext: hex::encode(dealt.ciphertext.to_bytes()),
            secret_start_seqno: latest.0,
            wrapped_ledger_secret: hex::encode(wrapped),
            members: members
                .iter()
                .zip(&dealt.shares)
                .map(|((id, _), share)| {
                    let share = MemberShare {
                        index: share.index,
                        verification_key: hex::encode(share.verification_key),
                        encrypted_share: hex::encode(&share.encrypted_share),
                    };
                    (id.clone(), share)
                })
                .collect(),
            inputs_digest,
        };
        tx.put(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY, &json(&shares));
    }

    /// Starts a recovered service from an old ledger (see [`StartMode::Recover`]).
    ///
    /// [`StartMode::Recover`]: super::StartMode::Recover
    pub(super) fn recover(
        mut node: Node,
        mut entries: Vec<LogEntry>,
        previous_service_cert: Certificate,
        endorsement: Option<String>,
        out: &mut Vec<Action>,
    ) -> Result<Node, CoreError> {
        if !matches!(entries.first(), Some(entry) if entry.seqno == 1) {
            return Err(CoreError::Restore(
                "recovery needs the old ledger from seqno 1 (a node that started from a \
                 snapshot does not hold it)"
                    .to_owned(),
            ));
        }
        let last_signature = entries
            .iter()
            .rposition(|entry| {
                decode_entry(&entry.data).is_ok_and(|decoded| decoded.kind == EntryKind::Signature)
            })
            .map(|index| index + 1)
            .ok_or_else(|| {
                CoreError::Restore(
                    "the old ledger holds no signature: nothing was committed".into(),
                )
            })?;
        if last_signature < entries.len() {
            out.push(Action::Truncate {
                from_seqno: last_signature as u64 + 1,
            });
            entries.truncate(last_signature);
        }
        let end = last_signature as u64;
        // The new service's own secret encrypts what it writes from now on; the old secrets come
        // back with the members' shares.
        let own = node.config.ledger_secrets.latest().1.clone();
        node.secrets = LedgerSecrets::starting_at(end + 1, own);
        out.push(Action::SealLedgerSecrets {
            secrets: node.secrets.to_json(),
        });
        let restored = Restored {
            entries,
            hard_state: HardStateRecord {
                term: 0,
                vote: 0,
                commit: end,
            },
            snapshot: None,
        };
        node.replay(restored, out)?;
        node.forget_old_configuration(end);
        let view = view_at(&node.views, end).unwrap_or(0);
        let mut config = ConsensusConfig::single(node.raft_id, node.config.seed);
        config.base = Some(LogBase {
            seqno: end,
            view,
            conf_changes: Vec::new(),
        });
        let restored = Restored {
            entries: Vec::new(),
            hard_state: HardStateRecord {
                term: view,
                vote: 0,
                commit: end,
            },
            snapshot: None,
        };
        node.consensus = Consensus::new(&config, restored)?;
        node.base_seqno = end;
        node.replicated = false;
        node.rollback_points.clear();
        node.raft_commit = end;
        node.commit_seqno = node.last_signature_at_or_before(end);
        node.consensus.campaign()?;
        node.drain_consensus(out)?;
        node.write_recovery_start(&previous_service_cert, endorsement, end, out)?;
        node.emit_signature(out)?;
        Ok(node)
    }

    /// Forgets the old service's Raft configuration and snapshot points: the recovered service
    /// starts with this node alone after `end`.
    pub(super) fn forget_old_configuration(&mut self, end: u64) {
        let later = self.conf_changes.split_off(&(end + 1));
        self.conf_changes = later;
        let later = self.snapshot_points.split_off(&(end + 1));
        self.snapshot_points = later;
        if end > self.snapshot_last {
            self.snapshot_last = end;
            self.snapshot_last_keys = self.store.present_keys();
        }
    }

    fn write_recovery_start(
        &mut self,
        previous: &Certificate,
        endorsement: Option<String>,
        end: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), CoreError> {
        let mut write_set = WriteSet::new();
        let service = ServiceInfo {
            cert: self.config.service_cert.to_pem(),
            status: ServiceStatus::Recovering,
        };
        write_set.put(SERVICE_MAP, SERVICE_KEY, &json(&service));
        let identity = PreviousServiceIdentity {
            previous_service_cert: previous.to_pem(),
            endorsement,
            recovered_at: end,
        };
        write_set.put(PREVIOUS_SERVICE_MAP, PREVIOUS_SERVICE_KEY, &json(&identity));
        // The old nodes are gone; their records stay (old receipts name them) as retired.
        for (id, value) in self.store.entries(NODES_MAP) {
            if let Ok(mut info) = serde_json::from_slice::<NodeInfo>(value) {
                if info.status != NodeStatus::Retired {
                    info.status = NodeStatus::Retired;
                    write_set.put(NODES_MAP, id, &json(&info));
                }
            }
        }
        self.write_first_node(&mut write_set);
        write_set.put(RAFT_MAP, RECOVERED_AT_KEY, end.to_string().as_bytes());
        self.write_transaction(EntryKind::Transaction, write_set, [0; 32], out)?;
        Ok(())
    }

    /// Asks the host to seal the secrets after a recovery restored the old ones.
    pub(crate) fn take_seal_action(&mut self) -> Option<Action> {
        std::mem::take(&mut self.seal_secrets).then(|| Action::SealLedgerSecrets {
            secrets: self.secrets.to_json(),
        })
    }

    /// Whether the ingested entry restored a recovered service's private state.
    pub(super) fn restores_private_state(write_set: &WriteSet) -> bool {
        matches!(
            write_set.get(PREVIOUS_SERVICE_MAP, PRIVATE_STATE_RESTORED_KEY),
            Some(Some(_))
        )
    }

    /// The recovery status for `GET /gov/recovery/status`.
    pub(crate) fn recovery_status(&self) -> serde_json::Value {
        let shares: Option<RecoveryShares> = self
            .store
            .get(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY)
            .and_then(|bytes| serde_json::from_slice(bytes).ok());
        let submitted: Vec<&String> = self.recovery.partials.keys().collect();
        let threshold = shares.as_ref().map_or(0, |shares| shares.threshold);
        // Why nothing protects the ledger secret, if nothing does.
        let problem = if shares.is_none() {
            let mut tx = self.begin();
            let (wanted, members) = Node::recovery_inputs(&mut tx);
            Some(format!(
                "no recovery shares: {} recovery member(s) (members with a recovery key) for a \
                 threshold of {wanted}; without shares a service that loses every node cannot \
                 be recovered",
                members.len()
            ))
        } else {
            None
        };
        serde_json::json!({
            "serviceStatus": self.service_status,
            "recoveredAt": self.recovered_at(),
            "threshold": threshold,
            "recoveryMembers": shares.as_ref().map(|s| s.members.keys().cloned().collect::<Vec<_>>()),
            "submitted": submitted,
            "missing": (threshold as usize).saturating_sub(submitted.len()),
            "privateStatePending": !self.recovery.pending.is_empty(),
            "problem": problem,
        })
    }

    /// A member's share record for `GET /gov/recovery/shares/{member_id}`.
    pub(crate) fn recovery_share_of(&self, member_id: &str) -> Option<serde_json::Value> {
        let shares: RecoveryShares = self
            .store
            .get(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())?;
        let share = shares.members.get(member_id)?;
        Some(serde_json::json!({
            "memberId": member_id,
            "index": share.index,
            "verificationKey": share.verification_key,
            "encryptedShare": share.encrypted_share,
            "ciphertext": shares.ciphertext,
            "threshold": shares.threshold,
        }))
    }

    /// Takes a member's partial decryption (already authenticated, recorded in `tx`). Returns
    /// the message for the member, or why it is refused (HTTP status, code, message).
    pub(crate) fn submit_recovery_share(
        &mut self,
        tx: &mut Tx,
        member_id: &str,
        partial: &[u8],
    ) -> Result<String, (u16, &'static str, String)> {
        if self.service_status != Some(ServiceStatus::WaitingForRecoveryShares) {
            return Err((
                403,
                "ServiceNotWaitingForShares",
                format!(
                    "the service is {:?}: recovery shares are taken only after \
                     transition_service_to_open passes on a recovering service",
                    self.service_status
                ),
            ));
        }
        let shares: RecoveryShares = self
            .store
            .get(RECOVERY_SHARES_MAP, RECOVERY_SHARES_KEY)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .ok_or((
                409,
                "NoRecoveryShares",
                "the old ledger holds no recovery shares (too few recovery members)".to_owned(),
            ))?;
        let share = shares.members.get(member_id).ok_or_else(|| {
            (
                403,
                "NotARecoveryMember",
                format!("member {member_id} holds no recovery share"),
            )
        })?;
        let invalid = |why: String| (400, "InvalidRecoveryShare", why);
        let partial = PartialDecryption::from_bytes(partial)
            .map_err(|error| invalid(format!("member {member_id}: {error}")))?;
        if partial.index != share.index {
            return Err(invalid(format!(
                "member {member_id} holds share {}, not {}",
                share.index, partial.index
            )));
        }
        let ciphertext = hex::decode(&shares.ciphertext)
            .ok()
            .and_then(|bytes| RecoveryCiphertext::from_bytes(&bytes).ok())
            .ok_or_else(|| invalid("the recorded recovery ciphertext is malformed".to_owned()))?;
        let verification_key: [u8; 32] = hex::decode(&share.verification_key)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| invalid("the recorded verification key is malformed".to_owned()))?;
        verify_partial(&verification_key, &ciphertext, &partial)
            .map_err(|error| invalid(format!("member {member_id}: {error}")))?;
        self.recovery.partials.insert(member_id.to_owned(), partial);
        let have = self.recovery.partials.len() as u32;
        if have < shares.threshold {
            return Ok(format!(
                "{have} of {} recovery shares submitted; {} missing",
                shares.threshold,
                shares.threshold - have
            ));
        }
        match self.restore_private_state(tx, &shares, &ciphertext) {
            Ok(count) => Ok(format!(
                "{have} of {} recovery shares submitted; the private state of {count} \
                 transactions is restored and the service is open",
                shares.threshold
            )),
            Err(error) => {
                // Valid proofs that still do not open the secret mean a broken deal; keep the
                // shares so that the members can see what happened.
                Err((500, "RecoveryFailed", error))
            }
        }
    }

    /// Combines the partial decryptions, restores every old secret and the old private state
    /// into `tx`, opens the service, chains this service's secret to the old ones and deals
    /// new shares.
    fn restore_private_state(
        &mut self,
        tx: &mut Tx,
        shares: &RecoveryShares,
        ciphertext: &RecoveryCiphertext,
    ) -> Result<usize, String> {
        let partials: Vec<PartialDecryption> = self.recovery.partials.values().cloned().collect();
        let wrapping_key =
            combine(shares.threshold, ciphertext, &partials).map_err(|error| error.to_string())?;
        let wrapped = hex::decode(&shares.wrapped_ledger_secret)
            .map_err(|_| "the wrapped ledger secret is not hex".to_owned())?;
        let latest = unwrap_key(
            &wrapping_key,
            &wrapped,
            &recovery_aad(shares.secret_start_seqno),
        )
        .map_err(|error| format!("the wrapped ledger secret: {error}"))?;
        let latest: [u8; 32] = latest
            .try_into()
            .map_err(|_| "the wrapped ledger secret is not 32 bytes".to_owned())?;
        let records: BTreeMap<u64, LedgerSecretRecord> = self
            .store
            .entries(LEDGER_SECRETS_MAP)
            .filter_map(|(_, value)| serde_json::from_slice::<LedgerSecretRecord>(value).ok())
            .map(|record| (record.start_seqno, record))
            .collect();
        let old = follow_chain(
            shares.secret_start_seqno,
            LedgerSecret::from_bytes(latest),
            &records,
        )
        .map_err(|error| error.to_string())?;
        // Decrypt every old private domain, in order, into one write set.
        let mut restored = WriteSet::new();
        let count = self.recovery.pending.len();
        for (seqno, bytes) in &self.recovery.pending {
            let secret = old
                .get(*seqno)
                .ok_or_else(|| format!("no old secret covers seqno {seqno}"))?;
            let entry = decode_entry(bytes).map_err(|error| format!("{seqno}: {error}"))?;
            let private = entry
                .decrypt_private(secret, bytes)
                .map_err(|error| format!("seqno {seqno}: {error}"))?;
            if !private.is_empty() {
                restored.merge(
                    WriteSet::decode(&private).map_err(|error| format!("{seqno}: {error}"))?,
                );
            }
        }
        for (map, entries) in restored.maps {
            for (key, value) in entries {
                match value {
                    Some(value) => tx.put(&map, &key, &value),
                    None => tx.remove(&map, &key),
                }
            }
        }
        // Open the service.
        let mut service: ServiceInfo = tx
            .get(SERVICE_MAP, SERVICE_KEY)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| "the service record is missing".to_owned())?;
        service.status = ServiceStatus::Open;
        tx.put(SERVICE_MAP, SERVICE_KEY, &json(&service));
        // Chain this service's own secret to the old latest one, so that whoever holds the
        // newest secret can walk back to the first.
        let (own_start, own) = self.secrets.latest();
        let own = own.clone();
        let (old_start, old_latest) = old.latest();
        let mut wrapped_for_nodes = BTreeMap::new();
        if let Ok(key) = self.config.node_cert.public_key() {
            let wrapped = charter_crypto::wrap_for_node(
                &key,
                own.as_bytes(),
                &node_wrap_aad(own_start),
                &mut self.rng,
            );
            wrapped_for_nodes.insert(self.node_id.clone(), hex::encode(wrapped));
        }
        let record = LedgerSecretRecord {
            start_seqno: own_start,
            wrapped_for_nodes,
            previous_start_seqno: old_start,
            previous_sealed: hex::encode(seal_previous(&own, old_start, old_latest)),
        };
        tx.put(
            LEDGER_SECRETS_MAP,
            ledger_secrets_key(own_start).as_bytes(),
            &json(&record),
        );
        let restored_at = self.next_tx_id().seqno;
        tx.put(
            PREVIOUS_SERVICE_MAP,
            PRIVATE_STATE_RESTORED_KEY,
            restored_at.to_string().as_bytes(),
        );
        // New shares, for the members of the recovered service and its own secret.
        self.deal_if_needed(tx, (own_start, &own));
        self.secrets.extend(old);
        self.recovery.partials.clear();
        self.seal_secrets = true;
        Ok(count)
    }
}
