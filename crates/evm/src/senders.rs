//! Sender recovery ahead of the ordered core.
//!
//! Recovering a transaction's sender (secp256k1 public-key recovery) is the most expensive step
//! of `eth_sendRawTransaction`: about 40 us of the ~65 us a transfer costs on the primary's
//! single core thread. It depends only on the transaction's bytes, so it can happen before the
//! request is ordered, on other threads, without touching the state.
//!
//! **Design.** The host calls [`SenderCache::prepare`] on the JSON-RPC body of every
//! `POST /app/ethereum` request, on the thread that read the request from its connection and
//! before it hands the request to the core. `prepare` decodes every `eth_sendRawTransaction` in
//! the body, recovers its sender, and remembers `keccak256(raw) -> sender` (only for signatures
//! that recover). When the core later executes the transaction, the adapter computes the same
//! hash, takes the sender from the cache if it is there, and recovers it itself if not.
//!
//! **Why the core stays deterministic.** The cache is a memo of a pure function of the
//! transaction's bytes: an entry is only ever inserted by computing that function on the bytes
//! whose Keccak-256 is the key, so a hit returns exactly what recovery would have returned (up
//! to a Keccak-256 collision). What the core writes therefore depends only on its inputs, never
//! on whether, when or on which thread the host recovered a sender; the cache changes how long
//! a request takes, not what it does. The core itself starts no thread and does no I/O. A
//! client cannot plant a wrong sender: the host computes every entry from the request's own
//! bytes, and nothing else writes the cache. Followers never execute transactions (they apply
//! the primary's write sets), so their caches do not matter; a write a follower forwards to the
//! primary arrives over the node channel, and the primary's host prepares it on the thread that
//! hands node-channel messages to the core.
//!
//! **Bounds.** The cache holds at most [`SENDER_CACHE_ENTRIES_MAX`] entries; past that the
//! oldest go first (entries for requests that never reach the core — refused, malformed,
//! forwarded — are evicted this way). `prepare` recovers at most [`PREPARE_TRANSACTIONS_MAX`]
//! transactions per body, the most a batch may hold.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use alloy_primitives::{keccak256, Address, B256};
use serde_json::Value;

use crate::rpc::BATCH_CALLS_MAX;
use crate::transaction;

/// Recovered senders the cache keeps at most (about 100 bytes each).
pub const SENDER_CACHE_ENTRIES_MAX: usize = 65_536;
/// Transactions one [`SenderCache::prepare`] recovers at most: a full batch.
pub const PREPARE_TRANSACTIONS_MAX: usize = BATCH_CALLS_MAX;

const _: () = assert!(PREPARE_TRANSACTIONS_MAX <= SENDER_CACHE_ENTRIES_MAX);

#[derive(Debug, Default)]
struct Entries {
    senders: HashMap<B256, Address>,
    /// Insertion order, for eviction; may name hashes already taken.
    order: VecDeque<B256>,
}

/// Senders recovered outside the core, by transaction hash. Shared (`Arc`) between the host's
/// connection threads, which fill it, and the adapter on the core thread, which empties it.
#[derive(Debug, Default)]
pub struct SenderCache {
    entries: Mutex<Entries>,
}

impl SenderCache {
    /// An empty cache.
    pub fn new() -> SenderCache {
        SenderCache::default()
    }

    /// Recovers and remembers the sender of every `eth_sendRawTransaction` in `body` (a
    /// JSON-RPC request or batch). Anything that does not parse is left for the core to refuse.
    /// Returns how many senders it recovered.
    pub fn prepare(&self, body: &[u8]) -> usize {
        // Cheap check first: most requests are reads.
        if !contains(body, b"eth_sendRawTransaction") {
            return 0;
        }
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return 0;
        };
        let calls: Vec<&Value> = match &request {
            Value::Array(calls) => calls.iter().take(PREPARE_TRANSACTIONS_MAX).collect(),
            single => vec![single],
        };
        let mut recovered = Vec::with_capacity(calls.len());
        for call in calls {
            if call.get("method").and_then(Value::as_str) != Some("eth_sendRawTransaction") {
                continue;
            }
            let raw = call
                .get("params")
                .and_then(|params| params.get(0))
                .and_then(Value::as_str)
                .and_then(|text| text.strip_prefix("0x"))
                .and_then(crate::rpc::decode_hex_digits);
            let Some(raw) = raw else { continue };
            if let Ok(signed) = transaction::decode_signed(&raw) {
                recovered.push((signed.hash, signed.sender));
            }
        }
        let count = recovered.len();
        for (hash, sender) in recovered {
            self.insert(hash, sender);
        }
        count
    }

    /// Remembers that the transaction whose raw bytes hash to `hash` was signed by `sender`.
    /// Private: only [`SenderCache::prepare`], which recovered `sender` from those bytes, calls
    /// it, which is what makes a hit as good as a recovery.
    fn insert(&self, hash: B256, sender: Address) {
        let mut entries = self.lock();
        if entries.senders.insert(hash, sender).is_none() {
            entries.order.push_back(hash);
        }
        // Every iteration removes one entry of `order`, which is bounded by the same maximum.
        while entries.order.len() > SENDER_CACHE_ENTRIES_MAX {
            if let Some(oldest) = entries.order.pop_front() {
                entries.senders.remove(&oldest);
            }
        }
        assert!(entries.senders.len() <= SENDER_CACHE_ENTRIES_MAX);
        assert!(entries.order.len() <= SENDER_CACHE_ENTRIES_MAX);
    }

    /// The sender recovered for the transaction whose raw bytes hash to `hash`, removed from the
    /// cache, if the host recovered it.
    pub fn take(&self, hash: &B256) -> Option<Address> {
        let mut entries = self.lock();
        let sender = entries.senders.remove(hash);
        if entries.senders.is_empty() {
            // Nothing left to evict: forget the order too, so it does not grow with taken hashes.
            entries.order.clear();
        }
        sender
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().senders.len()
    }

    /// True if no sender is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves entries that are each still correct (every one
        // was computed from its key's bytes), so a poisoned lock is safe to keep using.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The hash the cache keys a raw transaction by: its Keccak-256, which is also its transaction
/// hash ([`transaction::decode_stored_hashed`] takes it).
pub fn raw_hash(raw: &[u8]) -> B256 {
    keccak256(raw)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_the_maximum_and_evicts_the_oldest() {
        let cache = SenderCache::new();
        let hash = |index: usize| B256::from(alloy_primitives::U256::from(index));
        for index in 0..SENDER_CACHE_ENTRIES_MAX + 10 {
            cache.insert(hash(index), Address::with_last_byte(1));
        }
        assert_eq!(cache.len(), SENDER_CACHE_ENTRIES_MAX);
        assert_eq!(cache.take(&hash(0)), None);
        assert_eq!(cache.take(&hash(9)), None);
        assert_eq!(
            cache.take(&hash(SENDER_CACHE_ENTRIES_MAX + 9)),
            Some(Address::with_last_byte(1))
        );
        assert_eq!(cache.take(&hash(SENDER_CACHE_ENTRIES_MAX + 9)), None);
        assert_eq!(cache.len(), SENDER_CACHE_ENTRIES_MAX - 1);
    }

    #[test]
    fn ignores_what_is_not_a_signed_transaction() {
        let cache = SenderCache::new();
        for body in [
            &b""[..],
            b"{",
            br#"{"method": "eth_sendRawTransaction"}"#,
            br#"{"method": "eth_sendRawTransaction", "params": ["0x1234"]}"#,
            br#"{"method": "eth_sendRawTransaction", "params": ["zz"]}"#,
            br#"[{"method": "eth_sendRawTransaction", "params": [7]}, 3]"#,
            br#"{"method": "eth_call", "params": ["eth_sendRawTransaction"]}"#,
        ] {
            assert_eq!(cache.prepare(body), 0);
        }
        assert!(cache.is_empty());
    }
}
