//! The HTTPS server: TLS 1.3 termination, HTTP/1.1 parsing with limits, and translation between
//! hyper's types and the core's [`Request`] and [`Response`].
//!
//! Each accepted connection runs in its own task: TLS handshake (bounded by
//! [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP/1.1 with keep-alive. For every request the server
//! decodes the path and query, lower-cases header names, collects the body up to
//! [`HttpLimits::body_bytes_max`], attaches the DER of the client's certificate (if any) and asks
//! the [`Handler`].
//!
//! How limits show up on the wire:
//! - Body over the limit: `413` with `{"error":{"code":"RequestTooLarge",...}}` and
//!   `connection: close`; the handler is not called. A declared `content-length` over the limit is
//!   refused before any of the body is read; a chunked body is refused as soon as it crosses the
//!   limit.
//! - Header block over [`HttpLimits::header_bytes_max`] bytes (request line included) or more than
//!   [`HttpLimits::headers_count_max`] headers: hyper answers `431 Request Header Fields Too
//!   Large` with an empty body itself and closes the connection; the handler is not called.
//! - More than [`HttpLimits::connections_max`] open connections: a new connection is closed right
//!   after `accept`, before the TLS handshake, so the client sees a reset or EOF.
//!
//! When a connection ends the server sends `close_notify`, shuts down its write side and reads
//! and discards what the client still sends for a short while ("lingering close", as nginx
//! does), so that a client still uploading a refused body reads the `413` instead of a reset.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use charter_core::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How long a client may take to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's header block once the server waits for one
/// (this also closes keep-alive connections idle for longer).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, after [`serve`] stops accepting, in-flight connections get to finish.
pub const SHUTDOWN_GRACE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection keeps reading and discarding client bytes.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How many client bytes a closing connection reads and discards at most.
const LINGER_BYTES_MAX: usize = 16 << 20;

/// Pause after a failed `accept` (for example out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// hyper refuses a read buffer smaller than this (`max_buf_size` panics below it).
const HYPER_BUFFER_BYTES_MIN: usize = 8192;

/// Read buffer beyond the header limit, so that body bytes arriving with the head fit.
const BUFFER_BODY_BYTES_EXTRA: usize = 64 << 10;

/// Limits on what a client may send; over a limit the client gets a 4xx and nothing reaches the
/// core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request body, in bytes (default 1 MiB). Over it: `413`.
    pub body_bytes_max: usize,
    /// Largest header block including the request line, in bytes (default 16 KiB). Over it:
    /// `431` and the connection is closed.
    pub header_bytes_max: usize,
    /// Most headers in one request (default 256). Over it: `431` and the connection is closed.
    pub headers_count_max: usize,
    /// Most simultaneously open connections on the listener (default 1024). Over it: new
    /// connections are closed immediately.
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            body_bytes_max: 1 << 20,
            header_bytes_max: 16 << 10,
            headers_count_max: 256,
            connections_max: 1024,
        }
    }
}

impl HttpLimits {
    /// Checks that every limit allows at least something.
    fn validate(&self) -> std::io::Result<()> {
        let positive = self.header_bytes_max > 0
            && self.headers_count_max > 0
            && self.connections_max > 0
            && self.connections_max <= Semaphore::MAX_PERMITS;
        if positive {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid HTTP limits: {self:?}"),
            ))
        }
    }
}

/// Something that answers core [`Request`]s; the host wires it to the core's event loop through
/// a channel.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. The request has passed every [`HttpLimits`] check, and its
    /// `caller_cert_der` is the DER of a certificate whose private key the client proved to hold.
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send>>;
}

/// Serves HTTPS on `listener` until `shutdown` becomes `true` (or its sender is dropped).
///
/// Every connection is limited as [`HttpLimits`] describes; a client that misbehaves (garbage
/// bytes, an aborted handshake, oversized input) loses only its own connection. Once `shutdown`
/// is `true` the listener is closed, idle connections are closed, and requests in flight get up
/// to [`SHUTDOWN_GRACE_TIMEOUT`] to finish before their connections are dropped.
///
/// # Errors
///
/// `InvalidInput` if `limits` has a zero header, header-count or connection limit (or more
/// connections than a semaphore can count). Failed `accept` calls are logged and retried, not
/// returned.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: HttpLimits,
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    limits.validate()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connection_permits = Arc::new(Semaphore::new(limits.connections_max));
    let mut connections = JoinSet::new();
    let mut stop = Box::pin(shutdown_requested(shutdown.clone()));
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&connection_permits).try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.connections_max, "too many connections");
                    drop(tcp);
                    continue;
                };
                let acceptor = acceptor.clone();
                let handler = Arc::clone(&handler);
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    serve_connection(tcp, acceptor, limits, handler, shutdown).await;
                    drop(permit);
                });
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_connection_end(joined);
            }
        }
    }
    drop(listener);
    tracing::debug!(
        connections = connections.len(),
        "stopped accepting; draining connections"
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE_TIMEOUT, async {
        while let Some(joined) = connections.join_next().await {
            log_connection_end(joined);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "connections still open after the shutdown grace period; dropping them"
        );
        connections.shutdown().await;
    }
    assert!(connections.is_empty());
    Ok(())
}

/// Logs a connection task that panicked (a bug in hyper, rustls or here; never client input).
fn log_connection_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        if error.is_panic() {
            tracing::error!(%error, "connection task panicked");
        }
    }
}

/// Completes once `shutdown` holds `true` or its sender is gone.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Runs one connection: TLS handshake, HTTP/1.1 until either side closes, lingering close.
async fn serve_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    limits: HttpLimits,
    handler: Arc<dyn Handler>,
    shutdown: watch::Receiver<bool>,
) {
    let peer = tcp.peer_addr().ok();
    // Requests and responses are small and latency-bound; do not let Nagle delay them.
    let _ = tcp.set_nodelay(true);
    let mut stop = Box::pin(shutdown_requested(shutdown));
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let tls = tokio::select! {
        () = &mut stop => return,
        handshake = handshake => match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(?peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let caller_cert_der: Option<Arc<[u8]>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certificates| certificates.first())
        .map(|certificate| Arc::from(certificate.as_ref()));

    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let caller_cert_der = caller_cert_der.clone();
        let answer: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let response = answer(request, limits, handler.as_ref(), caller_cert_der).await;
            Ok::<_, Infallible>(into_hyper_response(response))
        });
        answer
    });

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(limits.headers_count_max)
        .max_header_size(limits.header_bytes_max)
        .max_buf_size(
            limits
                .header_bytes_max
                .saturating_add(BUFFER_BODY_BYTES_EXTRA)
                .max(HYPER_BUFFER_BYTES_MIN),
        );
    let mut connection = builder.serve_connection(TokioIo::new(tls), service);
    let mut shutting_down = false;
    let served = std::future::poll_fn(|cx| {
        if !shutting_down && stop.as_mut().poll(cx).is_ready() {
            // Closes the connection once the request in flight (if any) is answered.
            Pin::new(&mut connection).graceful_shutdown();
            shutting_down = true;
        }
        connection.poll_without_shutdown(cx)
    })
    .await;
    if let Err(error) = served {
        // Parse errors (including 431 for header limits), timeouts and client resets end here.
        tracing::debug!(?peer, %error, "HTTP connection ended with an error");
    }
    let mut tls = connection.into_parts().io.into_inner();
    let linger = tokio::time::timeout(LINGER_TIMEOUT, async {
        if tls.shutdown().await.is_err() {
            return;
        }
        let mut scratch = vec![0u8; 16 << 10];
        let mut discarded = 0usize;
        while discarded < LINGER_BYTES_MAX {
            match tls.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(read) => discarded += read,
            }
        }
    });
    if shutting_down {
        // `stop` has completed and must not be polled again; a stopping server does not linger
        // beyond sending its close_notify.
        let _ = tokio::time::timeout(Duration::ZERO, linger).await;
    } else {
        tokio::select! {
            () = &mut stop => {}
            _ = linger => {}
        }
    }
}

/// Why a request was refused before it reached the handler, or failed inside it.
#[derive(Debug)]
enum RequestError {
    /// The path is not valid percent-encoded UTF-8.
    InvalidPath,
    /// The query string is not valid percent-encoded UTF-8.
    InvalidQuery,
    /// A header value is not valid UTF-8.
    InvalidHeaderValue(String),
    /// The body is over `body_bytes_max`.
    BodyTooLarge(usize),
    /// The body could not be read (the client went away or sent bad chunked framing).
    BodyUnreadable,
    /// The handler panicked.
    HandlerPanicked,
}

impl RequestError {
    /// The one place that maps host-side request failures to HTTP responses.
    fn response(&self) -> Response {
        match self {
            RequestError::InvalidPath => Response::error(
                400,
                "InvalidInput",
                "path is not valid percent-encoded UTF-8",
            ),
            RequestError::InvalidQuery => Response::error(
                400,
                "InvalidInput",
                "query string is not valid percent-encoded UTF-8",
            ),
            RequestError::InvalidHeaderValue(name) => Response::error(
                400,
                "InvalidHeaderValue",
                format!("value of header {name} is not valid UTF-8"),
            ),
            // The unread rest of the body makes the connection unusable, so say so.
            RequestError::BodyTooLarge(limit) => Response::error(
                413,
                "RequestTooLarge",
                format!("request body is larger than {limit} bytes"),
            )
            .with_header("connection", "close"),
            RequestError::BodyUnreadable => {
                Response::error(400, "InvalidInput", "request body could not be read")
                    .with_header("connection", "close")
            }
            RequestError::HandlerPanicked => {
                Response::error(500, "InternalError", "the request could not be handled")
            }
        }
    }
}

/// Turns a hyper request into a core request, asks the handler, and maps refusals to responses.
async fn answer(
    request: hyper::Request<Incoming>,
    limits: HttpLimits,
    handler: &dyn Handler,
    caller_cert_der: Option<Arc<[u8]>>,
) -> Response {
    let request = match into_core_request(request, limits, caller_cert_der).await {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(?error, "request refused");
            return error.response();
        }
    };
    match (CatchUnwind {
        future: handler.handle(request),
    })
    .await
    {
        Ok(response) => response,
        Err(()) => {
            tracing::error!("request handler panicked");
            RequestError::HandlerPanicked.response()
        }
    }
}

/// Builds the core request, enforcing the body limit.
async fn into_core_request(
    request: hyper::Request<Incoming>,
    limits: HttpLimits,
    caller_cert_der: Option<Arc<[u8]>>,
) -> Result<Request, RequestError> {
    let (parts, body) = request.into_parts();
    let method = match parts.method {
        hyper::Method::GET => Method::Get,
        hyper::Method::PUT => Method::Put,
        hyper::Method::POST => Method::Post,
        hyper::Method::DELETE => Method::Delete,
        hyper::Method::PATCH => Method::Patch,
        _ => Method::Other,
    };
    let path = percent_decode(parts.uri.path(), false).ok_or(RequestError::InvalidPath)?;
    let query = match parts.uri.query() {
        Some(query) => parse_query(query).ok_or(RequestError::InvalidQuery)?,
        None => Vec::new(),
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let name = name.as_str().to_ascii_lowercase();
        let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
            return Err(RequestError::InvalidHeaderValue(name));
        };
        headers.push((name, value.to_owned()));
    }
    assert!(headers.len() <= limits.headers_count_max);

    // hyper reports a declared content-length as the body's exact size: refuse before reading.
    let declared_bytes = body.size_hint().lower();
    if declared_bytes > limits.body_bytes_max as u64 {
        return Err(RequestError::BodyTooLarge(limits.body_bytes_max));
    }
    let body = match Limited::new(body, limits.body_bytes_max).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(RequestError::BodyTooLarge(limits.body_bytes_max));
        }
        Err(_) => return Err(RequestError::BodyUnreadable),
    };
    assert!(body.len() <= limits.body_bytes_max);

    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
        caller_cert_der: caller_cert_der.map(|der| der.to_vec()),
    })
}

/// Turns a core response into a hyper response. A status outside 100..=999 becomes 500; headers
/// that are not valid HTTP are dropped (and logged), as are `content-length` and
/// `transfer-encoding`, which the server sets itself.
fn into_hyper_response(response: Response) -> hyper::Response<Full<Bytes>> {
    let status = hyper::StatusCode::from_u16(response.status).unwrap_or_else(|_| {
        tracing::error!(
            status = response.status,
            "handler returned an invalid status"
        );
        hyper::StatusCode::INTERNAL_SERVER_ERROR
    });
    let content_length = response.body.len();
    let mut reply = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    for (name, value) in response.headers {
        let name = match hyper::header::HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                tracing::error!(%name, "handler returned an invalid header name");
                continue;
            }
        };
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            continue;
        }
        match hyper::header::HeaderValue::from_str(&value) {
            Ok(value) => {
                headers.append(name, value);
            }
            Err(_) => tracing::error!(%name, "handler returned an invalid header value"),
        }
    }
    headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(content_length),
    );
    reply
}

/// Parses `a=1&b=x%20y` into pairs, in order, percent-decoding keys and values with `+` as
/// space. Empty segments are skipped; a segment without `=` has an empty value. `None` if any
/// part is not valid percent-encoded UTF-8.
fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for segment in query.split('&').filter(|segment| !segment.is_empty()) {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        pairs.push((percent_decode(key, true)?, percent_decode(value, true)?));
    }
    Some(pairs)
}

/// Decodes `%XX` escapes (and `+` as space if `plus_is_space`). `None` if an escape is truncated
/// or not hexadecimal, or if the result is not UTF-8.
fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let high = hex_value(*bytes.get(index + 1)?)?;
                let low = hex_value(*bytes.get(index + 2)?)?;
                decoded.push(high << 4 | low);
                index += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    assert!(decoded.len() <= bytes.len());
    String::from_utf8(decoded).ok()
}

/// The value of one hexadecimal digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Runs a future, turning a panic while polling it into `Err(())`, so that a bug in one
/// handler costs one `500` rather than the connection.
struct CatchUnwind<F: ?Sized> {
    future: Pin<Box<F>>,
}

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.future.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_handles_escapes_and_plus() {
        assert_eq!(
            percent_decode("/app/a%20b", false).as_deref(),
            Some("/app/a b")
        );
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%e2%82%AC", false).as_deref(), Some("€"));
        assert_eq!(percent_decode("", false).as_deref(), Some(""));
    }

    #[test]
    fn percent_decode_rejects_bad_input() {
        assert_eq!(percent_decode("%", false), None);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        assert_eq!(percent_decode("%c3", false), None);
    }

    #[test]
    fn query_pairs_keep_order_and_decode() {
        assert_eq!(
            parse_query("b=2&a=x+y%26z&&flag&=v").unwrap(),
            vec![
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "x y&z".to_owned()),
                ("flag".to_owned(), String::new()),
                (String::new(), "v".to_owned()),
            ]
        );
        assert_eq!(parse_query("a=%g0"), None);
    }

    #[test]
    fn invalid_status_becomes_500_and_length_is_set() {
        let response = Response {
            status: 1000,
            headers: vec![
                ("content-length".to_owned(), "99".to_owned()),
                ("bad name".to_owned(), "x".to_owned()),
                ("x-ok".to_owned(), "yes".to_owned()),
            ],
            body: b"abc".to_vec(),
        };
        let reply = into_hyper_response(response);
        assert_eq!(reply.status(), 500);
        assert_eq!(reply.headers()["content-length"], "3");
        assert_eq!(reply.headers()["x-ok"], "yes");
        assert_eq!(reply.headers().len(), 2);
    }

    #[test]
    fn default_limits_match_the_design() {
        let limits = HttpLimits::default();
        assert_eq!(limits.body_bytes_max, 1 << 20);
        assert_eq!(limits.header_bytes_max, 16 << 10);
        assert_eq!(limits.headers_count_max, 256);
        assert!(limits.validate().is_ok());
        let zero = HttpLimits {
            connections_max: 0,
            ..limits
        };
        assert!(zero.validate().is_err());
    }
}
