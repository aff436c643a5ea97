use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, RemoteKeyPair, SanType, SerialNumber,
};
use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{sha256, sha256_parts, CryptoError, SigningKey, VerifyingKey};

/// Days and start of a certificate's validity, given by the caller (this crate reads no clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// Length of validity in days.
    pub days: u32,
}

/// What a new certificate says about its subject.
#[derive(Clone, Debug)]
pub struct CertificateSpec<'a> {
    /// Subject common name.
    pub common_name: &'a str,
    /// Whether the certificate may sign other certificates (basicConstraints CA:TRUE).
    pub is_ca: bool,
    /// Subject alternative names: IP addresses and DNS names.
    pub subject_alt_names: &'a [String],
    /// Validity period.
    pub validity: Validity,
}

/// An X.509 certificate, kept as DER and parsed on demand.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Certificate {
    der: Vec<u8>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certificate({})", self.fingerprint_hex())
    }
}

/// Signs certificates for rcgen with a P-384 key (deterministic ECDSA, no RNG).
struct P384Signer {
    key: SigningKey,
    public: Vec<u8>,
}

impl RemoteKeyPair for P384Signer {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(message))
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

fn rcgen_key_pair(key: &SigningKey) -> Result<KeyPair, CryptoError> {
    let signer = P384Signer {
        key: key.clone(),
        public: key
            .inner()
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    };
    KeyPair::from_remote(Box::new(signer))
        .map_err(|error| CryptoError::CertificateCreation(error.to_string()))
}

fn params_for(
    spec: &CertificateSpec<'_>,
    subject: &VerifyingKey,
) -> Result<CertificateParams, CryptoError> {
    let creation = |error: rcgen::Error| CryptoError::CertificateCreation(error.to_string());
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.common_name);
    for name in spec.subject_alt_names {
        let san = match name.parse::<core::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(creation)?),
        };
        params.subject_alt_names.push(san);
    }
    let start = time::OffsetDateTime::from_unix_timestamp(spec.validity.not_before_unix)
        .map_err(|error| CryptoError::CertificateCreation(error.to_string()))?;
    params.not_before = start;
    params.not_after = start + time::Duration::days(i64::from(spec.validity.days));
    // A serial number derived from the subject key and name: unique per subject, reproducible.
    let mut serial = sha256_parts(&[&subject.to_spki_der(), spec.common_name.as_bytes()]);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial[..16]));
    if spec.is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        // No basicConstraints on end-entity certificates: DER forbids encoding the default
        // cA=FALSE, and strict parsers (pyca/cryptography) reject it.
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    Ok(params)
}

impl Certificate {
    /// A self-signed certificate for `key` (service identity, members, users).
    ///
    /// # Errors
    /// [`CryptoError::CertificateCreation`] if the spec is invalid (e.g. a bad DNS name).
    pub fn self_signed(
        key: &SigningKey,
        spec: &CertificateSpec<'_>,
    ) -> Result<Certificate, CryptoError> {
        let params = params_for(spec, &key.verifying_key())?;
        let key_pair = rcgen_key_pair(key)?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|error| CryptoError::CertificateCreation(error.to_string()))?;
        Ok(Certificate {
            der: cert.der().to_vec(),
        })
    }

    /// A certificate for `subject` issued (endorsed) by `issuer_key`, whose certificate is
    /// `issuer_cert` (for example a node certificate endorsed by the service identity).
    ///
    /// # Errors
    /// [`CryptoError::CertificateCreation`] if the spec is invalid or `issuer_cert` unreadable.
    pub fn issue(
        subject: &VerifyingKey,
        spec: &CertificateSpec<'_>,
        issuer_key: &SigningKey,
        issuer_cert: &Certificate,
    ) -> Result<Certificate, CryptoError> {
        let creation = |error: rcgen::Error| CryptoError::CertificateCreation(error.to_string());
        let mut params = params_for(spec, subject)?;
        params.use_authority_key_identifier_extension = true;
        let issuer_key_pair = rcgen_key_pair(issuer_key)?;
        let issuer = CertificateParams::from_ca_cert_der(&issuer_cert.der.clone().into())
            .map_err(creation)?
            .self_signed(&issuer_key_pair)
            .map_err(creation)?;
        let subject_key =
            rcgen::SubjectPublicKeyInfo::from_der(&subject.to_spki_der()).map_err(creation)?;
        let cert = params
            .signed_by(&subject_key, &issuer, &issuer_key_pair)
            .map_err(creation)?;
        Ok(Certificate {
            der: cert.der().to_vec(),
        })
    }

    /// A certificate from DER, checked to parse.
    ///
    /// # Errors
    /// [`CryptoError::Certificate`] if it does not parse as X.509.
    pub fn from_der(der: &[u8]) -> Result<Certificate, CryptoError> {
        let cert = Certificate { der: der.to_vec() };
        cert.parsed()?;
        Ok(cert)
    }

    /// The first `CERTIFICATE` block of a PEM document.
    ///
    /// # Errors
    /// [`CryptoError::Pem`] or [`CryptoError::Certificate`].
    pub fn from_pem(pem_text: &str) -> Result<Certificate, CryptoError> {
        let blocks =
            pem::parse_many(pem_text).map_err(|error| CryptoError::Pem(error.to_string()))?;
        let block = blocks
            .into_iter()
            .find(|block| block.tag() == "CERTIFICATE")
            .ok_or_else(|| CryptoError::Pem("no CERTIFICATE block".to_owned()))?;
        Certificate::from_der(block.contents())
    }

    /// The certificate as PEM, ending in a newline.
    pub fn to_pem(&self) -> String {
        let block = pem::Pem::new("CERTIFICATE", self.der.clone());
        pem::encode_config(
            &block,
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Hex SHA-256 of the DER: CCF's member and user ID.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(sha256(&self.der))
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, CryptoError> {
        let (rest, cert) = X509Certificate::from_der(&self.der)
            .map_err(|error| CryptoError::Certificate(error.to_string()))?;
        if !rest.is_empty() {
            return Err(CryptoError::Certificate(
                "trailing bytes after certificate".to_owned(),
            ));
        }
        Ok(cert)
    }

    /// The subject's public key.
    ///
    /// # Errors
    /// [`CryptoError::Key`] if it is not a P-384 key.
    pub fn public_key(&self) -> Result<VerifyingKey, CryptoError> {
        let cert = self.parsed()?;
        VerifyingKey::from_spki_der(cert.public_key().raw)
    }

    /// The subject common name, if any.
    pub fn common_name(&self) -> Option<String> {
        let cert = self.parsed().ok()?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|attribute| attribute.as_str().ok().map(str::to_owned));
        name
    }

    /// Whether basicConstraints marks this certificate as a CA.
    pub fn is_ca(&self) -> bool {
        self.parsed().map(|cert| cert.is_ca()).unwrap_or(false)
    }

    /// Validity as (not before, not after) in Unix seconds.
    ///
    /// # Errors
    /// [`CryptoError::Certificate`] if it does not parse.
    pub fn validity_unix(&self) -> Result<(i64, i64), CryptoError> {
        let cert = self.parsed()?;
        Ok((
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        ))
    }

    /// Checks that `issuer` signed this certificate (ECDSA with SHA-384 or SHA-256).
    ///
    /// # Errors
    /// [`CryptoError::BadSignature`] if not, [`CryptoError::Certificate`] for other algorithms.
    pub fn verify_signed_by(&self, issuer: &VerifyingKey) -> Result<(), CryptoError> {
        let cert = self.parsed()?;
        let tbs = cert.tbs_certificate.as_ref();
        let signature = cert.signature_value.data.as_ref();
        let algorithm = &cert.signature_algorithm.algorithm;
        if *algorithm == OID_SIG_ECDSA_WITH_SHA384 {
            issuer.verify(tbs, signature)
        } else if *algorithm == OID_SIG_ECDSA_WITH_SHA256 {
            issuer.verify_prehash(&sha256(tbs), signature)
        } else {
            Err(CryptoError::Certificate(format!(
                "unsupported signature algorithm {algorithm}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(name: &'a str, is_ca: bool, sans: &'a [String]) -> CertificateSpec<'a> {
        CertificateSpec {
            common_name: name,
            is_ca,
            subject_alt_names: sans,
            validity: Validity {
                not_before_unix: 1_700_000_000,
                days: 365,
            },
        }
    }

    #[test]
    fn self_signed_and_issued() {
        let service_key = SigningKey::from_seed(&[1; 32]).unwrap();
        let service = Certificate::self_signed(&service_key, &spec("service", true, &[])).unwrap();
        assert!(service.is_ca());
        assert_eq!(service.common_name().as_deref(), Some("service"));
        service
            .verify_signed_by(&service_key.verifying_key())
            .unwrap();
        assert_eq!(service.public_key().unwrap(), service_key.verifying_key());

        let node_key = SigningKey::from_seed(&[2; 32]).unwrap();
        let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let node = Certificate::issue(
            &node_key.verifying_key(),
            &spec("node", false, &sans),
            &service_key,
            &service,
        )
        .unwrap();
        assert!(!node.is_ca());
        node.verify_signed_by(&service_key.verifying_key()).unwrap();
        assert!(node.verify_signed_by(&node_key.verifying_key()).is_err());
        assert_eq!(node.public_key().unwrap(), node_key.verifying_key());
        let (start, end) = node.validity_unix().unwrap();
        assert_eq!(start, 1_700_000_000);
        assert_eq!(end - start, 365 * 86_400);

        let back = Certificate::from_pem(&node.to_pem()).unwrap();
        assert_eq!(back, node);
        assert_eq!(back.fingerprint_hex().len(), 64);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Certificate::from_der(b"nope").is_err());
        assert!(Certificate::from_pem("nope").is_err());
        let key = SigningKey::from_seed(&[1; 32]).unwrap();
        let cert = Certificate::self_signed(&key, &spec("x", false, &[])).unwrap();
        let mut der = cert.der().to_vec();
        let last = der.len() - 5;
        der[last] ^= 1;
        if let Ok(altered) = Certificate::from_der(&der) {
            assert!(altered.verify_signed_by(&key.verifying_key()).is_err());
        }
    }
}
