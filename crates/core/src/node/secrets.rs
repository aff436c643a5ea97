//! Ledger secrets on a node: rekeys written by the primary and learned from the ledger.

use charter_crypto::{unwrap_from_node, wrap_for_node, Certificate, LedgerSecret};
use charter_gov::tables::{LEDGER_REKEY_KEY, LEDGER_REKEY_MAP};
use charter_kv::Tx;
use charter_ledger::tables::{LEDGER_SECRETS_MAP, NODES_MAP};
use charter_ledger::{
    ledger_secrets_key, node_wrap_aad, seal_previous, LedgerSecretRecord, NodeInfo, NodeStatus,
};

use super::Node;
use crate::CoreError;

impl Node {
    /// Takes from a rekey record the new secret, if the record wrapped it for this node.
    pub(super) fn learn_ledger_secret(&mut self, value: &[u8]) -> Result<(), String> {
        let record: LedgerSecretRecord =
            serde_json::from_slice(value).map_err(|error| error.to_string())?;
        let Some(wrapped) = record.wrapped_for_nodes.get(&self.node_id) else {
            // Not trusted when the secret was made: it came in the join response, or this node
            // is no longer meant to read what follows.
            return Ok(());
        };
        let wrapped = hex::decode(wrapped).map_err(|_| "wrapped secret is not hex".to_owned())?;
        let secret = unwrap_from_node(
            &self.config.node_key,
            &wrapped,
            &node_wrap_aad(record.start_seqno),
        )
        .map_err(|error| format!("the secret from seqno {}: {error}", record.start_seqno))?;
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| "a wrapped ledger secret is not 32 bytes".to_owned())?;
        self.secrets
            .insert(record.start_seqno, LedgerSecret::from_bytes(secret));
        Ok(())
    }

    /// The secrets a node admitted now receives: those recorded by committed transactions (a
    /// rekey still pending could be rolled back; if it commits, it wraps the secret for the
    /// admitted node too, since that node was trusted before it).
    pub(crate) fn ledger_secrets_for_joiner(&self) -> serde_json::Value {
        let mut secrets = self.secrets.clone();
        secrets.roll_back_to(self.commit_tx_id().seqno);
        secrets.to_json()
    }

    /// Carries out what an accepted proposal asked of the core, inside the same transaction:
    /// a requested rekey; then deals new recovery shares if their inputs changed (members'
    /// recovery keys, the threshold, the latest secret).
    pub(crate) fn finish_governance(&mut self, tx: &mut Tx) -> Result<(), CoreError> {
        let rekeyed = if tx
            .get(LEDGER_REKEY_MAP, LEDGER_REKEY_KEY.as_bytes())
            .is_some()
        {
            tx.remove(LEDGER_REKEY_MAP, LEDGER_REKEY_KEY.as_bytes());
            Some(self.write_rekey(tx))
        } else {
            None
        };
        if self.recovery.pending.is_empty() {
            // (A recovering service deals only once the old private state is back.)
            match rekeyed {
                Some((start, secret)) => self.deal_if_needed(tx, (start, &secret)),
                None => {
                    let (start, secret) = self.secrets.latest();
                    let secret = secret.clone();
                    self.deal_if_needed(tx, (start, &secret));
                }
            }
        }
        Ok(())
    }

    /// Records a fresh ledger secret for the entries after the transaction `tx` becomes: wrapped
    /// for every node that takes part in consensus, and chained to the previous secret.
    pub(crate) fn write_rekey(&mut self, tx: &mut Tx) -> (u64, LedgerSecret) {
        let start = self.next_tx_id().seqno + 1;
        let secret = LedgerSecret::generate(&mut self.rng);
        let (previous_start, previous) = self.secrets.latest();
        let previous_sealed = hex::encode(seal_previous(&secret, previous_start, previous));
        let voters = self.consensus.voters();
        let mut wrapped_for_nodes = std::collections::BTreeMap::new();
        for (node_id, value) in self.store.entries(NODES_MAP) {
            let Ok(info) = serde_json::from_slice::<NodeInfo>(value) else {
                continue;
            };
            let node_id = String::from_utf8_lossy(node_id).into_owned();
            // Retired nodes still voting must keep up until the configuration drops them.
            let takes_part = match info.status {
                NodeStatus::Trusted => true,
                NodeStatus::Retired => voters.contains(&super::raft_id(&node_id)),
                NodeStatus::Pending => false,
            };
            let key = Certificate::from_pem(&info.cert).and_then(|cert| cert.public_key());
            if let (true, Ok(key)) = (takes_part, key) {
                let wrapped = wrap_for_node(
                    &key,
                    secret.as_bytes(),
                    &node_wrap_aad(start),
                    &mut self.rng,
                );
                wrapped_for_nodes.insert(node_id, hex::encode(wrapped));
            }
        }
        let record = LedgerSecretRecord {
            start_seqno: start,
            wrapped_for_nodes,
            previous_start_seqno: previous_start,
            previous_sealed,
        };
        let value = serde_json::to_vec(&record).expect("a rekey record serializes");
        tx.put(
            LEDGER_SECRETS_MAP,
            ledger_secrets_key(start).as_bytes(),
            &value,
        );
        (start, secret)
    }
}
