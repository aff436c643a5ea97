//! The key-value application's maps. Governance maps live in `charter_gov::tables`.

/// The key-value application's private map.
pub const KV_PRIVATE_MAP: &str = "kv";
/// The key-value application's public map.
pub const KV_PUBLIC_MAP: &str = "public:kv";
