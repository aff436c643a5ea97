//! charter-ledger
