//! The interface between the node and its applications: an application serves requests under
//! `/app` through an [`AppContext`], which lends it transactions over the store, writes their
//! results to the ledger, and reads historical transactions back from the ledger files.

use charter_crypto::Digest;
use charter_kv::{Tx, WriteSet};
use charter_ledger::{EntryKind, Receipt, TxId};

use crate::api::{Request, Response};
use crate::node::{Action, Node, TxStatus};
use crate::CoreError;

/// A built-in application.
pub trait Application: Send {
    /// Answers `request` if it is this application's (`path` is the part after `/app`), or
    /// returns `None` to let the next application try. The caller is a known user and the
    /// service is open.
    ///
    /// # Errors
    /// Only for failures that make the node inoperable (a ledger write that cannot happen);
    /// anything wrong with the request is a 4xx [`Response`].
    fn handle(
        &self,
        ctx: &mut AppContext<'_>,
        path: &str,
        request: &Request,
    ) -> Option<Result<Response, CoreError>>;
}

/// A historical transaction, read back from the ledger files and checked against the Merkle tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoricalTx {
    /// Its TxID.
    pub tx_id: TxId,
    /// Its writes, public and private, decrypted.
    pub write_set: WriteSet,
    /// Its application claims digest.
    pub claims_digest: Digest,
}

/// Whether a historical transaction is available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Historical {
    /// Being read from the ledger files; ask again shortly.
    Loading,
    /// Here it is.
    Ready(HistoricalTx),
    /// No such transaction (beyond the ledger, or another TxID holds that seqno).
    Unknown,
    /// The ledger files hold something that does not match the Merkle tree.
    Corrupt(String),
}

/// What an application may do while it answers one request.
pub struct AppContext<'a> {
    pub(crate) node: &'a mut Node,
    pub(crate) out: &'a mut Vec<Action>,
    pub(crate) caller_id: String,
}

impl AppContext<'_> {
    /// The calling user's ID (hex SHA-256 of their certificate).
    pub fn caller_id(&self) -> &str {
        &self.caller_id
    }

    /// A transaction over the current state.
    pub fn begin(&self) -> Tx {
        self.node.begin()
    }

    /// Whether this node can write (is the primary).
    pub fn is_primary(&self) -> bool {
        self.node.is_primary()
    }

    /// Writes `tx` to the ledger as the next transaction, with `claims_digest` in its Merkle
    /// leaf (zeros for none). Returns its TxID; it is Pending until a signature commits it.
    ///
    /// # Errors
    /// [`CoreError`] if this node is not the primary or the entry cannot be written.
    pub fn commit(&mut self, tx: Tx, claims_digest: Digest) -> Result<TxId, CoreError> {
        self.node.write_transaction(
            EntryKind::Transaction,
            tx.into_write_set(),
            claims_digest,
            self.out,
        )
    }

    /// The host's wall clock as of its last tick, in seconds since the Unix epoch (zero before
    /// the first tick). It is an input of the core, not read by it, so replaying the same inputs
    /// gives the same value; it may stand still or, after a failover to a node whose clock is
    /// behind, go back, so an application that needs monotonic time must enforce it.
    pub fn unix_time_s(&self) -> u64 {
        self.node.unix_time_s()
    }

    /// The TxID the next [`AppContext::commit`] on this node will get (for claims that name it).
    pub fn next_tx_id(&self) -> TxId {
        self.node.next_tx_id()
    }

    /// A 32-byte secret for this application, derived from the ledger secret and `label`:
    /// unknown outside the service, the same on every node holding the ledger secret.
    pub fn app_secret(&self, label: &str) -> Digest {
        self.node.app_secret(label)
    }

    /// Status of a transaction.
    pub fn tx_status(&self, tx_id: TxId) -> TxStatus {
        self.node.tx_status(tx_id)
    }

    /// The last committed transaction.
    pub fn commit_tx_id(&self) -> TxId {
        self.node.commit_tx_id()
    }

    /// The last transaction in the ledger.
    pub fn last_tx_id(&self) -> TxId {
        self.node.last_tx_id()
    }

    /// A receipt for a committed transaction, or its status if there is none.
    pub fn receipt(&self, tx_id: TxId) -> Result<Receipt, TxStatus> {
        self.node.receipt(tx_id)
    }

    /// The transaction `tx_id` as the ledger holds it. The first call for an entry asks the
    /// host to read it from the ledger files and returns [`Historical::Loading`]; once read
    /// and checked against the Merkle tree it is cached (bounded) and returned.
    pub fn historical(&mut self, tx_id: TxId) -> Historical {
        self.node.historical(tx_id, self.out)
    }

    /// Like [`AppContext::historical`] for every TxID in `tx_ids`, fetching all missing ones
    /// at once; `Loading` until all are here.
    pub fn historical_many(&mut self, tx_ids: &[TxId]) -> Vec<Historical> {
        tx_ids
            .iter()
            .map(|tx_id| self.node.historical(*tx_id, self.out))
            .collect()
    }
}
