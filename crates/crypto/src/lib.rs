//! charter-crypto
