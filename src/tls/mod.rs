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

/// The system roots as HTTP clients hold them: one store shared by every client alive, read again
/// once they are all gone. So an idle agent holds none (the bundle is ~150 certificates), and the
/// next action sees certificates `trusted_certs` added since.
fn shared_system_roots() -> Arc<rustls::RootCertStore> {
    static SHARED: Mutex<Weak<rustls::RootCertStore>> = Mutex::new(Weak::new());
    let mut held = crate::sync::lock(&SHARED);
    if let Some(roots) = held.upgrade() {
        return roots;
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(system_roots());
    if unusable > 0 {
        log::debug!("{unusable} system CA certificate(s) unusable as roots");
    }
    let roots = Arc::new(store);
    *held = Arc::downgrade(&roots);
    roots
}

/// Whom an HTTP client trusts: what [`http_client_config`] turns into a TLS configuration.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The system's roots (public blobstores, signed URLs, metadata services).
    System,
    /// Exactly these CAs (a blobstore's `tls.cert.ca`, `bosh-agent call --ca`).
    Roots(Arc<rustls::RootCertStore>),
    /// Nobody: a plain-HTTP peer on loopback (monit); were it to answer with TLS, verification fails.
    Nobody,
    /// Any certificate, as bosh-cli trusts an agent it has no CA for (`bosh-agent call` without
    /// `--ca`); the handshake's signatures are still checked.
    Anybody,
}

impl Trust {
    /// Exactly the CAs in `ca`; an error names a certificate that is not one.
    pub fn roots(ca: &[CertificateDer<'static>]) -> Result<Trust, String> {
        let mut store = rustls::RootCertStore::empty();
        for cert in ca {
            store.add(cert.clone()).context("adding CA certificate")?;
        }
        Ok(Trust::Roots(Arc::new(store)))
    }
}

/// The TLS configuration of an HTTP client (TLS 1.2 and 1.3, the binary's provider, no client
/// certificate). Built when a client first needs it, so a client that only speaks plain HTTP holds
/// no roots.
pub fn http_client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match trust {
        Trust::System => builder.with_root_certificates(shared_system_roots()),
        Trust::Roots(roots) => builder.with_root_certificates(Arc::clone(roots)),
        Trust::Nobody => builder.with_root_certificates(rustls::RootCertStore::empty()),
        Trust::Anybody => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
        }
    };
    Ok(Arc::new(config.with_no_client_auth()))
}

/// Accepts any server certificate; see [`Trust::Anybody`].
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
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

    /// Every kind of trust gives a configuration; CA material that is no certificate is refused.
    #[test]
    fn every_trust_builds_and_garbage_is_no_ca() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .and_then(|p| p.self_signed(&key))
            .expect("self-signed CA");
        let ca = parse_certs(&cert.pem()).expect("its PEM parses");
        let roots = Trust::roots(&ca).expect("a CA");
        for trust in [Trust::System, roots, Trust::Nobody, Trust::Anybody] {
            assert!(http_client_config(&trust).is_ok(), "{trust:?}");
        }
        assert!(Trust::roots(&[CertificateDer::from(vec![1, 2, 3])]).is_err(), "garbage is no CA");
    }

    /// Clients alive at once share one copy of the system roots. (That the copy goes with the last
    /// client is `Weak`'s promise; other tests' clients on parallel threads make it unobservable here.)
    #[test]
    fn clients_alive_at_once_share_one_copy_of_the_system_roots() {
        let (a, b) = (shared_system_roots(), shared_system_roots());
        assert!(Arc::ptr_eq(&a, &b), "one copy for both");
    }

    /// Only AES-GCM is offered, and TLS 1.2 stays (servers that speak nothing newer still exist).
    #[test]
    fn the_provider_offers_aes_gcm_over_tls_1_2_and_1_3() {
        let p = provider();
        assert!(p.cipher_suites.iter().all(|s| format!("{:?}", s.suite()).contains("GCM")));
        let versions: Vec<_> = p.cipher_suites.iter().map(|s| s.version().version).collect();
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_2));
        assert!(versions.contains(&rustls::ProtocolVersion::TLSv1_3));
    }
}
