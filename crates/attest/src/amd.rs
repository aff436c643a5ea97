//! AMD's certificate chain for SEV-SNP: VCEK (or VLEK) ← ASK (or ASVK) ← ARK.
//!
//! The ARK and ASK are RSA-4096 keys that sign with RSASSA-PSS, SHA-384, MGF1-SHA-384 and a
//! 48-byte salt; the VCEK is an ECDSA P-384 key. The ARK of each CPU family is pinned: the
//! ones AMD publishes for Milan and Genoa are embedded, and callers can pin others.

use rsa::pkcs8::DecodePublicKey as _;
use sha2::{Digest as _, Sha384};
use x509_parser::oid_registry::{Oid, OID_PKCS1_RSASSAPSS};
use x509_parser::prelude::{FromDer, X509Certificate};

use charter_crypto::{Certificate, VerifyingKey};

use crate::AttestError;

/// AMD's root key certificate for Milan (EPYC 7003), as published by AMD's key distribution
/// service at `/vcek/v1/Milan/cert_chain`. SHA-256 of the DER:
/// `69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd`.
pub const ARK_MILAN_PEM: &str = include_str!("amd/ark_milan.pem");
/// AMD's signing key certificate for Milan, issued by [`ARK_MILAN_PEM`].
pub const ASK_MILAN_PEM: &str = include_str!("amd/ask_milan.pem");
/// AMD's root key certificate for Genoa (EPYC 9004), from `/vcek/v1/Genoa/cert_chain`.
/// SHA-256 of the DER: `4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1`.
pub const ARK_GENOA_PEM: &str = include_str!("amd/ark_genoa.pem");
/// AMD's signing key certificate for Genoa, issued by [`ARK_GENOA_PEM`].
pub const ASK_GENOA_PEM: &str = include_str!("amd/ask_genoa.pem");

/// Largest endorsement PEM accepted, in bytes; AMD's three certificates take about 6 KiB.
pub const ENDORSEMENTS_BYTES_MAX: usize = 64 * 1024;
/// Number of certificates in the endorsements: VCEK, ASK, ARK.
pub const ENDORSEMENT_CERTIFICATES: usize = 3;
/// Smallest RSA modulus accepted in the chain, in bits (AMD's are 4096).
pub const RSA_MODULUS_BITS_MIN: usize = 2048;

/// The DER contents of AMD's RSASSA-PSS parameters: hash SHA-384, MGF1 with SHA-384, salt
/// length 48, trailer field 1 (RFC 4055).
const PSS_SHA384_PARAMETERS: [u8; 57] = [
    0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0xa2,
    0x03, 0x02, 0x01, 0x30, 0xa3, 0x03, 0x02, 0x01, 0x01,
];
const PSS_SALT_BYTES: usize = 48;

/// OID of the VCEK's hwID extension (the chip ID), AMD arc 1.3.6.1.4.1.3704.1.4.
const OID_AMD_HWID: &[u64] = &[1, 3, 6, 1, 4, 1, 3704, 1, 4];

/// The ARKs AMD publishes for Milan and Genoa, the roots [`crate::verify`] trusts.
pub fn amd_root_certificates() -> Vec<Certificate> {
    [ARK_MILAN_PEM, ARK_GENOA_PEM]
        .iter()
        .map(|pem| {
            // The embedded PEMs are constants checked by this crate's tests.
            Certificate::from_pem(pem).expect("embedded AMD root parses")
        })
        .collect()
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, AttestError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|error| AttestError::BadEndorsements(format!("{what}: {error}")))?;
    if !rest.is_empty() {
        return Err(AttestError::BadEndorsements(format!(
            "{what}: trailing bytes"
        )));
    }
    Ok(cert)
}

/// Checks that `issuer_spki_der` (an RSA key) signed `cert` with AMD's RSASSA-PSS profile.
fn verify_rsa_pss(
    cert: &X509Certificate<'_>,
    issuer_spki_der: &[u8],
    what: &str,
) -> Result<(), AttestError> {
    let bad = |reason: &str| AttestError::BadEndorsements(format!("{what}: {reason}"));
    let algorithm = &cert.signature_algorithm;
    if *algorithm != cert.tbs_certificate.signature {
        return Err(bad("inner and outer signature algorithms differ"));
    }
    if algorithm.algorithm != OID_PKCS1_RSASSAPSS {
        return Err(bad("not signed with RSASSA-PSS"));
    }
    let parameters = algorithm.parameters.as_ref().map(|any| any.data);
    if parameters != Some(&PSS_SHA384_PARAMETERS[..]) {
        return Err(bad(
            "RSASSA-PSS parameters are not SHA-384 with a 48-byte salt",
        ));
    }
    let key = rsa::RsaPublicKey::from_public_key_der(issuer_spki_der)
        .map_err(|error| bad(&format!("issuer key is not RSA: {error}")))?;
    if rsa::traits::PublicKeyParts::size(&key) * 8 < RSA_MODULUS_BITS_MIN {
        return Err(bad("issuer RSA key too small"));
    }
    let digest = Sha384::digest(cert.tbs_certificate.as_ref());
    key.verify(
        rsa::Pss::new_with_salt::<Sha384>(PSS_SALT_BYTES),
        &digest,
        cert.signature_value.data.as_ref(),
    )
    .map_err(|_| bad("signature does not verify"))
}

/// The verified end of an AMD chain.
pub(crate) struct Endorsed {
    /// The VCEK's (or VLEK's) public key, which signs reports.
    pub key: VerifyingKey,
    /// The chip ID the VCEK names, if it has the hwID extension.
    pub chip_id: Option<Vec<u8>>,
}

/// Verifies `endorsements_pem` = VCEK, ASK, ARK (in that order): each signed by the next, the
/// ARK self-signed and equal in key to one of `roots`.
///
/// Validity periods are not checked: the deterministic core has no clock, and AMD's ARKs and
/// ASKs are valid until 2045 and later.
pub(crate) fn verify_chain(
    endorsements_pem: &str,
    roots: &[Certificate],
) -> Result<Endorsed, AttestError> {
    if endorsements_pem.len() > ENDORSEMENTS_BYTES_MAX {
        return Err(AttestError::Malformed(format!(
            "endorsements over {ENDORSEMENTS_BYTES_MAX} bytes"
        )));
    }
    if roots.is_empty() {
        return Err(AttestError::BadEndorsements(
            "no AMD root is pinned".to_owned(),
        ));
    }
    let blocks = pem::parse_many(endorsements_pem)
        .map_err(|error| AttestError::BadEndorsements(format!("PEM: {error}")))?;
    if blocks.len() != ENDORSEMENT_CERTIFICATES
        || blocks.iter().any(|block| block.tag() != "CERTIFICATE")
    {
        return Err(AttestError::BadEndorsements(format!(
            "expected {ENDORSEMENT_CERTIFICATES} certificates: VCEK, ASK, ARK"
        )));
    }
    let vcek = parse(blocks[0].contents(), "VCEK")?;
    let ask = parse(blocks[1].contents(), "ASK")?;
    let ark = parse(blocks[2].contents(), "ARK")?;

    let ark_spki = ark.public_key().raw;
    let pinned = roots.iter().any(|root| {
        parse(root.der(), "root")
            .map(|root| root.public_key().raw == ark_spki)
            .unwrap_or(false)
    });
    if !pinned {
        return Err(AttestError::BadEndorsements(
            "ARK is not a pinned AMD root".to_owned(),
        ));
    }
    if ark.subject().as_raw() != ark.issuer().as_raw() {
        return Err(AttestError::BadEndorsements(
            "ARK is not self-issued".to_owned(),
        ));
    }
    verify_rsa_pss(&ark, ark_spki, "ARK")?;

    if ask.issuer().as_raw() != ark.subject().as_raw() || !ask.is_ca() || !ark.is_ca() {
        return Err(AttestError::BadEndorsements(
            "ASK is not a CA issued by the ARK".to_owned(),
        ));
    }
    verify_rsa_pss(&ask, ark_spki, "ASK")?;

    if vcek.issuer().as_raw() != ask.subject().as_raw() {
        return Err(AttestError::BadEndorsements(
            "VCEK is not issued by the ASK".to_owned(),
        ));
    }
    verify_rsa_pss(&vcek, ask.public_key().raw, "VCEK")?;
    let key = VerifyingKey::from_spki_der(vcek.public_key().raw)
        .map_err(|error| AttestError::BadEndorsements(format!("VCEK key is not P-384: {error}")))?;

    let hwid = Oid::from(OID_AMD_HWID).map_err(|_| {
        AttestError::BadEndorsements("cannot build the hwID object identifier".to_owned())
    })?;
    let chip_id = vcek
        .extensions()
        .iter()
        .find(|extension| extension.oid == hwid)
        .map(|extension| {
            // AMD stores the 64-byte chip ID as the raw extension value; accept a DER OCTET
            // STRING around it too.
            let value = extension.value;
            match value {
                [0x04, 0x40, rest @ ..] if rest.len() == 64 => rest.to_vec(),
                _ => value.to_vec(),
            }
        });
    Ok(Endorsed { key, chip_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem_text: &str) -> Vec<u8> {
        Certificate::from_pem(pem_text).unwrap().der().to_vec()
    }

    #[test]
    fn embedded_roots_are_amds_and_sign_their_asks() {
        for (ark_pem, ask_pem, fingerprint) in [
            (
                ARK_MILAN_PEM,
                ASK_MILAN_PEM,
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            ),
            (
                ARK_GENOA_PEM,
                ASK_GENOA_PEM,
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            ),
        ] {
            let ark_der = der(ark_pem);
            assert_eq!(hex::encode(charter_crypto::sha256(&ark_der)), fingerprint);
            let ark = parse(&ark_der, "ARK").unwrap();
            verify_rsa_pss(&ark, ark.public_key().raw, "ARK").unwrap();
            let ask_der = der(ask_pem);
            let ask = parse(&ask_der, "ASK").unwrap();
            verify_rsa_pss(&ask, ark.public_key().raw, "ASK").unwrap();
            // The ASK does not sign itself, and a flipped TBS byte is caught.
            assert!(verify_rsa_pss(&ask, ask.public_key().raw, "ASK").is_err());
            let mut altered = ask_der.clone();
            altered[200] ^= 1;
            if let Ok(altered) = parse(&altered, "ASK") {
                assert!(verify_rsa_pss(&altered, ark.public_key().raw, "ASK").is_err());
            }
        }
        assert_eq!(amd_root_certificates().len(), 2);
    }
}
