//! charter-kv
