//! Node-to-node channels: mutually authenticated TLS 1.3 links that carry opaque messages (Raft
//! messages, for the replication layer) between the nodes of one service.
//!
//! # Connection model
//!
//! Each direction uses its own connection. A node dials every peer it sends to (see
//! [`Peers::set_peer`]) and writes only on that outgoing connection; the connections other nodes
//! dial to it are receive-only. So between two nodes that talk both ways there are two TLS
//! connections, and neither side ever has to decide which of two simultaneous dials wins. The
//! server side of a connection never writes application data; the dialer reads only to notice
//! that the connection closed.
//!
//! # Authentication
//!
//! Both sides present their node certificate. The listener accepts a connection only if the
//! dialer's certificate is within its validity period, is signed by the service certificate,
//! and the dialer's node ID (the hex SHA-256 of its public key, [`VerifyingKey::id_hex`]) is
//! trusted by the caller's [`TrustFn`] (which consults the core's nodes table). Trust is checked
//! on every new connection and every [`TRUST_CHECK_INTERVAL_MS`] on established inbound
//! connections, which are closed once the node is no longer trusted. The dialer accepts the
//! server only if its certificate is valid, signed by the service certificate and carries the
//! public key of the node it meant to reach: addresses (DNS or IP subject alternative names) play
//! no part, so a wrong or hijacked address never delivers a message to the wrong node. Session
//! resumption is disabled so that every connection runs these checks on a full handshake.
//!
//! # Framing and loss
//!
//! A message is a little-endian `u32` length followed by that many bytes; a length above
//! [`PEER_MESSAGE_BYTES_MAX`] closes the connection. Messages to one peer are queued (at most
//! [`PEER_QUEUE_MESSAGES_MAX`]) and written in order on one connection; when the queue is full,
//! or the connection breaks with a message in flight, messages are lost. Raft tolerates loss,
//! so nothing here retransmits.
//!
//! # Example
//!
//! Two nodes of one service; `a` dials `b` and sends it a message.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{SystemTime, UNIX_EPOCH};
//!
//! use charter_crypto::{Certificate, CertificateSpec, SigningKey, Validity};
//! use charter_host::peers::{PeerIdentity, Peers, TrustFn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
//! let validity = Validity { not_before_unix: i64::try_from(now).unwrap() - 60, days: 1 };
//! let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
//! let service_spec =
//!     CertificateSpec { common_name: "service", is_ca: true, subject_alt_names: &[], validity };
//! let service_cert = Certificate::self_signed(&service_key, &service_spec).unwrap();
//! let identity = |seed: u8| {
//!     let key = SigningKey::from_seed(&[seed; 32]).unwrap();
//!     let spec =
//!         CertificateSpec { common_name: "node", is_ca: false, subject_alt_names: &[], validity };
//!     let cert =
//!         Certificate::issue(&key.verifying_key(), &spec, &service_key, &service_cert).unwrap();
//!     PeerIdentity {
//!         node_cert_pem: cert.to_pem(),
//!         node_key_pem: key.to_pem(),
//!         service_cert_pem: service_cert.to_pem(),
//!     }
//! };
//! // A real node asks the core's nodes table.
//! let trust: TrustFn = Arc::new(|_node_id: &str| true);
//! let loopback = "127.0.0.1:0".parse().unwrap();
//! let (inbox_a, _received_a) = tokio::sync::mpsc::channel(64);
//! let (inbox_b, mut received_b) = tokio::sync::mpsc::channel(64);
//! let a = Peers::start(identity(2), loopback, trust.clone(), inbox_a).await.unwrap();
//! let b = Peers::start(identity(3), loopback, trust, inbox_b).await.unwrap();
//!
//! a.set_peer(b.node_id(), b.local_addr());
//! a.send(b.node_id(), b"hello".to_vec());
//! let (sender, bytes) = received_b.recv().await.unwrap();
//! assert_eq!(sender, a.node_id());
//! assert_eq!(bytes, b"hello");
//! a.shutdown();
//! b.shutdown();
//! # }
//! ```

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use charter_crypto::{Certificate, SigningKey, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

/// Largest node-to-node message.
pub const PEER_MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Messages queued per peer before new ones are dropped (Raft tolerates loss).
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4_096;
/// Most peers one node dials (far above any consortium's node count).
pub const PEERS_MAX: usize = 1_024;
/// Most inbound connections open at once; further ones are closed on accept.
pub const PEER_INBOUND_CONNECTIONS_MAX: usize = 1_024;
/// How often the trust of an established inbound connection's node is checked again.
pub const TRUST_CHECK_INTERVAL_MS: u64 = 500;
/// The application protocol both sides negotiate, so that a client of another protocol (HTTP)
/// connecting to the peer port fails the handshake instead of being misread.
pub const ALPN_PEER: &[u8] = b"charter-peer/1";

/// TCP connect plus TLS handshake, either side.
const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Writing one batch of messages; a peer that reads nothing for this long is reconnected.
const WRITE_TIMEOUT_MS: u64 = 10_000;
/// First and largest delay between attempts to reach a peer.
const RECONNECT_DELAY_MS_MIN: u64 = 50;
const RECONNECT_DELAY_MS_MAX: u64 = 2_000;
/// A connection that lasted this long resets the reconnection delay when it breaks.
const CONNECTION_STABLE_MS: u64 = 1_000;
/// Messages written before one flush.
const WRITE_BATCH_MESSAGES_MAX: usize = 256;
/// Buffer sizes for the framed reader and writer.
const BUFFER_BYTES: usize = 64 << 10;

const _: () = assert!(PEER_MESSAGE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(WRITE_BATCH_MESSAGES_MAX <= PEER_QUEUE_MESSAGES_MAX);
const _: () = assert!(RECONNECT_DELAY_MS_MIN <= RECONNECT_DELAY_MS_MAX);
const _: () = assert!(TRUST_CHECK_INTERVAL_MS < 2_000);

/// This node's identity on node-to-node links.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The node certificate (the first `CERTIFICATE` block is used), endorsed by the service.
    pub node_cert_pem: String,
    /// The node's private key.
    pub node_key_pem: String,
    /// The service certificate, which must have signed every peer's node certificate.
    pub service_cert_pem: String,
}

/// Decides whether a node ID may talk to us (the core's nodes table: Trusted or
/// Pending-being-caught-up).
pub type TrustFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Why the peer layer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// A certificate or key in the [`PeerIdentity`] could not be read.
    #[error("invalid node identity: {0}")]
    Identity(#[source] charter_crypto::CryptoError),
    /// The node key is not the key of the node certificate.
    #[error("node key does not match the node certificate")]
    KeyMismatch,
    /// The node certificate is not signed by the service certificate.
    #[error("node certificate is not endorsed by the service certificate")]
    NotEndorsed,
    /// rustls rejected the configuration.
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// Node-to-node links of one node: a listener for peers that dial us and one dialing task per
/// peer we send to. Cheap to clone; every clone drives the same links.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

struct Inner {
    node_id: String,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    tls: Arc<TlsParts>,
    /// Taken (and so closed at once) by `shutdown`; the accept loop polls it under the lock.
    listener: Arc<Mutex<Option<TcpListener>>>,
    accept_task: AbortHandle,
    /// `None` once shut down.
    peers: Mutex<Option<HashMap<String, PeerLink>>>,
}

/// What the dialer needs to build a client configuration for one expected node.
struct TlsParts {
    provider: Arc<CryptoProvider>,
    node_cert: CertificateDer<'static>,
    node_key_pkcs8: Vec<u8>,
    service_key: VerifyingKey,
}

/// The sending side of one peer: its address, its queue and the task that drains the queue.
struct PeerLink {
    address: watch::Sender<SocketAddr>,
    queue: mpsc::Sender<Vec<u8>>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        shutdown_inner(self);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a panic elsewhere while
    // holding the lock does not make the data unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shutdown_inner(inner: &Inner) {
    // Dropping the listener closes the socket now, so the port can be bound again at once.
    drop(lock(&inner.listener).take());
    // Aborting the accept loop drops its JoinSet, which aborts every inbound connection.
    inner.accept_task.abort();
    let links = lock(&inner.peers).take();
    for (_, link) in links.into_iter().flatten() {
        link.task.abort();
    }
}

/// Where inbound peer connections hand each message they read.
///
/// A tokio channel of (sender node ID, bytes) is one (as in the module's example). A node delivers
/// straight to its core thread's queue instead, so that a message crosses no extra thread on
/// its way from the socket to the core.
pub trait Inbox: Clone + Send + Sync + 'static {
    /// Delivers `bytes` from node `from`, waiting while the receiver is full; false once the
    /// receiver is gone, which closes the connection.
    fn deliver(&self, from: &str, bytes: Vec<u8>)
        -> impl std::future::Future<Output = bool> + Send;
}

impl Inbox for mpsc::Sender<(String, Vec<u8>)> {
    async fn deliver(&self, from: &str, bytes: Vec<u8>) -> bool {
        self.send((from.to_owned(), bytes)).await.is_ok()
    }
}

impl Peers {
    /// Listens on `listen` for peers; delivers each received message to `inbox`.
    ///
    /// A full `inbox` slows the senders down (their TCP windows fill) rather than losing
    /// messages; a closed `inbox` closes each inbound connection as its next message arrives.
    ///
    /// # Errors
    ///
    /// [`PeerError`] if the identity is unreadable or inconsistent (key not matching the
    /// certificate, certificate not endorsed by the service), rustls rejects it, or `listen`
    /// cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub async fn start(
        identity: PeerIdentity,
        listen: SocketAddr,
        trust: TrustFn,
        inbox: impl Inbox,
    ) -> Result<Peers, PeerError> {
        let node_cert =
            Certificate::from_pem(&identity.node_cert_pem).map_err(PeerError::Identity)?;
        let node_key = SigningKey::from_pem(&identity.node_key_pem).map_err(PeerError::Identity)?;
        let service_cert =
            Certificate::from_pem(&identity.service_cert_pem).map_err(PeerError::Identity)?;
        let service_key = service_cert.public_key().map_err(PeerError::Identity)?;
        let node_public = node_cert.public_key().map_err(PeerError::Identity)?;
        if node_public != node_key.verifying_key() {
            return Err(PeerError::KeyMismatch);
        }
        if node_cert.verify_signed_by(&service_key).is_err() {
            return Err(PeerError::NotEndorsed);
        }
        let node_id = node_public.id_hex();
        let tls = Arc::new(TlsParts {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            node_cert: CertificateDer::from(node_cert.der().to_vec()),
            node_key_pkcs8: node_key.to_pkcs8_der(),
            service_key,
        });
        let server = server_config(&tls, trust.clone())?;
        // Build one client configuration now so that a bad identity fails here, not in
        // `set_peer`, which cannot report errors.
        client_config(&tls, &node_id)?;

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| PeerError::Listen {
                address: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| PeerError::Listen {
            address: listen,
            source,
        })?;
        let listener = Arc::new(Mutex::new(Some(listener)));
        let accept_task = tokio::spawn(accept_loop(
            node_id.clone(),
            listener.clone(),
            tokio_rustls::TlsAcceptor::from(server),
            trust,
            inbox,
        ))
        .abort_handle();
        tracing::info!(node_id = %node_id, %local_addr, "listening for peers");
        Ok(Peers {
            inner: Arc::new(Inner {
                node_id,
                local_addr,
                runtime: tokio::runtime::Handle::current(),
                tls,
                listener,
                accept_task,
                peers: Mutex::new(Some(HashMap::new())),
            }),
        })
    }

    /// Our node ID: the hex SHA-256 of the node certificate's public key.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The address we listen on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Sets or changes where peer `node_id` is reached; a background task (re)connects with
    /// backoff. Changing the address of a known peer keeps its queued messages and reconnects to
    /// the new address. Does nothing after [`Peers::shutdown`], and (with an error logged) when
    /// [`PEERS_MAX`] peers are already known. Callable from non-async code.
    pub fn set_peer(&self, node_id: &str, address: SocketAddr) {
        let mut guard = lock(&self.inner.peers);
        let Some(peers) = guard.as_mut() else {
            tracing::debug!(peer = %node_id, "set_peer after shutdown ignored");
            return;
        };
        if let Some(link) = peers.get(node_id) {
            link.address.send_if_modified(|current| {
                let changed = *current != address;
                *current = address;
                changed
            });
            return;
        }
        if peers.len() >= PEERS_MAX {
            tracing::error!(peer = %node_id, "too many peers ({PEERS_MAX}); peer not added");
            return;
        }
        let config = match client_config(&self.inner.tls, node_id) {
            Ok(config) => config,
            Err(error) => {
                // `start` built a configuration from the same parts, so this is not expected.
                tracing::error!(peer = %node_id, %error, "cannot configure TLS for peer");
                return;
            }
        };
        let (address_sender, address_receiver) = watch::channel(address);
        let (queue_sender, queue_receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let task = self
            .inner
            .runtime
            .spawn(dial_loop(
                node_id.to_owned(),
                tokio_rustls::TlsConnector::from(config),
                address_receiver,
                queue_receiver,
            ))
            .abort_handle();
        peers.insert(
            node_id.to_owned(),
            PeerLink {
                address: address_sender,
                queue: queue_sender,
                task,
            },
        );
        assert!(peers.len() <= PEERS_MAX);
    }

    /// Forgets a peer and closes its connection; its queued messages are dropped.
    pub fn remove_peer(&self, node_id: &str) {
        let link = lock(&self.inner.peers)
            .as_mut()
            .and_then(|peers| peers.remove(node_id));
        if let Some(link) = link {
            link.task.abort();
            tracing::debug!(peer = %node_id, "peer removed");
        }
    }

    /// Queues a message for a peer (never blocks; dropped if the queue is full, the peer
    /// unknown, or the message longer than [`PEER_MESSAGE_BYTES_MAX`]). Callable from non-async
    /// code.
    pub fn send(&self, node_id: &str, bytes: Vec<u8>) {
        if bytes.len() > PEER_MESSAGE_BYTES_MAX {
            tracing::error!(peer = %node_id, bytes = bytes.len(), "message too large; dropped");
            return;
        }
        let guard = lock(&self.inner.peers);
        let Some(link) = guard.as_ref().and_then(|peers| peers.get(node_id)) else {
            tracing::debug!(peer = %node_id, "message for unknown peer dropped");
            return;
        };
        match link.queue.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(peer = %node_id, "peer queue full; message dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(peer = %node_id, "peer link closed; message dropped");
            }
        }
    }

    /// Stops listening and closes every connection. The listening port is free when this
    /// returns; connections close as their tasks are cancelled, moments later. Later calls to
    /// [`Peers::set_peer`] and [`Peers::send`] do nothing.
    pub fn shutdown(&self) {
        shutdown_inner(&self.inner);
        tracing::info!(node_id = %self.inner.node_id, "peer links shut down");
    }
}

/// The listener's configuration: TLS 1.3, our node certificate, mandatory client certificates
/// checked by [`PeerClientVerifier`], no session resumption.
fn server_config(tls: &TlsParts, trust: TrustFn) -> Result<Arc<rustls::ServerConfig>, PeerError> {
    let verifier = Arc::new(PeerClientVerifier {
        algorithms: tls.provider.signature_verification_algorithms,
        service_key: tls.service_key,
        trust,
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.node_key_pkcs8.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(tls.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![tls.node_cert.clone()], key)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A dialer's configuration for reaching `expected_node_id`: TLS 1.3, our node certificate as
/// client certificate, the server checked by [`PeerServerVerifier`], no session resumption.
fn client_config(
    tls: &TlsParts,
    expected_node_id: &str,
) -> Result<Arc<rustls::ClientConfig>, PeerError> {
    let verifier = Arc::new(PeerServerVerifier {
        algorithms: tls.provider.signature_verification_algorithms,
        service_key: tls.service_key,
        expected_node_id: expected_node_id.to_owned(),
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.node_key_pkcs8.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(tls.provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![tls.node_cert.clone()], key)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Checks that `der` is a node certificate valid at `now` and endorsed by `service_key`, and
/// returns its node ID.
fn endorsed_node_id(
    der: &[u8],
    service_key: &VerifyingKey,
    now: UnixTime,
) -> Result<String, rustls::Error> {
    let certificate = Certificate::from_der(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let (not_before, not_after) = certificate
        .validity_unix()
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now_unix = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now_unix < not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now_unix > not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    certificate
        .verify_signed_by(service_key)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
    let public_key = certificate
        .public_key()
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    Ok(public_key.id_hex())
}

/// The node ID of a certificate that already passed verification in the handshake.
fn node_id_of(der: &[u8]) -> Option<String> {
    let certificate = Certificate::from_der(der).ok()?;
    Some(certificate.public_key().ok()?.id_hex())
}

/// The dialer's check of the server: endorsed by the service, and the node we meant to reach.
#[derive(Debug)]
struct PeerServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    service_key: VerifyingKey,
    expected_node_id: String,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is the address we dialed; it proves nothing, the node ID does.
        let node_id = endorsed_node_id(end_entity, &self.service_key, now)?;
        if node_id != self.expected_node_id {
            tracing::warn!(
                expected = %self.expected_node_id,
                found = %node_id,
                "peer address answered with another node's certificate"
            );
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured, so rustls never gets here; refuse if it ever does.
        Err(rustls::Error::General(
            "peer links require TLS 1.3".to_owned(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The listener's check of a dialer: endorsed by the service and trusted right now.
struct PeerClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    service_key: VerifyingKey,
    trust: TrustFn,
}

impl std::fmt::Debug for PeerClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let node_id =
            endorsed_node_id(end_entity, &self.service_key, now).inspect_err(|error| {
                tracing::warn!(%error, "peer certificate refused");
            })?;
        if !(self.trust)(&node_id) {
            tracing::warn!(peer = %node_id, "connection from untrusted node refused");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "peer links require TLS 1.3".to_owned(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts peers until aborted (by `shutdown`) or until the listener is taken.
async fn accept_loop(
    node_id: String,
    listener: Arc<Mutex<Option<TcpListener>>>,
    acceptor: tokio_rustls::TlsAcceptor,
    trust: TrustFn,
    inbox: impl Inbox,
) {
    // Dropping this set (when the task is aborted) aborts every inbound connection.
    let mut connections = JoinSet::new();
    loop {
        let accepted = poll_fn(|cx| match lock(&listener).as_ref() {
            None => Poll::Ready(None),
            Some(listener) => listener.poll_accept(cx).map(Some),
        })
        .await;
        let (tcp, remote) = match accepted {
            None => break,
            Some(Ok(accepted)) => accepted,
            Some(Err(error)) => {
                // Usually out of file descriptors; pause instead of spinning.
                tracing::warn!(node_id = %node_id, %error, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= PEER_INBOUND_CONNECTIONS_MAX {
            tracing::warn!(%remote, "too many inbound peer connections; closing new one");
            continue;
        }
        connections.spawn(inbound(
            tcp,
            remote,
            acceptor.clone(),
            trust.clone(),
            inbox.clone(),
        ));
        assert!(connections.len() <= PEER_INBOUND_CONNECTIONS_MAX);
    }
    tracing::debug!(node_id = %node_id, "peer listener closed");
}

/// Serves one inbound connection: handshake, then deliver frames until the peer closes, breaks
/// the framing, or stops being trusted.
async fn inbound(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    trust: TrustFn,
    inbox: impl Inbox,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        acceptor.accept(tcp),
    );
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%remote, %error, "peer handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "peer handshake timed out");
            return;
        }
    };
    // The verifier checked the certificate; take the node ID from the same certificate.
    let node_id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|certificate| node_id_of(certificate));
    let Some(node_id) = node_id else {
        tracing::warn!(%remote, "peer handshake completed without a readable certificate");
        return;
    };
    tracing::debug!(peer = %node_id, %remote, "inbound peer connection");
    let reader = BufReader::with_capacity(BUFFER_BYTES, stream);
    tokio::select! {
        end = read_frames(reader, &node_id, &inbox) => {
            tracing::debug!(peer = %node_id, %remote, reason = end, "inbound peer connection closed");
        }
        () = until_untrusted(&trust, &node_id) => {
            tracing::warn!(peer = %node_id, %remote, "node no longer trusted; connection closed");
        }
    }
}

/// Completes once `trust` stops trusting `node_id`, checking every
/// [`TRUST_CHECK_INTERVAL_MS`].
async fn until_untrusted(trust: &TrustFn, node_id: &str) {
    let mut interval = tokio::time::interval(Duration::from_millis(TRUST_CHECK_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if !trust(node_id) {
            return;
        }
    }
}

/// Reads frames and delivers them to `inbox` until the connection ends; returns why.
async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    node_id: &str,
    inbox: &impl Inbox,
) -> &'static str {
    loop {
        let mut header = [0u8; 4];
        if let Err(error) = reader.read_exact(&mut header).await {
            return if error.kind() == std::io::ErrorKind::UnexpectedEof {
                "closed by peer"
            } else {
                "read error"
            };
        }
        // A u32 always fits in usize on the platforms we build for (64-bit).
        let length = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
        if length > PEER_MESSAGE_BYTES_MAX {
            tracing::warn!(peer = %node_id, length, "peer frame above the size limit");
            return "frame too large";
        }
        // Grow the buffer as bytes arrive rather than trusting the header with a 16 MiB
        // allocation per connection up front.
        let mut bytes = Vec::with_capacity(length.min(BUFFER_BYTES));
        let limit = u64::from(u32::from_le_bytes(header));
        match (&mut reader).take(limit).read_to_end(&mut bytes).await {
            Ok(count) if count == length => {}
            _ => return "truncated frame",
        }
        assert_eq!(bytes.len(), length);
        if !inbox.deliver(node_id, bytes).await {
            return "inbox closed";
        }
    }
}

/// How one outgoing connection ended.
enum LinkEnd {
    /// The peer was removed or the node shut down: stop.
    Stop,
    /// The connection broke: connect again after the backoff delay.
    Broken,
    /// The peer's address changed: connect to the new one at once.
    AddressChanged,
}

/// Keeps a connection to one peer and writes its queued messages, reconnecting with backoff.
///
/// The delay doubles after every failed attempt and after every connection that broke within
/// [`CONNECTION_STABLE_MS`] (a listener that completes the handshake, then refuses our
/// certificate, must not be redialed in a tight loop); it returns to the minimum after a
/// connection that lasted, or when the address changes.
async fn dial_loop(
    peer_id: String,
    connector: tokio_rustls::TlsConnector,
    mut address: watch::Receiver<SocketAddr>,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut delay_ms = RECONNECT_DELAY_MS_MIN;
    loop {
        let target = *address.borrow_and_update();
        match connect(&connector, target).await {
            Ok(stream) => {
                tracing::debug!(peer = %peer_id, %target, "connected to peer");
                let connected_at = tokio::time::Instant::now();
                match write_messages(stream, &peer_id, &mut address, &mut queue).await {
                    LinkEnd::Stop => return,
                    LinkEnd::AddressChanged => {
                        delay_ms = RECONNECT_DELAY_MS_MIN;
                        continue;
                    }
                    LinkEnd::Broken => {
                        if connected_at.elapsed() >= Duration::from_millis(CONNECTION_STABLE_MS) {
                            delay_ms = RECONNECT_DELAY_MS_MIN;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::debug!(peer = %peer_id, %target, %error, "cannot reach peer");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {
                delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MS_MAX);
            }
            changed = address.changed() => {
                if changed.is_err() {
                    return;
                }
                delay_ms = RECONNECT_DELAY_MS_MIN;
            }
        }
        assert!((RECONNECT_DELAY_MS_MIN..=RECONNECT_DELAY_MS_MAX).contains(&delay_ms));
    }
}

/// TCP connect and TLS handshake to `target`, within [`HANDSHAKE_TIMEOUT_MS`].
async fn connect(
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let attempt = async {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        // The verifier ignores the name: the expected node ID is what is checked.
        connector
            .connect(ServerName::IpAddress(target.ip().into()), tcp)
            .await
    };
    tokio::time::timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), attempt)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Writes queued messages on `stream` until it breaks, the address changes or the peer goes.
async fn write_messages(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    peer_id: &str,
    address: &mut watch::Receiver<SocketAddr>,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> LinkEnd {
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::with_capacity(BUFFER_BYTES, writer);
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else {
                    return LinkEnd::Stop;
                };
                let written = tokio::time::timeout(
                    Duration::from_millis(WRITE_TIMEOUT_MS),
                    write_batch(&mut writer, message, queue),
                );
                match written.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::info!(peer = %peer_id, %error, "writing to peer failed");
                        return LinkEnd::Broken;
                    }
                    Err(_) => {
                        tracing::info!(peer = %peer_id, "peer stopped reading; reconnecting");
                        return LinkEnd::Broken;
                    }
                }
            }
            // The server never writes: any read result means the connection is over.
            read = reader.read(&mut probe) => {
                match read {
                    Ok(0) => tracing::info!(peer = %peer_id, "peer closed the connection"),
                    Ok(_) => tracing::warn!(peer = %peer_id, "peer sent data on a send-only link"),
                    Err(error) => tracing::info!(peer = %peer_id, %error, "peer connection failed"),
                }
                return LinkEnd::Broken;
            }
            changed = address.changed() => {
                return match changed {
                    Ok(()) => LinkEnd::AddressChanged,
                    Err(_) => LinkEnd::Stop,
                };
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to [`WRITE_BATCH_MESSAGES_MAX`]), then
/// flushes.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    first: Vec<u8>,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    write_frame(writer, &first).await?;
    for _ in 1..WRITE_BATCH_MESSAGES_MAX {
        match queue.try_recv() {
            Ok(message) => write_frame(writer, &message).await?,
            Err(_) => break,
        }
    }
    writer.flush().await
}

async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> std::io::Result<()> {
    // `send` refuses larger messages, so the length fits the frame header.
    assert!(message.len() <= PEER_MESSAGE_BYTES_MAX);
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    writer.write_all(&length.to_le_bytes()).await?;
    writer.write_all(message).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_length_stops_reading() {
        let (inbox, mut received) = mpsc::channel(8);
        let mut bytes = Vec::new();
        write_frame(&mut bytes, b"hello").await.unwrap();
        write_frame(&mut bytes, b"").await.unwrap();
        let too_large = u32::try_from(PEER_MESSAGE_BYTES_MAX + 1).unwrap();
        bytes.extend_from_slice(&too_large.to_le_bytes());
        bytes.extend_from_slice(b"trailing");
        let end = read_frames(&bytes[..], "node", &inbox).await;
        assert_eq!(end, "frame too large");
        assert_eq!(
            received.recv().await.unwrap(),
            ("node".to_owned(), b"hello".to_vec())
        );
        assert_eq!(
            received.recv().await.unwrap(),
            ("node".to_owned(), Vec::new())
        );
        assert!(received.try_recv().is_err());
    }

    #[tokio::test]
    async fn truncated_frame_is_not_delivered() {
        let (inbox, mut received) = mpsc::channel(8);
        let mut bytes = Vec::new();
        write_frame(&mut bytes, b"complete").await.unwrap();
        bytes.extend_from_slice(&10u32.to_le_bytes());
        bytes.extend_from_slice(b"short");
        assert_eq!(
            read_frames(&bytes[..], "n", &inbox).await,
            "truncated frame"
        );
        assert_eq!(received.recv().await.unwrap().1, b"complete");
        assert!(received.try_recv().is_err());
        assert_eq!(read_frames(&[][..], "n", &inbox).await, "closed by peer");
    }
}
