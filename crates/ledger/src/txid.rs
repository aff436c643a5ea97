use std::fmt;
use std::str::FromStr;

/// A transaction ID: the Raft term (`view`) and log index (`seqno`) of its ledger entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId {
    /// Raft term in which the primary created the entry.
    pub view: u64,
    /// Position of the entry in the ledger, from 1.
    pub seqno: u64,
}

impl TxId {
    /// `view.seqno`.
    pub fn new(view: u64, seqno: u64) -> TxId {
        TxId { view, seqno }
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.view, self.seqno)
    }
}

/// Why a string is not a TxID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transaction ID {0:?}: expected VIEW.SEQNO with two decimal numbers")]
pub struct TxIdParseError(pub String);

impl FromStr for TxId {
    type Err = TxIdParseError;

    fn from_str(text: &str) -> Result<TxId, TxIdParseError> {
        let error = || TxIdParseError(text.chars().take(64).collect());
        let (view, seqno) = text.split_once('.').ok_or_else(error)?;
        let number = |part: &str| -> Result<u64, TxIdParseError> {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error());
            }
            part.parse().map_err(|_| error())
        };
        Ok(TxId {
            view: number(view)?,
            seqno: number(seqno)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let id: TxId = "2.17".parse().unwrap();
        assert_eq!(id, TxId::new(2, 17));
        assert_eq!(id.to_string(), "2.17");
        for bad in [
            "",
            "2",
            "2.",
            ".3",
            "a.b",
            "1.2.3",
            "-1.2",
            "1.+2",
            " 1.2",
            "99999999999999999999999.1",
        ] {
            assert!(bad.parse::<TxId>().is_err(), "{bad}");
        }
    }
}
