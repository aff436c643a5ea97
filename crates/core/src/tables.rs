//! The key-value application's maps. Governance maps live in `charter_gov::tables`.

/// The key-value application's private map.
pub const KV_PRIVATE_MAP: &str = "kv";
/// The key-value application's public map.
pub const KV_PUBLIC_MAP: &str = "public:kv";
/// Who may read each restricted entry of [`KV_PRIVATE_MAP`] (written with `?readers=`), under
/// the entry's key. Private, so the ledger holds it encrypted.
pub const KV_ACCESS_MAP: &str = "kv.access";
