//! The ledger secrets of a service over time.
//!
//! A service starts with one secret, used from seqno 1. A rekey (by governance) writes a
//! transaction at seqno `v` recording a fresh secret used from `v + 1` on: the record holds the
//! new secret wrapped for every trusted node, and the previous secret wrapped under the new one,
//! so that whoever holds the latest secret can walk back to every earlier one (recovery does
//! exactly that).
//!
//! ```
//! use charter_crypto::LedgerSecret;
//! use charter_ledger::LedgerSecrets;
//! let mut secrets = LedgerSecrets::new(LedgerSecret::from_bytes([1; 32]));
//! secrets.insert(101, LedgerSecret::from_bytes([2; 32]));
//! assert_eq!(secrets.for_seqno(100).as_bytes(), &[1; 32]);
//! assert_eq!(secrets.for_seqno(101).as_bytes(), &[2; 32]);
//! assert_eq!(secrets.latest().0, 101);
//! ```

use std::collections::BTreeMap;

use charter_crypto::{hmac_sha256, LedgerSecret};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

/// Every ledger secret a node holds, by the first seqno each one encrypts.
#[derive(Clone, Debug)]
pub struct LedgerSecrets {
    by_start: BTreeMap<u64, LedgerSecret>,
}

impl LedgerSecrets {
    /// A service's secrets with only its first one, used from seqno 1.
    pub fn new(first: LedgerSecret) -> LedgerSecrets {
        LedgerSecrets {
            by_start: BTreeMap::from([(1, first)]),
        }
    }

    /// Secrets starting at `start`: a recovered service's own first secret, for the entries it
    /// writes after the old ledger (whose secrets it does not hold yet).
    pub fn starting_at(start: u64, secret: LedgerSecret) -> LedgerSecrets {
        LedgerSecrets {
            by_start: BTreeMap::from([(start, secret)]),
        }
    }

    /// The secret of the entry at `seqno`, if held (`None` before the first secret's start).
    pub fn get(&self, seqno: u64) -> Option<&LedgerSecret> {
        self.by_start
            .range(..=seqno)
            .next_back()
            .map(|(_, secret)| secret)
    }

    /// The secret that encrypts the entry at `seqno` (the first one below its start).
    pub fn for_seqno(&self, seqno: u64) -> &LedgerSecret {
        self.by_start
            .range(..=seqno)
            .next_back()
            .or_else(|| self.by_start.first_key_value())
            .map(|(_, secret)| secret)
            .expect("a node always holds at least one ledger secret")
    }

    /// The newest secret and the first seqno it encrypts.
    pub fn latest(&self) -> (u64, &LedgerSecret) {
        self.by_start
            .last_key_value()
            .map(|(start, secret)| (*start, secret))
            .expect("a node always holds at least one ledger secret")
    }

    /// Adds (or replaces) the secret used from `start` on.
    pub fn insert(&mut self, start: u64, secret: LedgerSecret) {
        self.by_start.insert(start, secret);
    }

    /// Forgets the secrets recorded by transactions after `seqno` (they were rolled back):
    /// those starting after `seqno + 1`. The first secret always stays.
    pub fn roll_back_to(&mut self, seqno: u64) {
        let first = self.by_start.keys().next().copied().unwrap_or(1);
        let dropped = self
            .by_start
            .split_off(&(seqno.saturating_add(2)).max(first + 1));
        drop(dropped);
    }

    /// Adds every secret of `other` (a recovered chain) to these.
    pub fn extend(&mut self, other: LedgerSecrets) {
        self.by_start.extend(other.by_start);
    }

    /// The secrets, oldest first, as `(start, secret)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LedgerSecret)> {
        self.by_start.iter().map(|(start, secret)| (*start, secret))
    }

    /// Number of secrets held.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// Always false: a node holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// JSON `{"START": "HEX SECRET", ...}`, for sealing and for handing to a joining node.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.by_start
                .iter()
                .map(|(start, secret)| (start.to_string(), hex::encode(secret.as_bytes()).into()))
                .collect(),
        )
    }

    /// Parses [`LedgerSecrets::to_json`].
    ///
    /// # Errors
    /// [`LedgerError::Secrets`] naming what is malformed.
    pub fn from_json(value: &serde_json::Value) -> Result<LedgerSecrets, LedgerError> {
        let bad = |why: String| LedgerError::Secrets(why);
        let object = value
            .as_object()
            .ok_or_else(|| bad("ledger secrets must be a JSON object".to_owned()))?;
        let mut by_start = BTreeMap::new();
        for (start, secret) in object {
            let start: u64 = start
                .parse()
                .ok()
                .filter(|start| *start > 0)
                .ok_or_else(|| bad(format!("{start:?} is not a seqno")))?;
            let bytes: [u8; 32] = secret
                .as_str()
                .and_then(|text| hex::decode(text).ok())
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| bad(format!("the secret from seqno {start} is not 32 hex bytes")))?;
            by_start.insert(start, LedgerSecret::from_bytes(bytes));
        }
        if by_start.is_empty() {
            return Err(bad("no ledger secret".to_owned()));
        }
        Ok(LedgerSecrets { by_start })
    }
}

/// A rekey, as recorded in [`LEDGER_SECRETS_MAP`](crate::tables::LEDGER_SECRETS_MAP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSecretRecord {
    /// The first seqno the new secret encrypts (the rekey transaction's seqno plus one).
    pub start_seqno: u64,
    /// The new secret wrapped for each trusted node (node ID → hex of
    /// [`charter_crypto::wrap_for_node`] with [`node_wrap_aad`]).
    pub wrapped_for_nodes: BTreeMap<String, String>,
    /// The first seqno of the previous secret.
    pub previous_start_seqno: u64,
    /// The previous secret, sealed under the new one ([`seal_previous`]), hex.
    pub previous_sealed: String,
}

/// Zero-padded key of a record in the ledger secrets map.
pub fn ledger_secrets_key(start_seqno: u64) -> String {
    format!("{start_seqno:020}")
}

/// Associated data when wrapping the secret starting at `start_seqno` for a node.
pub fn node_wrap_aad(start_seqno: u64) -> Vec<u8> {
    format!("charter ledger secret from {start_seqno}").into_bytes()
}

fn chain_key(newer: &LedgerSecret) -> LedgerSecret {
    // A key of its own, so that its single nonce never meets the entries' nonces.
    LedgerSecret::from_bytes(hmac_sha256(
        newer.as_bytes(),
        b"charter previous secret key",
    ))
}

/// Seals `previous` (starting at `previous_start`) under `newer`, for the chain of secrets.
pub fn seal_previous(
    newer: &LedgerSecret,
    previous_start: u64,
    previous: &LedgerSecret,
) -> Vec<u8> {
    chain_key(newer).encrypt(
        &[0; 12],
        &node_wrap_aad(previous_start),
        previous.as_bytes(),
    )
}

/// Opens what [`seal_previous`] sealed.
///
/// # Errors
/// [`LedgerError::Secrets`] if `newer` is the wrong secret or the bytes were altered.
pub fn open_previous(
    newer: &LedgerSecret,
    previous_start: u64,
    sealed: &[u8],
) -> Result<LedgerSecret, LedgerError> {
    let bytes = chain_key(newer)
        .decrypt(&[0; 12], &node_wrap_aad(previous_start), sealed)
        .map_err(|_| {
            LedgerError::Secrets(format!(
                "the secret from seqno {previous_start} does not open under the next one"
            ))
        })?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| LedgerError::Secrets("a sealed previous secret is not 32 bytes".to_owned()))?;
    Ok(LedgerSecret::from_bytes(bytes))
}

/// Walks the chain of rekey records back from the newest secret: given `latest` (starting at
/// `latest_start`) and the records of the ledger secrets map, returns every secret.
///
/// # Errors
/// [`LedgerError::Secrets`] if a link is missing or does not open.
pub fn follow_chain(
    latest_start: u64,
    latest: LedgerSecret,
    records: &BTreeMap<u64, LedgerSecretRecord>,
) -> Result<LedgerSecrets, LedgerError> {
    let mut by_start = BTreeMap::new();
    let mut start = latest_start;
    let mut secret = latest;
    // Each step moves to a strictly smaller start, so this ends.
    while start > 1 {
        let record = records.get(&start).ok_or_else(|| {
            LedgerError::Secrets(format!(
                "no rekey record for the secret starting at {start}"
            ))
        })?;
        if record.previous_start_seqno >= start {
            return Err(LedgerError::Secrets(format!(
                "the rekey record at {start} points forward to {}",
                record.previous_start_seqno
            )));
        }
        let sealed = hex::decode(&record.previous_sealed)
            .map_err(|_| LedgerError::Secrets(format!("rekey record at {start} is not hex")))?;
        let previous = open_previous(&secret, record.previous_start_seqno, &sealed)?;
        by_start.insert(start, secret);
        start = record.previous_start_seqno;
        secret = previous;
    }
    by_start.insert(start, secret);
    Ok(LedgerSecrets { by_start })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> LedgerSecret {
        LedgerSecret::from_bytes([byte; 32])
    }

    #[test]
    fn lookup_rollback_and_json() {
        let mut secrets = LedgerSecrets::new(secret(1));
        secrets.insert(11, secret(2));
        secrets.insert(21, secret(3));
        assert_eq!(secrets.for_seqno(0).as_bytes(), &[1; 32]);
        assert_eq!(secrets.for_seqno(10).as_bytes(), &[1; 32]);
        assert_eq!(secrets.for_seqno(20).as_bytes(), &[2; 32]);
        assert_eq!(secrets.for_seqno(u64::MAX).as_bytes(), &[3; 32]);
        let parsed = LedgerSecrets::from_json(&secrets.to_json()).unwrap();
        assert_eq!(parsed.len(), 3);
        // Rolling back to 20 keeps the secret its rekey (at 20) recorded; to 19 drops it.
        secrets.roll_back_to(20);
        assert_eq!(secrets.latest().0, 21);
        secrets.roll_back_to(19);
        assert_eq!(secrets.latest().0, 11);
        secrets.roll_back_to(0);
        assert_eq!(secrets.len(), 1);
        for bad in [
            serde_json::json!([]),
            serde_json::json!({}),
            serde_json::json!({"0": hex::encode([1; 32])}),
            serde_json::json!({"x": hex::encode([1; 32])}),
            serde_json::json!({"1": "abcd"}),
            serde_json::json!({"1": 5}),
        ] {
            assert!(LedgerSecrets::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_chain_walks_back_from_the_latest_secret() {
        let mut records = BTreeMap::new();
        let chain = [(1, secret(1)), (11, secret(2)), (31, secret(3))];
        for pair in chain.windows(2) {
            let ((old_start, old), (new_start, new)) = (&pair[0], &pair[1]);
            records.insert(
                *new_start,
                LedgerSecretRecord {
                    start_seqno: *new_start,
                    wrapped_for_nodes: BTreeMap::new(),
                    previous_start_seqno: *old_start,
                    previous_sealed: hex::encode(seal_previous(new, *old_start, old)),
                },
            );
        }
        let all = follow_chain(31, secret(3), &records).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.for_seqno(5).as_bytes(), &[1; 32]);
        assert_eq!(all.for_seqno(12).as_bytes(), &[2; 32]);
        // The wrong latest secret does not open the chain.
        assert!(follow_chain(31, secret(9), &records).is_err());
        // A missing link is named.
        records.remove(&11);
        let error = follow_chain(31, secret(3), &records)
            .unwrap_err()
            .to_string();
        assert!(error.contains("11"), "{error}");
    }
}
