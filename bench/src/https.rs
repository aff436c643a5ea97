//! A minimal HTTPS/1.1 client with a client certificate and one persistent connection, reopened
//! only if the server closed it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS 1.3 client settings trusting the service certificate, presenting `cert`/`key`.
pub fn tls_config(
    service_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut service_pem.as_bytes()) {
        let certificate = certificate.map_err(|error| format!("service certificate: {error}"))?;
        roots
            .add(certificate)
            .map_err(|error| format!("service certificate: {error}"))?;
    }
    if roots.is_empty() {
        return Err("no service certificate".to_owned());
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let certificates = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("user certificate: {error}"))?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                .map_err(|error| format!("user key: {error}"))?
                .ok_or("no private key in the user key file")?;
            builder
                .with_client_auth_cert(certificates, key)
                .map_err(|error| error.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A response: status, the transaction-ID header if any, and the body.
pub struct Reply {
    pub status: u16,
    pub tx_id: Option<String>,
    pub body: Bytes,
}

/// One keep-alive HTTPS connection to a node.
pub struct Https {
    address: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Connections opened so far (1 for a client whose connection was reused throughout).
    pub connections_opened: u64,
}

impl Https {
    /// Connects to `address` (a node of the sandbox, certified for 127.0.0.1).
    pub async fn connect(
        address: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let mut client = Self {
            address,
            connector: tokio_rustls::TlsConnector::from(tls),
            sender: None,
            connections_opened: 0,
        };
        client.reconnect().await?;
        Ok(client)
    }

    async fn reconnect(&mut self) -> Result<(), String> {
        self.sender = None;
        let connect = async {
            let tcp = TcpStream::connect(self.address)
                .await
                .map_err(|error| format!("connect {}: {error}", self.address))?;
            tcp.set_nodelay(true).map_err(|error| error.to_string())?;
            let name = ServerName::IpAddress(self.address.ip().into());
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|error| format!("TLS to {}: {error}", self.address))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|error| error.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, String>(sender)
        };
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("connect {} timed out", self.address))??;
        self.sender = Some(sender);
        self.connections_opened += 1;
        Ok(())
    }

    /// Sends one request on the connection (reopening it first if the server closed it).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, String> {
        if self.sender.as_ref().is_none_or(|sender| sender.is_closed()) {
            self.reconnect().await?;
        }
        let sender = self.sender.as_mut().ok_or("not connected")?;
        sender.ready().await.map_err(|error| error.to_string())?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/octet-stream")
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                self.sender = None;
                return Err(error.to_string());
            }
        };
        let status = response.status().as_u16();
        let tx_id = response
            .headers()
            .get("x-ms-ccf-transaction-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            tx_id,
            body,
        })
    }
}

/// Parses a TxID `VIEW.SEQNO`.
pub fn parse_tx_id(text: &str) -> Option<(u64, u64)> {
    let (view, seqno) = text.split_once('.')?;
    Some((view.parse().ok()?, seqno.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_ids_parse() {
        assert_eq!(parse_tx_id("2.17"), Some((2, 17)));
        assert_eq!(parse_tx_id("2"), None);
        assert_eq!(parse_tx_id("a.1"), None);
    }
}
