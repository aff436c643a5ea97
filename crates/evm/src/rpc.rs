//! Ethereum JSON-RPC 2.0 (single and batch requests) over a [`Ledger`], with caller-based
//! confidentiality applied to every answer (see the crate documentation for the model).

use alloy_primitives::{keccak256, Address, Bloom, Bytes, B256, U256};
use charter_core::CoreError;
use charter_kv::Tx;
use serde_json::{json, Value};

use crate::chain::{self, BlockRecord, CallRequest, ChainConfig, Executor, TxRecord};
use crate::record;
use crate::senders::{self, SenderCache};
use crate::state::{self, CodeCache};
use crate::transaction::{self, TxType};
use crate::{EvmError, Ledger, WriteRefusal};

/// Calls one batch may hold (geth's default `BatchRequestLimit`).
pub const BATCH_CALLS_MAX: usize = 1_000;
/// Blocks one `eth_getLogs` may span.
pub const LOGS_BLOCK_RANGE_MAX: u64 = 10_000;
/// Logs one `eth_getLogs` may return.
pub const LOGS_RESULTS_MAX: usize = 10_000;
/// Blocks one `eth_feeHistory` reports at most.
pub const FEE_HISTORY_BLOCKS_MAX: u64 = 1_024;
/// Reward percentiles one `eth_feeHistory` takes at most.
pub const FEE_HISTORY_PERCENTILES_MAX: usize = 100;
/// Addresses or topic alternatives one log filter may list.
pub const FILTER_ALTERNATIVES_MAX: usize = 1_000;

const _: () = assert!(LOGS_BLOCK_RANGE_MAX as usize <= LOGS_RESULTS_MAX);

/// JSON-RPC 2.0: invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0: not a request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0: no such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC 2.0: wrong parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Server error: what Ethereum clients report for refused transactions and failed calls.
pub const SERVER_ERROR: i64 = -32000;

/// Methods that write to the ledger.
const WRITE_METHODS: [&str; 1] = ["eth_sendRawTransaction"];

/// The version `web3_clientVersion` reports.
pub const CLIENT_VERSION: &str = concat!("Charter/v", env!("CARGO_PKG_VERSION"), "/revm-43");

/// A keccak-256 of the RLP of an empty list: the uncles hash of every block.
const EMPTY_UNCLES_HASH: &str =
    "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347";
/// The root of an empty Merkle-Patricia trie.
const EMPTY_ROOT_HASH: &str = "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421";

/// What the HTTP layer sends back.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A JSON-RPC response (an object, or an array for a batch), HTTP 200.
    Json(Value),
    /// Only notifications were sent: nothing to answer (HTTP 204).
    Empty,
    /// The request writes and this node cannot write now.
    Refused(WriteRefusal),
}

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The error code.
    pub code: i64,
    /// A sentence for people.
    pub message: String,
    /// Revert data, for reverts.
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

impl From<EvmError> for RpcError {
    fn from(error: EvmError) -> RpcError {
        let data = match &error {
            EvmError::Reverted(data) => Some(json!(data_hex(data))),
            _ => None,
        };
        RpcError {
            code: error.rpc_code(),
            message: error.to_string(),
            data,
        }
    }
}

type CallResult = Result<Value, RpcError>;

/// The JSON-RPC server of one chain.
pub struct Server<'a> {
    config: &'a ChainConfig,
    executor: Executor<'a>,
    senders: &'a SenderCache,
}

fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()})
}

impl<'a> Server<'a> {
    /// A server for the chain `config`, taking senders recovered ahead of time from `senders`.
    pub fn new(
        config: &'a ChainConfig,
        code_cache: &'a CodeCache,
        senders: &'a SenderCache,
    ) -> Server<'a> {
        Server {
            config,
            executor: Executor::new(config, code_cache),
            senders,
        }
    }

    /// Answers the JSON-RPC request (or batch) `body` for the ledger's caller. On a node that
    /// can write, the first request applies the genesis allocation as its own transaction.
    ///
    /// # Errors
    /// Only [`CoreError`] from a ledger write, which leaves the node inoperable.
    pub fn serve(&self, ledger: &mut dyn Ledger, body: &[u8]) -> Result<Reply, CoreError> {
        let request: Value = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(error) => {
                let error = RpcError::new(PARSE_ERROR, format!("parse error: {error}"));
                return Ok(Reply::Json(error_response(Value::Null, &error)));
            }
        };
        let calls: Vec<&Value> = match &request {
            Value::Array(calls) => {
                if calls.is_empty() {
                    let error = RpcError::new(INVALID_REQUEST, "empty batch");
                    return Ok(Reply::Json(error_response(Value::Null, &error)));
                }
                if calls.len() > BATCH_CALLS_MAX {
                    let error = RpcError::new(
                        INVALID_REQUEST,
                        format!("a batch holds at most {BATCH_CALLS_MAX} calls"),
                    );
                    return Ok(Reply::Json(error_response(Value::Null, &error)));
                }
                calls.iter().collect()
            }
            single => vec![single],
        };
        let writes = calls.iter().any(|call| {
            call.get("method")
                .and_then(Value::as_str)
                .is_some_and(|method| WRITE_METHODS.contains(&method))
        });
        let can_write = ledger.can_write();
        if writes {
            if let Err(refusal) = can_write {
                return Ok(Reply::Refused(refusal));
            }
        }
        if can_write.is_ok() {
            self.ensure_genesis(ledger)?;
        }
        let mut responses = Vec::with_capacity(calls.len());
        for call in &calls {
            if let Some(response) = self.answer(ledger, call)? {
                responses.push(response);
            }
        }
        assert!(responses.len() <= calls.len());
        Ok(match request {
            Value::Array(_) if responses.is_empty() => Reply::Empty,
            Value::Array(_) => Reply::Json(Value::Array(responses)),
            _ => responses.pop().map_or(Reply::Empty, Reply::Json),
        })
    }

    fn ensure_genesis(&self, ledger: &mut dyn Ledger) -> Result<(), CoreError> {
        let mut tx = ledger.begin();
        if matches!(chain::head_number(&mut tx), Ok(Some(_))) {
            return Ok(());
        }
        let charter_tx_id = ledger.next_tx_id().to_string();
        // A genesis allocation over the store's limits leaves no chain: every call then says
        // that the chain has no genesis block.
        if chain::apply_genesis(&mut tx, self.config, charter_tx_id).is_ok() {
            ledger.commit(tx)?;
        }
        Ok(())
    }

    /// One call: its response, or `None` for a notification (no `id`).
    fn answer(&self, ledger: &mut dyn Ledger, call: &Value) -> Result<Option<Value>, CoreError> {
        let Some(object) = call.as_object() else {
            let error = RpcError::new(INVALID_REQUEST, "a call must be a JSON object");
            return Ok(Some(error_response(Value::Null, &error)));
        };
        let id = object.get("id").cloned();
        let valid_id = matches!(
            id,
            None | Some(Value::Null | Value::Number(_) | Value::String(_))
        );
        let method = object.get("method").and_then(Value::as_str);
        let version_ok = object.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
        let (Some(method), true, true) = (method, valid_id, version_ok) else {
            let error = RpcError::new(
                INVALID_REQUEST,
                "a call needs \"jsonrpc\": \"2.0\", a string method and a string or number id",
            );
            return Ok(Some(error_response(id.unwrap_or(Value::Null), &error)));
        };
        let params = match object.get("params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(params)) => params.clone(),
            Some(_) => {
                let error = RpcError::params("params must be an array");
                return Ok(id.map(|id| error_response(id, &error)));
            }
        };
        let result = self.dispatch(ledger, method, &params)?;
        let Some(id) = id else {
            return Ok(None);
        };
        Ok(Some(match result {
            Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
            Err(error) => error_response(id, &error),
        }))
    }

    fn dispatch(
        &self,
        ledger: &mut dyn Ledger,
        method: &str,
        params: &[Value],
    ) -> Result<CallResult, CoreError> {
        if method == "eth_sendRawTransaction" {
            return self.send_raw_transaction(ledger, params);
        }
        let caller = ledger.caller_id().to_owned();
        let now_s = ledger.unix_time_s();
        let mut tx = ledger.begin();
        let tx = &mut tx;
        let result = match method {
            "web3_clientVersion" => Ok(json!(CLIENT_VERSION)),
            "web3_sha3" => data_param(params, 0).map(|data| json!(hash_hex(&keccak256(data)))),
            "net_version" => Ok(json!(self.config.chain_id.to_string())),
            "net_listening" => Ok(json!(true)),
            "net_peerCount" => Ok(json!("0x0")),
            "eth_chainId" => Ok(json!(quantity(self.config.chain_id))),
            "eth_syncing" | "eth_mining" => Ok(json!(false)),
            "eth_hashrate" | "eth_gasPrice" | "eth_maxPriorityFeePerGas" | "eth_blobBaseFee" => {
                Ok(json!("0x0"))
            }
            "eth_accounts" => Ok(json!([])),
            "eth_blockNumber" => head_number(tx).map(|number| json!(quantity(number))),
            "eth_getBalance" => self.account_field(tx, params, &caller, |account| {
                json!(u256_hex(&account.balance))
            }),
            "eth_getTransactionCount" => self.account_field(tx, params, &caller, |account| {
                json!(quantity(account.nonce))
            }),
            "eth_getCode" => self.get_code(tx, params),
            "eth_getStorageAt" => self.get_storage_at(tx, params),
            "eth_call" => self.call(tx, params, &caller, now_s),
            "eth_estimateGas" => self.estimate_gas(tx, params, &caller, now_s),
            "eth_getTransactionByHash" => {
                self.with_visible_transaction(tx, params, &caller, transaction_json)
            }
            "eth_getTransactionReceipt" => {
                self.with_visible_transaction(tx, params, &caller, receipt_json)
            }
            "eth_getBlockByNumber" => self.block_by_number(tx, params, &caller),
            "eth_getBlockByHash" => self.block_by_hash(tx, params, &caller),
            "eth_getBlockTransactionCountByNumber" => {
                self.block_transaction_count(tx, params, &caller, false)
            }
            "eth_getBlockTransactionCountByHash" => {
                self.block_transaction_count(tx, params, &caller, true)
            }
            "eth_getTransactionByBlockNumberAndIndex" => {
                self.transaction_by_block_and_index(tx, params, &caller)
            }
            "eth_getLogs" => self.get_logs(tx, params, &caller),
            "eth_feeHistory" => self.fee_history(tx, params),
            _ => Err(RpcError::new(
                METHOD_NOT_FOUND,
                format!("the method {method} does not exist/is not available"),
            )),
        };
        Ok(result)
    }

    fn send_raw_transaction(
        &self,
        ledger: &mut dyn Ledger,
        params: &[Value],
    ) -> Result<CallResult, CoreError> {
        let raw = match data_param(params, 0) {
            Ok(raw) => raw,
            Err(error) => return Ok(Err(error)),
        };
        // A sender the host recovered from these very bytes is what recovery would give again
        // (see `senders`); otherwise recover it here.
        let hash = senders::raw_hash(&raw);
        let decoded = match self.senders.take(&hash) {
            Some(sender) => transaction::decode_stored_hashed(&raw, hash, sender),
            None => transaction::decode_signed(&raw),
        };
        let signed = match decoded {
            Ok(signed) => signed,
            Err(error) => return Ok(Err(error.into())),
        };
        let mut tx = ledger.begin();
        let charter_tx_id = ledger.next_tx_id().to_string();
        let caller = ledger.caller_id().to_owned();
        let now_s = ledger.unix_time_s();
        match self
            .executor
            .execute(&mut tx, &signed, &raw, &caller, charter_tx_id, now_s)
        {
            Ok(_) => {
                ledger.commit(tx)?;
                Ok(Ok(json!(hash_hex(&signed.hash))))
            }
            Err(error) => Ok(Err(error.into())),
        }
    }

    /// `eth_getBalance` / `eth_getTransactionCount`: zero for accounts the caller may not see.
    fn account_field(
        &self,
        tx: &mut Tx,
        params: &[Value],
        caller: &str,
        field: impl Fn(&state::StoredAccount) -> Value,
    ) -> CallResult {
        let address = address_param(params, 0)?;
        self.check_latest(tx, params.get(1))?;
        let account = state::read_account(tx, &address)?.unwrap_or(state::StoredAccount {
            nonce: 0,
            balance: U256::ZERO,
            code_hash: revm::primitives::KECCAK_EMPTY,
        });
        if !state::account_visible(tx, &address, caller)? {
            return Ok(field(&state::StoredAccount {
                nonce: 0,
                balance: U256::ZERO,
                code_hash: revm::primitives::KECCAK_EMPTY,
            }));
        }
        Ok(field(&account))
    }

    fn get_code(&self, tx: &mut Tx, params: &[Value]) -> CallResult {
        let address = address_param(params, 0)?;
        self.check_latest(tx, params.get(1))?;
        let code = match state::read_account(tx, &address)? {
            Some(account) => state::read_code(tx, &account.code_hash)
                .ok_or_else(|| EvmError::Corrupt(format!("the code of {address} is missing")))?,
            None => Vec::new(),
        };
        Ok(json!(data_hex(&code)))
    }

    fn get_storage_at(&self, tx: &mut Tx, params: &[Value]) -> CallResult {
        let address = address_param(params, 0)?;
        let slot = u256_param(params, 1)?;
        self.check_latest(tx, params.get(2))?;
        let value = state::read_storage(tx, &address, &slot);
        Ok(json!(hash_hex(&B256::from(value.to_be_bytes::<32>()))))
    }

    fn call(&self, tx: &mut Tx, params: &[Value], caller: &str, now_s: u64) -> CallResult {
        let request = call_request(params.first())?;
        self.check_latest(tx, params.get(1))?;
        let (output, _) = self.executor.call(tx, &request, caller, now_s)?;
        Ok(json!(data_hex(&output)))
    }

    fn estimate_gas(&self, tx: &mut Tx, params: &[Value], caller: &str, now_s: u64) -> CallResult {
        let request = call_request(params.first())?;
        self.check_latest(tx, params.get(1))?;
        let gas = self.executor.estimate_gas(tx, &request, caller, now_s)?;
        Ok(json!(quantity(gas)))
    }

    /// State is kept for the latest block only: a query for an older block's state is refused
    /// rather than answered with today's.
    fn check_latest(&self, tx: &mut Tx, block: Option<&Value>) -> Result<(), RpcError> {
        let head = head_number(tx)?;
        match resolve_block(tx, block, head)? {
            Some(number) if number == head => Ok(()),
            Some(number) => Err(RpcError::new(
                SERVER_ERROR,
                format!("state of block {number} is not available: this node keeps only the latest state (block {head})"),
            )),
            None => Err(RpcError::new(SERVER_ERROR, "header not found")),
        }
    }

    fn with_visible_transaction(
        &self,
        tx: &mut Tx,
        params: &[Value],
        caller: &str,
        render: fn(&BlockRecord, &TxRecord) -> CallResult,
    ) -> CallResult {
        let hash = hash_param(params, 0)?;
        let Some(block) = chain::block_of_transaction(tx, &hash)? else {
            return Ok(Value::Null);
        };
        match &block.transaction {
            Some(record) if record.user == caller => render(&block, record),
            _ => Ok(Value::Null),
        }
    }

    fn block_by_number(&self, tx: &mut Tx, params: &[Value], caller: &str) -> CallResult {
        let head = head_number(tx)?;
        let full = bool_param(params, 1)?;
        let Some(number) = resolve_block(tx, params.first(), head)? else {
            return Ok(Value::Null);
        };
        match chain::block(tx, number)? {
            Some(block) => block_json(&block, full, caller),
            None => Ok(Value::Null),
        }
    }

    fn block_by_hash(&self, tx: &mut Tx, params: &[Value], caller: &str) -> CallResult {
        let hash = hash_param(params, 0)?;
        let full = bool_param(params, 1)?;
        match chain::block_by_hash(tx, &hash)? {
            Some(block) => block_json(&block, full, caller),
            None => Ok(Value::Null),
        }
    }

    fn lookup_block(
        &self,
        tx: &mut Tx,
        params: &[Value],
        by_hash: bool,
    ) -> Result<Option<BlockRecord>, RpcError> {
        if by_hash {
            let hash = hash_param(params, 0)?;
            return Ok(chain::block_by_hash(tx, &hash)?);
        }
        let head = head_number(tx)?;
        match resolve_block(tx, params.first(), head)? {
            Some(number) => Ok(chain::block(tx, number)?),
            None => Ok(None),
        }
    }

    fn block_transaction_count(
        &self,
        tx: &mut Tx,
        params: &[Value],
        caller: &str,
        by_hash: bool,
    ) -> CallResult {
        Ok(match self.lookup_block(tx, params, by_hash)? {
            Some(block) => json!(quantity(u64::from(visible(&block, caller).is_some()))),
            None => Value::Null,
        })
    }

    fn transaction_by_block_and_index(
        &self,
        tx: &mut Tx,
        params: &[Value],
        caller: &str,
    ) -> CallResult {
        let index = u64_param(params, 1)?;
        let Some(block) = self.lookup_block(tx, params, false)? else {
            return Ok(Value::Null);
        };
        match visible(&block, caller) {
            Some(record) if index == 0 => transaction_json(&block, record),
            _ => Ok(Value::Null),
        }
    }

    fn get_logs(&self, tx: &mut Tx, params: &[Value], caller: &str) -> CallResult {
        let filter = params
            .first()
            .and_then(Value::as_object)
            .ok_or_else(|| RpcError::params("eth_getLogs takes a filter object"))?;
        let head = head_number(tx)?;
        let (from, to) = if let Some(hash) = filter.get("blockHash") {
            let hash = parse_hash(hash).ok_or_else(|| RpcError::params("invalid blockHash"))?;
            match chain::block_by_hash(tx, &hash)? {
                Some(block) => (block.number, block.number),
                None => return Err(RpcError::new(SERVER_ERROR, "unknown block")),
            }
        } else {
            // A range that starts past the head holds no logs yet; one that ends past it ends
            // at the head.
            let Some(from) = resolve_block(tx, filter.get("fromBlock"), head)? else {
                return Ok(json!([]));
            };
            let to = resolve_block(tx, filter.get("toBlock"), head)?.unwrap_or(head);
            (from, to)
        };
        if from > to {
            return Ok(json!([]));
        }
        if to - from >= LOGS_BLOCK_RANGE_MAX {
            return Err(RpcError::new(
                SERVER_ERROR,
                format!("a log query spans at most {LOGS_BLOCK_RANGE_MAX} blocks"),
            ));
        }
        let addresses = match filter.get("address") {
            None | Some(Value::Null) => None,
            Some(value) => Some(alternatives(value, parse_address, "address")?),
        };
        let mut topics: Vec<Option<Vec<B256>>> = Vec::new();
        if let Some(list) = filter.get("topics") {
            let list = match list {
                Value::Null => &Vec::new(),
                Value::Array(list) => list,
                _ => return Err(RpcError::params("topics must be an array")),
            };
            if list.len() > 4 {
                return Err(RpcError::params("at most four topic positions"));
            }
            for position in list {
                topics.push(match position {
                    Value::Null => None,
                    value => Some(alternatives(value, parse_hash, "topic")?),
                });
            }
        }
        let start_after = from.checked_sub(1).map(u64::to_be_bytes);
        let span = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        let blocks = tx.scan_prefix(
            chain::BLOCKS_MAP,
            b"",
            start_after.as_ref().map(|key| key.as_slice()),
            span,
        );
        let mut logs = Vec::new();
        for (_, bytes) in blocks {
            let block = record::decode_block(&bytes)?;
            if block.number < from || block.number > to {
                continue;
            }
            let Some(record) = &block.transaction else {
                continue;
            };
            for (index, log) in record.logs.iter().enumerate() {
                if let Some(addresses) = &addresses {
                    if !addresses.contains(&log.address) {
                        continue;
                    }
                }
                let topics_match = topics.iter().enumerate().all(|(i, wanted)| match wanted {
                    None => true,
                    Some(wanted) => log.topics.get(i).is_some_and(|t| wanted.contains(t)),
                });
                if !topics_match || !log_visible(tx, record, log, caller) {
                    continue;
                }
                if logs.len() == LOGS_RESULTS_MAX {
                    return Err(RpcError::new(
                        SERVER_ERROR,
                        format!("query returns more than {LOGS_RESULTS_MAX} results"),
                    ));
                }
                logs.push(log_json(&block, record, log, index));
            }
        }
        Ok(Value::Array(logs))
    }

    fn fee_history(&self, tx: &mut Tx, params: &[Value]) -> CallResult {
        let head = head_number(tx)?;
        let count = u64_param(params, 0)?.min(FEE_HISTORY_BLOCKS_MAX);
        let newest = resolve_block(tx, params.get(1), head)?
            .unwrap_or(head)
            .min(head);
        let count = count.min(newest + 1);
        let percentiles = match params.get(2) {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) if list.len() <= FEE_HISTORY_PERCENTILES_MAX => {
                Some(list.len())
            }
            Some(_) => return Err(RpcError::params("invalid reward percentiles")),
        };
        // usize::try_from cannot fail for a count at most FEE_HISTORY_BLOCKS_MAX.
        let blocks = usize::try_from(count).unwrap_or(0);
        let mut history = json!({
            "oldestBlock": quantity(newest + 1 - count),
            "baseFeePerGas": vec!["0x0"; blocks + 1],
            "gasUsedRatio": vec![0.0; blocks],
            "baseFeePerBlobGas": vec!["0x0"; blocks + 1],
            "blobGasUsedRatio": vec![0.0; blocks],
        });
        if let Some(percentiles) = percentiles {
            history["reward"] = json!(vec![vec!["0x0"; percentiles]; blocks]);
        }
        Ok(history)
    }
}

/// The latest block number, zero before genesis.
fn head_number(tx: &mut Tx) -> Result<u64, RpcError> {
    Ok(chain::head_number(tx)?.unwrap_or(0))
}

/// The block a block parameter names: a tag, a number, or an EIP-1898 object. `None` for a
/// number or hash past the chain.
fn resolve_block(tx: &mut Tx, value: Option<&Value>, head: u64) -> Result<Option<u64>, RpcError> {
    let number = match value {
        None | Some(Value::Null) => head,
        Some(Value::String(tag)) => match tag.as_str() {
            "latest" | "pending" | "safe" | "finalized" => head,
            "earliest" => 0,
            text => {
                parse_u64(text).ok_or_else(|| RpcError::params(format!("invalid block {text}")))?
            }
        },
        Some(Value::Object(object)) => {
            if let Some(hash) = object.get("blockHash") {
                let hash = parse_hash(hash).ok_or_else(|| RpcError::params("invalid blockHash"))?;
                return Ok(chain::block_by_hash(tx, &hash)?.map(|block| block.number));
            }
            // EIP-1898: the object names a block by hash or by number; an empty one is a
            // mistake, not "latest".
            let Some(number) = object.get("blockNumber") else {
                return Err(RpcError::params(
                    "a block object needs blockHash or blockNumber",
                ));
            };
            return resolve_block(tx, Some(number), head);
        }
        Some(Value::Number(number)) => number
            .as_u64()
            .ok_or_else(|| RpcError::params("invalid block number"))?,
        Some(_) => return Err(RpcError::params("invalid block parameter")),
    };
    Ok((number <= head).then_some(number))
}

/// The block's transaction if the caller may see it.
fn visible<'b>(block: &'b BlockRecord, caller: &str) -> Option<&'b TxRecord> {
    block
        .transaction
        .as_ref()
        .filter(|record| record.user == caller)
}

/// A log is visible to the user who sent its transaction and to the users bound to the
/// addresses it names in its indexed topics (an ERC-20 `Transfer`'s `from` and `to`).
fn log_visible(tx: &mut Tx, record: &TxRecord, log: &chain::LogRecord, caller: &str) -> bool {
    if record.user == caller {
        return true;
    }
    log.topics.iter().skip(1).any(|topic| {
        // An address-shaped word: twelve zero bytes, then twenty.
        topic[..12].iter().all(|byte| *byte == 0)
            && state::binding(tx, &Address::from_slice(&topic[12..])).as_deref() == Some(caller)
    })
}

fn quantity(value: u64) -> String {
    format!("{value:#x}")
}

fn quantity_u128(value: u128) -> String {
    format!("{value:#x}")
}

fn u256_hex(value: &U256) -> String {
    format!("{value:#x}")
}

fn data_hex(data: &[u8]) -> String {
    alloy_primitives::hex::encode_prefixed(data)
}

fn hash_hex(hash: &B256) -> String {
    data_hex(hash.as_slice())
}

fn address_hex(address: &Address) -> String {
    data_hex(address.as_slice())
}

fn parse_u64(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The bytes of a `0x`-prefixed hex string.
fn parse_hex_bytes(value: &Value) -> Option<Vec<u8>> {
    decode_hex_digits(value.as_str()?.strip_prefix("0x")?)
}

/// Hex digits (no prefix) as bytes, with const-hex's vectorized decoder (the `hex` crate's was
/// 2.6% of a primary's core thread under the Ethereum load, decoding raw transactions); that
/// decoder skips a `0x` of its own, so a second prefix is refused here.
pub(crate) fn decode_hex_digits(digits: &str) -> Option<Vec<u8>> {
    if digits.starts_with("0x") {
        return None;
    }
    alloy_primitives::hex::decode(digits).ok()
}

fn parse_address(value: &Value) -> Option<Address> {
    let bytes = parse_hex_bytes(value)?;
    (bytes.len() == 20).then(|| Address::from_slice(&bytes))
}

fn parse_hash(value: &Value) -> Option<B256> {
    let bytes = parse_hex_bytes(value)?;
    (bytes.len() == 32).then(|| B256::from_slice(&bytes))
}

fn parse_u256_value(value: &Value) -> Option<U256> {
    match value {
        Value::String(text) => {
            let digits = text.strip_prefix("0x")?;
            if digits.is_empty() || digits.len() > 64 {
                return None;
            }
            U256::from_str_radix(digits, 16).ok()
        }
        Value::Number(number) => number.as_u64().map(U256::from),
        _ => None,
    }
}

fn parse_u64_value(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => parse_u64(text),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

fn required(params: &[Value], index: usize) -> Result<&Value, RpcError> {
    params
        .get(index)
        .ok_or_else(|| RpcError::params(format!("missing value for required argument {index}")))
}

fn address_param(params: &[Value], index: usize) -> Result<Address, RpcError> {
    parse_address(required(params, index)?)
        .ok_or_else(|| RpcError::params(format!("argument {index} is not an address")))
}

fn hash_param(params: &[Value], index: usize) -> Result<B256, RpcError> {
    parse_hash(required(params, index)?)
        .ok_or_else(|| RpcError::params(format!("argument {index} is not a 32-byte hash")))
}

fn data_param(params: &[Value], index: usize) -> Result<Vec<u8>, RpcError> {
    parse_hex_bytes(required(params, index)?)
        .ok_or_else(|| RpcError::params(format!("argument {index} is not 0x-prefixed hex data")))
}

fn u256_param(params: &[Value], index: usize) -> Result<U256, RpcError> {
    parse_u256_value(required(params, index)?)
        .ok_or_else(|| RpcError::params(format!("argument {index} is not a quantity")))
}

fn u64_param(params: &[Value], index: usize) -> Result<u64, RpcError> {
    parse_u64_value(required(params, index)?)
        .ok_or_else(|| RpcError::params(format!("argument {index} is not a quantity")))
}

fn bool_param(params: &[Value], index: usize) -> Result<bool, RpcError> {
    match params.get(index) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(full)) => Ok(*full),
        Some(_) => Err(RpcError::params(format!(
            "argument {index} is not a boolean"
        ))),
    }
}

fn alternatives<T>(
    value: &Value,
    parse: fn(&Value) -> Option<T>,
    what: &str,
) -> Result<Vec<T>, RpcError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    if items.len() > FILTER_ALTERNATIVES_MAX {
        return Err(RpcError::params(format!(
            "at most {FILTER_ALTERNATIVES_MAX} {what} alternatives"
        )));
    }
    items
        .into_iter()
        .map(|item| parse(item).ok_or_else(|| RpcError::params(format!("invalid {what}"))))
        .collect()
}

fn call_request(value: Option<&Value>) -> Result<CallRequest, RpcError> {
    let object = value
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::params("argument 0 must be a call object"))?;
    let field = |name: &str| object.get(name).filter(|value| !value.is_null());
    let address = |name: &str| -> Result<Option<Address>, RpcError> {
        field(name)
            .map(|value| {
                parse_address(value).ok_or_else(|| RpcError::params(format!("invalid {name}")))
            })
            .transpose()
    };
    let gas = field("gas")
        .map(|value| parse_u64_value(value).ok_or_else(|| RpcError::params("invalid gas")))
        .transpose()?;
    let gas_price = field("gasPrice")
        .map(|value| {
            parse_u256_value(value)
                .and_then(|price| u128::try_from(price).ok())
                .ok_or_else(|| RpcError::params("invalid gasPrice"))
        })
        .transpose()?;
    let value = field("value")
        .map(|value| parse_u256_value(value).ok_or_else(|| RpcError::params("invalid value")))
        .transpose()?
        .unwrap_or(U256::ZERO);
    let input = match (field("input"), field("data")) {
        (Some(input), _) | (None, Some(input)) => {
            parse_hex_bytes(input).ok_or_else(|| RpcError::params("invalid input"))?
        }
        (None, None) => Vec::new(),
    };
    Ok(CallRequest {
        from: address("from")?,
        to: address("to")?,
        gas,
        gas_price,
        value,
        input: Bytes::from(input),
    })
}

fn transaction_json(block: &BlockRecord, record: &TxRecord) -> CallResult {
    let signed = transaction::decode_stored(&record.raw, record.sender)?;
    let mut object = json!({
        "blockHash": hash_hex(&block.hash),
        "blockNumber": quantity(block.number),
        "from": address_hex(&record.sender),
        "gas": quantity(signed.gas_limit),
        "gasPrice": quantity_u128(record.effective_gas_price),
        "hash": hash_hex(&record.hash),
        "input": data_hex(&signed.input),
        "nonce": quantity(signed.nonce),
        "to": signed.to.as_ref().map(address_hex),
        "transactionIndex": "0x0",
        "value": u256_hex(&signed.value),
        "type": quantity(u64::from(signed.tx_type.byte())),
        "chainId": quantity(signed.chain_id),
        "v": quantity(signed.v),
        "r": u256_hex(&signed.r),
        "s": u256_hex(&signed.s),
    });
    if signed.tx_type != TxType::Legacy {
        object["yParity"] = json!(quantity(u64::from(signed.y_parity)));
        object["accessList"] = signed
            .access_list
            .iter()
            .map(|entry| {
                json!({
                    "address": address_hex(&entry.address),
                    "storageKeys": entry.storage_keys.iter().map(hash_hex).collect::<Vec<_>>(),
                })
            })
            .collect();
    }
    if signed.tx_type == TxType::DynamicFee {
        object["maxFeePerGas"] = json!(quantity_u128(signed.max_fee_per_gas));
        object["maxPriorityFeePerGas"] =
            json!(quantity_u128(signed.max_priority_fee_per_gas.unwrap_or(0)));
    }
    Ok(object)
}

fn log_json(block: &BlockRecord, record: &TxRecord, log: &chain::LogRecord, index: usize) -> Value {
    json!({
        "address": address_hex(&log.address),
        "topics": log.topics.iter().map(hash_hex).collect::<Vec<_>>(),
        "data": data_hex(&log.data),
        "blockNumber": quantity(block.number),
        "blockHash": hash_hex(&block.hash),
        "blockTimestamp": quantity(block.timestamp),
        "transactionHash": hash_hex(&record.hash),
        "transactionIndex": "0x0",
        "logIndex": quantity(index as u64),
        "removed": false,
    })
}

fn receipt_json(block: &BlockRecord, record: &TxRecord) -> CallResult {
    let signed = transaction::decode_stored(&record.raw, record.sender)?;
    let logs: Vec<Value> = record
        .logs
        .iter()
        .enumerate()
        .map(|(index, log)| log_json(block, record, log, index))
        .collect();
    Ok(json!({
        "transactionHash": hash_hex(&record.hash),
        "transactionIndex": "0x0",
        "blockHash": hash_hex(&block.hash),
        "blockNumber": quantity(block.number),
        "from": address_hex(&record.sender),
        "to": signed.to.as_ref().map(address_hex),
        "cumulativeGasUsed": quantity(record.gas_used),
        "gasUsed": quantity(record.gas_used),
        "effectiveGasPrice": quantity_u128(record.effective_gas_price),
        "contractAddress": record.contract_address.as_ref().map(address_hex),
        "logs": logs,
        "logsBloom": data_hex(record.logs_bloom().as_slice()),
        "status": if record.status { "0x1" } else { "0x0" },
        "type": quantity(u64::from(signed.tx_type.byte())),
        "charterTransactionId": block.charter_tx_id,
    }))
}

/// A block as `eth_getBlockBy*` returns it. Its header is public; its transaction, gas used
/// and logs bloom only to the user who sent the transaction (others see an empty block).
/// The state, transactions and receipts roots are not Merkle-Patricia roots: Charter's own
/// Merkle tree and receipts carry integrity, so they are zero (or the empty-trie root).
fn block_json(block: &BlockRecord, full: bool, caller: &str) -> CallResult {
    let shown = visible(block, caller);
    let transactions: Vec<Value> = match shown {
        Some(record) if full => vec![transaction_json(block, record)?],
        Some(record) => vec![json!(hash_hex(&record.hash))],
        None => Vec::new(),
    };
    let gas_used = shown.map_or(0, |record| record.gas_used);
    let bloom = shown.map_or(Bloom::ZERO, TxRecord::logs_bloom);
    let size = shown.map_or(0, |record| record.raw.len()) + 540;
    let zero_hash = hash_hex(&B256::ZERO);
    Ok(json!({
        "number": quantity(block.number),
        "hash": hash_hex(&block.hash),
        "parentHash": hash_hex(&block.parent_hash),
        "nonce": "0x0000000000000000",
        "sha3Uncles": EMPTY_UNCLES_HASH,
        "logsBloom": data_hex(bloom.as_slice()),
        "transactionsRoot": if shown.is_some() { zero_hash.clone() } else { EMPTY_ROOT_HASH.to_owned() },
        "stateRoot": zero_hash,
        "receiptsRoot": if shown.is_some() { zero_hash.clone() } else { EMPTY_ROOT_HASH.to_owned() },
        "miner": address_hex(&Address::ZERO),
        "difficulty": "0x0",
        "totalDifficulty": "0x0",
        "extraData": "0x",
        "size": quantity(size as u64),
        "gasLimit": quantity(chain::BLOCK_GAS_LIMIT),
        "gasUsed": quantity(gas_used),
        "timestamp": quantity(block.timestamp),
        "transactions": transactions,
        "uncles": [],
        "baseFeePerGas": "0x0",
        "mixHash": hash_hex(&block.parent_hash),
        "withdrawals": [],
        "withdrawalsRoot": EMPTY_ROOT_HASH,
        "blobGasUsed": "0x0",
        "excessBlobGas": "0x0",
        "parentBeaconBlockRoot": zero_hash,
        "charterTransactionId": block.charter_tx_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_decode_strictly() {
        assert_eq!(decode_hex_digits("00aBff"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(decode_hex_digits(""), Some(Vec::new()));
        assert_eq!(decode_hex_digits("abc"), None, "odd length");
        assert_eq!(decode_hex_digits("zz"), None);
        assert_eq!(decode_hex_digits("0x00"), None, "a second prefix");
        assert_eq!(parse_hex_bytes(&json!("0x0x00")), None);
        assert_eq!(parse_hex_bytes(&json!("00")), None, "no prefix");
        assert_eq!(parse_hex_bytes(&json!("0x01")), Some(vec![1]));
    }

    #[test]
    fn hex_formats() {
        assert_eq!(quantity(0), "0x0");
        assert_eq!(quantity(255), "0xff");
        assert_eq!(u256_hex(&U256::ZERO), "0x0");
        assert_eq!(u256_hex(&U256::from(4096)), "0x1000");
        assert_eq!(data_hex(&[]), "0x");
        assert_eq!(parse_u64("0x10"), Some(16));
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("10"), None);
        assert_eq!(parse_u64("0x1ffffffffffffffff"), None);
        assert_eq!(parse_u256_value(&json!("0x0")), Some(U256::ZERO));
        assert_eq!(parse_address(&json!("0x12")), None);
    }
}
