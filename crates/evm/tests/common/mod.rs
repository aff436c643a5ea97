//! Helpers shared by the adapter's tests and benchmark: development keys, signing, ABI encoding
//! for the ERC-20 fixture, and JSON-RPC calls against a [`MemoryLedger`].
#![allow(dead_code)]

use alloy_primitives::{Address, U256};
use charter_evm::chain::DEV_CHAIN_ID;
use charter_evm::rpc::Reply;
use charter_evm::transaction::{TxType, UnsignedTransaction};
use charter_evm::{EthereumApp, Ledger, MemoryLedger};
use k256::ecdsa::SigningKey;
use serde_json::{json, Value};

/// Private keys of the first Hardhat/Anvil development accounts.
pub const DEV_KEYS: [&str; 3] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
];

/// The ERC-20 fixture: `tests/ethereum/ERC20.sol` compiled by solcjs 0.8.37 with the optimizer
/// (200 runs); `node tests/ethereum/compile.js tests/ethereum/ERC20.sol` prints it again.
pub const TOKEN_HEX: &str = include_str!("../fixtures/charter_token.hex");
/// `transfer(address,uint256)`.
pub const TRANSFER_SELECTOR: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// `balanceOf(address)`.
pub const BALANCE_OF_SELECTOR: [u8; 4] = [0x70, 0xa0, 0x82, 0x31];
/// `keccak256("Transfer(address,address,uint256)")`.
pub const TRANSFER_TOPIC: &str =
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

/// A development account: its key and address.
pub struct Account {
    pub key: SigningKey,
    pub address: Address,
}

impl Account {
    pub fn dev(index: usize) -> Account {
        Account::from_hex(DEV_KEYS[index])
    }

    pub fn from_hex(hex_key: &str) -> Account {
        let bytes = hex::decode(hex_key).unwrap();
        let key = SigningKey::from_slice(&bytes).unwrap();
        let address = Address::from_public_key(key.verifying_key());
        Account { key, address }
    }

    /// A fresh account from a seed (not funded at genesis).
    pub fn seeded(seed: u64) -> Account {
        let mut bytes = [0x11u8; 32];
        bytes[24..].copy_from_slice(&seed.to_be_bytes());
        Account::from_hex(&hex::encode(bytes))
    }

    pub fn address_hex(&self) -> String {
        format!("0x{}", hex::encode(self.address))
    }

    /// Signs `unsigned` and returns the raw transaction.
    pub fn sign(&self, unsigned: &UnsignedTransaction) -> Vec<u8> {
        let hash = unsigned.signing_hash();
        let (signature, recovery) = self.key.sign_prehash_recoverable(hash.as_slice()).unwrap();
        let r = U256::from_be_slice(&signature.r().to_bytes());
        let s = U256::from_be_slice(&signature.s().to_bytes());
        unsigned.encode_signed(r, s, recovery.is_y_odd())
    }
}

/// An EIP-1559 transaction on the development chain with zero fees.
pub fn tx(
    nonce: u64,
    to: Option<Address>,
    value: u128,
    input: Vec<u8>,
    gas: u64,
) -> UnsignedTransaction {
    UnsignedTransaction {
        tx_type: TxType::DynamicFee,
        chain_id: DEV_CHAIN_ID,
        nonce,
        max_fee_per_gas: 0,
        max_priority_fee_per_gas: 0,
        gas_limit: gas,
        to,
        value: U256::from(value),
        input,
    }
}

/// A legacy (EIP-155) transaction on the development chain.
pub fn legacy_tx(
    nonce: u64,
    to: Option<Address>,
    value: u128,
    gas_price: u128,
) -> UnsignedTransaction {
    UnsignedTransaction {
        tx_type: TxType::Legacy,
        chain_id: DEV_CHAIN_ID,
        nonce,
        max_fee_per_gas: gas_price,
        max_priority_fee_per_gas: 0,
        gas_limit: 21_000,
        to,
        value: U256::from(value),
        input: Vec::new(),
    }
}

fn word(value: U256) -> [u8; 32] {
    value.to_be_bytes::<32>()
}

fn address_word(address: &Address) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[12..].copy_from_slice(address.as_slice());
    out
}

fn short_string(text: &str) -> Vec<u8> {
    assert!(text.len() <= 32);
    let mut out = word(U256::from(text.len())).to_vec();
    let mut padded = [0u8; 32];
    padded[..text.len()].copy_from_slice(text.as_bytes());
    out.extend_from_slice(&padded);
    out
}

/// Init code of the token: bytecode ‖ abi.encode(name, symbol, supply).
pub fn token_init_code(supply: u128) -> Vec<u8> {
    let mut code = hex::decode(TOKEN_HEX.trim()).unwrap();
    code.extend_from_slice(&word(U256::from(0x60)));
    code.extend_from_slice(&word(U256::from(0xa0)));
    code.extend_from_slice(&word(U256::from(supply)));
    code.extend_from_slice(&short_string("Charter Token"));
    code.extend_from_slice(&short_string("CHT"));
    code
}

pub fn transfer_call(to: &Address, amount: u128) -> Vec<u8> {
    let mut data = TRANSFER_SELECTOR.to_vec();
    data.extend_from_slice(&address_word(to));
    data.extend_from_slice(&word(U256::from(amount)));
    data
}

pub fn balance_of_call(owner: &Address) -> Vec<u8> {
    let mut data = BALANCE_OF_SELECTOR.to_vec();
    data.extend_from_slice(&address_word(owner));
    data
}

/// The whole JSON-RPC response to a request.
pub fn raw_call(app: &EthereumApp, ledger: &mut dyn Ledger, body: &[u8]) -> Reply {
    app.serve(ledger, body).unwrap()
}

/// Calls `method`; `Ok(result)` or `Err(error object)`.
pub fn rpc(
    app: &EthereumApp,
    ledger: &mut dyn Ledger,
    method: &str,
    params: Value,
) -> Result<Value, Value> {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    match raw_call(app, ledger, body.to_string().as_bytes()) {
        Reply::Json(mut response) => {
            assert_eq!(response["id"], 7, "{response}");
            assert_eq!(response["jsonrpc"], "2.0");
            match response.get_mut("error") {
                Some(error) => Err(error.take()),
                None => Ok(response["result"].take()),
            }
        }
        other => panic!("{method}: {other:?}"),
    }
}

/// Sends a raw transaction and returns its hash.
pub fn send(app: &EthereumApp, ledger: &mut MemoryLedger, raw: &[u8]) -> Result<String, Value> {
    let raw_hex = format!("0x{}", hex::encode(raw));
    rpc(app, ledger, "eth_sendRawTransaction", json!([raw_hex]))
        .map(|hash| hash.as_str().unwrap().to_owned())
}

pub fn hex_u256(value: &Value) -> U256 {
    let text = value.as_str().unwrap();
    U256::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}
