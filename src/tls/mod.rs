//! TLS material for both buses: PEM parsing shared by the NATS client and the HTTPS server.
//!
//! Certificates and keys reach the agent as PEM strings inside settings (`env.bosh.mbus.cert`), never as
//! files, so everything here works on strings. One TLS stack (rustls with ring) serves the whole binary.

pub mod client;
pub mod server;

use crate::error::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, Mutex, Weak};

/// The one crypto provider of the binary; every config is built from it so no process-wide default
/// has to be installed. It is ring's, with AES-GCM as the only ciphers: every server an agent talks to
/// (nats-server, the director's nginx, S3 and its kin) offers AES-GCM, which TLS 1.3 makes mandatory
/// and x86_64 runs in hardware, so ChaCha20-Poly1305 would only add 55 kB of code to a binary with a
/// size budget. It is spelled out field by field because taking ring's default and replacing its
/// ciphers would still link the ones replaced. Certificates are verified with every algorithm ring
/// offers, as rustls' own ring provider does.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as suite, kx_group};
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &Ring,
        key_provider: &Ring,
    })
}

/// Randomness and private keys from ring, as rustls' ring provider takes them.
#[derive(Debug)]
struct Ring;

impl rustls::crypto::SecureRandom for Ring {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new().fill(buf).map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

impl rustls::crypto::KeyProvider for Ring {
    fn load_private_key(
        &self,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_supported_type(&key)
    }
}

/// The signature algorithms a peer's certificate chain and handshake may use: all that webpki
/// verifies with ring, each TLS signature scheme mapped to the certificate algorithms it may name
/// (for TLS 1.2 an ECDSA scheme does not fix the curve).
static SIGNATURES: rustls::crypto::WebPkiSupportedAlgorithms = {
    use rustls::SignatureScheme as S;
    use webpki::ring as alg;
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::ED25519,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (S::ECDSA_NISTP384_SHA384, &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384]),
            (S::ECDSA_NISTP256_SHA256, &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256]),
            (S::ED25519, &[alg::ED25519]),
            (S::RSA_PSS_SHA512, &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY]),
            (S::RSA_PSS_SHA384, &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY]),
            (S::RSA_PSS_SHA256, &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY]),
            (S::RSA_PKCS1_SHA512, &[alg::RSA_PKCS1_2048_8192_SHA512]),
            (S::RSA_PKCS1_SHA384, &[alg::RSA_PKCS1_2048_8192_SHA384]),
            (S::RSA_PKCS1_SHA256, &[alg::RSA_PKCS1_2048_8192_SHA256]),
        ],
    }
};

/// Where distributions keep the system's bundle of trusted CAs (Debian and Ubuntu first).
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The system's trusted CAs, read from the bundle now: what a server is checked against when
/// settings name no CA (a public blobstore, signed URLs, a NATS without `mbus.cert.ca`), as the Go
/// agent uses the system's roots. Read from the stemcell's `ca-certificates` bundle rather than
/// compiled in, because that bundle is where `env.bosh.trusted_certs` lands (`update-ca-certificates`):
/// a blobstore behind the director's own CA is trusted as soon as the settings say so. Empty (with a
/// warning) where there is no bundle.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
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
}

/// The system roots as HTTP clients hold them: one copy shared by every client alive, read again
/// once they are all gone. So an idle agent holds none (the bundle is ~150 certificates), and the
/// next action sees certificates `trusted_certs` added since.
fn shared_system_roots() -> Arc<Vec<ureq::tls::Certificate<'static>>> {
    static SHARED: Mutex<Weak<Vec<ureq::tls::Certificate<'static>>>> = Mutex::new(Weak::new());
    let mut held = crate::sync::lock(&SHARED);
    if let Some(roots) = held.upgrade() {
        return roots;
    }
    let roots = Arc::new(
        system_roots().iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect(),
    );
    *held = Arc::downgrade(&roots);
    roots
}

/// The TLS settings of an HTTP client that may reach any server: checked against `ca` when given,
/// else against the system's roots. ureq's own default (its compiled-in web roots) is not linked into
/// the binary, and ureq panics on a connection that would need it, so no client is built without
/// this or [`loopback_tls`].
pub fn http_tls(ca: Option<&[CertificateDer<'static>]>) -> ureq::tls::TlsConfig {
    let roots = match ca {
        Some(ca) => ureq::tls::RootCerts::new_with_certs(
            &ca.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect::<Vec<_>>(),
        ),
        None => ureq::tls::RootCerts::Specific(shared_system_roots()),
    };
    ureq::tls::TlsConfig::builder().root_certs(roots).unversioned_rustls_crypto_provider(provider()).build()
}

/// The TLS settings of a long-lived client of a plain-HTTP peer on loopback (monit): no roots, so it
/// holds none; were the peer to answer with TLS, verification fails with an error, never a panic.
pub fn loopback_tls() -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[]))
        .unversioned_rustls_crypto_provider(provider())
        .build()
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
        assert!(matches!(loopback_tls().root_certs(), ureq::tls::RootCerts::Specific(r) if r.is_empty()));
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

    /// Clients alive at once share one copy of the system roots. (That the copy goes with the last
    /// client is `Weak`'s promise; other tests' clients on parallel threads make it unobservable here.)
    #[test]
    fn clients_alive_at_once_share_one_copy_of_the_system_roots() {
        let root_set = |c: &ureq::tls::TlsConfig| match c.root_certs() {
            ureq::tls::RootCerts::Specific(r) => Arc::clone(r),
            other => panic!("{other:?}"),
        };
        let (a, b) = (http_tls(None), http_tls(None));
        assert!(Arc::ptr_eq(&root_set(&a), &root_set(&b)), "one copy for both");
    }
}
