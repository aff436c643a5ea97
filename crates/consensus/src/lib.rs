//! charter-consensus
