//! Charter's Ethereum adapter: an [`Application`] that executes signed Ethereum transactions
//! with the `revm` EVM (hard fork Osaka) against account, code and storage maps in Charter's
//! key-value store, and serves the standard Ethereum JSON-RPC at `POST /app/ethereum`, so that
//! web3.py, ethers and other tooling work against a Charter service.
//!
//! ```
//! use charter_evm::{chain::ChainConfig, MemoryLedger, EthereumApp};
//! use serde_json::json;
//!
//! let app = EthereumApp::new(ChainConfig::dev());
//! let mut ledger = MemoryLedger::new("user-a");
//! let request = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []});
//! let reply = app.serve(&mut ledger, request.to_string().as_bytes()).unwrap();
//! assert_eq!(reply, charter_evm::rpc::Reply::Json(json!({"jsonrpc": "2.0", "id": 1, "result": "0x4348"})));
//! // The first request applied the genesis allocation as its own Charter transaction.
//! assert_eq!(ledger.commits(), 1);
//! ```
//!
//! # Transactions and blocks
//! Every `eth_sendRawTransaction` (signed legacy EIP-155, EIP-2930 or EIP-1559; no blob or
//! EIP-7702 transactions) is decoded, its sender recovered, and executed on the primary against
//! the latest state; its state changes, its receipt and a new block are written by **one
//! Charter transaction**, so every Ethereum transaction is in the ledger, replicated by Raft and
//! covered by Charter receipts (the Ethereum receipt names it in `charterTransactionId`). There
//! is no mempool: a transaction whose nonce is not the sender's next one is refused, not queued.
//! Each Ethereum transaction is its own block, and the block number is the number of Ethereum
//! transactions executed so far; a block's timestamp is the primary's clock when it executed
//! the transaction, never earlier than its parent's ([`chain`] has the details). Gas is metered as on Ethereum but
//! the base fee is zero and `eth_gasPrice` is zero; a transaction may still offer a price, which
//! is charged and paid to the zero address.
//!
//! # Confidentiality
//! Every map is private, so the ledger holds it encrypted; what each user may see through the
//! JSON-RPC is decided by the caller's identity (the user ID Charter derives from the client
//! certificate):
//! - **Binding.** An Ethereum account (an address) is bound to the first Charter user who sends a
//!   transaction from it; from then on only that user may send from it (others get a -32000
//!   error even with the private key).
//! - **Accounts.** The balance and nonce of an externally owned account are visible only to the
//!   user it is bound to; everyone else (and everyone, while it is unbound) gets `0x0`.
//!   Contracts are public to every user: their code, storage, balance and nonce can be read
//!   by `eth_getCode`, `eth_getStorageAt`, `eth_getBalance` and `eth_call`, because a contract
//!   guards its own state (an ERC-20 decides itself whom `balanceOf` answers).
//! - **Transactions and receipts.** `eth_getTransactionByHash`, `eth_getTransactionReceipt`,
//!   and a block's transaction list, gas used and logs bloom are shown only to the user who sent
//!   the transaction; others get `null` or an empty block. Block headers (number, hash,
//!   timestamp) and `eth_blockNumber` are visible to all: they reveal how many transactions
//!   there are, not whose.
//! - **Logs.** `eth_getLogs` returns a log to the user who sent its transaction and to the users
//!   bound to an address the log names in an indexed topic, the parties a contract names (an
//!   ERC-20 `Transfer` is visible to the sender's and the recipient's users).
//! - **Calls.** `eth_call` and `eth_estimateGas` run with other users' externally owned accounts
//!   appearing absent, so a call cannot read another user's balance through `BALANCE`.
//!
//! Known limit of the model: a *transaction* runs against the true state (it must, to be
//! correct), so contract code can observe another account's balance with `BALANCE` and store
//! it where the sender can read it. Hiding balances from contract code would need an
//! inspector that refuses such opcodes; this adapter does not do that.
//!
//! # Genesis
//! The first JSON-RPC request that reaches a primary on a chain without a genesis block writes
//! the genesis allocation of the app's [`chain::ChainConfig`] as its own Charter transaction.
//! [`EthereumApp::dev`] uses [`chain::ChainConfig::dev`]: chain ID `0x4348` and the ten
//! Hardhat/Anvil development accounts funded; [`chain::ChainConfig::from_genesis_json`] reads a
//! geth-style genesis file for [`EthereumApp::new`]: the node does so at start for the file its
//! configuration names in `evm_genesis`, and uses [`EthereumApp::dev`] when it names none.

#![deny(missing_docs)]

use std::sync::Arc;

use charter_core::{AppContext, Application, CoreError, Method, Request, Response};
use charter_kv::{Store, Tx};
use charter_ledger::TxId;

pub mod chain;
mod error;
pub mod record;
pub mod rpc;
pub mod senders;
pub mod state;
pub mod transaction;

pub use error::{revert_reason, EvmError};

/// The path the JSON-RPC is served at, below `/app`.
pub const RPC_PATH: &str = "/ethereum";
/// The full path of the JSON-RPC, for the host ([`senders::SenderCache::prepare`]).
pub const RPC_FULL_PATH: &str = "/app/ethereum";
/// The header naming the Charter transaction a request wrote (the last, for a batch).
pub const TX_ID_HEADER: &str = "x-ms-ccf-transaction-id";
/// Uncommitted transactions past which writes answer 503 with a retry hint (the same bound as
/// the other applications).
pub const UNCOMMITTED_ENTRIES_MAX: u64 = 200_000;

/// Why a node cannot take a write now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteRefusal {
    /// This node is not the primary.
    NotPrimary,
    /// Too many transactions are not committed yet.
    Backpressure,
}

/// What the JSON-RPC needs from the node: the Charter side of [`AppContext`], so that the
/// adapter can be driven by the node and, in tests and benchmarks, by a [`MemoryLedger`].
pub trait Ledger {
    /// The caller's user ID.
    fn caller_id(&self) -> &str;
    /// A transaction over the latest state.
    fn begin(&self) -> Tx;
    /// The TxID the next [`Ledger::commit`] will get.
    fn next_tx_id(&self) -> TxId;
    /// The primary's wall clock in seconds since the Unix epoch, for block timestamps (an input
    /// of the deterministic core: [`AppContext::unix_time_s`]).
    fn unix_time_s(&self) -> u64;
    /// Writes `tx` as the next Charter transaction.
    ///
    /// # Errors
    /// [`CoreError`] if the write cannot happen; the node is then inoperable.
    fn commit(&mut self, tx: Tx) -> Result<TxId, CoreError>;
    /// Whether this node can write now.
    ///
    /// # Errors
    /// The reason it cannot.
    fn can_write(&self) -> Result<(), WriteRefusal>;
}

struct AppLedger<'c, 'n> {
    ctx: &'c mut AppContext<'n>,
    /// The last transaction this request wrote, for the response's TxID header.
    written: Option<TxId>,
}

impl Ledger for AppLedger<'_, '_> {
    fn caller_id(&self) -> &str {
        self.ctx.caller_id()
    }

    fn begin(&self) -> Tx {
        self.ctx.begin()
    }

    fn next_tx_id(&self) -> TxId {
        self.ctx.next_tx_id()
    }

    fn unix_time_s(&self) -> u64 {
        self.ctx.unix_time_s()
    }

    fn commit(&mut self, tx: Tx) -> Result<TxId, CoreError> {
        let tx_id = self.ctx.commit(tx, [0; 32])?;
        self.written = Some(tx_id);
        Ok(tx_id)
    }

    fn can_write(&self) -> Result<(), WriteRefusal> {
        if !self.ctx.is_primary() {
            return Err(WriteRefusal::NotPrimary);
        }
        let uncommitted = self.ctx.last_tx_id().seqno - self.ctx.commit_tx_id().seqno;
        if uncommitted >= UNCOMMITTED_ENTRIES_MAX {
            return Err(WriteRefusal::Backpressure);
        }
        Ok(())
    }
}

/// A ledger in memory: a key-value store that commits at once, with no replication. For tests
/// and benchmarks of the adapter without a node. Cloning is cheap (the store's maps are
/// persistent), so a test can fork a prepared ledger.
#[derive(Clone, Debug)]
pub struct MemoryLedger {
    store: Store,
    /// The user calling (the ID Charter would derive from the client certificate).
    pub caller: String,
    /// Whether writes are allowed (a primary) or refused as on a follower.
    pub primary: bool,
    /// The clock block timestamps are taken from, in seconds since the Unix epoch (zero: blocks
    /// keep the genesis timestamp).
    pub unix_time_s: u64,
    seqno: u64,
}

impl MemoryLedger {
    /// An empty ledger whose caller is `caller`.
    pub fn new(caller: &str) -> MemoryLedger {
        MemoryLedger {
            store: Store::new(),
            caller: caller.to_owned(),
            primary: true,
            unix_time_s: 0,
            seqno: 0,
        }
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.seqno
    }

    /// The store, to inspect.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Ledger for MemoryLedger {
    fn caller_id(&self) -> &str {
        &self.caller
    }

    fn begin(&self) -> Tx {
        Tx::new(self.store.snapshot())
    }

    fn next_tx_id(&self) -> TxId {
        TxId::new(1, self.seqno + 1)
    }

    fn unix_time_s(&self) -> u64 {
        self.unix_time_s
    }

    fn commit(&mut self, tx: Tx) -> Result<TxId, CoreError> {
        let tx_id = self.next_tx_id();
        self.store
            .commit(tx, tx_id.seqno)
            .map_err(|error| CoreError::Write {
                tx_id,
                reason: error.to_string(),
            })?;
        self.seqno += 1;
        Ok(tx_id)
    }

    fn can_write(&self) -> Result<(), WriteRefusal> {
        if self.primary {
            Ok(())
        } else {
            Err(WriteRefusal::NotPrimary)
        }
    }
}

/// The Ethereum application: JSON-RPC at `POST /app/ethereum` over one chain.
#[derive(Debug)]
pub struct EthereumApp {
    config: chain::ChainConfig,
    code_cache: state::CodeCache,
    senders: Arc<senders::SenderCache>,
}

impl EthereumApp {
    /// The app for the chain `config`.
    pub fn new(config: chain::ChainConfig) -> EthereumApp {
        EthereumApp {
            config,
            code_cache: state::CodeCache::default(),
            senders: Arc::new(senders::SenderCache::new()),
        }
    }

    /// The app for the development chain ([`chain::ChainConfig::dev`]).
    pub fn dev() -> EthereumApp {
        EthereumApp::new(chain::ChainConfig::dev())
    }

    /// The chain's configuration.
    pub fn config(&self) -> &chain::ChainConfig {
        &self.config
    }

    /// The cache of senders recovered ahead of the core, for the host to fill with
    /// [`senders::SenderCache::prepare`] on its own threads (see [`senders`] for the design).
    pub fn senders(&self) -> Arc<senders::SenderCache> {
        Arc::clone(&self.senders)
    }

    /// Answers the JSON-RPC request `body` against `ledger`.
    ///
    /// # Errors
    /// Only [`CoreError`] from a ledger write.
    pub fn serve(&self, ledger: &mut dyn Ledger, body: &[u8]) -> Result<rpc::Reply, CoreError> {
        rpc::Server::new(&self.config, &self.code_cache, &self.senders).serve(ledger, body)
    }
}

/// The HTTP response for a reply.
pub fn http_response(reply: rpc::Reply) -> Response {
    match reply {
        rpc::Reply::Json(value) => Response::json(200, &value),
        rpc::Reply::Empty => Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        },
        rpc::Reply::Refused(WriteRefusal::NotPrimary) => {
            Response::error(503, "NotPrimary", "this node is not the primary")
        }
        rpc::Reply::Refused(WriteRefusal::Backpressure) => Response::error(
            503,
            "Backpressure",
            "too many uncommitted transactions; retry later",
        )
        .with_header("retry-after", "1"),
    }
}

impl Application for EthereumApp {
    fn handle(
        &self,
        ctx: &mut AppContext<'_>,
        path: &str,
        request: &Request,
    ) -> Option<Result<Response, CoreError>> {
        if path != RPC_PATH {
            return None;
        }
        if request.method != Method::Post {
            return Some(Ok(Response::error(
                405,
                "MethodNotAllowed",
                "JSON-RPC takes POST",
            )));
        }
        let mut ledger = AppLedger { ctx, written: None };
        let reply = match self.serve(&mut ledger, &request.body) {
            Ok(reply) => reply,
            Err(error) => return Some(Err(error)),
        };
        let response = http_response(reply);
        // As Charter's other write endpoints do: the TxID of the (last) transaction written,
        // whose status /node/tx reports.
        Some(Ok(match ledger.written {
            Some(tx_id) => response.with_header(TX_ID_HEADER, tx_id.to_string()),
            None => response,
        }))
    }
}
