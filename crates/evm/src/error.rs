//! The adapter's one error type.

/// Why the adapter refused or failed something. Each variant maps to one JSON-RPC error code in
/// [`EvmError::rpc_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvmError {
    /// The raw transaction is not a canonical transaction of a supported type.
    #[error("invalid transaction: {0}")]
    InvalidTransaction(String),
    /// No sender can be recovered from the signature.
    #[error("invalid sender: {0}")]
    InvalidSignature(String),
    /// The transaction is signed for another chain.
    #[error("invalid chain id: the transaction is for chain {got}, this is chain {expected}")]
    WrongChain {
        /// This chain's ID.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The same transaction was already executed.
    #[error("already known")]
    AlreadyKnown,
    /// The sending account is bound to another Charter user.
    #[error("account {0} is bound to another user")]
    AccountBound(String),
    /// The EVM refused the transaction before executing it (nonce, funds, gas limits, ...).
    #[error("{0}")]
    Rejected(String),
    /// `eth_call`/`eth_estimateGas`: execution reverted, with the revert data.
    #[error("execution reverted{}", reason_suffix(.0))]
    Reverted(Vec<u8>),
    /// `eth_call`/`eth_estimateGas`: execution halted (out of gas, invalid opcode, ...).
    #[error("{0}")]
    Halted(String),
    /// A request names state this node does not keep (a past block's state).
    #[error("{0}")]
    Unavailable(String),
    /// Outside input over a limit.
    #[error("{0}")]
    TooLarge(String),
    /// A stored record is malformed: the store holds something this adapter did not write.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The store refused a write (a key or value over its limits).
    #[error("store: {0}")]
    Kv(#[from] charter_kv::KvError),
}

/// Solidity's `Error(string)` selector: revert data starting with it carries a message.
const ERROR_STRING_SELECTOR: [u8; 4] = [0x08, 0xc3, 0x79, 0xa0];

/// The message in `Error(string)` revert data, if it is one.
pub fn revert_reason(data: &[u8]) -> Option<String> {
    let body = data.strip_prefix(&ERROR_STRING_SELECTOR)?;
    // ABI: offset (32) | length (32) | bytes.
    let length_word = body.get(32..64)?;
    if length_word[..24].iter().any(|byte| *byte != 0) {
        return None;
    }
    let mut length = [0; 8];
    length.copy_from_slice(&length_word[24..]);
    let length = usize::try_from(u64::from_be_bytes(length)).ok()?;
    let text = body.get(64..64usize.checked_add(length)?)?;
    String::from_utf8(text.to_vec()).ok()
}

fn reason_suffix(data: &[u8]) -> String {
    revert_reason(data).map_or_else(String::new, |reason| format!(": {reason}"))
}

impl EvmError {
    /// The JSON-RPC error code: -32602 for malformed input, 3 for a revert (as geth reports
    /// it, with the revert data), -32000 for everything the server refuses or fails on.
    pub fn rpc_code(&self) -> i64 {
        match self {
            EvmError::InvalidTransaction(_) | EvmError::InvalidSignature(_) => -32602,
            EvmError::Reverted(_) => 3,
            _ => -32000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_error_string_reverts() {
        // Error("no") as solc encodes it.
        let mut data = ERROR_STRING_SELECTOR.to_vec();
        let mut offset = [0u8; 32];
        offset[31] = 0x20;
        let mut length = [0u8; 32];
        length[31] = 2;
        let mut text = [0u8; 32];
        text[..2].copy_from_slice(b"no");
        data.extend_from_slice(&offset);
        data.extend_from_slice(&length);
        data.extend_from_slice(&text);
        assert_eq!(revert_reason(&data).as_deref(), Some("no"));
        assert_eq!(
            EvmError::Reverted(data.clone()).to_string(),
            "execution reverted: no"
        );
        assert_eq!(revert_reason(&data[..40]), None);
        assert_eq!(revert_reason(b"\x01\x02"), None);
        assert_eq!(
            EvmError::Reverted(Vec::new()).to_string(),
            "execution reverted"
        );
    }
}
