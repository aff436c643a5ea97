//! The chain: genesis, one block per Ethereum transaction, execution with `revm`, and the
//! records that receipts, blocks and logs are served from.
//!
//! **Blocks.** Charter orders transactions itself (Raft), so there is no mining: every Ethereum
//! transaction is its own block, and the block number is the count of Ethereum transactions
//! executed so far (the genesis block is 0). Each block is written by the same Charter
//! transaction as the Ethereum transaction it holds, so a block is exactly as committed as its
//! transaction. A block's hash is the first 24 bytes of the Keccak-256 of the parent's hash,
//! the number, the timestamp and the transaction's hash (numbers big endian), followed by the
//! block number as 8 big-endian bytes ([`block_number_of_hash`]). Hashes still chain through the
//! parent's hash, but only their first 24 bytes (192 bits) come from Keccak-256, and a hash
//! tells its block's number; as before, they are not Ethereum's hashes of RLP headers. A lookup
//! by hash loads the block the last 8 bytes name and answers it only if that block's hash is
//! exactly the one asked for, so no map from hashes to numbers is kept.
//!
//! **Timestamps.** A block's timestamp is the primary's wall clock when it executed the
//! transaction, in seconds, as the core hands it to applications
//! ([`charter_core::AppContext::unix_time_s`]: the host's clock at its last tick, an input of the
//! deterministic core rather than a clock it reads), but never less than the parent block's, so
//! that timestamps do not go back across a failover to a node whose clock is behind. Many blocks
//! share a second (Ethereum requires strictly increasing timestamps between its ~12-second
//! blocks; tooling accepts equal ones). The EVM's `TIMESTAMP` sees the same value, and
//! `eth_call` sees the timestamp the next block would get. Followers do not execute: they apply
//! the primary's writes, block records included, so every node serves the same timestamps.
//!
//! | map (private) | key | value |
//! |---|---|---|
//! | [`BLOCKS_MAP`] | block number (8 bytes, big endian) | [`BlockRecord`] with its transaction, in the binary encoding of [`crate::record`] |
//! | [`TX_INDEX_MAP`] | transaction hash | block number (8 bytes) |
//! | [`META_MAP`] | `head` | the latest block: number (8 bytes) ‖ hash (32) ‖ timestamp (8) |

use std::collections::BTreeMap;

use alloy_primitives::{keccak256, Address, Bloom, Bytes, B256, U256};
use charter_kv::Tx;
use revm::context::result::{EVMError, ExecutionResult, InvalidTransaction};
use revm::context::transaction::{AccessList, AccessListItem};
use revm::context::{BlockEnv, CfgEnv, TxEnv};
use revm::primitives::hardfork::SpecId;
use revm::primitives::{TxKind, KECCAK_EMPTY};
use revm::{Context, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};

use crate::record;
use crate::state::{self, CodeCache, KvDatabase, StoredAccount};
use crate::transaction::{SignedTransaction, TxType};
use crate::EvmError;

/// Private: block number → [`BlockRecord`], encoded by [`crate::record::encode_block`].
pub const BLOCKS_MAP: &str = "charter.evm.blocks";
/// Private: transaction hash → block number.
pub const TX_INDEX_MAP: &str = "charter.evm.tx_index";
/// Private: chain metadata (`head`).
pub const META_MAP: &str = "charter.evm.meta";
const HEAD_KEY: &[u8] = b"head";

/// The chain ID of the built-in development chain (`0x4348`, "CH").
pub const DEV_CHAIN_ID: u64 = 0x4348;
/// The genesis timestamp of the development chain (2024-01-01T00:00:00Z).
pub const DEV_GENESIS_TIMESTAMP: u64 = 1_704_067_200;
/// Wei each development account starts with: 10,000 ether, as Hardhat and Anvil give.
pub const DEV_BALANCE_WEI: u128 = 10_000 * 1_000_000_000_000_000_000;
/// The development accounts: the first ten accounts of the Hardhat/Anvil mnemonic
/// `test test test test test test test test test test test junk` (derivation path
/// `m/44'/60'/0'/0/i`). Their private keys are public knowledge: development only.
pub const DEV_ACCOUNTS: [&str; 10] = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
];
/// Gas a block (so a transaction) may use.
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// Gas a transaction may ask for (EIP-7825, in force since Osaka); calls are capped to it.
pub const TX_GAS_LIMIT_MAX: u64 = 1 << 24;
/// The hard fork the EVM runs (the latest one `revm` supports that is live on mainnet).
pub const SPEC: SpecId = SpecId::OSAKA;
/// Accounts a genesis allocation may hold.
pub const GENESIS_ACCOUNTS_MAX: usize = 10_000;
/// Storage slots one genesis account may hold.
pub const GENESIS_SLOTS_MAX: usize = 10_000;
/// Executions `eth_estimateGas` runs at most (one at the cap, one guess, then a bisection of
/// at most 24 steps over a range below 2^24).
pub const ESTIMATE_RUNS_MAX: u32 = 26;

const _: () = assert!(TX_GAS_LIMIT_MAX <= BLOCK_GAS_LIMIT);
const _: () = assert!(1u64 << (ESTIMATE_RUNS_MAX - 2) >= TX_GAS_LIMIT_MAX);

/// One account of a genesis allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenesisAccount {
    /// Wei.
    pub balance: U256,
    /// Nonce.
    pub nonce: u64,
    /// Contract code (empty for an externally owned account).
    pub code: Vec<u8>,
    /// Contract storage.
    pub storage: BTreeMap<U256, U256>,
}

/// The chain's parameters and genesis allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainConfig {
    /// EIP-155 chain ID.
    pub chain_id: u64,
    /// Timestamp of block 0, in seconds since the Unix epoch.
    pub genesis_timestamp: u64,
    /// Accounts that exist at genesis.
    pub alloc: BTreeMap<Address, GenesisAccount>,
}

impl ChainConfig {
    /// The development chain: chain ID [`DEV_CHAIN_ID`] and [`DEV_ACCOUNTS`] funded with
    /// [`DEV_BALANCE_WEI`] each.
    pub fn dev() -> ChainConfig {
        let alloc = DEV_ACCOUNTS
            .iter()
            .map(|text| {
                // The constants above are valid addresses; a test parses every one of them.
                let address: Address = text.parse().expect("a valid development address");
                let account = GenesisAccount {
                    balance: U256::from(DEV_BALANCE_WEI),
                    ..GenesisAccount::default()
                };
                (address, account)
            })
            .collect();
        ChainConfig {
            chain_id: DEV_CHAIN_ID,
            genesis_timestamp: DEV_GENESIS_TIMESTAMP,
            alloc,
        }
    }

    /// Parses a genesis file in geth's format (the fields this chain uses; others, such as
    /// geth's fork blocks, are ignored):
    /// `{"config": {"chainId": 1337}, "timestamp": "0x0", "alloc": {"0xADDRESS": {"balance":
    /// "0x...", "nonce": "0x0", "code": "0x...", "storage": {"0xSLOT": "0xVALUE"}}}}`.
    /// Only `config.chainId` is required; in an account every field is optional (zero balance
    /// and nonce, no code, no storage). Numbers may be JSON numbers, hex strings or decimal
    /// strings; addresses may omit `0x`. The node reads the file named by `evm_genesis` in its
    /// configuration with this.
    ///
    /// # Errors
    /// [`EvmError::Corrupt`] naming the first field that does not parse, or
    /// [`EvmError::TooLarge`] past [`GENESIS_ACCOUNTS_MAX`] or [`GENESIS_SLOTS_MAX`].
    pub fn from_genesis_json(bytes: &[u8]) -> Result<ChainConfig, EvmError> {
        let bad = |what: &str| EvmError::Corrupt(format!("genesis: {what}"));
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| bad(&error.to_string()))?;
        let chain_id = value
            .get("config")
            .and_then(|config| config.get("chainId"))
            .ok_or_else(|| bad("config.chainId is missing"))
            .and_then(|id| json_u256(id).ok_or_else(|| bad("config.chainId")))?;
        let chain_id = u64::try_from(chain_id).map_err(|_| bad("config.chainId is too large"))?;
        let genesis_timestamp = match value.get("timestamp") {
            None => 0,
            Some(timestamp) => json_u256(timestamp)
                .and_then(|timestamp| u64::try_from(timestamp).ok())
                .ok_or_else(|| bad("timestamp"))?,
        };
        let mut alloc = BTreeMap::new();
        if let Some(entries) = value.get("alloc") {
            let entries = entries
                .as_object()
                .ok_or_else(|| bad("alloc is not an object"))?;
            if entries.len() > GENESIS_ACCOUNTS_MAX {
                return Err(EvmError::TooLarge(format!(
                    "genesis: at most {GENESIS_ACCOUNTS_MAX} accounts"
                )));
            }
            for (key, entry) in entries {
                let text = if key.starts_with("0x") {
                    key.clone()
                } else {
                    format!("0x{key}")
                };
                let address: Address =
                    text.parse().map_err(|_| bad(&format!("alloc key {key}")))?;
                alloc.insert(address, genesis_account(entry).map_err(|what| bad(&what))?);
            }
        }
        Ok(ChainConfig {
            chain_id,
            genesis_timestamp,
            alloc,
        })
    }
}

fn genesis_account(entry: &serde_json::Value) -> Result<GenesisAccount, String> {
    let balance = match entry.get("balance") {
        Some(balance) => json_u256(balance).ok_or("balance")?,
        None => U256::ZERO,
    };
    let nonce = match entry.get("nonce") {
        Some(nonce) => json_u256(nonce)
            .and_then(|nonce| u64::try_from(nonce).ok())
            .ok_or("nonce")?,
        None => 0,
    };
    if !entry.is_object() {
        return Err("an account is not a JSON object".into());
    }
    let code = match entry.get("code") {
        Some(serde_json::Value::String(code)) => {
            hex::decode(code.trim_start_matches("0x")).map_err(|_| "code")?
        }
        Some(_) => return Err("code is not a hex string".into()),
        None => Vec::new(),
    };
    let mut storage = BTreeMap::new();
    if let Some(slots) = entry.get("storage") {
        let slots = slots.as_object().ok_or("storage is not an object")?;
        if slots.len() > GENESIS_SLOTS_MAX {
            return Err(format!("at most {GENESIS_SLOTS_MAX} storage slots"));
        }
        for (slot, value) in slots {
            let slot = parse_u256(slot).ok_or("storage slot")?;
            let value = json_u256(value).ok_or("storage value")?;
            storage.insert(slot, value);
        }
    }
    Ok(GenesisAccount {
        balance,
        nonce,
        code,
        storage,
    })
}

/// A number as genesis files write them: a JSON number, a hex string or a decimal string.
fn json_u256(value: &serde_json::Value) -> Option<U256> {
    match value {
        serde_json::Value::Number(number) => number.as_u64().map(U256::from),
        serde_json::Value::String(text) => parse_u256(text),
        _ => None,
    }
}

fn parse_u256(text: &str) -> Option<U256> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => U256::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None => U256::from_str_radix(text, 10).ok(),
    }
}

/// A log as receipts report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The contract that emitted it.
    pub address: Address,
    /// Its topics (at most four).
    pub topics: Vec<B256>,
    /// Its data.
    pub data: Bytes,
}

/// An executed Ethereum transaction with its receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    /// The transaction hash.
    pub hash: B256,
    /// The signed transaction as sent.
    pub raw: Bytes,
    /// The recovered sender.
    pub sender: Address,
    /// The Charter user who sent it (the user the sender is bound to).
    pub user: String,
    /// True if execution succeeded (receipt status 1).
    pub status: bool,
    /// Gas used (after refunds).
    pub gas_used: u64,
    /// Wei paid per gas.
    pub effective_gas_price: u128,
    /// The contract it created, if any.
    pub contract_address: Option<Address>,
    /// Its logs (empty unless it succeeded).
    pub logs: Vec<LogRecord>,
}

impl TxRecord {
    /// The logs bloom of its receipt.
    pub fn logs_bloom(&self) -> Bloom {
        let mut bloom = Bloom::ZERO;
        for log in &self.logs {
            bloom.accrue_raw_log(log.address, &log.topics);
        }
        bloom
    }
}

/// A block: the genesis block or the block of one Ethereum transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Its number (the count of Ethereum transactions up to and including its own).
    pub number: u64,
    /// Its hash.
    pub hash: B256,
    /// The previous block's hash (zero for genesis).
    pub parent_hash: B256,
    /// Seconds since the Unix epoch: the primary's clock when it executed the block's
    /// transaction, at least the parent's timestamp (the genesis file's for block 0).
    pub timestamp: u64,
    /// The Charter TxID (`view.seqno`) of the transaction that wrote it.
    pub charter_tx_id: String,
    /// Its transaction (none in the genesis block).
    pub transaction: Option<TxRecord>,
}

fn number_key(number: u64) -> [u8; 8] {
    number.to_be_bytes()
}

fn decode_number(bytes: &[u8]) -> Result<u64, EvmError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EvmError::Corrupt("a block number is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(array))
}

/// The latest block's number and hash, as [`META_MAP`] keeps them (so that executing a
/// transaction does not parse the previous block's record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
    /// Its timestamp (zero in a record written before heads kept it, which
    /// [`block_timestamp`] then ignores).
    pub timestamp: u64,
}

/// Bytes of a head record: number, hash, timestamp.
const HEAD_BYTES: usize = 8 + 32 + 8;
/// Bytes of a head record written before heads kept the timestamp.
const HEAD_BYTES_WITHOUT_TIMESTAMP: usize = 8 + 32;

/// The timestamp of the block after `parent`, executed when the primary's clock reads `now_s`
/// seconds since the Unix epoch: `now_s`, but never before the parent.
pub fn block_timestamp(parent: &Head, now_s: u64) -> u64 {
    parent.timestamp.max(now_s)
}

/// The latest block, or `None` before genesis.
///
/// # Errors
/// [`EvmError::Corrupt`] for a malformed record.
pub fn head(tx: &mut Tx) -> Result<Option<Head>, EvmError> {
    let Some(bytes) = tx.get(META_MAP, HEAD_KEY) else {
        return Ok(None);
    };
    let timestamp = match bytes.len() {
        HEAD_BYTES => decode_number(&bytes[40..])?,
        HEAD_BYTES_WITHOUT_TIMESTAMP => 0,
        _ => {
            return Err(EvmError::Corrupt(format!(
                "the head record is not {HEAD_BYTES} bytes"
            )))
        }
    };
    Ok(Some(Head {
        number: decode_number(&bytes[..8])?,
        hash: B256::from_slice(&bytes[8..40]),
        timestamp,
    }))
}

/// The latest block number, or `None` before genesis.
///
/// # Errors
/// [`EvmError::Corrupt`] for a malformed record.
pub fn head_number(tx: &mut Tx) -> Result<Option<u64>, EvmError> {
    Ok(head(tx)?.map(|head| head.number))
}

/// Block `number`, if it exists.
///
/// # Errors
/// [`EvmError::Corrupt`] for a malformed record.
pub fn block(tx: &mut Tx, number: u64) -> Result<Option<BlockRecord>, EvmError> {
    let Some(bytes) = tx.get(BLOCKS_MAP, &number_key(number)) else {
        return Ok(None);
    };
    let record = record::decode_block(&bytes).map_err(|error| match error {
        EvmError::Corrupt(why) => EvmError::Corrupt(format!("block {number}: {why}")),
        other => other,
    })?;
    if record.number != number {
        return Err(EvmError::Corrupt(format!(
            "block {number}: the record is block {}'s",
            record.number
        )));
    }
    Ok(Some(record))
}

/// The block number a block hash carries in its last 8 bytes (see the module documentation);
/// for a hash this chain did not make, a number that [`block_by_hash`] then finds no match at.
pub fn block_number_of_hash(hash: &B256) -> u64 {
    let mut number = [0; 8];
    number.copy_from_slice(&hash[24..]);
    u64::from_be_bytes(number)
}

/// The block with hash `hash`, if any: the block [`block_number_of_hash`] names, if its hash
/// is exactly `hash`.
///
/// # Errors
/// [`EvmError::Corrupt`] for a malformed record.
pub fn block_by_hash(tx: &mut Tx, hash: &B256) -> Result<Option<BlockRecord>, EvmError> {
    Ok(block(tx, block_number_of_hash(hash))?.filter(|record| record.hash == *hash))
}

/// The block holding the transaction with hash `hash`, if any.
///
/// # Errors
/// [`EvmError::Corrupt`] for a malformed record.
pub fn block_of_transaction(tx: &mut Tx, hash: &B256) -> Result<Option<BlockRecord>, EvmError> {
    match tx.get(TX_INDEX_MAP, hash.as_slice()) {
        Some(bytes) => block(tx, decode_number(&bytes)?),
        None => Ok(None),
    }
}

/// The hash of block `number`: the first 24 bytes of the Keccak-256 of its parent's hash, its
/// number, its timestamp and its transaction's hash, then its number (8 bytes, big endian).
fn block_hash(parent_hash: &B256, number: u64, timestamp: u64, transaction: &B256) -> B256 {
    let mut preimage = [0u8; 32 + 8 + 8 + 32];
    preimage[..32].copy_from_slice(parent_hash.as_slice());
    preimage[32..40].copy_from_slice(&number.to_be_bytes());
    preimage[40..48].copy_from_slice(&timestamp.to_be_bytes());
    preimage[48..].copy_from_slice(transaction.as_slice());
    let mut hash = keccak256(preimage);
    hash[24..].copy_from_slice(&number.to_be_bytes());
    debug_assert_eq!(block_number_of_hash(&hash), number);
    hash
}

fn write_block(tx: &mut Tx, record: &BlockRecord) -> Result<(), EvmError> {
    let bytes = record::encode_block(record)?;
    let key = number_key(record.number);
    tx.try_put(BLOCKS_MAP, &key, &bytes)?;
    if let Some(transaction) = &record.transaction {
        tx.try_put(TX_INDEX_MAP, transaction.hash.as_slice(), &key)?;
    }
    let mut head = [0u8; HEAD_BYTES];
    head[..8].copy_from_slice(&key);
    head[8..40].copy_from_slice(record.hash.as_slice());
    head[40..].copy_from_slice(&record.timestamp.to_be_bytes());
    tx.try_put(META_MAP, HEAD_KEY, &head)?;
    Ok(())
}

/// Writes the genesis state and block 0 into `tx` (which the caller commits as one Charter
/// transaction, `charter_tx_id`).
///
/// # Errors
/// [`EvmError::Kv`] if a value is over the store's limits (a huge contract, say).
pub fn apply_genesis(
    tx: &mut Tx,
    config: &ChainConfig,
    charter_tx_id: String,
) -> Result<BlockRecord, EvmError> {
    assert!(config.alloc.len() <= GENESIS_ACCOUNTS_MAX);
    for (address, account) in &config.alloc {
        let code_hash = if account.code.is_empty() {
            KECCAK_EMPTY
        } else {
            let hash = keccak256(&account.code);
            tx.try_put(state::CODE_MAP, hash.as_slice(), &account.code)?;
            hash
        };
        let stored = StoredAccount {
            nonce: account.nonce,
            balance: account.balance,
            code_hash,
        };
        state::write_account(tx, address, &stored)?;
        for (slot, value) in &account.storage {
            if !value.is_zero() {
                let bytes = value.to_be_bytes::<32>();
                tx.try_put(
                    state::STORAGE_MAP,
                    &state::storage_key(address, slot),
                    &bytes,
                )?;
            }
        }
    }
    let record = BlockRecord {
        number: 0,
        hash: block_hash(&B256::ZERO, 0, config.genesis_timestamp, &B256::ZERO),
        parent_hash: B256::ZERO,
        timestamp: config.genesis_timestamp,
        charter_tx_id,
        transaction: None,
    };
    write_block(tx, &record)?;
    Ok(record)
}

/// What `eth_call` and `eth_estimateGas` run: a message that is not signed and changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallRequest {
    /// The caller (zero address if absent).
    pub from: Option<Address>,
    /// The callee, or `None` to run init code.
    pub to: Option<Address>,
    /// Gas limit (capped to [`TX_GAS_LIMIT_MAX`]).
    pub gas: Option<u64>,
    /// Gas price (zero if absent: calls pay nothing).
    pub gas_price: Option<u128>,
    /// Wei sent.
    pub value: U256,
    /// Call data or init code.
    pub input: Bytes,
}

/// Executes transactions and calls against the state in a Charter transaction.
pub struct Executor<'a> {
    config: &'a ChainConfig,
    code_cache: &'a CodeCache,
}

fn block_hash_of(tx: &mut Tx, number: u64) -> Option<B256> {
    block(tx, number).ok().flatten().map(|record| record.hash)
}

impl<'a> Executor<'a> {
    /// An executor for the chain `config`, sharing `code_cache` between requests.
    pub fn new(config: &'a ChainConfig, code_cache: &'a CodeCache) -> Executor<'a> {
        Executor { config, code_cache }
    }

    fn cfg(&self, call: bool) -> CfgEnv {
        let mut cfg = CfgEnv::new_with_spec(SPEC);
        cfg.chain_id = self.config.chain_id;
        cfg.tx_gas_limit_cap = Some(TX_GAS_LIMIT_MAX);
        if call {
            // As geth's eth_call: no nonce check, no balance check, no base fee.
            cfg.disable_nonce_check = true;
            cfg.disable_balance_check = true;
            cfg.disable_base_fee = true;
        }
        cfg
    }

    fn block_env(&self, number: u64, parent_hash: &B256, timestamp: u64) -> BlockEnv {
        BlockEnv {
            number: U256::from(number),
            beneficiary: Address::ZERO,
            timestamp: U256::from(timestamp),
            gas_limit: BLOCK_GAS_LIMIT,
            basefee: 0,
            difficulty: U256::ZERO,
            // PREVRANDAO (and blocks' mixHash): the parent block's hash. Nothing here is random;
            // it only has to be the same on every node and differ between blocks.
            prevrandao: Some(*parent_hash),
            ..BlockEnv::default()
        }
    }

    fn run(
        &self,
        tx: &mut Tx,
        viewer: Option<&str>,
        call: bool,
        head: &Head,
        timestamp: u64,
        tx_env: TxEnv,
    ) -> Result<(ExecutionResult, revm::state::EvmState), EvmError> {
        let lookup = block_hash_of;
        let database = KvDatabase::new(tx, viewer, self.code_cache, &lookup);
        let mut evm = Context::mainnet()
            .with_db(database)
            .with_cfg(self.cfg(call))
            .with_block(self.block_env(head.number + 1, &head.hash, timestamp))
            .build_mainnet();
        match evm.transact(tx_env) {
            Ok(outcome) => Ok((outcome.result, outcome.state)),
            Err(EVMError::Transaction(invalid)) => Err(rejection(invalid)),
            Err(EVMError::Database(error)) => Err(EvmError::Corrupt(error.0)),
            Err(other) => Err(EvmError::Rejected(other.to_string())),
        }
    }

    /// Executes `signed` (sent by Charter user `user`) on top of the latest block, writes the
    /// state changes and a new block into `tx`, and returns the block. `tx` is then committed
    /// as Charter transaction `charter_tx_id`; on an error nothing in it may be committed.
    /// `now_s` is the primary's clock (seconds since the Unix epoch), for the block's timestamp
    /// ([`block_timestamp`]).
    ///
    /// # Errors
    /// [`EvmError::WrongChain`], [`EvmError::AlreadyKnown`], [`EvmError::AccountBound`] if the
    /// sender is bound to another user, [`EvmError::Rejected`] if the EVM refuses it (nonce,
    /// funds, gas), [`EvmError::Corrupt`] or [`EvmError::Kv`] for storage trouble. A transaction
    /// that reverts is not an error: it is included with status 0.
    pub fn execute(
        &self,
        tx: &mut Tx,
        signed: &SignedTransaction,
        raw: &[u8],
        user: &str,
        charter_tx_id: String,
        now_s: u64,
    ) -> Result<BlockRecord, EvmError> {
        if signed.chain_id != self.config.chain_id {
            return Err(EvmError::WrongChain {
                expected: self.config.chain_id,
                got: signed.chain_id,
            });
        }
        // A transaction executed before is refused by the checks below (its sender's nonce
        // has moved past it), so the index of executed transactions is read only then, to
        // say why: a random-key lookup in a map as large as the chain, saved on every
        // transaction that goes through.
        let known = |tx: &mut Tx, error: EvmError| {
            if tx.get(TX_INDEX_MAP, signed.hash.as_slice()).is_some() {
                EvmError::AlreadyKnown
            } else {
                error
            }
        };
        let bound = state::binding(tx, &signed.sender);
        match bound.as_deref() {
            Some(owner) if owner != user => {
                let bound = EvmError::AccountBound(signed.sender.to_string());
                return Err(known(tx, bound));
            }
            _ => {}
        }
        let head = self.head(tx)?;
        let timestamp = block_timestamp(&head, now_s);
        let (result, changes) = match self.run(tx, None, false, &head, timestamp, tx_env(signed)) {
            Ok(outcome) => outcome,
            Err(error) => return Err(known(tx, error)),
        };
        state::apply_changes(tx, changes)?;
        if bound.is_none() {
            state::bind(tx, &signed.sender, user)?;
        }
        let effective_gas_price = match signed.max_priority_fee_per_gas {
            // The base fee is zero, so the price is the priority fee, capped by the fee cap.
            Some(priority) => priority.min(signed.max_fee_per_gas),
            None => signed.max_fee_per_gas,
        };
        let status = result.is_success();
        let contract_address = result.created_address();
        let gas_used = result.tx_gas_used();
        let logs = if status {
            result
                .into_logs()
                .into_iter()
                .map(|log| LogRecord {
                    address: log.address,
                    topics: log.data.topics().to_vec(),
                    data: log.data.data,
                })
                .collect()
        } else {
            Vec::new()
        };
        let record = TxRecord {
            hash: signed.hash,
            raw: Bytes::copy_from_slice(raw),
            sender: signed.sender,
            user: user.to_owned(),
            status,
            gas_used,
            effective_gas_price,
            contract_address,
            logs,
        };
        let number = head.number + 1;
        assert!(timestamp >= head.timestamp);
        let block = BlockRecord {
            number,
            hash: block_hash(&head.hash, number, timestamp, &signed.hash),
            parent_hash: head.hash,
            timestamp,
            charter_tx_id,
            transaction: Some(record),
        };
        write_block(tx, &block)?;
        Ok(block)
    }

    /// The latest block.
    ///
    /// # Errors
    /// [`EvmError::Unavailable`] before genesis, [`EvmError::Corrupt`] for a malformed record.
    pub fn head(&self, tx: &mut Tx) -> Result<Head, EvmError> {
        head(tx)?.ok_or_else(|| EvmError::Unavailable("the chain has no genesis block yet".into()))
    }

    /// Runs `request` on top of the latest block for user `viewer` (who sees other users'
    /// accounts as absent) and returns its output; nothing is written. The block it runs in
    /// has the timestamp the next block would get at `now_s`.
    ///
    /// # Errors
    /// [`EvmError::Reverted`] with the revert data, [`EvmError::Halted`], or
    /// [`EvmError::Rejected`] if the message is invalid.
    pub fn call(
        &self,
        tx: &mut Tx,
        request: &CallRequest,
        viewer: &str,
        now_s: u64,
    ) -> Result<(Bytes, u64), EvmError> {
        let head = self.head(tx)?;
        let timestamp = block_timestamp(&head, now_s);
        let gas = request
            .gas
            .unwrap_or(TX_GAS_LIMIT_MAX)
            .min(TX_GAS_LIMIT_MAX);
        let (result, _) = self.run(
            tx,
            Some(viewer),
            true,
            &head,
            timestamp,
            call_env(request, gas),
        )?;
        outcome(result, gas)
    }

    /// The least gas limit (within 1.5 %, as geth) with which `request` succeeds, in the block
    /// [`Executor::call`] uses.
    ///
    /// # Errors
    /// As [`Executor::call`] when it fails even with the most gas allowed.
    pub fn estimate_gas(
        &self,
        tx: &mut Tx,
        request: &CallRequest,
        viewer: &str,
        now_s: u64,
    ) -> Result<u64, EvmError> {
        let head = self.head(tx)?;
        let timestamp = block_timestamp(&head, now_s);
        let mut high = request
            .gas
            .unwrap_or(TX_GAS_LIMIT_MAX)
            .min(TX_GAS_LIMIT_MAX);
        let mut runs = 0;
        let mut run = |gas: u64| -> Result<ExecutionResult, EvmError> {
            runs += 1;
            assert!(runs <= ESTIMATE_RUNS_MAX);
            let (result, _) = self.run(
                tx,
                Some(viewer),
                true,
                &head,
                timestamp,
                call_env(request, gas),
            )?;
            Ok(result)
        };
        let first = run(high)?;
        if !first.is_success() {
            return outcome(first, high).map(|_| high);
        }
        let spent = first.gas().total_gas_spent();
        let mut low = spent.saturating_sub(1);
        // Most calls need what they spent plus what the 63/64 rule withholds: try that first.
        let guess = spent.saturating_add(2_300).saturating_mul(64) / 63;
        if guess < high {
            match run(guess) {
                Ok(result) if result.is_success() => high = guess,
                Ok(_) | Err(EvmError::Rejected(_)) => low = guess,
                Err(error) => return Err(error),
            }
        }
        while low + 1 < high && (high - low) * 1_000 / high > 15 {
            let middle = low + (high - low) / 2;
            match run(middle) {
                Ok(result) if result.is_success() => high = middle,
                // Too little gas for even the intrinsic cost is a rejection, not a failure.
                Ok(_) | Err(EvmError::Rejected(_)) => low = middle,
                Err(error) => return Err(error),
            }
        }
        Ok(high)
    }
}

fn rejection(invalid: InvalidTransaction) -> EvmError {
    let message = match &invalid {
        InvalidTransaction::NonceTooLow { tx, state } => {
            format!("nonce too low: next nonce {state}, tx nonce {tx}")
        }
        InvalidTransaction::NonceTooHigh { tx, state } => {
            format!("nonce too high: next nonce {state}, tx nonce {tx}")
        }
        InvalidTransaction::LackOfFundForMaxFee { fee, balance } => {
            format!("insufficient funds for gas * price + value: have {balance} want {fee}")
        }
        other => other.to_string(),
    };
    EvmError::Rejected(message)
}

fn outcome(result: ExecutionResult, gas: u64) -> Result<(Bytes, u64), EvmError> {
    match result {
        ExecutionResult::Success {
            output, gas: used, ..
        } => Ok((output.into_data(), used.tx_gas_used())),
        ExecutionResult::Revert { output, .. } => Err(EvmError::Reverted(output.to_vec())),
        ExecutionResult::Halt { reason, .. } => Err(EvmError::Halted(match reason {
            revm::context::result::HaltReason::OutOfGas(_) => {
                format!("gas required exceeds allowance ({gas})")
            }
            other => format!("execution halted: {other:?}"),
        })),
    }
}

fn access_list(entries: &[crate::transaction::AccessListEntry]) -> AccessList {
    AccessList(
        entries
            .iter()
            .map(|entry| AccessListItem {
                address: entry.address,
                storage_keys: entry.storage_keys.clone(),
            })
            .collect(),
    )
}

fn tx_env(signed: &SignedTransaction) -> TxEnv {
    TxEnv {
        tx_type: signed.tx_type.byte(),
        caller: signed.sender,
        gas_limit: signed.gas_limit,
        gas_price: signed.max_fee_per_gas,
        kind: match signed.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        },
        value: signed.value,
        data: signed.input.clone(),
        nonce: signed.nonce,
        chain_id: Some(signed.chain_id),
        access_list: access_list(&signed.access_list),
        gas_priority_fee: match signed.tx_type {
            TxType::DynamicFee => signed.max_priority_fee_per_gas,
            TxType::Legacy | TxType::AccessList => None,
        },
        ..TxEnv::default()
    }
}

fn call_env(request: &CallRequest, gas: u64) -> TxEnv {
    TxEnv {
        tx_type: 0,
        caller: request.from.unwrap_or(Address::ZERO),
        gas_limit: gas,
        gas_price: request.gas_price.unwrap_or(0),
        kind: match request.to {
            Some(to) => TxKind::Call(to),
            None => TxKind::Create,
        },
        value: request.value,
        data: request.input.clone(),
        chain_id: None,
        ..TxEnv::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_accounts_parse() {
        let config = ChainConfig::dev();
        assert_eq!(config.alloc.len(), DEV_ACCOUNTS.len());
        assert!(config
            .alloc
            .values()
            .all(|account| account.balance == U256::from(DEV_BALANCE_WEI)));
    }

    #[test]
    fn block_hashes_carry_their_number() {
        let mut store = charter_kv::Store::new();
        let mut tx = Tx::new(store.snapshot());
        let genesis = apply_genesis(&mut tx, &ChainConfig::dev(), "1.1".into()).unwrap();
        assert_eq!(block_number_of_hash(&genesis.hash), 0);
        assert_eq!(genesis.hash[24..], [0; 8]);
        let transaction = B256::repeat_byte(0x77);
        let hash = block_hash(&genesis.hash, 1, 5, &transaction);
        assert_eq!(block_number_of_hash(&hash), 1);
        // The first 24 bytes are the Keccak-256 of the preimage, which chains to the parent.
        let mut preimage = genesis.hash.to_vec();
        preimage.extend_from_slice(&1u64.to_be_bytes());
        preimage.extend_from_slice(&5u64.to_be_bytes());
        preimage.extend_from_slice(transaction.as_slice());
        assert_eq!(hash[..24], keccak256(&preimage)[..24]);
        assert_ne!(block_hash(&B256::ZERO, 1, 5, &transaction), hash);
        let block = BlockRecord {
            number: 1,
            hash,
            parent_hash: genesis.hash,
            timestamp: 5,
            charter_tx_id: "1.2".into(),
            transaction: None,
        };
        write_block(&mut tx, &block).unwrap();
        assert_eq!(block_by_hash(&mut tx, &hash).unwrap(), Some(block.clone()));
        assert_eq!(
            block_by_hash(&mut tx, &genesis.hash).unwrap(),
            Some(genesis.clone())
        );
        // Hashes that name an existing block but differ from its hash elsewhere find nothing.
        for at in [0, 12, 23] {
            let mut forged = hash;
            forged[at] ^= 1;
            assert_eq!(block_number_of_hash(&forged), 1);
            assert_eq!(block_by_hash(&mut tx, &forged).unwrap(), None);
        }
        let mut forged = genesis.hash;
        forged[24..].copy_from_slice(&1u64.to_be_bytes());
        assert_eq!(block_by_hash(&mut tx, &forged).unwrap(), None);
        let mut past_head = hash;
        past_head[24..].copy_from_slice(&2u64.to_be_bytes());
        assert_eq!(block_by_hash(&mut tx, &past_head).unwrap(), None);
        assert_eq!(block_by_hash(&mut tx, &B256::ZERO).unwrap(), None);
        // Nothing maps hashes to numbers any more.
        store.commit(tx, 1).unwrap();
        let mut maps = store.map_names();
        maps.sort();
        assert_eq!(
            maps.iter()
                .filter(|name| name.starts_with("charter.evm.") && *name != state::ACCOUNTS_MAP)
                .collect::<Vec<_>>(),
            [BLOCKS_MAP, META_MAP]
        );
    }

    #[test]
    fn a_record_under_another_number_is_corrupt() {
        let store = charter_kv::Store::new();
        let mut tx = Tx::new(store.snapshot());
        let genesis = apply_genesis(&mut tx, &ChainConfig::dev(), "1.1".into()).unwrap();
        let bytes = record::encode_block(&genesis).unwrap();
        tx.put(BLOCKS_MAP, &number_key(3), &bytes);
        let error = block(&mut tx, 3).unwrap_err().to_string();
        assert!(
            error.contains("block 3: the record is block 0's"),
            "{error}"
        );
        tx.put(BLOCKS_MAP, &number_key(4), &bytes[..10]);
        let error = block(&mut tx, 4).unwrap_err().to_string();
        assert!(
            error.contains("block 4: a block record: truncated"),
            "{error}"
        );
    }

    #[test]
    fn genesis_json() {
        let json = br#"{"config": {"chainId": 1337}, "timestamp": "0x10",
            "alloc": {"f39Fd6e51aad88F6F4ce6aB8827279cffFb92266": {"balance": "1000"},
                      "0x0000000000000000000000000000000000000042": {"balance": "0x10", "nonce": 1,
                        "code": "0x6000", "storage": {"0x01": "0x02"}}}}"#;
        let config = ChainConfig::from_genesis_json(json).unwrap();
        assert_eq!(config.chain_id, 1337);
        assert_eq!(config.genesis_timestamp, 16);
        let contract = &config.alloc[&Address::with_last_byte(0x42)];
        assert_eq!(contract.balance, U256::from(16));
        assert_eq!(contract.nonce, 1);
        assert_eq!(contract.code, vec![0x60, 0x00]);
        assert_eq!(contract.storage[&U256::from(1)], U256::from(2));
        assert!(ChainConfig::from_genesis_json(b"{}").is_err());
        assert!(ChainConfig::from_genesis_json(br#"{"config": {"chainId": "x"}}"#).is_err());
        assert!(ChainConfig::from_genesis_json(
            br#"{"config": {"chainId": 1}, "alloc": {"0x12": {}}}"#
        )
        .is_err());
        let account = |body: &str| {
            let json = format!(
                r#"{{"config": {{"chainId": 1}}, "alloc": {{"0x0000000000000000000000000000000000000042": {body}}}}}"#
            );
            ChainConfig::from_genesis_json(json.as_bytes())
        };
        assert!(account("{}").is_ok());
        assert!(account("7").is_err());
        assert!(account(r#"{"code": 7}"#).is_err());
        assert!(account(r#"{"code": "0xzz"}"#).is_err());
        assert!(account(r#"{"storage": []}"#).is_err());
        assert!(account(r#"{"storage": {"0x01": "x"}}"#).is_err());
        assert!(account(r#"{"balance": -1}"#).is_err());
        assert!(account(r#"{"nonce": "0x10000000000000000"}"#).is_err());
    }
}
