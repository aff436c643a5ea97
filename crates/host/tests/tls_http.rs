//! End-to-end tests of the HTTPS server and client over loopback with real TLS 1.3.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use charter_core::{Request, Response};
use charter_host::client::{Client, ClientError};
use charter_host::http::{serve, Handler, HttpLimits};
use charter_host::tls::{client_config, install_crypto_provider, server_config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any single step of a test may take before the test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// PEM material for one test service.
struct Pki {
    service_cert_pem: String,
    node_chain_pem: String,
    node_key_pem: String,
    user_cert_pem: String,
    user_cert_der: Vec<u8>,
    user_key_pem: String,
}

fn p384_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("generate P-384 key")
}

/// A service CA, a node certificate for 127.0.0.1 and localhost endorsed by it, and a
/// self-signed user certificate.
fn make_pki() -> Pki {
    let service_key = p384_key();
    let mut service_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    service_params
        .distinguished_name
        .push(DnType::CommonName, "CCF Service");
    service_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    service_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let service_cert = service_params.self_signed(&service_key).unwrap();

    let node_key = p384_key();
    let mut node_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    node_params
        .distinguished_name
        .push(DnType::CommonName, "CCF Node");
    let node_cert = node_params
        .signed_by(&node_key, &service_cert, &service_key)
        .unwrap();

    let user_key = p384_key();
    let mut user_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    user_params
        .distinguished_name
        .push(DnType::CommonName, "user0");
    let user_cert = user_params.self_signed(&user_key).unwrap();

    Pki {
        service_cert_pem: service_cert.pem(),
        node_chain_pem: format!("{}{}", node_cert.pem(), service_cert.pem()),
        node_key_pem: node_key.serialize_pem(),
        user_cert_pem: user_cert.pem(),
        user_cert_der: user_cert.der().to_vec(),
        user_key_pem: user_key.serialize_pem(),
    }
}

/// Answers with a JSON echo of what it was given; `/panic` panics.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
}

impl Handler for Echo {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if request.path == "/panic" {
                panic!("handler bug");
            }
            let body = serde_json::json!({
                "method": format!("{:?}", request.method),
                "path": request.path,
                "query": request.query,
                "body_len": request.body.len(),
                "body": String::from_utf8_lossy(&request.body),
                "x_test": request.header("x-test"),
                "caller_cert": request.caller_cert_der.as_deref().map(hex::encode),
            });
            Response::json(200, &body).with_header("x-echo", "1")
        })
    }
}

/// A running server and what a test needs to talk to it.
struct Server {
    addr: SocketAddr,
    pki: Pki,
    echo: Arc<Echo>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: HttpLimits) -> Server {
        install_crypto_provider();
        let pki = make_pki();
        let tls = server_config(&pki.node_chain_pem, &pki.node_key_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Arc::new(Echo::default());
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let task = tokio::spawn(serve(
            listener,
            tls,
            limits,
            Arc::clone(&echo) as Arc<dyn Handler>,
            shutdown_receiver,
        ));
        Server {
            addr,
            pki,
            echo,
            shutdown,
            task,
        }
    }

    fn calls(&self) -> usize {
        self.echo.calls.load(Ordering::SeqCst)
    }

    async fn client(&self, with_user_cert: bool) -> Client {
        let identity = with_user_cert.then_some((
            self.pki.user_cert_pem.as_str(),
            self.pki.user_key_pem.as_str(),
        ));
        let tls = client_config(&self.pki.service_cert_pem, identity).unwrap();
        within(Client::connect(self.addr, "127.0.0.1", tls))
            .await
            .unwrap()
    }

    /// A raw TLS stream to the server without a client certificate, for hand-written HTTP.
    async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tls = client_config(&self.pki.service_cert_pem, None).unwrap();
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        within(tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        within(self.task).await.unwrap().unwrap();
    }
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .expect("step timed out")
}

/// Reads until the server closes the stream (or errors), returning what arrived.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = within(stream.read_to_end(&mut received)).await;
    received
}

fn small_body_limits() -> HttpLimits {
    HttpLimits {
        body_bytes_max: 1024,
        ..HttpLimits::default()
    }
}

#[tokio::test]
async fn handler_sees_the_exact_client_certificate() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(true).await;
    let response = within(client.request("POST", "/app/log", &[("x-test", "yes")], b"hi".to_vec()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("X-Echo"), Some("1"));
    assert_eq!(
        response.header("content-length"),
        Some(&*response.body.len().to_string())
    );
    let echo = response.json().unwrap();
    assert_eq!(echo["caller_cert"], hex::encode(&server.pki.user_cert_der));
    assert_eq!(echo["method"], "Post");
    assert_eq!(echo["body"], "hi");
    assert_eq!(echo["x_test"], "yes");
    server.stop().await;
}

#[tokio::test]
async fn handler_sees_no_certificate_when_none_is_presented() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(false).await;
    let response = within(client.request("GET", "/node/state", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let echo = response.json().unwrap();
    assert_eq!(echo["caller_cert"], serde_json::Value::Null);
    assert_eq!(echo["method"], "Get");
    assert_eq!(echo["body_len"], 0);
    server.stop().await;
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn client_certificate_without_its_private_key_is_refused() {
    let server = Server::start(HttpLimits::default()).await;
    // Present the user's certificate but sign the handshake with another key.
    let other_key_pem = p384_key().serialize_pem();
    let other_key = rustls_pemfile::private_key(&mut other_key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&other_key).unwrap();
    let user_cert = rustls::pki_types::CertificateDer::from(server.pki.user_cert_der.clone());
    let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![user_cert], signer));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut server.pki.service_cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(FixedClientCert(certified)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];

    // In TLS 1.3 the client finishes its side of the handshake before the server checks the
    // signature, so the refusal shows up either at connect or on the first request.
    let refused = match within(Client::connect(server.addr, "127.0.0.1", Arc::new(config))).await {
        Err(_) => true,
        Ok(mut client) => within(client.request("GET", "/x", &[], Vec::new()))
            .await
            .is_err(),
    };
    assert!(refused);
    assert_eq!(server.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_is_refused_with_413() {
    let server = Server::start(small_body_limits()).await;
    let mut client = server.client(false).await;

    // Exactly at the limit is fine.
    let response = within(client.request("PUT", "/app/a", &[], vec![b'x'; 1024]))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(server.calls(), 1);

    // Declared content-length over the limit, small and large (the large one is still being
    // uploaded when the 413 goes out).
    for size in [1025, 4 << 20] {
        let response = within(client.request("PUT", "/app/a", &[], vec![b'x'; size]))
            .await
            .unwrap();
        assert_eq!(response.status, 413, "size {size}");
        assert_eq!(response.json().unwrap()["error"]["code"], "RequestTooLarge");
        assert_eq!(server.calls(), 1);
    }

    // The client reconnects after the server closed the connection.
    let response = within(client.request("GET", "/app/a", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(server.calls(), 2);

    // A chunked body without content-length is cut off once it crosses the limit.
    let mut raw = server.raw_tls().await;
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /app/a HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let received = String::from_utf8_lossy(&read_to_close(&mut raw).await).into_owned();
    assert!(received.starts_with("HTTP/1.1 413"), "{received}");
    assert!(received.contains("RequestTooLarge"), "{received}");
    assert_eq!(server.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn path_and_query_are_percent_decoded() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(false).await;
    let response = within(client.request(
        "GET",
        "/app/a%20b/%E2%82%AC?x=1+2&y=%26%3D&z&x=3",
        &[],
        Vec::new(),
    ))
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    let echo = response.json().unwrap();
    assert_eq!(echo["path"], "/app/a b/€");
    assert_eq!(
        echo["query"],
        serde_json::json!([["x", "1 2"], ["y", "&="], ["z", ""], ["x", "3"]])
    );

    // Invalid escapes and non-UTF-8 results are refused before the handler.
    for target in ["/app/%zz", "/app/%c3", "/app/a?x=%", "/app/a?x=%ff"] {
        let response = within(client.request("GET", target, &[], Vec::new()))
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{target}");
        assert_eq!(response.json().unwrap()["error"]["code"], "InvalidInput");
    }
    assert_eq!(server.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn one_connection_serves_many_sequential_requests() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(true).await;
    for index in 0..100 {
        let path = format!("/app/item/{index}");
        let response = within(client.request("GET", &path, &[], Vec::new()))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.json().unwrap()["path"], path);
    }
    assert_eq!(client.connections_opened(), 1);
    assert_eq!(server.calls(), 100);
    server.stop().await;
}

#[tokio::test]
async fn header_limits_answer_431_and_close() {
    let limits = HttpLimits {
        header_bytes_max: 4096,
        headers_count_max: 16,
        ..HttpLimits::default()
    };
    let server = Server::start(limits).await;

    let names: Vec<String> = (0..20).map(|index| format!("x-h{index}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "v")).collect();
    let big_value = "v".repeat(5000);
    for headers in [many, vec![("x-big", big_value.as_str())]] {
        let mut client = server.client(false).await;
        let response = within(client.request("GET", "/app/a", &headers, Vec::new()))
            .await
            .unwrap();
        assert_eq!(response.status, 431);
        assert!(response.body.is_empty());
        // The server closed the connection; the next request opens a new one.
        let response = within(client.request("GET", "/app/a", &[], Vec::new()))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(client.connections_opened(), 2);
    }
    assert_eq!(server.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn handler_panic_is_a_500_and_the_server_keeps_going() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(false).await;
    let response = within(client.request("GET", "/panic", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(response.json().unwrap()["error"]["code"], "InternalError");
    let response = within(client.request("GET", "/after", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn misbehaving_clients_do_not_break_the_server() {
    let server = Server::start(HttpLimits::default()).await;

    // Plain HTTP on the TLS port.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_to_close(&mut tcp).await;

    // Random bytes.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|index| (index * 7919 % 251) as u8)
        .collect();
    let _ = tcp.write_all(&garbage).await;
    read_to_close(&mut tcp).await;

    // The start of a real ClientHello, then a disconnect.
    let client_tls = client_config(&server.pki.service_cert_pem, None).unwrap();
    let mut connection = rustls::ClientConnection::new(
        client_tls,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
    drop(tcp);

    // Connect and say nothing, then disconnect.
    drop(TcpStream::connect(server.addr).await.unwrap());

    // A TLS client that sends garbage instead of HTTP gets a 400 from hyper.
    let mut raw = server.raw_tls().await;
    raw.write_all(b"\x00\x01\x02 not http\r\n\r\n")
        .await
        .unwrap();
    let received = String::from_utf8_lossy(&read_to_close(&mut raw).await).into_owned();
    assert!(received.starts_with("HTTP/1.1 400"), "{received}");

    // A TLS client that disconnects in the middle of a request body.
    let mut raw = server.raw_tls().await;
    raw.write_all(b"PUT /app/a HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    drop(raw);

    let mut client = server.client(true).await;
    let response = within(client.request("GET", "/still/alive", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(server.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn client_trusting_another_ca_cannot_connect() {
    let server = Server::start(HttpLimits::default()).await;
    let other = make_pki();
    let tls = client_config(&other.service_cert_pem, None).unwrap();
    let result = within(Client::connect(server.addr, "127.0.0.1", tls)).await;
    assert!(matches!(result, Err(ClientError::Connect(_))), "{result:?}");

    // The right CA but the wrong name fails too.
    let tls = client_config(&server.pki.service_cert_pem, None).unwrap();
    let result = within(Client::connect(server.addr, "charter.example", tls)).await;
    assert!(matches!(result, Err(ClientError::Connect(_))), "{result:?}");
    assert_eq!(server.calls(), 0);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let limits = HttpLimits {
        connections_max: 2,
        ..HttpLimits::default()
    };
    let server = Server::start(limits).await;
    let mut first = server.client(false).await;
    let mut second = server.client(false).await;
    for client in [&mut first, &mut second] {
        let response = within(client.request("GET", "/a", &[], Vec::new()))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    let tls = client_config(&server.pki.service_cert_pem, None).unwrap();
    let third = within(Client::connect(server.addr, "127.0.0.1", tls)).await;
    assert!(third.is_err());

    // Once a connection closes its slot is free again.
    drop(first);
    let mut fourth = None;
    for _ in 0..100 {
        let tls = client_config(&server.pki.service_cert_pem, None).unwrap();
        if let Ok(client) = within(Client::connect(server.addr, "127.0.0.1", tls)).await {
            fourth = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut fourth = fourth.expect("a slot frees up after a client disconnects");
    let response = within(fourth.request("GET", "/a", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = Server::start(HttpLimits::default()).await;
    let mut client = server.client(false).await;
    let response = within(client.request("GET", "/a", &[], Vec::new()))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let addr = server.addr;
    let started = std::time::Instant::now();
    // The idle keep-alive connection must not hold up shutdown.
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(within(client.request("GET", "/a", &[], Vec::new()))
        .await
        .is_err());
}

/// Runs curl (if installed) against the server with nothing but the service certificate, as
/// DESIGN.md §5 promises; returns `None` when curl is missing.
async fn curl(server: &Server, args: &[&str]) -> Option<(String, String)> {
    let directory = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: &str| {
        let path = directory.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = file("service_cert.pem", &server.pki.service_cert_pem);
    let cert = file("user0_cert.pem", &server.pki.user_cert_pem);
    let key = file("user0_privk.pem", &server.pki.user_key_pem);
    let url = format!("https://127.0.0.1:{}/app/curl?a=b", server.addr.port());
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ])
        .args(["--write-out", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .output();
    let output = match within(output).await {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("curl failed to run: {error}"),
    };
    Some((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn curl_verifies_the_node_with_the_service_certificate() {
    let server = Server::start(HttpLimits::default()).await;
    let Some((stdout, stderr)) = curl(&server, &[]).await else {
        eprintln!("curl not installed; skipping");
        return;
    };
    assert!(stdout.ends_with("\n200"), "{stdout} {stderr}");
    let echo: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(echo["caller_cert"], hex::encode(&server.pki.user_cert_der));
    assert_eq!(echo["query"], serde_json::json!([["a", "b"]]));

    // A large upload over the limit: curl must read the 413, not a connection reset.
    let directory = tempfile::tempdir().unwrap();
    let upload = directory.path().join("upload.bin");
    std::fs::write(&upload, vec![b'x'; 8 << 20]).unwrap();
    let data = format!("@{}", upload.to_str().unwrap());
    // By default curl sends `expect: 100-continue` for large bodies and waits; with the header
    // suppressed it uploads right away and is still uploading when the 413 arrives.
    for extra in [&[][..], &["--header", "Expect:"][..]] {
        let args: Vec<&str> = extra
            .iter()
            .copied()
            .chain(["--data-binary", &data])
            .collect();
        let (stdout, stderr) = curl(&server, &args).await.unwrap();
        assert!(stdout.ends_with("\n413"), "{extra:?} {stdout} {stderr}");
        assert!(
            stdout.contains("RequestTooLarge"),
            "{extra:?} {stdout} {stderr}"
        );
    }
    assert_eq!(server.calls(), 1);
    server.stop().await;
}
