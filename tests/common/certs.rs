//! A throw-away PKI for TLS tests: a CA, a NATS server certificate shaped like BOSH's
//! (`default.nats.bosh-internal` plus IP/DNS SANs), and client certificates on demand.
//!
//! Why generated per test: no key material is checked in, every run is independent, and a second
//! `TestPki` doubles as an "untrusted CA" for negative tests. Files are written into a temporary
//! directory because nats-server reads certificates from disk.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tempfile::TempDir;

/// The CommonName BOSH gives its NATS server certificate.
pub const SERVER_CN: &str = "default.nats.bosh-internal";
/// The address a VM under test reaches the host's servers at (qemu's user network forwards it to
/// 127.0.0.1), so server certificates name it too.
pub const GUEST_FORWARD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);

/// A CA with a server certificate, both as PEM strings and as files for nats-server.
pub struct TestPki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (what the agent gets as `mbus.cert.ca`).
    pub ca_pem: String,
    /// The CA certificate on disk (nats-server `ca_file`, verifies client certificates).
    pub ca_file: PathBuf,
    /// The server certificate on disk (`cert_file`), CN [`SERVER_CN`], SANs 127.0.0.1, [`GUEST_FORWARD_IP`] and localhost.
    pub server_cert_file: PathBuf,
    /// The server key on disk (`key_file`).
    pub server_key_file: PathBuf,
}

impl TestPki {
    /// Generates a fresh CA and server certificate.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("creating temporary directory for the PKI");
        let ca_key = KeyPair::generate().expect("generating CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("bosh test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = params.self_signed(&ca_key).expect("self-signing CA");
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(params, ca_key);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("writing CA file");
        let mut pki = TestPki {
            dir,
            issuer,
            ca_pem,
            ca_file,
            server_cert_file: PathBuf::new(),
            server_key_file: PathBuf::new(),
        };
        let (cert, key) = pki.server_files(SERVER_CN, "server");
        pki.server_cert_file = cert;
        pki.server_key_file = key;
        pki
    }

    /// Writes a server certificate with CommonName `cn` (SANs 127.0.0.1, [`GUEST_FORWARD_IP`] and localhost, so host name
    /// checks pass and only the CN rule can fail) as `<stem>.crt`/`<stem>.key`; returns their paths.
    pub fn server_files(&self, cn: &str, stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("generating server key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn);
        params.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(GUEST_FORWARD_IP)),
            SanType::DnsName("localhost".try_into().expect("DNS SAN")),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("signing server certificate");
        let cert_file = self.dir.path().join(format!("{stem}.crt"));
        let key_file = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("writing server certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing server key");
        (cert_file, key_file)
    }

    /// A client certificate for `cn` (ECDSA P-256, PKCS#8 key) signed by the CA: (cert PEM, key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().expect("generating client key");
        let cert = self.sign_client(cn, &key);
        (cert, key.serialize_pem())
    }

    /// A client certificate for `cn` with an RSA key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`), the
    /// form the director's Ruby code emits. rcgen with ring cannot generate RSA keys, so openssl
    /// makes the key; rcgen signs the certificate.
    pub fn client_rsa_pkcs1(&self, cn: &str) -> (String, String) {
        let work = tempfile::tempdir_in(self.dir.path()).expect("temporary directory");
        let pkcs1 = work.path().join("rsa.pem");
        let pkcs8 = work.path().join("rsa8.pem");
        run_openssl(&["genrsa", "-traditional", "-out", path_str(&pkcs1), "2048"]);
        run_openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", path_str(&pkcs1), "-out", path_str(&pkcs8)]);
        let key_pem = std::fs::read_to_string(&pkcs1).expect("reading RSA key");
        assert!(key_pem.contains("BEGIN RSA PRIVATE KEY"), "openssl did not write a PKCS#1 key");
        let pkcs8_pem = std::fs::read_to_string(&pkcs8).expect("reading PKCS#8 key");
        let key = KeyPair::from_pem(&pkcs8_pem).expect("loading RSA key into rcgen");
        (self.sign_client(cn, &key), key_pem)
    }

    /// A ready NATS client TLS config for a fresh client certificate with CommonName `cn`.
    pub fn nats_tls(&self, cn: &str) -> Arc<rustls::ClientConfig> {
        let (cert, key) = self.client(cn);
        bosh_agent::tls::client::nats_client_config(&self.ca_pem, &cert, &key)
            .expect("building NATS client TLS config")
    }

    fn sign_client(&self, cn: &str, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "USA");
        params.distinguished_name.push(DnType::OrganizationName, "Cloud Foundry");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(key, &self.issuer).expect("signing client certificate").pem()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Cloud Foundry");
    name.push(DnType::CommonName, cn);
    name
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn run_openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?} (is openssl installed?): {e}"));
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}
