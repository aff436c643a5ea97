//! Signed Ethereum transactions as `eth_sendRawTransaction` receives them: decoding of legacy
//! (EIP-155), EIP-2930 and EIP-1559 envelopes, and recovery of the sender from the signature.
//!
//! The signing payload is rebuilt from the raw RLP of the fields as sent, so the hash that is
//! signed is exactly the one the wallet computed; a field that is not in canonical RLP (an integer
//! with leading zeros, say) is refused while decoding, as every Ethereum client does.

use alloy_primitives::{keccak256, Address, Bytes, Signature, B256, U256};
use alloy_rlp::{Decodable, Encodable, Header};

use crate::EvmError;

/// Largest signed transaction accepted, in bytes (geth's `txMaxSize` is 128 KiB).
pub const RAW_TRANSACTION_BYTES_MAX: usize = 128 << 10;
/// Largest number of addresses in an access list.
pub const ACCESS_LIST_ITEMS_MAX: usize = 1_024;
/// Largest number of storage keys in one access-list item.
pub const ACCESS_LIST_KEYS_MAX: usize = 1_024;

/// Half the order of secp256k1: EIP-2 refuses signatures whose `s` is above it.
const SECP256K1N_HALF: U256 = U256::from_be_bytes([
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
]);

/// The envelope of a transaction (its EIP-2718 type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxType {
    /// Type 0: `rlp([nonce, gasPrice, gas, to, value, data, v, r, s])`, EIP-155 replay-protected.
    Legacy,
    /// Type 1 (EIP-2930): a gas price and an access list.
    AccessList,
    /// Type 2 (EIP-1559): a fee cap and a priority fee.
    DynamicFee,
}

impl TxType {
    /// The EIP-2718 type byte.
    pub fn byte(self) -> u8 {
        match self {
            TxType::Legacy => 0,
            TxType::AccessList => 1,
            TxType::DynamicFee => 2,
        }
    }
}

/// One access-list entry: an address and the storage keys the transaction declares it touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessListEntry {
    /// The account.
    pub address: Address,
    /// Its storage keys.
    pub storage_keys: Vec<B256>,
}

/// A decoded, signature-checked transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransaction {
    /// Its envelope.
    pub tx_type: TxType,
    /// The chain it is signed for (always present: unprotected legacy transactions are refused).
    pub chain_id: u64,
    /// The sender's nonce.
    pub nonce: u64,
    /// Legacy and EIP-2930: the gas price; EIP-1559: the fee cap (`maxFeePerGas`).
    pub max_fee_per_gas: u128,
    /// EIP-1559 only: `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: Option<u128>,
    /// The gas limit.
    pub gas_limit: u64,
    /// The callee, or `None` to create a contract.
    pub to: Option<Address>,
    /// Wei sent along.
    pub value: U256,
    /// Call data or init code.
    pub input: Bytes,
    /// EIP-2930 access list (empty for legacy transactions).
    pub access_list: Vec<AccessListEntry>,
    /// `v` as JSON-RPC reports it: `chain_id * 2 + 35 + y_parity` for legacy, the parity otherwise.
    pub v: u64,
    /// The parity of the signature's `R` point.
    pub y_parity: bool,
    /// Signature `r`.
    pub r: U256,
    /// Signature `s`.
    pub s: U256,
    /// Keccak-256 of the raw bytes: the transaction hash.
    pub hash: B256,
    /// The address that signed it.
    pub sender: Address,
}

fn decode_error(what: &str, error: impl std::fmt::Display) -> EvmError {
    EvmError::InvalidTransaction(format!("{what}: {error}"))
}

/// Reads one RLP item of type `T` from `buf`, returning it with the raw bytes it occupied.
fn field<'a, T: Decodable>(buf: &mut &'a [u8], name: &str) -> Result<(T, &'a [u8]), EvmError> {
    let before = *buf;
    let value = T::decode(buf).map_err(|error| decode_error(name, error))?;
    let used = before.len() - buf.len();
    Ok((value, &before[..used]))
}

/// Reads the `to` field: the empty string means contract creation.
fn to_field<'a>(buf: &mut &'a [u8]) -> Result<(Option<Address>, &'a [u8]), EvmError> {
    if buf.first() == Some(&alloy_rlp::EMPTY_STRING_CODE) {
        let raw = &buf[..1];
        *buf = &buf[1..];
        return Ok((None, raw));
    }
    let (address, raw) = field::<Address>(buf, "to")?;
    Ok((Some(address), raw))
}

fn access_list_field<'a>(buf: &mut &'a [u8]) -> Result<(Vec<AccessListEntry>, &'a [u8]), EvmError> {
    let before = *buf;
    let header = Header::decode(buf).map_err(|error| decode_error("accessList", error))?;
    if !header.list || header.payload_length > buf.len() {
        return Err(decode_error("accessList", "not a list"));
    }
    let mut items = &buf[..header.payload_length];
    *buf = &buf[header.payload_length..];
    let mut entries = Vec::new();
    // Every iteration consumes at least one byte of `items`.
    while !items.is_empty() {
        if entries.len() == ACCESS_LIST_ITEMS_MAX {
            return Err(decode_error("accessList", "too many entries"));
        }
        let item = Header::decode(&mut items).map_err(|error| decode_error("accessList", error))?;
        if !item.list || item.payload_length > items.len() {
            return Err(decode_error("accessList", "an entry is not a list"));
        }
        let mut entry = &items[..item.payload_length];
        items = &items[item.payload_length..];
        let (address, _) = field::<Address>(&mut entry, "accessList address")?;
        let keys = Header::decode(&mut entry).map_err(|error| decode_error("accessList", error))?;
        if !keys.list || keys.payload_length != entry.len() {
            return Err(decode_error("accessList", "malformed storage keys"));
        }
        let mut storage_keys = Vec::new();
        while !entry.is_empty() {
            if storage_keys.len() == ACCESS_LIST_KEYS_MAX {
                return Err(decode_error("accessList", "too many storage keys"));
            }
            storage_keys.push(field::<B256>(&mut entry, "accessList storage key")?.0);
        }
        entries.push(AccessListEntry {
            address,
            storage_keys,
        });
    }
    let used = before.len() - buf.len();
    Ok((entries, &before[..used]))
}

/// Splits off the outer list header; the payload must fill `raw` exactly.
fn outer_list(raw: &[u8]) -> Result<&[u8], EvmError> {
    let mut buf = raw;
    let header = Header::decode(&mut buf).map_err(|error| decode_error("envelope", error))?;
    if !header.list {
        return Err(decode_error("envelope", "not an RLP list"));
    }
    if header.payload_length != buf.len() {
        return Err(decode_error("envelope", "trailing or missing bytes"));
    }
    Ok(buf)
}

/// The RLP list of `parts` (already-encoded fields), prefixed with `prefix` (the type byte).
fn signing_payload(prefix: Option<u8>, parts: &[&[u8]], tail: &[u8]) -> Vec<u8> {
    let payload_length = parts.iter().map(|part| part.len()).sum::<usize>() + tail.len();
    let mut out = Vec::with_capacity(payload_length + 10);
    out.extend(prefix);
    Header {
        list: true,
        payload_length,
    }
    .encode(&mut out);
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(tail);
    out
}

fn recover(prehash: B256, r: U256, s: U256, y_parity: bool) -> Result<Address, EvmError> {
    if s > SECP256K1N_HALF {
        return Err(EvmError::InvalidSignature("s is above n/2 (EIP-2)".into()));
    }
    if r.is_zero() || s.is_zero() {
        return Err(EvmError::InvalidSignature("r or s is zero".into()));
    }
    Signature::new(r, s, y_parity)
        .recover_address_from_prehash(&prehash)
        .map_err(|error| EvmError::InvalidSignature(error.to_string()))
}

/// Decodes a signed transaction as `eth_sendRawTransaction` carries it and recovers its sender.
///
/// # Errors
/// [`EvmError::InvalidTransaction`] for bytes that are not a canonical transaction of a supported
/// type (blob and EIP-7702 transactions are not supported, nor legacy transactions without
/// EIP-155 replay protection), [`EvmError::InvalidSignature`] if no sender can be recovered.
pub fn decode_signed(raw: &[u8]) -> Result<SignedTransaction, EvmError> {
    decode(raw, None)
}

/// Decodes a transaction this adapter already checked and stored, whose sender is known, without
/// recovering the signature again.
///
/// # Errors
/// As [`decode_signed`], for bytes that are not a transaction (a corrupt record).
pub fn decode_stored(raw: &[u8], sender: Address) -> Result<SignedTransaction, EvmError> {
    decode_hashed(raw, keccak256(raw), Some(sender))
}

/// As [`decode_stored`], for a caller that already holds `hash`, the Keccak-256 of `raw` (the
/// transaction hash), so that it is not computed twice.
///
/// # Errors
/// As [`decode_stored`].
pub fn decode_stored_hashed(
    raw: &[u8],
    hash: B256,
    sender: Address,
) -> Result<SignedTransaction, EvmError> {
    debug_assert_eq!(hash, keccak256(raw));
    decode_hashed(raw, hash, Some(sender))
}

fn decode(raw: &[u8], sender: Option<Address>) -> Result<SignedTransaction, EvmError> {
    decode_hashed(raw, keccak256(raw), sender)
}

fn decode_hashed(
    raw: &[u8],
    hash: B256,
    sender: Option<Address>,
) -> Result<SignedTransaction, EvmError> {
    if raw.len() > RAW_TRANSACTION_BYTES_MAX {
        return Err(EvmError::InvalidTransaction(format!(
            "a transaction has at most {RAW_TRANSACTION_BYTES_MAX} bytes"
        )));
    }
    let first = *raw
        .first()
        .ok_or_else(|| decode_error("envelope", "empty"))?;
    let transaction = if first >= 0xc0 {
        decode_legacy(raw, sender)?
    } else {
        match first {
            1 | 2 => decode_typed(first, &raw[1..], sender)?,
            3 => return Err(decode_error("type", "blob transactions are not supported")),
            4 => {
                return Err(decode_error(
                    "type",
                    "EIP-7702 transactions are not supported",
                ))
            }
            other => return Err(decode_error("type", format!("unknown type {other}"))),
        }
    };
    Ok(SignedTransaction {
        hash,
        ..transaction
    })
}

fn decode_legacy(raw: &[u8], sender: Option<Address>) -> Result<SignedTransaction, EvmError> {
    let mut buf = outer_list(raw)?;
    let (nonce, nonce_raw) = field::<u64>(&mut buf, "nonce")?;
    let (gas_price, gas_price_raw) = field::<u128>(&mut buf, "gasPrice")?;
    let (gas_limit, gas_raw) = field::<u64>(&mut buf, "gas")?;
    let (to, to_raw) = to_field(&mut buf)?;
    let (value, value_raw) = field::<U256>(&mut buf, "value")?;
    let (input, input_raw) = field::<Bytes>(&mut buf, "data")?;
    let (v, _) = field::<u64>(&mut buf, "v")?;
    let (r, _) = field::<U256>(&mut buf, "r")?;
    let (s, _) = field::<U256>(&mut buf, "s")?;
    if !buf.is_empty() {
        return Err(decode_error("envelope", "extra fields"));
    }
    if v < 35 {
        return Err(EvmError::InvalidTransaction(
            "only replay-protected (EIP-155) transactions are accepted".into(),
        ));
    }
    let chain_id = (v - 35) / 2;
    let y_parity = (v - 35) % 2 == 1;
    let mut tail = Vec::with_capacity(11);
    chain_id.encode(&mut tail);
    tail.extend_from_slice(&[alloy_rlp::EMPTY_STRING_CODE, alloy_rlp::EMPTY_STRING_CODE]);
    let sender = match sender {
        Some(sender) => sender,
        None => {
            let fields = [
                nonce_raw,
                gas_price_raw,
                gas_raw,
                to_raw,
                value_raw,
                input_raw,
            ];
            recover(
                keccak256(signing_payload(None, &fields, &tail)),
                r,
                s,
                y_parity,
            )?
        }
    };
    Ok(SignedTransaction {
        tx_type: TxType::Legacy,
        chain_id,
        nonce,
        max_fee_per_gas: gas_price,
        max_priority_fee_per_gas: None,
        gas_limit,
        to,
        value,
        input,
        access_list: Vec::new(),
        v,
        y_parity,
        r,
        s,
        hash: B256::ZERO,
        sender,
    })
}

fn decode_typed(
    tx_type: u8,
    body: &[u8],
    sender: Option<Address>,
) -> Result<SignedTransaction, EvmError> {
    let mut buf = outer_list(body)?;
    let (chain_id, chain_id_raw) = field::<u64>(&mut buf, "chainId")?;
    let (nonce, nonce_raw) = field::<u64>(&mut buf, "nonce")?;
    let (max_priority_fee_per_gas, priority_raw) = if tx_type == 2 {
        let (fee, raw) = field::<u128>(&mut buf, "maxPriorityFeePerGas")?;
        (Some(fee), raw)
    } else {
        (None, &[][..])
    };
    let (max_fee_per_gas, fee_raw) = field::<u128>(&mut buf, "maxFeePerGas")?;
    let (gas_limit, gas_raw) = field::<u64>(&mut buf, "gas")?;
    let (to, to_raw) = to_field(&mut buf)?;
    let (value, value_raw) = field::<U256>(&mut buf, "value")?;
    let (input, input_raw) = field::<Bytes>(&mut buf, "data")?;
    let (access_list, access_list_raw) = access_list_field(&mut buf)?;
    let (parity, _) = field::<u8>(&mut buf, "yParity")?;
    let (r, _) = field::<U256>(&mut buf, "r")?;
    let (s, _) = field::<U256>(&mut buf, "s")?;
    if !buf.is_empty() {
        return Err(decode_error("envelope", "extra fields"));
    }
    let y_parity = match parity {
        0 => false,
        1 => true,
        _ => return Err(EvmError::InvalidSignature("yParity must be 0 or 1".into())),
    };
    if let Some(priority) = max_priority_fee_per_gas {
        if priority > max_fee_per_gas {
            return Err(EvmError::InvalidTransaction(
                "maxPriorityFeePerGas is above maxFeePerGas".into(),
            ));
        }
    }
    let sender = match sender {
        Some(sender) => sender,
        None => {
            let fields = [
                chain_id_raw,
                nonce_raw,
                priority_raw,
                fee_raw,
                gas_raw,
                to_raw,
                value_raw,
                input_raw,
                access_list_raw,
            ];
            let payload = signing_payload(Some(tx_type), &fields, &[]);
            recover(keccak256(payload), r, s, y_parity)?
        }
    };
    Ok(SignedTransaction {
        tx_type: if tx_type == 2 {
            TxType::DynamicFee
        } else {
            TxType::AccessList
        },
        chain_id,
        nonce,
        max_fee_per_gas,
        max_priority_fee_per_gas,
        gas_limit,
        to,
        value,
        input,
        access_list,
        v: u64::from(y_parity),
        y_parity,
        r,
        s,
        hash: B256::ZERO,
        sender,
    })
}

/// What a test or benchmark needs to sign: the unsigned fields of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedTransaction {
    /// Legacy (EIP-155) or EIP-1559 (EIP-2930 is accepted on the wire but not built here).
    pub tx_type: TxType,
    /// The chain.
    pub chain_id: u64,
    /// The sender's nonce.
    pub nonce: u64,
    /// Gas price (legacy) or fee cap (EIP-1559).
    pub max_fee_per_gas: u128,
    /// EIP-1559 priority fee (ignored for legacy).
    pub max_priority_fee_per_gas: u128,
    /// Gas limit.
    pub gas_limit: u64,
    /// Callee, or `None` to create.
    pub to: Option<Address>,
    /// Wei sent.
    pub value: U256,
    /// Call data or init code.
    pub input: Vec<u8>,
}

impl UnsignedTransaction {
    fn fields(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.tx_type != TxType::Legacy {
            self.chain_id.encode(&mut out);
        }
        self.nonce.encode(&mut out);
        if self.tx_type == TxType::DynamicFee {
            self.max_priority_fee_per_gas.encode(&mut out);
        }
        self.max_fee_per_gas.encode(&mut out);
        self.gas_limit.encode(&mut out);
        match &self.to {
            Some(to) => to.encode(&mut out),
            None => out.push(alloy_rlp::EMPTY_STRING_CODE),
        }
        self.value.encode(&mut out);
        self.input.as_slice().encode(&mut out);
        if self.tx_type != TxType::Legacy {
            // An empty access list.
            out.push(alloy_rlp::EMPTY_LIST_CODE);
        }
        out
    }

    /// The hash to sign (EIP-155 for legacy, `keccak(type ‖ rlp(fields))` otherwise).
    pub fn signing_hash(&self) -> B256 {
        let fields = self.fields();
        let payload = if self.tx_type == TxType::Legacy {
            let mut tail = Vec::new();
            self.chain_id.encode(&mut tail);
            tail.extend_from_slice(&[alloy_rlp::EMPTY_STRING_CODE, alloy_rlp::EMPTY_STRING_CODE]);
            signing_payload(None, &[&fields], &tail)
        } else {
            signing_payload(Some(self.tx_type.byte()), &[&fields], &[])
        };
        keccak256(payload)
    }

    /// The raw signed transaction, given a signature (`r`, `s`, parity) over
    /// [`UnsignedTransaction::signing_hash`].
    pub fn encode_signed(&self, r: U256, s: U256, y_parity: bool) -> Vec<u8> {
        let mut tail = Vec::new();
        if self.tx_type == TxType::Legacy {
            (self.chain_id * 2 + 35 + u64::from(y_parity)).encode(&mut tail);
        } else {
            u8::from(y_parity).encode(&mut tail);
        }
        r.encode(&mut tail);
        s.encode(&mut tail);
        let fields = self.fields();
        let prefix = (self.tx_type != TxType::Legacy).then(|| self.tx_type.byte());
        signing_payload(prefix, &[&fields], &tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, b256, hex};

    /// EIP-155's worked example: nonce 9, gas price 20 gwei, gas 21000, to 0x3535…35, value
    /// 10^18, chain 1, signed with the private key 0x4646…46.
    const EIP155_EXAMPLE: &str = "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb703304b3800ccf555c9f3dc64214b297fb1966a3b6d83";

    #[test]
    fn decodes_the_eip155_example() {
        let raw = hex::decode(EIP155_EXAMPLE).unwrap();
        let tx = decode_signed(&raw).unwrap();
        assert_eq!(tx.tx_type, TxType::Legacy);
        assert_eq!(tx.chain_id, 1);
        assert_eq!(tx.nonce, 9);
        assert_eq!(tx.max_fee_per_gas, 20_000_000_000);
        assert_eq!(tx.gas_limit, 21_000);
        assert_eq!(
            tx.to,
            Some(address!("3535353535353535353535353535353535353535"))
        );
        assert_eq!(tx.value, U256::from(1_000_000_000_000_000_000u128));
        assert_eq!(tx.v, 37);
        // The address of private key 0x4646…46.
        assert_eq!(
            tx.sender,
            address!("9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F")
        );
        assert_eq!(
            tx.hash,
            b256!("33469b22e9f636356c4160a87eb19df52b7412e8eac32a4a55ffe88ea8350788")
        );
    }

    #[test]
    fn refuses_malformed_and_unprotected() {
        let raw = hex::decode(EIP155_EXAMPLE).unwrap();
        // Truncated, extended, and every single-byte flip either fails or changes the sender.
        assert!(decode_signed(&raw[..raw.len() - 1]).is_err());
        let mut longer = raw.clone();
        longer.push(0);
        assert!(decode_signed(&longer).is_err());
        assert!(decode_signed(&[]).is_err());
        assert!(decode_signed(&[3, 0xc0]).is_err());
        assert!(decode_signed(&[0x7f]).is_err());
        let original = decode_signed(&raw).unwrap().sender;
        for index in 0..raw.len() {
            let mut flipped = raw.clone();
            flipped[index] ^= 0x01;
            if let Ok(tx) = decode_signed(&flipped) {
                assert_ne!(tx.sender, original, "flip at {index} kept the sender");
            }
        }
    }

    #[test]
    fn high_s_is_refused() {
        let raw = hex::decode(EIP155_EXAMPLE).unwrap();
        let tx = decode_signed(&raw).unwrap();
        let n = SECP256K1N_HALF * U256::from(2) + U256::from(1);
        let high_s = n - tx.s;
        assert!(recover(B256::ZERO, tx.r, high_s, !tx.y_parity).is_err());
    }
}
