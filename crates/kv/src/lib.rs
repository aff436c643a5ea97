//! `charter-kv`: Charter's key-value store.
//!
//! The store is a set of named, ordered maps from byte keys to byte values. Maps whose name
//! starts with `public:` are public (stored in clear in the ledger); all others are private.
//! A [`Tx`] reads an O(1) [`Snapshot`] plus its own buffered writes and produces a
//! [`WriteSet`]; [`Store::check_conflicts`] validates its read set against newer writes
//! (optimistic concurrency) and [`Store::apply`] applies committed write sets in seqno order.
//! Write sets have a deterministic, strictly decoded binary encoding.
//!
//! ```
//! use charter_kv::{Store, Tx, WriteSet};
//!
//! let mut store = Store::new();
//! let mut tx = Tx::new(store.snapshot());
//! tx.put("public:accounts", b"alice", b"10");
//! assert_eq!(tx.get("public:accounts", b"alice"), Some(b"10".to_vec()));
//! store.check_conflicts(&tx)?;
//! let write_set = tx.into_write_set();
//!
//! // Followers receive the encoded write set and apply it at the same seqno.
//! let bytes = write_set.to_bytes();
//! let mut follower = Store::new();
//! follower.apply(&WriteSet::decode(&bytes)?, 1);
//! store.apply(&write_set, 1);
//! assert_eq!(follower.get("public:accounts", b"alice"), Some(&b"10"[..]));
//!
//! // A transaction that read `alice` before a newer write to it conflicts.
//! let mut stale = Tx::new(store.snapshot());
//! stale.get("public:accounts", b"alice");
//! let mut other = WriteSet::new();
//! other.put("public:accounts", b"alice", b"0");
//! store.apply(&other, 2);
//! assert!(store.check_conflicts(&stale).is_err());
//! # Ok::<(), charter_kv::KvError>(())
//! ```

mod error;
mod store;
mod tx;
mod write_set;

pub use error::KvError;
pub use store::{Snapshot, Store};
pub use tx::Tx;
pub use write_set::{check_limits, WriteSet};

/// The seqno of the transaction that last wrote a key; 0 means never written.
pub type Version = u64;

/// Prefix of the names of public maps.
pub const PUBLIC_MAP_PREFIX: &str = "public:";

/// Maximum length of a key in bytes.
pub const KEY_BYTES_MAX: usize = 64 * 1024;
/// Maximum length of a value in bytes.
pub const VALUE_BYTES_MAX: usize = 16 << 20;
/// Maximum length of a map name in bytes.
pub const MAP_NAME_BYTES_MAX: usize = 256;

// Every length must fit the encoding's u32 prefixes; names must be able to hold the prefix.
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(KEY_BYTES_MAX <= VALUE_BYTES_MAX);
const _: () = assert!(MAP_NAME_BYTES_MAX <= KEY_BYTES_MAX);
const _: () = assert!(PUBLIC_MAP_PREFIX.len() < MAP_NAME_BYTES_MAX);

/// True if a map with this name is public (stored in clear): its name begins with `public:`.
pub fn is_public_map(name: &str) -> bool {
    name.starts_with(PUBLIC_MAP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_map_names() {
        assert!(is_public_map("public:charter.gov.members"));
        assert!(is_public_map("public:"));
        assert!(!is_public_map("public"));
        assert!(!is_public_map("private:public:x"));
        assert!(!is_public_map("Public:x"));
    }
}
