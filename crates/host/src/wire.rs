//! What nodes say to each other on the node channel ([`crate::peers`]): Raft messages, and client
//! requests a follower forwards to the primary with the primary's answers.
//!
//! Every message starts with a one-byte tag. Integers are little-endian; strings and byte
//! strings are a `u32` length followed by the bytes. Decoding checks every length against the
//! bytes present and refuses trailing bytes, so a malformed message from a peer is an error, never
//! a panic.
//!
//! ```
//! use charter_core::{Method, Request, Response};
//! use charter_host::wire::PeerMessage;
//! let request = Request {
//!     method: Method::Put,
//!     path: "/app/kv/a".into(),
//!     query: vec![],
//!     headers: vec![("content-type".into(), "text/plain".into())],
//!     body: b"1".to_vec(),
//!     caller_cert_der: Some(vec![0x30, 0x00]),
//! };
//! let message = PeerMessage::ForwardRequest { forward_id: 7, request };
//! assert_eq!(PeerMessage::decode(&message.encode()).unwrap(), message);
//! let answer = PeerMessage::ForwardResponse { forward_id: 7, response: Response::error(503, "NotPrimary", "x") };
//! assert_eq!(PeerMessage::decode(&answer.encode()).unwrap(), answer);
//! ```

use charter_core::{Method, Request, Response};

const TAG_RAFT: u8 = 0;
const TAG_FORWARD_REQUEST: u8 = 1;
const TAG_FORWARD_RESPONSE: u8 = 2;

/// Most query parameters or headers one forwarded request or response may carry.
pub const FIELDS_MAX: usize = 1_024;

/// One message on the node channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// A Raft message (the consensus crate's encoding).
    Raft(Vec<u8>),
    /// A client request a follower forwards to the primary.
    ForwardRequest {
        /// Chosen by the forwarding node to match the answer.
        forward_id: u64,
        /// The request as the follower received it, caller certificate included.
        request: Request,
    },
    /// The primary's answer to a forwarded request.
    ForwardResponse {
        /// The `forward_id` of the request.
        forward_id: u64,
        /// The answer.
        response: Response,
    },
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed node-channel message: {0}")]
pub struct WireError(&'static str);

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Node-channel messages are bounded far below 4 GiB (peers::PEER_MESSAGE_BYTES_MAX).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(String, String)]) {
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

fn method_code(method: Method) -> u8 {
    match method {
        Method::Get => 0,
        Method::Put => 1,
        Method::Post => 2,
        Method::Delete => 3,
        Method::Patch => 4,
        Method::Other => 5,
    }
}

impl PeerMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            PeerMessage::Raft(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(TAG_RAFT);
                out.extend_from_slice(bytes);
                out
            }
            PeerMessage::ForwardRequest {
                forward_id,
                request,
            } => {
                let mut out = Vec::with_capacity(request.body.len() + 256);
                out.push(TAG_FORWARD_REQUEST);
                out.extend_from_slice(&forward_id.to_le_bytes());
                out.push(method_code(request.method));
                put_bytes(&mut out, request.path.as_bytes());
                put_pairs(&mut out, &request.query);
                put_pairs(&mut out, &request.headers);
                put_bytes(&mut out, &request.body);
                match &request.caller_cert_der {
                    Some(der) => {
                        out.push(1);
                        put_bytes(&mut out, der);
                    }
                    None => out.push(0),
                }
                out
            }
            PeerMessage::ForwardResponse {
                forward_id,
                response,
            } => {
                let mut out = Vec::with_capacity(response.body.len() + 64);
                out.push(TAG_FORWARD_RESPONSE);
                out.extend_from_slice(&forward_id.to_le_bytes());
                out.extend_from_slice(&response.status.to_le_bytes());
                put_pairs(&mut out, &response.headers);
                put_bytes(&mut out, &response.body);
                out
            }
        }
    }

    /// Parses a message.
    ///
    /// # Errors
    /// [`WireError`] naming what is wrong: unknown tag, truncated field, bad UTF-8, unknown
    /// method, too many fields or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<PeerMessage, WireError> {
        let (&tag, rest) = bytes.split_first().ok_or(WireError("empty message"))?;
        if tag == TAG_RAFT {
            return Ok(PeerMessage::Raft(rest.to_vec()));
        }
        let mut reader = Reader { bytes: rest };
        let message = match tag {
            TAG_FORWARD_REQUEST => {
                let forward_id = reader.u64()?;
                let method = match reader.u8()? {
                    0 => Method::Get,
                    1 => Method::Put,
                    2 => Method::Post,
                    3 => Method::Delete,
                    4 => Method::Patch,
                    5 => Method::Other,
                    _ => return Err(WireError("unknown method")),
                };
                let path = reader.string()?;
                let query = reader.pairs()?;
                let headers = reader.pairs()?;
                let body = reader.bytes()?.to_vec();
                let caller_cert_der = match reader.u8()? {
                    0 => None,
                    1 => Some(reader.bytes()?.to_vec()),
                    _ => return Err(WireError("bad certificate flag")),
                };
                PeerMessage::ForwardRequest {
                    forward_id,
                    request: Request {
                        method,
                        path,
                        query,
                        headers,
                        body,
                        caller_cert_der,
                    },
                }
            }
            TAG_FORWARD_RESPONSE => {
                let forward_id = reader.u64()?;
                let status = u16::from_le_bytes(reader.array()?);
                if !(100..=599).contains(&status) {
                    return Err(WireError("status code out of range"));
                }
                let headers = reader.pairs()?;
                let body = reader.bytes()?.to_vec();
                PeerMessage::ForwardResponse {
                    forward_id,
                    response: Response {
                        status,
                        headers,
                        body,
                    },
                }
            }
            _ => return Err(WireError("unknown tag")),
        };
        if !reader.bytes.is_empty() {
            return Err(WireError("trailing bytes"));
        }
        Ok(message)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError("truncated"));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WireError("text is not UTF-8"))
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, WireError> {
        let count = self.u32()? as usize;
        if count > FIELDS_MAX {
            return Err(WireError("too many fields"));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((self.string()?, self.string()?));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            method: Method::Post,
            path: "/gov/members/proposals:create".into(),
            query: vec![("api-version".into(), "2024-07-01".into())],
            headers: vec![("content-type".into(), "application/cose".into())],
            body: vec![0xd2, 0x84, 0, 1, 2],
            caller_cert_der: None,
        }
    }

    #[test]
    fn round_trips() {
        for message in [
            PeerMessage::Raft(vec![1, 2, 3]),
            PeerMessage::Raft(Vec::new()),
            PeerMessage::ForwardRequest {
                forward_id: u64::MAX,
                request: request(),
            },
            PeerMessage::ForwardResponse {
                forward_id: 0,
                response: Response::json(201, &serde_json::json!({"a": 1}))
                    .with_header("x-ms-ccf-transaction-id", "2.17"),
            },
        ] {
            assert_eq!(PeerMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = PeerMessage::ForwardRequest {
            forward_id: 3,
            request: request(),
        }
        .encode();
        for length in 0..bytes.len() {
            assert!(
                PeerMessage::decode(&bytes[..length]).is_err(),
                "prefix of {length} bytes accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            PeerMessage::decode(&longer),
            Err(WireError("trailing bytes"))
        );
    }

    #[test]
    fn bad_fields_are_refused() {
        assert_eq!(PeerMessage::decode(&[9]), Err(WireError("unknown tag")));
        let mut bytes = PeerMessage::ForwardRequest {
            forward_id: 3,
            request: request(),
        }
        .encode();
        bytes[9] = 42; // the method
        assert_eq!(
            PeerMessage::decode(&bytes),
            Err(WireError("unknown method"))
        );
        let mut response = PeerMessage::ForwardResponse {
            forward_id: 1,
            response: Response::error(500, "x", "y"),
        }
        .encode();
        response[9..11].copy_from_slice(&42u16.to_le_bytes());
        assert_eq!(
            PeerMessage::decode(&response),
            Err(WireError("status code out of range"))
        );
        // A huge field count is refused before anything is allocated for it.
        let mut many = vec![TAG_FORWARD_RESPONSE];
        many.extend_from_slice(&1u64.to_le_bytes());
        many.extend_from_slice(&200u16.to_le_bytes());
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            PeerMessage::decode(&many),
            Err(WireError("too many fields"))
        );
    }
}
