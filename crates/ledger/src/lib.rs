//! Charter's ledger: the entry format with its public and private domains, the framing of
//! entries in chunk files, the Merkle tree over transactions, signatures and receipts.
//!
//! Everything here works on bytes in memory; the host reads and writes the files.

pub mod frame;
pub mod merkle;
