//! The binary encoding of [`BlockRecord`]s, the values of [`crate::chain::BLOCKS_MAP`].
//!
//! Every Ethereum transaction writes one block record, and every byte written is encrypted,
//! hashed, replicated and kept in memory, so records are compact: fixed-width fields for
//! hashes, addresses and numbers (big endian), a length prefix only where a field varies.
//!
//! **Format 1** ([`FORMAT_V1`]), in order:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format: `0x01` |
//! | 8 | `number` |
//! | 32 | `hash` |
//! | 32 | `parent_hash` |
//! | 8 | `timestamp` |
//! | 1 + … | `charter_tx_id`: `0x00` then view (8) ‖ seqno (8) when it is exactly `"{view}.{seqno}"`; otherwise `0x01` then a string |
//! | 1 | `0x00`: no transaction, the record ends here; `0x01`: a transaction follows |
//! | 32 | transaction `hash` |
//! | 20 | `sender` |
//! | 1 | flags: bit 0 `status`, bit 1 `contract_address` is present; other bits zero |
//! | 8 | `gas_used` |
//! | 16 | `effective_gas_price` |
//! | 0 or 20 | `contract_address`, if flag bit 1 |
//! | 1 + … | `user`: `0x00` then 32 bytes when it is 64 lowercase hex digits (a Charter user ID, hex SHA-256); otherwise `0x01` then a string |
//! | 4 + n | `raw`: length, then the signed transaction |
//! | 4 | number of logs, at most [`LOGS_MAX`] |
//! | … | each log: address (20) ‖ topic count (1, at most [`TOPICS_MAX`]) ‖ topics (32 each) ‖ data length (4) ‖ data |
//!
//! Every number, length and count is big endian. A string is its length in bytes (4) then its
//! UTF-8 bytes. Nothing may follow the record. The format byte is never `{`, so a JSON record
//! (as versions before this encoding wrote) is told apart and named in the error rather than
//! misread.

use alloy_primitives::{Address, Bytes, B256};

use crate::chain::{BlockRecord, LogRecord, TxRecord, TX_GAS_LIMIT_MAX};
use crate::EvmError;

/// The format byte of the encoding described in the [module documentation](self).
pub const FORMAT_V1: u8 = 0x01;
/// Topics a log has at most (`LOG0` to `LOG4`).
pub const TOPICS_MAX: usize = 4;
/// Gas the cheapest log (`LOG0` with no data) costs.
const LOG_GAS_MIN: u64 = 375;
/// Logs a record holds at most: more than one transaction can pay for at
/// [`TX_GAS_LIMIT_MAX`] gas.
pub const LOGS_MAX: usize = (TX_GAS_LIMIT_MAX / LOG_GAS_MIN) as usize;

/// Bytes of a log with no topics and no data: address, topic count, data length.
const LOG_BYTES_MIN: usize = 20 + 1 + 4;
const TAG_PARTS: u8 = 0x00;
const TAG_STRING: u8 = 0x01;
const NO_TRANSACTION: u8 = 0x00;
const TRANSACTION: u8 = 0x01;
const FLAG_STATUS: u8 = 0x01;
const FLAG_CONTRACT: u8 = 0x02;
/// Bytes of a Charter user ID in its binary form (a SHA-256).
const USER_ID_BYTES: usize = 32;

const _: () = assert!(LOGS_MAX <= u32::MAX as usize);

/// Encodes `record` in format 1.
///
/// # Errors
/// [`EvmError::TooLarge`] if a field is over what the format holds: a length past `u32`, more
/// than [`LOGS_MAX`] logs or more than [`TOPICS_MAX`] topics in a log (none of which a
/// transaction within the gas limits can produce).
pub fn encode_block(record: &BlockRecord) -> Result<Vec<u8>, EvmError> {
    let mut out = Vec::with_capacity(encoded_len_hint(record));
    out.push(FORMAT_V1);
    out.extend_from_slice(&record.number.to_be_bytes());
    out.extend_from_slice(record.hash.as_slice());
    out.extend_from_slice(record.parent_hash.as_slice());
    out.extend_from_slice(&record.timestamp.to_be_bytes());
    match tx_id_parts(&record.charter_tx_id) {
        Some((view, seqno)) => {
            out.push(TAG_PARTS);
            out.extend_from_slice(&view.to_be_bytes());
            out.extend_from_slice(&seqno.to_be_bytes());
        }
        None => {
            out.push(TAG_STRING);
            put_bytes(&mut out, record.charter_tx_id.as_bytes(), "charter_tx_id")?;
        }
    }
    let Some(transaction) = &record.transaction else {
        out.push(NO_TRANSACTION);
        return Ok(out);
    };
    out.push(TRANSACTION);
    encode_transaction(&mut out, transaction)?;
    Ok(out)
}

fn encode_transaction(out: &mut Vec<u8>, record: &TxRecord) -> Result<(), EvmError> {
    out.extend_from_slice(record.hash.as_slice());
    out.extend_from_slice(record.sender.as_slice());
    let mut flags = 0;
    if record.status {
        flags |= FLAG_STATUS;
    }
    if record.contract_address.is_some() {
        flags |= FLAG_CONTRACT;
    }
    out.push(flags);
    out.extend_from_slice(&record.gas_used.to_be_bytes());
    out.extend_from_slice(&record.effective_gas_price.to_be_bytes());
    if let Some(address) = &record.contract_address {
        out.extend_from_slice(address.as_slice());
    }
    match user_id_bytes(&record.user) {
        Some(id) => {
            out.push(TAG_PARTS);
            out.extend_from_slice(&id);
        }
        None => {
            out.push(TAG_STRING);
            put_bytes(out, record.user.as_bytes(), "user")?;
        }
    }
    put_bytes(out, &record.raw, "raw transaction")?;
    if record.logs.len() > LOGS_MAX {
        return Err(EvmError::TooLarge(format!(
            "a block record holds at most {LOGS_MAX} logs, not {}",
            record.logs.len()
        )));
    }
    put_u32(out, record.logs.len(), "log count")?;
    for log in &record.logs {
        out.extend_from_slice(log.address.as_slice());
        if log.topics.len() > TOPICS_MAX {
            return Err(EvmError::TooLarge(format!(
                "a log has at most {TOPICS_MAX} topics, not {}",
                log.topics.len()
            )));
        }
        // At most TOPICS_MAX, checked above.
        out.push(log.topics.len() as u8);
        for topic in &log.topics {
            out.extend_from_slice(topic.as_slice());
        }
        put_bytes(out, &log.data, "log data")?;
    }
    Ok(())
}

/// The size `record` encodes to, assuming its strings take their compact forms (a guess for
/// the buffer's capacity only).
fn encoded_len_hint(record: &BlockRecord) -> usize {
    let header = 1 + 8 + 32 + 32 + 8 + 1 + 16 + 1;
    let transaction = record.transaction.as_ref().map_or(0, |transaction| {
        let logs: usize = transaction
            .logs
            .iter()
            .map(|log| LOG_BYTES_MIN + 32 * log.topics.len() + log.data.len())
            .sum();
        32 + 20 + 1 + 8 + 16 + 20 + 1 + USER_ID_BYTES + 4 + transaction.raw.len() + 4 + logs
    });
    header + transaction
}

fn put_u32(out: &mut Vec<u8>, length: usize, what: &str) -> Result<(), EvmError> {
    let length = u32::try_from(length)
        .map_err(|_| EvmError::TooLarge(format!("a block record's {what} is over 4 GiB")))?;
    out.extend_from_slice(&length.to_be_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8], what: &str) -> Result<(), EvmError> {
    put_u32(out, bytes.len(), what)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// `text` as view and seqno if it is exactly `"{view}.{seqno}"` (so that it is rebuilt
/// byte for byte: no signs, no leading zeros).
fn tx_id_parts(text: &str) -> Option<(u64, u64)> {
    let (view, seqno) = text.split_once('.')?;
    Some((canonical_u64(view)?, canonical_u64(seqno)?))
}

/// `digits` as a number if formatting that number gives `digits` back.
fn canonical_u64(digits: &str) -> Option<u64> {
    let only_digits = !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit());
    let no_leading_zero = digits == "0" || !digits.starts_with('0');
    if !(only_digits && no_leading_zero) {
        return None;
    }
    digits.parse().ok()
}

/// `user` as 32 bytes if it is 64 lowercase hex digits (so that it is rebuilt byte for byte).
fn user_id_bytes(user: &str) -> Option<[u8; USER_ID_BYTES]> {
    let lowercase_hex = user
        .bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if user.len() != 2 * USER_ID_BYTES || !lowercase_hex {
        return None;
    }
    let mut bytes = [0; USER_ID_BYTES];
    hex::decode_to_slice(user, &mut bytes).ok()?;
    Some(bytes)
}

/// Decodes a block record written by [`encode_block`].
///
/// # Errors
/// [`EvmError::Corrupt`] saying what is wrong: empty or truncated input, an unknown format
/// byte (a JSON record from an older version is named as such), an unknown tag or flag, more
/// than [`LOGS_MAX`] logs or [`TOPICS_MAX`] topics, a string that is not UTF-8, or bytes
/// after the record.
pub fn decode_block(bytes: &[u8]) -> Result<BlockRecord, EvmError> {
    decode(bytes).map_err(|why| EvmError::Corrupt(format!("a block record: {why}")))
}

fn decode(bytes: &[u8]) -> Result<BlockRecord, String> {
    let mut reader = Reader { bytes, at: 0 };
    let format = reader.u8("the format byte")?;
    match format {
        FORMAT_V1 => {}
        b'{' => {
            return Err(
                "format byte '{' (a JSON record from an older version); this version reads \
                 format 1 only"
                    .into(),
            )
        }
        other => return Err(format!("unknown format byte {other:#04x}")),
    }
    let number = reader.u64("number")?;
    let hash = reader.b256("hash")?;
    let parent_hash = reader.b256("parent hash")?;
    let timestamp = reader.u64("timestamp")?;
    let charter_tx_id = match reader.u8("the Charter TxID tag")? {
        TAG_PARTS => {
            let view = reader.u64("the Charter TxID's view")?;
            let seqno = reader.u64("the Charter TxID's seqno")?;
            format!("{view}.{seqno}")
        }
        TAG_STRING => reader.string("the Charter TxID")?,
        other => return Err(format!("unknown Charter TxID tag {other:#04x}")),
    };
    let transaction = match reader.u8("the transaction tag")? {
        NO_TRANSACTION => None,
        TRANSACTION => Some(decode_transaction(&mut reader)?),
        other => return Err(format!("unknown transaction tag {other:#04x}")),
    };
    if reader.at != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the record's {} bytes",
            bytes.len() - reader.at,
            reader.at
        ));
    }
    Ok(BlockRecord {
        number,
        hash,
        parent_hash,
        timestamp,
        charter_tx_id,
        transaction,
    })
}

fn decode_transaction(reader: &mut Reader<'_>) -> Result<TxRecord, String> {
    let hash = reader.b256("transaction hash")?;
    let sender = reader.address("sender")?;
    let flags = reader.u8("flags")?;
    if flags & !(FLAG_STATUS | FLAG_CONTRACT) != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let gas_used = reader.u64("gas used")?;
    let effective_gas_price = u128::from_be_bytes(reader.array("effective gas price")?);
    let contract_address = if flags & FLAG_CONTRACT != 0 {
        Some(reader.address("contract address")?)
    } else {
        None
    };
    let user = match reader.u8("the user tag")? {
        TAG_PARTS => hex::encode(reader.take(USER_ID_BYTES, "user ID")?),
        TAG_STRING => reader.string("user")?,
        other => return Err(format!("unknown user tag {other:#04x}")),
    };
    let raw = Bytes::copy_from_slice(reader.bytes("raw transaction")?);
    let count = reader.length("log count")?;
    if count > LOGS_MAX {
        return Err(format!("{count} logs, more than {LOGS_MAX}"));
    }
    // Each log takes at least LOG_BYTES_MIN bytes: a count the rest cannot hold is truncation,
    // found before allocating for it.
    if count > reader.remaining() / LOG_BYTES_MIN {
        return Err(format!(
            "truncated: {count} logs do not fit in the {} bytes left",
            reader.remaining()
        ));
    }
    let mut logs = Vec::with_capacity(count);
    for index in 0..count {
        let address = reader.address("log address")?;
        let topic_count = usize::from(reader.u8("topic count")?);
        if topic_count > TOPICS_MAX {
            return Err(format!(
                "log {index} has {topic_count} topics, more than {TOPICS_MAX}"
            ));
        }
        let topics = (0..topic_count)
            .map(|_| reader.b256("log topic"))
            .collect::<Result<Vec<_>, _>>()?;
        let data = Bytes::copy_from_slice(reader.bytes("log data")?);
        logs.push(LogRecord {
            address,
            topics,
            data,
        });
    }
    Ok(TxRecord {
        hash,
        raw,
        sender,
        user,
        status: flags & FLAG_STATUS != 0,
        gas_used,
        effective_gas_price,
        contract_address,
        logs,
    })
}

/// Reads fields off the front of a record, refusing to read past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8], String> {
        let slice = self
            .at
            .checked_add(count)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {count} bytes at offset {}, {} left",
                    self.at,
                    self.remaining()
                )
            })?;
        self.at += count;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn length(&mut self, what: &str) -> Result<usize, String> {
        let length = u32::from_be_bytes(self.array(what)?);
        usize::try_from(length).map_err(|_| format!("{what} {length} does not fit in memory"))
    }

    fn b256(&mut self, what: &str) -> Result<B256, String> {
        Ok(B256::from(self.array::<32>(what)?))
    }

    fn address(&mut self, what: &str) -> Result<Address, String> {
        Ok(Address::from(self.array::<20>(what)?))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let length = self.length(what)?;
        self.take(length, what)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(seed: u8) -> B256 {
        B256::from([seed; 32])
    }

    fn genesis() -> BlockRecord {
        BlockRecord {
            number: 0,
            hash: hash(1),
            parent_hash: B256::ZERO,
            timestamp: 1_704_067_200,
            charter_tx_id: "1.1".into(),
            transaction: None,
        }
    }

    fn transfer() -> TxRecord {
        TxRecord {
            hash: hash(7),
            raw: Bytes::from(vec![0x02, 0xf8, 0x6c, 0x82, 0x43, 0x48, 0x80]),
            sender: Address::with_last_byte(0x11),
            user: "0123456789abcdef".repeat(4),
            status: true,
            gas_used: 21_000,
            effective_gas_price: 0,
            contract_address: None,
            logs: Vec::new(),
        }
    }

    fn with_transaction(transaction: TxRecord) -> BlockRecord {
        BlockRecord {
            number: 42,
            hash: hash(2),
            parent_hash: hash(3),
            timestamp: u64::MAX,
            charter_tx_id: "2.1000000".into(),
            transaction: Some(transaction),
        }
    }

    fn with_logs() -> BlockRecord {
        let mut transaction = transfer();
        transaction.contract_address = Some(Address::with_last_byte(0xcc));
        transaction.effective_gas_price = u128::MAX;
        transaction.gas_used = u64::MAX;
        transaction.logs = (0..=TOPICS_MAX)
            .map(|topics| LogRecord {
                address: Address::with_last_byte(topics as u8),
                topics: (0..topics).map(|seed| hash(seed as u8 + 0x40)).collect(),
                data: Bytes::from(vec![topics as u8; topics * 13]),
            })
            .collect();
        with_transaction(transaction)
    }

    fn samples() -> Vec<BlockRecord> {
        let mut samples = vec![genesis(), with_transaction(transfer()), with_logs()];
        let mut failed = transfer();
        failed.status = false;
        failed.contract_address = Some(Address::repeat_byte(0xee));
        samples.push(with_transaction(failed));
        // Users and TxIDs that do not take the compact forms, and some that nearly do.
        let users = [
            String::new(),
            "aa11".into(),
            "0123456789ABCDEF".repeat(4),
            "0123456789abcdef".repeat(4) + "0",
            "0123456789abcdef".repeat(4)[1..].to_owned() + "g",
            format!("+{}", &"0123456789abcdef".repeat(4)[1..]),
            "usér ☃ \u{0}".into(),
        ];
        for user in users {
            let mut transaction = transfer();
            transaction.user = user;
            samples.push(with_transaction(transaction));
        }
        let tx_ids = [
            "",
            "1",
            "1.",
            ".1",
            "01.2",
            "1.02",
            "+1.2",
            "1.2.3",
            "18446744073709551615.18446744073709551615",
            "18446744073709551616.1",
            "0.0",
            "x.y",
        ];
        for tx_id in tx_ids {
            let mut record = genesis();
            record.charter_tx_id = tx_id.into();
            samples.push(record);
        }
        samples
    }

    #[test]
    fn records_round_trip() {
        for record in samples() {
            let bytes = encode_block(&record).unwrap();
            assert_eq!(bytes[0], FORMAT_V1);
            assert_eq!(decode_block(&bytes).unwrap(), record, "{record:?}");
        }
    }

    #[test]
    fn compact_forms_are_taken() {
        // Format, number, hashes, timestamp, TxID tag, view, seqno, transaction tag.
        let genesis_bytes = 1 + 8 + 32 + 32 + 8 + 1 + 8 + 8 + 1;
        assert_eq!(encode_block(&genesis()).unwrap().len(), genesis_bytes);
        let record = with_transaction(transfer());
        let transaction = 32 + 20 + 1 + 8 + 16 + 1 + 32 + 4 + 7 + 4;
        assert_eq!(
            encode_block(&record).unwrap().len(),
            genesis_bytes + transaction
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        for record in samples() {
            let bytes = encode_block(&record).unwrap();
            for length in 0..bytes.len() {
                match decode_block(&bytes[..length]) {
                    Err(EvmError::Corrupt(message)) => {
                        assert!(message.contains("truncated"), "{length}: {message}")
                    }
                    other => panic!("{length} of {} bytes: {other:?}", bytes.len()),
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_formats_are_refused() {
        for record in samples() {
            let mut bytes = encode_block(&record).unwrap();
            bytes.push(0);
            let error = decode_block(&bytes).unwrap_err().to_string();
            assert!(error.contains("1 trailing bytes"), "{error}");
        }
        let mut bytes = encode_block(&genesis()).unwrap();
        for format in [0x00, 0x02, 0xff] {
            bytes[0] = format;
            let error = decode_block(&bytes).unwrap_err().to_string();
            assert!(error.contains("unknown format byte"), "{error}");
        }
        let json = serde_json::to_vec(&genesis()).unwrap();
        let error = decode_block(&json).unwrap_err().to_string();
        assert!(error.contains("JSON record"), "{error}");
    }

    #[test]
    fn bad_tags_counts_and_strings_are_refused() {
        let record = with_logs();
        let bytes = encode_block(&record).unwrap();
        let corrupt = |at: usize, value: &[u8]| {
            let mut bytes = bytes.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            match decode_block(&bytes) {
                Err(EvmError::Corrupt(message)) => message,
                other => panic!("{other:?}"),
            }
        };
        let tx_id_tag = 1 + 8 + 32 + 32 + 8;
        assert!(corrupt(tx_id_tag, &[7]).contains("TxID tag"));
        let transaction_tag = tx_id_tag + 1 + 16;
        assert!(corrupt(transaction_tag, &[2]).contains("transaction tag"));
        let flags = transaction_tag + 1 + 32 + 20;
        assert!(corrupt(flags, &[0x04]).contains("unknown flags"));
        let user_tag = flags + 1 + 8 + 16 + 20;
        assert!(corrupt(user_tag, &[9]).contains("user tag"));
        let log_count = user_tag + 1 + 32 + 4 + record.transaction.as_ref().unwrap().raw.len();
        let too_many = u32::try_from(LOGS_MAX + 1).unwrap().to_be_bytes();
        assert!(corrupt(log_count, &too_many).contains("more than"));
        assert!(corrupt(log_count, &u32::MAX.to_be_bytes()).contains("more than"));
        let unfit = corrupt(log_count, &1_000u32.to_be_bytes());
        assert!(unfit.contains("truncated"), "{unfit}");
        let topic_count = log_count + 4 + 20;
        assert!(corrupt(topic_count, &[5]).contains("5 topics"));
        // A user string that is not UTF-8 (in a record without a contract address).
        let mut odd = transfer();
        odd.user = "ab".into();
        let bytes = encode_block(&with_transaction(odd)).unwrap();
        let user_tag = user_tag - 20;
        assert_eq!(bytes[user_tag], TAG_STRING);
        let mut bad = bytes.clone();
        bad[user_tag + 1 + 4] = 0xff;
        assert!(decode_block(&bad)
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        // A length past the end.
        let mut bad = bytes;
        bad[user_tag + 1..user_tag + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_block(&bad)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A simple deterministic generator: every outcome must be a value or a Corrupt error.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = encode_block(&with_logs()).unwrap();
        for _ in 0..2_000 {
            let mut bytes = base.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            match decode_block(&bytes) {
                Ok(_) | Err(EvmError::Corrupt(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn oversized_records_are_refused_when_encoding() {
        let mut record = with_logs();
        if let Some(transaction) = &mut record.transaction {
            transaction.logs[0].topics = vec![B256::ZERO; TOPICS_MAX + 1];
        }
        assert!(matches!(encode_block(&record), Err(EvmError::TooLarge(_))));
        let mut record = with_logs();
        if let Some(transaction) = &mut record.transaction {
            let log = transaction.logs[0].clone();
            transaction.logs = vec![log; LOGS_MAX + 1];
        }
        assert!(matches!(encode_block(&record), Err(EvmError::TooLarge(_))));
    }
}
