//! Node-to-node links over loopback with real TLS 1.3 and certificates from charter-crypto.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use charter_crypto::{Certificate, CertificateSpec, SigningKey, Validity};
use charter_host::peers::{
    PeerError, PeerIdentity, Peers, TrustFn, ALPN_PEER, PEER_MESSAGE_BYTES_MAX,
    PEER_QUEUE_MESSAGES_MAX,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a step that should succeed may take before the test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long we wait to be convinced that something does not arrive.
const SILENCE: Duration = Duration::from_millis(1_500);

type Inbox = mpsc::Receiver<(String, Vec<u8>)>;

struct Service {
    key: SigningKey,
    cert: Certificate,
}

fn validity() -> Validity {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Validity {
        not_before_unix: i64::try_from(now).unwrap() - 86_400,
        days: 365,
    }
}

fn service(seed: u8) -> Service {
    let key = SigningKey::from_seed(&[seed; 32]).unwrap();
    let spec = CertificateSpec {
        common_name: "service",
        is_ca: true,
        subject_alt_names: &[],
        validity: validity(),
    };
    let cert = Certificate::self_signed(&key, &spec).unwrap();
    Service { key, cert }
}

fn node_identity(service: &Service, seed: u8) -> PeerIdentity {
    let node_key = SigningKey::from_seed(&[seed; 32]).unwrap();
    let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    let spec = CertificateSpec {
        common_name: "node",
        is_ca: false,
        subject_alt_names: &sans,
        validity: validity(),
    };
    let cert = Certificate::issue(
        &node_key.verifying_key(),
        &spec,
        &service.key,
        &service.cert,
    )
    .unwrap();
    PeerIdentity {
        node_cert_pem: cert.to_pem(),
        node_key_pem: node_key.to_pem(),
        service_cert_pem: service.cert.to_pem(),
    }
}

fn node_id_of(identity: &PeerIdentity) -> String {
    Certificate::from_pem(&identity.node_cert_pem)
        .unwrap()
        .public_key()
        .unwrap()
        .id_hex()
}

fn trust_all() -> TrustFn {
    Arc::new(|_: &str| true)
}

/// Trusts every node except `node_id` while `flag` is false.
fn trust_unless(node_id: String, flag: Arc<AtomicBool>) -> TrustFn {
    Arc::new(move |id: &str| id != node_id || flag.load(Ordering::SeqCst))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(identity: &PeerIdentity, listen: SocketAddr, trust: TrustFn) -> (Peers, Inbox) {
    let (inbox, received) = mpsc::channel(1_024);
    let peers = Peers::start(identity.clone(), listen, trust, inbox)
        .await
        .unwrap();
    (peers, received)
}

async fn receive(inbox: &mut Inbox) -> (String, Vec<u8>) {
    tokio::time::timeout(STEP_TIMEOUT, inbox.recv())
        .await
        .expect("message within the step timeout")
        .expect("inbox open")
}

async fn assert_silent(inbox: &mut Inbox) {
    if let Ok(message) = tokio::time::timeout(SILENCE, inbox.recv()).await {
        panic!("unexpected message: {message:?}");
    }
}

/// Sends `bytes` to `peer` every 100 ms until `inbox` receives something, which must be it.
async fn send_until_received(from: &Peers, peer: &str, bytes: &[u8], inbox: &mut Inbox) {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        from.send(peer, bytes.to_vec());
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(100), inbox.recv()).await {
            let (sender, received) = message.expect("inbox open");
            assert_eq!(sender, from.node_id());
            assert_eq!(received, bytes);
            // Drain the copies still in flight.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await
            {}
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message never arrived"
        );
    }
}

#[tokio::test]
async fn three_nodes_exchange_messages_in_all_directions_in_order() {
    let service = service(1);
    let identities: Vec<PeerIdentity> =
        (10..13).map(|seed| node_identity(&service, seed)).collect();
    let mut nodes = Vec::new();
    for identity in &identities {
        nodes.push(start(identity, loopback(), trust_all()).await);
    }
    for (index, identity) in identities.iter().enumerate() {
        assert_eq!(nodes[index].0.node_id(), node_id_of(identity));
        assert_ne!(nodes[index].0.local_addr().port(), 0);
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|(peers, _)| peers.node_id().to_owned())
        .collect();
    let addresses: Vec<SocketAddr> = nodes.iter().map(|(peers, _)| peers.local_addr()).collect();
    for (from, _) in &nodes {
        for (id, address) in ids.iter().zip(&addresses) {
            if id != from.node_id() {
                from.set_peer(id, *address);
            }
        }
    }
    const MESSAGES: usize = 200;
    // Half the messages from async code, half from a plain thread: `send` never blocks.
    for (from, _) in &nodes {
        for to in &ids {
            if to == from.node_id() {
                continue;
            }
            for index in 0..MESSAGES / 2 {
                from.send(
                    to,
                    format!("{}>{}#{index}", from.node_id(), to).into_bytes(),
                );
            }
            let (from, to) = (from.clone(), to.clone());
            std::thread::spawn(move || {
                for index in MESSAGES / 2..MESSAGES {
                    from.send(
                        &to,
                        format!("{}>{}#{index}", from.node_id(), to).into_bytes(),
                    );
                }
            })
            .join()
            .unwrap();
        }
    }
    for (receiver, inbox) in &mut nodes {
        let mut next = std::collections::HashMap::<String, usize>::new();
        for _ in 0..MESSAGES * 2 {
            let (sender, bytes) = receive(inbox).await;
            assert_ne!(sender, receiver.node_id());
            let index = next.entry(sender.clone()).or_default();
            let expected = format!("{}>{}#{}", sender, receiver.node_id(), index);
            assert_eq!(String::from_utf8(bytes).unwrap(), expected);
            *index += 1;
        }
        assert_eq!(next.len(), 2);
        assert!(next.values().all(|count| *count == MESSAGES));
    }
    for (peers, _) in &nodes {
        peers.shutdown();
    }
}

#[tokio::test]
async fn node_of_another_service_can_neither_connect_nor_receive() {
    let service_one = service(1);
    let service_two = service(2);
    let a = node_identity(&service_one, 10);
    let foreign = node_identity(&service_two, 11);
    let (a_peers, mut a_inbox) = start(&a, loopback(), trust_all()).await;
    let (foreign_peers, mut foreign_inbox) = start(&foreign, loopback(), trust_all()).await;

    foreign_peers.set_peer(a_peers.node_id(), a_peers.local_addr());
    a_peers.set_peer(foreign_peers.node_id(), foreign_peers.local_addr());
    for index in 0..20u8 {
        foreign_peers.send(a_peers.node_id(), vec![index]);
        a_peers.send(foreign_peers.node_id(), vec![index]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_silent(&mut a_inbox).await;
    assert_silent(&mut foreign_inbox).await;

    // A node certificate from another service cannot even be started under this service.
    let mut mixed = foreign.clone();
    mixed.service_cert_pem = a.service_cert_pem.clone();
    let (inbox, _received) = mpsc::channel(1);
    let refused = Peers::start(mixed, loopback(), trust_all(), inbox.clone()).await;
    assert!(
        matches!(refused, Err(PeerError::NotEndorsed)),
        "{refused:?}"
    );
    let mut mismatched = a.clone();
    mismatched.node_key_pem = foreign.node_key_pem.clone();
    let refused = Peers::start(mismatched, loopback(), trust_all(), inbox).await;
    assert!(
        matches!(refused, Err(PeerError::KeyMismatch)),
        "{refused:?}"
    );

    a_peers.shutdown();
    foreign_peers.shutdown();
}

#[tokio::test]
async fn untrusted_node_is_refused_and_revoked_trust_closes_connections() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let a_trusted = Arc::new(AtomicBool::new(false));
    let a_id = node_id_of(&a);
    let a_checks = Arc::new(AtomicUsize::new(0));
    let b_trust: TrustFn = {
        let (a_trusted, a_checks) = (a_trusted.clone(), a_checks.clone());
        Arc::new(move |id: &str| {
            if id != a_id {
                return true;
            }
            a_checks.fetch_add(1, Ordering::SeqCst);
            a_trusted.load(Ordering::SeqCst)
        })
    };
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    let (b_peers, mut b_inbox) = start(&b, loopback(), b_trust).await;
    a_peers.set_peer(b_peers.node_id(), b_peers.local_addr());

    for index in 0..20u8 {
        a_peers.send(b_peers.node_id(), vec![index]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_silent(&mut b_inbox).await;
    // A refused dialer backs off (50, 100, 200, ... ms) instead of redialing at once.
    let attempts = a_checks.load(Ordering::SeqCst);
    assert!(
        (1..=12).contains(&attempts),
        "{attempts} connection attempts in 2.5 s"
    );

    // Trusted now: the dialer's next connection is accepted.
    a_trusted.store(true, Ordering::SeqCst);
    send_until_received(&a_peers, b_peers.node_id(), b"trusted", &mut b_inbox).await;

    // Revoked: the established connection is closed and new ones are refused.
    a_trusted.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    for index in 0..20u8 {
        a_peers.send(b_peers.node_id(), vec![index]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_silent(&mut b_inbox).await;

    a_peers.shutdown();
    b_peers.shutdown();
}

#[tokio::test]
async fn revoked_trust_closes_established_connection_within_two_seconds() {
    let service = service(1);
    let b = node_identity(&service, 11);
    let x = node_identity(&service, 12);
    let x_trusted = Arc::new(AtomicBool::new(true));
    let (b_peers, mut b_inbox) = start(
        &b,
        loopback(),
        trust_unless(node_id_of(&x), x_trusted.clone()),
    )
    .await;

    let mut link = raw_connect(&x, b_peers.local_addr()).await;
    write_raw_frame(&mut link, b"hello").await;
    assert_eq!(
        receive(&mut b_inbox).await,
        (node_id_of(&x), b"hello".to_vec())
    );

    x_trusted.store(false, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    expect_closed(&mut link, Duration::from_millis(2_500)).await;
    assert!(started.elapsed() < Duration::from_millis(2_500));

    // And a new connection from the untrusted node does not deliver.
    if let Ok(mut link) = try_raw_connect(&x, b_peers.local_addr()).await {
        let _ = link.write_all(&[1, 0, 0, 0, 7]).await;
        let _ = link.flush().await;
    }
    assert_silent(&mut b_inbox).await;
    b_peers.shutdown();
}

#[tokio::test]
async fn dialer_does_not_deliver_to_a_different_node_at_the_address() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let c = node_identity(&service, 12);
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    let (b_peers, mut b_inbox) = start(&b, loopback(), trust_all()).await;
    let (c_peers, mut c_inbox) = start(&c, loopback(), trust_all()).await;

    // A means to reach B but is given C's address.
    a_peers.set_peer(b_peers.node_id(), c_peers.local_addr());
    a_peers.send(b_peers.node_id(), b"for b".to_vec());
    assert_silent(&mut c_inbox).await;

    // Once told B's real address, the queued message reaches B.
    a_peers.set_peer(b_peers.node_id(), b_peers.local_addr());
    assert_eq!(
        receive(&mut b_inbox).await,
        (a_peers.node_id().to_owned(), b"for b".to_vec())
    );
    assert_silent(&mut c_inbox).await;

    for peers in [&a_peers, &b_peers, &c_peers] {
        peers.shutdown();
    }
}

#[tokio::test]
async fn restarted_peer_receives_again_after_reconnection() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    let (b_peers, mut b_inbox) = start(&b, loopback(), trust_all()).await;
    let b_address = b_peers.local_addr();
    a_peers.set_peer(b_peers.node_id(), b_address);
    a_peers.send(b_peers.node_id(), b"before".to_vec());
    assert_eq!(receive(&mut b_inbox).await.1, b"before");

    b_peers.shutdown();
    // The port is free as soon as shutdown returns.
    let (b_again, mut b_again_inbox) = start(&b, b_address, trust_all()).await;
    assert_eq!(b_again.local_addr(), b_address);
    send_until_received(&a_peers, b_again.node_id(), b"after", &mut b_again_inbox).await;
    for index in 0..100u32 {
        a_peers.send(b_again.node_id(), index.to_le_bytes().to_vec());
    }
    for index in 0..100u32 {
        assert_eq!(receive(&mut b_again_inbox).await.1, index.to_le_bytes());
    }
    assert!(
        b_inbox.recv().await.is_none(),
        "old inbox closed with its node"
    );

    a_peers.shutdown();
    b_again.shutdown();
}

#[tokio::test]
async fn oversized_frame_closes_connection_without_crashing() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let x = node_identity(&service, 12);
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    let (b_peers, mut b_inbox) = start(&b, loopback(), trust_all()).await;

    let mut link = raw_connect(&x, b_peers.local_addr()).await;
    write_raw_frame(&mut link, b"fine").await;
    assert_eq!(receive(&mut b_inbox).await.1, b"fine");
    let too_large = u32::try_from(PEER_MESSAGE_BYTES_MAX + 1).unwrap();
    link.write_all(&too_large.to_le_bytes()).await.unwrap();
    link.write_all(&[0; 1_024]).await.unwrap();
    link.flush().await.unwrap();
    expect_closed(&mut link, Duration::from_secs(5)).await;

    // Garbage before the handshake is harmless too.
    let mut garbage = TcpStream::connect(b_peers.local_addr()).await.unwrap();
    garbage.write_all(&[0xff; 512]).await.unwrap();
    drop(garbage);

    // The node still serves other peers, and a message of exactly the limit passes.
    a_peers.set_peer(b_peers.node_id(), b_peers.local_addr());
    a_peers.send(b_peers.node_id(), b"still alive".to_vec());
    assert_eq!(receive(&mut b_inbox).await.1, b"still alive");
    let largest = vec![7u8; PEER_MESSAGE_BYTES_MAX];
    a_peers.send(b_peers.node_id(), largest.clone());
    a_peers.send(b_peers.node_id(), vec![0; PEER_MESSAGE_BYTES_MAX + 1]);
    a_peers.send(b_peers.node_id(), b"after".to_vec());
    assert_eq!(receive(&mut b_inbox).await.1, largest);
    assert_eq!(receive(&mut b_inbox).await.1, b"after");

    a_peers.shutdown();
    b_peers.shutdown();
}

#[tokio::test]
async fn ten_thousand_small_messages_arrive_in_order() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    let (b_peers, mut b_inbox) = start(&b, loopback(), trust_all()).await;
    a_peers.set_peer(b_peers.node_id(), b_peers.local_addr());
    const TOTAL: u32 = 10_000;
    const CHUNK: u32 = 2_000;
    const _: () = assert!(CHUNK as usize <= PEER_QUEUE_MESSAGES_MAX);
    // Each chunk fits the queue, so none may be dropped.
    for chunk in 0..TOTAL / CHUNK {
        for index in chunk * CHUNK..(chunk + 1) * CHUNK {
            a_peers.send(b_peers.node_id(), index.to_le_bytes().to_vec());
        }
        for index in chunk * CHUNK..(chunk + 1) * CHUNK {
            assert_eq!(receive(&mut b_inbox).await.1, index.to_le_bytes());
        }
    }
    a_peers.shutdown();
    b_peers.shutdown();
}

#[tokio::test]
async fn full_queue_drops_the_newest_messages() {
    let service = service(1);
    let a = node_identity(&service, 10);
    let b = node_identity(&service, 11);
    let (a_peers, _a_inbox) = start(&a, loopback(), trust_all()).await;
    // Reserve a port for B, and free it before B starts, so that A queues meanwhile.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b_address = reserved.local_addr().unwrap();
    drop(reserved);
    a_peers.set_peer(&node_id_of(&b), b_address);
    let total = u32::try_from(PEER_QUEUE_MESSAGES_MAX + 1_000).unwrap();
    for index in 0..total {
        a_peers.send(&node_id_of(&b), index.to_le_bytes().to_vec());
    }
    // Unknown peers are ignored.
    a_peers.send("not a node", b"lost".to_vec());

    let (b_peers, mut b_inbox) = start(&b, b_address, trust_all()).await;
    for index in 0..u32::try_from(PEER_QUEUE_MESSAGES_MAX).unwrap() {
        assert_eq!(receive(&mut b_inbox).await.1, index.to_le_bytes());
    }
    assert_silent(&mut b_inbox).await;

    // A removed peer gets nothing more.
    a_peers.remove_peer(b_peers.node_id());
    a_peers.send(b_peers.node_id(), b"removed".to_vec());
    assert_silent(&mut b_inbox).await;
    a_peers.shutdown();
    b_peers.shutdown();
}

// A bare TLS client presenting a node certificate, for sending what `Peers` never would.

#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type RawLink = tokio_rustls::client::TlsStream<TcpStream>;

async fn try_raw_connect(identity: &PeerIdentity, address: SocketAddr) -> std::io::Result<RawLink> {
    let cert = Certificate::from_pem(&identity.node_cert_pem).unwrap();
    let key = SigningKey::from_pem(&identity.node_key_pem).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_client_auth_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der())),
    )
    .unwrap();
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    let tcp = TcpStream::connect(address).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(address.ip().into()), tcp)
        .await
}

async fn raw_connect(identity: &PeerIdentity, address: SocketAddr) -> RawLink {
    tokio::time::timeout(STEP_TIMEOUT, try_raw_connect(identity, address))
        .await
        .unwrap()
        .unwrap()
}

async fn write_raw_frame(link: &mut RawLink, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap();
    link.write_all(&length.to_le_bytes()).await.unwrap();
    link.write_all(bytes).await.unwrap();
    link.flush().await.unwrap();
}

/// Waits up to `within` for the server to close `link` (end of stream or an error).
async fn expect_closed(link: &mut RawLink, within: Duration) {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(within, link.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(count)) => panic!("server sent {count} bytes on a receive-only link"),
        Err(_) => panic!("connection still open after {within:?}"),
    }
}
