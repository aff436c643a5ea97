//! TLS configuration for Charter's client-facing listener and for the HTTPS client.
//!
//! The server speaks TLS 1.3 only, presents the node certificate (endorsed by the service
//! certificate, which is a CA) and offers, but does not require, client certificates. Users' and
//! members' certificates are self-signed, so the server's client verifier accepts any certificate
//! and checks only that the client holds its private key (the TLS 1.3 `CertificateVerify`
//! signature); whose certificate it is, is decided by the core against the users and members
//! tables.
//!
//! Both configurations carry the ring provider explicitly, so they work whether or not a process
//! default provider was installed; [`install_crypto_provider`] exists for other rustls users in the
//! same process (for example tokio-rustls helpers that consult the default).

use std::io::BufReader;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The only application protocol both sides negotiate.
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The most certificates accepted in one PEM chain or CA bundle.
pub const PEM_CERTIFICATES_MAX: usize = 16;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM text could not be read.
    #[error("invalid PEM: {0}")]
    InvalidPem(#[source] std::io::Error),
    /// The PEM text held no `CERTIFICATE` block.
    #[error("no certificate found in PEM")]
    NoCertificate,
    /// The PEM text held more certificates than [`PEM_CERTIFICATES_MAX`].
    #[error("more than {PEM_CERTIFICATES_MAX} certificates in PEM")]
    TooManyCertificates,
    /// The PEM text held no `PRIVATE KEY` or `EC PRIVATE KEY` block.
    #[error("no private key found in PEM")]
    NoPrivateKey,
    /// A CA certificate could not be used as a trust anchor.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCertificate(#[source] rustls::Error),
    /// rustls rejected the configuration (for example a key that does not match the
    /// certificate, or an unsupported key type).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Installs rustls's ring provider as the process-wide default.
///
/// Idempotent: if a default provider is already installed (by an earlier call or by anyone
/// else), this does nothing.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: some provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The provider every configuration here is built with.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every `CERTIFICATE` block in `pem`, in order.
fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = BufReader::new(pem.as_bytes());
    let mut certificates = Vec::new();
    for certificate in rustls_pemfile::certs(&mut reader) {
        if certificates.len() == PEM_CERTIFICATES_MAX {
            return Err(TlsError::TooManyCertificates);
        }
        certificates.push(certificate.map_err(TlsError::InvalidPem)?);
    }
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    assert!(certificates.len() <= PEM_CERTIFICATES_MAX);
    Ok(certificates)
}

/// Parses the first private key in `pem` (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1).
fn parse_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = BufReader::new(pem.as_bytes());
    rustls_pemfile::private_key(&mut reader)
        .map_err(TlsError::InvalidPem)?
        .ok_or(TlsError::NoPrivateKey)
}

/// Builds the client-facing server configuration.
///
/// `cert_chain_pem` is the node certificate followed by any further chain certificates (usually
/// the service certificate); `key_pem` is the node's private key. The configuration allows TLS
/// 1.3 only, negotiates ALPN `http/1.1`, and offers optional client authentication through a
/// verifier that accepts any certificate whose private key the client proves to hold.
///
/// # Errors
///
/// [`TlsError`] if the PEM text is malformed, holds no certificate or key, or rustls rejects the
/// key (for example because it does not match the certificate).
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certificates = parse_certificates(cert_chain_pem)?;
    let key = parse_private_key(key_pem)?;
    let provider = provider();
    let verifier = Arc::new(AnyClientCertVerifier {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// Builds an HTTPS client configuration that trusts exactly the CA certificates in `ca_pem`
/// (normally the service certificate) and, if `client_identity` is `Some((cert_pem, key_pem))`,
/// presents that certificate. TLS 1.3 only; ALPN `http/1.1`.
///
/// # Errors
///
/// [`TlsError`] if the PEM text is malformed, a CA certificate cannot be a trust anchor, or the
/// client key is unusable.
pub fn client_config(
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in parse_certificates(ca_pem)? {
        roots
            .add(certificate)
            .map_err(TlsError::InvalidCaCertificate)?;
    }
    assert!(!roots.is_empty());
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match client_identity {
        Some((cert_pem, key_pem)) => {
            let certificates = parse_certificates(cert_pem)?;
            let key = parse_private_key(key_pem)?;
            builder.with_client_auth_cert(certificates, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}

/// Offers optional client authentication and accepts any client certificate, but checks the
/// TLS 1.3 handshake signature so that the client must hold the certificate's private key.
#[derive(Debug)]
struct AnyClientCertVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // An empty list tells clients to send whatever certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Identity is the core's decision (users and members tables); possession of the key is
        // checked in `verify_tls13_signature`, which parses the certificate.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The server configuration allows TLS 1.3 only, so rustls never gets here; refuse
        // rather than accept if it ever does.
        Err(rustls::Error::General(
            "client authentication requires TLS 1.3".to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }

    #[test]
    fn empty_pem_is_rejected() {
        assert!(matches!(
            server_config("", ""),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            client_config("not pem at all", None),
            Err(TlsError::NoCertificate)
        ));
    }
}
