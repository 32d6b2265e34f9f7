//! The NATS client TLS configuration: mutual TLS with the bosh-internal name rule.
//!
//! The director hands the agent a CA, a client certificate and a key (`env.bosh.mbus.cert`); the agent
//! must prove its identity with that certificate and must only talk to a NATS server whose certificate
//! chains to the CA, matches the URL host, *and* carries a `*.nats.bosh-internal` CommonName — the same
//! rule today's Go agent enforces, so a certificate for some other service signed by the same CA cannot
//! impersonate the director's NATS server.

use super::{parse_certs, parse_key, provider, root_store};
use crate::error::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

/// The error text when a correctly chained server certificate has the wrong CommonName; worded like
/// the Go agent's so operators searching logs find the same message.
pub const NATS_CN_MISMATCH: &str = "server certificate CommonName does not match *.nats.bosh-internal";

/// Builds the mutual-TLS configuration for the NATS bus.
///
/// Why each rule: TLS >= 1.2 because that is what nats-server and the director speak (rustls offers
/// 1.2 and 1.3); roots are `ca_pem`, or the public web roots when it is empty (the Go agent then falls
/// back to system roots); the client certificate is mandatory because nats-server maps the certificate
/// subject to a NATS user and rejects anonymous clients; the server leaf's CN must match
/// `^[a-zA-Z0-9*-]*\.nats\.bosh-internal$` on top of normal chain and host name checks.
pub fn nats_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    if cert_pem.trim().is_empty() {
        return Err("NATS client certificate is missing (mbus.cert.certificate is empty)".into());
    }
    if key_pem.trim().is_empty() {
        return Err("NATS client private key is missing (mbus.cert.private_key is empty)".into());
    }
    let certs = parse_certs(cert_pem).context("NATS client certificate")?;
    let key = parse_key(key_pem).context("NATS client private key")?;
    let roots = if ca_pem.trim().is_empty() {
        let mut roots = rustls::RootCertStore::empty();
        let (_, unusable) = roots.add_parsable_certificates(super::system_roots());
        if unusable > 0 {
            log::debug!("{unusable} system CA certificate(s) unusable as NATS roots");
        }
        roots
    } else {
        root_store(ca_pem).context("NATS CA")?
    };
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("building NATS server verifier")?;
    let verifier = Arc::new(BoshNatsVerifier { inner });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)
        .context("NATS client certificate and key do not form a usable pair")?;
    Ok(Arc::new(config))
}

/// WebPKI verification plus the `*.nats.bosh-internal` CommonName rule (see [`nats_client_config`]).
#[derive(Debug)]
struct BoshNatsVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for BoshNatsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match subject_common_name(end_entity.as_ref()) {
            Some(cn) if is_bosh_nats_cn(&cn) => Ok(verified),
            _ => Err(rustls::Error::General(NATS_CN_MISMATCH.into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// True when `cn` matches `^[a-zA-Z0-9*-]*\.nats\.bosh-internal$`, written by hand because the crate
/// carries no regex engine and the pattern is a simple suffix plus a character class.
pub fn is_bosh_nats_cn(cn: &str) -> bool {
    match cn.strip_suffix(".nats.bosh-internal") {
        Some(prefix) => prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'-'),
        None => false,
    }
}

/// The subject CommonName (OID 2.5.4.3) of a DER certificate, or `None` when absent or undecodable.
///
/// A tiny DER walker instead of an X.509 crate: we need one field, and the input comes from the
/// network, so every step is bounds-checked and garbage yields `None`, never a panic. When a subject
/// carries several CNs the last one wins, as in Go's `pkix.Name`.
pub fn subject_common_name(cert_der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

    let (tag, cert, _) = der_tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // tbsCertificate: [0] version (optional), serial, signature, issuer, validity, subject, ...
    let mut rest = tbs;
    let (tag, _, after) = der_tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        // serialNumber, signature, issuer, validity
        let (_, _, after) = der_tlv(rest)?;
        rest = after;
    }
    let (tag, mut rdns, _) = der_tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !rdns.is_empty() {
        let (tag, mut set, after) = der_tlv(rdns)?;
        rdns = after;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, after) = der_tlv(set)?;
            set = after;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der_tlv(atv)?;
            if tag != OID {
                return None;
            }
            if oid == CN_OID {
                let (vtag, v, _) = der_tlv(value)?;
                found = Some(decode_der_string(vtag, v)?);
            }
        }
    }
    found
}

/// Splits one DER TLV off `input`: (tag, contents, remainder). Only single-byte tags and definite
/// lengths of up to four bytes are accepted, which covers every certificate in practice.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = (rest.get(..n)?, rest.get(n..)?);
        rest = after;
        bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let contents = rest.get(..len)?;
    let remainder = rest.get(len..)?;
    Some((tag, contents, remainder))
}

/// Decodes the DirectoryString forms a CN may use; unknown forms yield `None`.
fn decode_der_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString: treated as Latin-1, which is what it means in practice
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UCS-2 big endian
        0x1e => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert_with_cn(cn: &str) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Cloud Foundry");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn extracts_common_name() {
        let der = cert_with_cn("default.nats.bosh-internal");
        assert_eq!(subject_common_name(&der).as_deref(), Some("default.nats.bosh-internal"));
    }

    #[test]
    fn no_common_name_is_none() {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "x");
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(subject_common_name(&der), None);
    }

    #[test]
    fn garbage_never_panics() {
        let der = cert_with_cn("default.nats.bosh-internal");
        for cut in 0..der.len() {
            let _ = subject_common_name(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = subject_common_name(&flipped);
            flipped[i] ^= 0xff;
        }
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_common_name(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(subject_common_name(&[0x1f, 0x01, 0x00]), None);
    }

    #[test]
    fn decodes_string_forms() {
        assert_eq!(decode_der_string(0x13, b"ab").as_deref(), Some("ab"));
        assert_eq!(decode_der_string(0x1e, &[0, b'a', 0, b'b']).as_deref(), Some("ab"));
        assert_eq!(decode_der_string(0x1e, &[0, b'a', 0]), None);
        assert_eq!(decode_der_string(0x14, &[0xe9]).as_deref(), Some("é"));
        assert_eq!(decode_der_string(0x04, b"ab"), None);
    }

    #[test]
    fn bosh_nats_cn_rule() {
        assert!(is_bosh_nats_cn("default.nats.bosh-internal"));
        assert!(is_bosh_nats_cn("*.nats.bosh-internal"));
        assert!(is_bosh_nats_cn("a-B-9.nats.bosh-internal"));
        assert!(is_bosh_nats_cn(".nats.bosh-internal"));
        assert!(!is_bosh_nats_cn("a.b.nats.bosh-internal"));
        assert!(!is_bosh_nats_cn("defaultxnats.bosh-internal"));
        assert!(!is_bosh_nats_cn("default.nats.bosh-internal.evil"));
        assert!(!is_bosh_nats_cn("evil.example.com"));
        assert!(!is_bosh_nats_cn("a_b.nats.bosh-internal"));
    }

    #[test]
    fn client_cert_and_key_required() {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["x".to_string()]).unwrap().self_signed(&key).unwrap();
        let ca = cert.pem();
        let err = nats_client_config(&ca, "", &key.serialize_pem()).unwrap_err();
        assert!(err.contains("certificate is missing"), "{err}");
        let err = nats_client_config(&ca, &cert.pem(), " ").unwrap_err();
        assert!(err.contains("private key is missing"), "{err}");
        let err = nats_client_config(&ca, &cert.pem(), "junk").unwrap_err();
        assert!(err.contains("private key"), "{err}");
        assert!(nats_client_config(&ca, &cert.pem(), &key.serialize_pem()).is_ok());
        assert!(nats_client_config("", &cert.pem(), &key.serialize_pem()).is_ok());
    }
}
