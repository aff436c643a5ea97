//! A small HTTPS client for the CLI, tests and the benchmark.
//!
//! A [`Client`] keeps one persistent HTTP/1.1 connection over TLS and sends requests on it one
//! at a time. If the server has closed the connection (idle timeout, `connection: close`, a
//! refused request), the next request opens a new one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long connecting (TCP and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response body the client accepts, in bytes.
pub const RESPONSE_BODY_BYTES_MAX: usize = 64 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// The TCP connection or the TLS handshake failed (including an untrusted server
    /// certificate).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("connect timed out")]
    ConnectTimeout,
    /// The method, path or a header could not form an HTTP request.
    #[error("invalid request: {0}")]
    InvalidRequest(#[source] hyper::http::Error),
    /// The HTTP exchange failed (for example the server closed the connection mid-request).
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The response body could not be read or was over [`RESPONSE_BODY_BYTES_MAX`].
    #[error("response body unreadable: {0}")]
    ResponseBody(String),
    /// The response body is not JSON.
    #[error("response is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One HTTPS connection to a node, reopened on demand.
pub struct Client {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host_header: String,
    connector: tokio_rustls::TlsConnector,
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted when the client is dropped or reconnects.
    driver: JoinHandle<()>,
    /// Connections opened so far, the first included.
    connections_opened: u64,
}

/// A complete HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names (lower case) and values, in the order received. Values that are not UTF-8
    /// are decoded lossily.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The first value of header `name` (compared case-insensitively), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// [`ClientError::Json`] if the body is not JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

impl Client {
    /// Connects to `addr` over TLS, verifying the server's certificate for `server_name` (a DNS
    /// name or an IP address) with `tls`.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidServerName`], or [`ClientError::Connect`] /
    /// [`ClientError::ConnectTimeout`] if TCP or the TLS handshake fails.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let parsed = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::InvalidServerName(server_name.to_owned()))?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let (sender, driver) = open(addr, &parsed, &connector).await?;
        let host_header = match parsed {
            ServerName::IpAddress(_) => addr.to_string(),
            _ => format!("{server_name}:{}", addr.port()),
        };
        Ok(Client {
            addr,
            server_name: parsed,
            host_header,
            connector,
            sender,
            driver,
            connections_opened: 1,
        })
    }

    /// How many connections this client has opened, the first included; more than one means
    /// the server closed a connection and the client reconnected.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened
    }

    /// Sends one request and reads the whole response. `path_and_query` is sent as is (already
    /// percent-encoded), e.g. `/app/log?id=4`; `content-length` and `host` are added.
    ///
    /// If the connection was closed since the last request, a new one is opened first; if the
    /// request could not even be handed to the connection, it is retried once on a new one.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidRequest`] for a bad method, path or header; connect errors as in
    /// [`Client::connect`]; [`ClientError::Http`] if the exchange fails;
    /// [`ClientError::ResponseBody`] if the body cannot be read.
    pub async fn request(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<ClientResponse, ClientError> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::HOST, self.host_header.as_str());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(ClientError::InvalidRequest)?;

        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.reconnect().await?;
        }
        let response = match self.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut error) => match error.take_message() {
                // Never written to the connection: safe to send again on a fresh one.
                Some(request) => {
                    self.reconnect().await?;
                    self.sender.send_request(request).await?
                }
                None => return Err(ClientError::Http(error.into_error())),
            },
        };

        let (parts, body) = response.into_parts();
        let body = Limited::new(body, RESPONSE_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| ClientError::ResponseBody(error.to_string()))?
            .to_bytes()
            .to_vec();
        assert!(body.len() <= RESPONSE_BODY_BYTES_MAX);
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(ClientResponse {
            status: parts.status.as_u16(),
            headers,
            body,
        })
    }

    /// Replaces the connection with a new one.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let (sender, driver) = open(self.addr, &self.server_name, &self.connector).await?;
        self.driver.abort();
        self.sender = sender;
        self.driver = driver;
        self.connections_opened += 1;
        Ok(())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("closed", &self.sender.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a TLS connection and starts hyper's HTTP/1.1 client on it.
async fn open(
    addr: SocketAddr,
    server_name: &ServerName<'static>,
    connector: &tokio_rustls::TlsConnector,
) -> Result<(SendRequest<Full<Bytes>>, JoinHandle<()>), ClientError> {
    let connecting = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector.connect(server_name.clone(), tcp).await
    };
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ClientError::ConnectTimeout)?
        .map_err(ClientError::Connect)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "HTTPS client connection ended with an error");
        }
    });
    Ok((sender, driver))
}
