//! TLS material for both buses: PEM parsing shared by the NATS client and the HTTPS server.
//!
//! Certificates and keys reach the agent as PEM strings inside settings (`env.bosh.mbus.cert`), never as
//! files, so everything here works on strings. One TLS stack (rustls with ring) serves the whole binary.

pub mod client;
pub mod server;

use crate::error::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The one crypto provider of the binary; every config is built from it so no process-wide default
/// has to be installed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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
