//! The request and response types that cross the boundary between the host and the core.
//!
//! The host terminates TLS and parses HTTP; the core sees only these plain values, so it can be
//! driven the same way by the host and by the simulator.

/// Identifies one in-flight client request so that its response can be routed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// HTTP method of a client request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `PUT`
    Put,
    /// `POST`
    Post,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// Any other method; endpoints answer 405.
    Other,
}

/// An authenticated client request, as the host hands it to the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Percent-decoded path, without the query string, e.g. `/app/kv/a`.
    pub path: String,
    /// Query parameters in order, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header names (lower case) and values, as sent.
    pub headers: Vec<(String, String)>,
    /// The request body; the host has already enforced the body size limit.
    pub body: Vec<u8>,
    /// DER of the client's TLS certificate, if it presented one. The host has checked that the
    /// client holds the certificate's private key; whom it belongs to is the core's decision.
    pub caller_cert_der: Option<Vec<u8>>,
}

impl Request {
    /// The first value of query parameter `name`, if present.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A response from the core to one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (lower-case names), e.g. `content-type` or `x-ms-ccf-transaction-id`.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response with `status`.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error body `{"error": {"code", "message"}}` with `status`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Response::json(
            status,
            &serde_json::json!({"error": {"code": code, "message": message.into()}}),
        )
    }

    /// Adds a header and returns the response.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}
