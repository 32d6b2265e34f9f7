//! TLS material for both buses: PEM parsing shared by the NATS client and the HTTPS server.
//!
//! Certificates and keys reach the agent as PEM strings inside settings (`env.bosh.mbus.cert`), never as
//! files, so everything here works on strings. One TLS stack (rustls with ring) serves the whole binary.

pub mod client;
pub mod server;

use crate::error::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, OnceLock};

/// The one crypto provider of the binary; every config is built from it so no process-wide default
/// has to be installed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where distributions keep the system's bundle of trusted CAs (Debian and Ubuntu first).
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The system's trusted CAs, read once: what a server is checked against when settings name no CA
/// (a public blobstore, signed URLs, a NATS without `mbus.cert.ca`), as the Go agent uses the
/// system's roots. Read from the stemcell's `ca-certificates` bundle rather than compiled in, so they
/// follow the OS's updates and cost the binary nothing; empty (with a warning) where there is none.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        for path in SYSTEM_BUNDLES {
            if let Ok(pem) = std::fs::read_to_string(path) {
                match parse_certs(&pem) {
                    Ok(certs) => return certs,
                    Err(e) => log::warn!("system CA bundle {path}: {e}"),
                }
            }
        }
        log::warn!(
            "no system CA bundle ({}): servers without a configured CA are not trusted",
            SYSTEM_BUNDLES.join(", ")
        );
        Vec::new()
    })
}

/// The TLS settings of every HTTP client the agent builds: servers checked against `ca` when given,
/// else against [`system_roots`]. ureq's own default (its compiled-in web roots) is not linked into
/// the binary, and ureq panics on a connection that would need it, so no client is built without this.
pub fn http_tls(ca: Option<&[CertificateDer<'static>]>) -> ureq::tls::TlsConfig {
    let certs: Vec<ureq::tls::Certificate<'static>> = ca
        .unwrap_or_else(|| system_roots())
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build()
}

/// Parses every certificate in a PEM bundle; an empty bundle is an error because a caller that asks
/// for certificates always needs at least one.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.context("parsing PEM certificates")?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Parses a private key in PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#8 form, which
/// covers what the director (Ruby OpenSSL emits PKCS#1) and operators hand us.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("parsing PEM private key")
}

/// Builds a root store from a PEM bundle of CA certificates.
pub fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert).context("adding CA certificate")?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ureq's compiled-in roots are not linked: a config that fell back to them would panic on the
    /// first HTTPS connection, so every config names its roots.
    #[test]
    fn http_clients_never_fall_back_to_ureqs_own_roots() {
        assert!(matches!(http_tls(None).root_certs(), ureq::tls::RootCerts::Specific(_)));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .and_then(|p| p.self_signed(&key))
            .expect("self-signed CA");
        let ca = parse_certs(&cert.pem()).expect("its PEM parses");
        match http_tls(Some(&ca)).root_certs() {
            ureq::tls::RootCerts::Specific(certs) => assert_eq!(certs.len(), ca.len()),
            other => panic!("{other:?}"),
        }
    }
}
