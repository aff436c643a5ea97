//! The crate's one error type.

/// Errors returned by `charter-kv`. Variants name the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// An encoding ended before a length-prefixed field or tag was complete.
    #[error("write set encoding is truncated")]
    Truncated,
    /// An encoding is structurally invalid (bad tag, unsorted keys, trailing bytes, ...).
    #[error("write set encoding is malformed: {what}")]
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
    /// A map name, key or value is longer than its named maximum.
    #[error("{what} is {len} bytes, above the maximum of {max}")]
    TooLarge {
        /// Which field was too large (`"map name"`, `"key"` or `"value"`).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum allowed length in bytes.
        max: usize,
    },
    /// A map name is empty, which is never valid.
    #[error("map name is empty")]
    MapNameEmpty,
    /// A key the transaction read (or a key inside a range it scanned) was written after the
    /// transaction's snapshot.
    #[error("conflict on map {map:?} key {key:?}")]
    Conflict {
        /// The map of the conflicting key.
        map: String,
        /// The conflicting key.
        key: Vec<u8>,
    },
    /// The transaction's snapshot is newer than the store it is checked against (for example
    /// after a rollback); the transaction must be re-executed.
    #[error("snapshot version {snapshot_version} is ahead of store version {store_version}")]
    SnapshotAhead {
        /// The transaction's snapshot version.
        snapshot_version: u64,
        /// The store's version.
        store_version: u64,
    },
}
