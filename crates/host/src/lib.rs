//! charter-host
