//! Ethereum world state kept in Charter's private maps, and the `revm` database over a Charter
//! transaction.
//!
//! | map | key | value |
//! |---|---|---|
//! | [`ACCOUNTS_MAP`] | address (20 bytes) | nonce (8, big endian) ‖ balance (32) ‖ code hash (32) |
//! | [`CODE_MAP`] | code hash (32) | bytecode |
//! | [`STORAGE_MAP`] | address (20) ‖ slot (32) | value, big endian without leading zeros; zero is absent |
//! | [`BINDINGS_MAP`] | address (20) | the ID of the Charter user the account is bound to |
//!
//! All maps are private (no `public:` prefix), so their contents are encrypted in the ledger.
//! Reads go through the Charter transaction, so they enter its read set like any other read.

use std::collections::BTreeMap;
use std::sync::Mutex;

use alloy_primitives::{Address, B256, U256};
use charter_kv::Tx;
use revm::bytecode::Bytecode;
use revm::primitives::KECCAK_EMPTY;
use revm::state::{AccountInfo, EvmState};
use revm::Database;

use crate::EvmError;

/// Private: address → [`StoredAccount`] (72 bytes).
pub const ACCOUNTS_MAP: &str = "charter.evm.accounts";
/// Private: code hash → contract bytecode.
pub const CODE_MAP: &str = "charter.evm.code";
/// Private: address ‖ slot → non-zero storage value.
pub const STORAGE_MAP: &str = "charter.evm.storage";
/// Private: address → the Charter user ID the account is bound to.
pub const BINDINGS_MAP: &str = "charter.evm.bindings";

/// Storage slots one self-destruct clears at most (a contract created and destroyed in one
/// transaction, the only kind that EIP-6780 still lets go, has written at most this many).
pub const STORAGE_CLEAR_SLOTS_MAX: usize = 100_000;
/// Analysed contracts the code cache keeps.
pub const CODE_CACHE_ENTRIES_MAX: usize = 1_024;

const ACCOUNT_BYTES: usize = 8 + 32 + 32;

/// An account as [`ACCOUNTS_MAP`] keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredAccount {
    /// Transactions sent (EOA) or contracts created (contract).
    pub nonce: u64,
    /// Wei.
    pub balance: U256,
    /// Keccak-256 of its code ([`KECCAK_EMPTY`] for an externally owned account).
    pub code_hash: B256,
}

impl StoredAccount {
    /// The fixed-size encoding.
    pub fn encode(&self) -> [u8; ACCOUNT_BYTES] {
        let mut out = [0; ACCOUNT_BYTES];
        out[..8].copy_from_slice(&self.nonce.to_be_bytes());
        out[8..40].copy_from_slice(&self.balance.to_be_bytes::<32>());
        out[40..].copy_from_slice(self.code_hash.as_slice());
        out
    }

    /// Parses [`StoredAccount::encode`]'s output.
    ///
    /// # Errors
    /// [`EvmError::Corrupt`] if `bytes` has the wrong length.
    pub fn decode(bytes: &[u8]) -> Result<StoredAccount, EvmError> {
        if bytes.len() != ACCOUNT_BYTES {
            return Err(EvmError::Corrupt(format!(
                "an account record has {} bytes, not {ACCOUNT_BYTES}",
                bytes.len()
            )));
        }
        let mut nonce = [0; 8];
        nonce.copy_from_slice(&bytes[..8]);
        Ok(StoredAccount {
            nonce: u64::from_be_bytes(nonce),
            balance: U256::from_be_slice(&bytes[8..40]),
            code_hash: B256::from_slice(&bytes[40..]),
        })
    }

    /// True for an externally owned account (no code).
    pub fn is_externally_owned(&self) -> bool {
        self.code_hash == KECCAK_EMPTY
    }
}

/// The storage key of `slot` of `address`.
pub fn storage_key(address: &Address, slot: &U256) -> [u8; 52] {
    let mut key = [0; 52];
    key[..20].copy_from_slice(address.as_slice());
    key[20..].copy_from_slice(&slot.to_be_bytes::<32>());
    key
}

/// The account at `address`, if it exists.
///
/// # Errors
/// [`EvmError::Corrupt`] if the stored record is malformed.
pub fn read_account(tx: &mut Tx, address: &Address) -> Result<Option<StoredAccount>, EvmError> {
    tx.get(ACCOUNTS_MAP, address.as_slice())
        .map(|bytes| StoredAccount::decode(&bytes))
        .transpose()
}

/// Writes (or, for an empty account, removes) the account at `address`.
///
/// # Errors
/// [`EvmError::Kv`] if the store refuses the write.
pub fn write_account(
    tx: &mut Tx,
    address: &Address,
    account: &StoredAccount,
) -> Result<(), EvmError> {
    tx.try_put(ACCOUNTS_MAP, address.as_slice(), &account.encode())?;
    Ok(())
}

/// Storage slot `slot` of `address` (zero if never written).
pub fn read_storage(tx: &mut Tx, address: &Address, slot: &U256) -> U256 {
    tx.get(STORAGE_MAP, &storage_key(address, slot))
        .map_or(U256::ZERO, |bytes| U256::from_be_slice(&bytes))
}

fn write_storage(
    tx: &mut Tx,
    address: &Address,
    slot: &U256,
    value: &U256,
) -> Result<(), EvmError> {
    let key = storage_key(address, slot);
    if value.is_zero() {
        tx.try_remove(STORAGE_MAP, &key)?;
    } else {
        let bytes = value.to_be_bytes::<32>();
        let first = bytes.iter().position(|byte| *byte != 0).unwrap_or(31);
        tx.try_put(STORAGE_MAP, &key, &bytes[first..])?;
    }
    Ok(())
}

/// The code with hash `code_hash`, if stored.
pub fn read_code(tx: &mut Tx, code_hash: &B256) -> Option<Vec<u8>> {
    if *code_hash == KECCAK_EMPTY {
        return Some(Vec::new());
    }
    tx.get(CODE_MAP, code_hash.as_slice())
}

/// The Charter user that `address` is bound to, if any.
pub fn binding(tx: &mut Tx, address: &Address) -> Option<String> {
    tx.get(BINDINGS_MAP, address.as_slice())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Binds `address` to `user_id`.
///
/// # Errors
/// [`EvmError::Kv`] if the store refuses the write.
pub fn bind(tx: &mut Tx, address: &Address, user_id: &str) -> Result<(), EvmError> {
    tx.try_put(BINDINGS_MAP, address.as_slice(), user_id.as_bytes())?;
    Ok(())
}

/// Whether `viewer` may see the balance and nonce of `address`: contracts are visible to every
/// user (they guard their own state), an externally owned account only to the user it is bound
/// to.
pub fn account_visible(tx: &mut Tx, address: &Address, viewer: &str) -> Result<bool, EvmError> {
    match read_account(tx, address)? {
        Some(account) if !account.is_externally_owned() => Ok(true),
        _ => Ok(binding(tx, address).as_deref() == Some(viewer)),
    }
}

/// Analysed bytecode by code hash, shared between requests. Code is content-addressed, so an
/// entry can never be stale; the cache only saves re-reading and re-analysing it.
#[derive(Debug, Default)]
pub struct CodeCache {
    entries: Mutex<BTreeMap<B256, Bytecode>>,
}

impl CodeCache {
    fn get(&self, code_hash: &B256) -> Option<Bytecode> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.get(code_hash).cloned()
    }

    fn insert(&self, code_hash: B256, code: Bytecode) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= CODE_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(code_hash, code);
        assert!(entries.len() <= CODE_CACHE_ENTRIES_MAX);
    }
}

/// A storage failure inside `revm` (a malformed record; the store itself cannot fail a read).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DatabaseError(pub String);

impl revm::database_interface::DBErrorMarker for DatabaseError {}

impl From<EvmError> for DatabaseError {
    fn from(error: EvmError) -> DatabaseError {
        DatabaseError(error.to_string())
    }
}

/// The EVM's view of the world state: a Charter transaction, read through `revm`'s
/// [`Database`] trait. With a `viewer` (for `eth_call` and `eth_estimateGas`), externally owned
/// accounts that are not bound to the viewer read as absent, so code run on a user's behalf
/// cannot report other users' balances back to them.
pub struct KvDatabase<'a> {
    tx: &'a mut Tx,
    viewer: Option<&'a str>,
    code_cache: &'a CodeCache,
    /// Block number → hash, for `BLOCKHASH`.
    block_hash: &'a dyn Fn(&mut Tx, u64) -> Option<B256>,
}

impl<'a> KvDatabase<'a> {
    /// A database over `tx`; `viewer` masks other users' accounts (see above).
    pub fn new(
        tx: &'a mut Tx,
        viewer: Option<&'a str>,
        code_cache: &'a CodeCache,
        block_hash: &'a dyn Fn(&mut Tx, u64) -> Option<B256>,
    ) -> KvDatabase<'a> {
        KvDatabase {
            tx,
            viewer,
            code_cache,
            block_hash,
        }
    }

    /// The transaction underneath.
    pub fn tx(&mut self) -> &mut Tx {
        self.tx
    }
}

impl Database for KvDatabase<'_> {
    type Error = DatabaseError;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, DatabaseError> {
        let Some(account) = read_account(self.tx, &address)? else {
            return Ok(None);
        };
        if let Some(viewer) = self.viewer {
            if account.is_externally_owned()
                && binding(self.tx, &address).as_deref() != Some(viewer)
            {
                return Ok(None);
            }
        }
        let code = if account.is_externally_owned() {
            Some(Bytecode::default())
        } else {
            self.code_cache.get(&account.code_hash)
        };
        Ok(Some(AccountInfo {
            balance: account.balance,
            nonce: account.nonce,
            code_hash: account.code_hash,
            code,
            ..AccountInfo::default()
        }))
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, DatabaseError> {
        if let Some(code) = self.code_cache.get(&code_hash) {
            return Ok(code);
        }
        let Some(bytes) = read_code(self.tx, &code_hash) else {
            return Err(DatabaseError(format!("no code with hash {code_hash}")));
        };
        let code = Bytecode::new_raw_checked(bytes.into())
            .map_err(|error| DatabaseError(format!("stored code {code_hash}: {error}")))?;
        self.code_cache.insert(code_hash, code.clone());
        Ok(code)
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, DatabaseError> {
        Ok(read_storage(self.tx, &address, &index))
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, DatabaseError> {
        Ok((self.block_hash)(self.tx, number).unwrap_or_default())
    }
}

/// Writes what one executed transaction changed into `tx`: accounts, new code and storage.
/// Accounts left empty are deleted (EIP-161), self-destructed ones with their storage.
///
/// # Errors
/// [`EvmError::Kv`] if the store refuses a write, [`EvmError::Corrupt`] for a malformed record,
/// [`EvmError::TooLarge`] if a self-destructed account has more storage than
/// [`STORAGE_CLEAR_SLOTS_MAX`].
pub fn apply_changes(tx: &mut Tx, changes: EvmState) -> Result<(), EvmError> {
    for (address, account) in changes {
        if !account.is_touched() {
            continue;
        }
        let stored = read_account(tx, &address)?;
        if account.is_selfdestructed() || account.is_empty() {
            if stored.is_some() {
                tx.try_remove(ACCOUNTS_MAP, address.as_slice())?;
            }
            if account.is_selfdestructed() {
                clear_storage(tx, &address)?;
            }
            continue;
        }
        if account.is_created() {
            if let Some(code) = &account.info.code {
                if !code.is_empty() {
                    tx.try_put(
                        CODE_MAP,
                        account.info.code_hash.as_slice(),
                        code.original_byte_slice(),
                    )?;
                }
            }
        }
        let new = StoredAccount {
            nonce: account.info.nonce,
            balance: account.info.balance,
            code_hash: account.info.code_hash,
        };
        if stored != Some(new) {
            write_account(tx, &address, &new)?;
        }
        for (slot, value) in account.changed_storage_slots() {
            write_storage(tx, &address, slot, &value.present_value)?;
        }
    }
    Ok(())
}

fn clear_storage(tx: &mut Tx, address: &Address) -> Result<(), EvmError> {
    let slots = tx.scan_prefix(
        STORAGE_MAP,
        address.as_slice(),
        None,
        STORAGE_CLEAR_SLOTS_MAX + 1,
    );
    if slots.len() > STORAGE_CLEAR_SLOTS_MAX {
        return Err(EvmError::TooLarge(format!(
            "a self-destructed account holds more than {STORAGE_CLEAR_SLOTS_MAX} storage slots"
        )));
    }
    for (key, _) in slots {
        tx.try_remove(STORAGE_MAP, &key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_round_trip() {
        let account = StoredAccount {
            nonce: 7,
            balance: U256::from(123_456_789u64),
            code_hash: KECCAK_EMPTY,
        };
        assert_eq!(StoredAccount::decode(&account.encode()).unwrap(), account);
        assert!(account.is_externally_owned());
        assert!(StoredAccount::decode(&account.encode()[1..]).is_err());
    }

    #[test]
    fn storage_values_are_trimmed_and_zero_is_absent() {
        let mut tx = Tx::new(charter_kv::Store::new().snapshot());
        let address = Address::repeat_byte(1);
        write_storage(&mut tx, &address, &U256::from(1), &U256::from(0x1234)).unwrap();
        assert_eq!(
            tx.get(STORAGE_MAP, &storage_key(&address, &U256::from(1))),
            Some(vec![0x12, 0x34])
        );
        assert_eq!(
            read_storage(&mut tx, &address, &U256::from(1)),
            U256::from(0x1234)
        );
        write_storage(&mut tx, &address, &U256::from(1), &U256::ZERO).unwrap();
        assert_eq!(read_storage(&mut tx, &address, &U256::from(1)), U256::ZERO);
        assert_eq!(
            tx.get(STORAGE_MAP, &storage_key(&address, &U256::from(1))),
            None
        );
    }
}
