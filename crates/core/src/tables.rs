//! Governance and application map names, and their record types.

use serde::{Deserialize, Serialize};

/// Members by member ID (hex SHA-256 of the certificate DER): JSON [`MemberInfo`].
pub const MEMBERS_MAP: &str = "public:charter.gov.members";
/// Users by user ID (hex SHA-256 of the certificate DER): JSON [`UserInfo`].
pub const USERS_MAP: &str = "public:charter.gov.users";
/// The key-value application's private map.
pub const KV_PRIVATE_MAP: &str = "kv";
/// The key-value application's public map.
pub const KV_PUBLIC_MAP: &str = "public:kv";

/// A member record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// PEM certificate.
    pub cert: String,
    /// `Accepted` until the member acknowledges, then `Active`.
    pub status: String,
}

/// A user record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// PEM certificate.
    pub cert: String,
}
