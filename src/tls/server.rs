//! TLS server configuration for the HTTPS bus, and the self-signed certificate of the embedded default.
//!
//! bosh-cli speaks TLS 1.2 or 1.3 and offers ALPN `http/1.1` only (its `agentclient/http`), so the
//! server offers exactly that. Client certificates are never asked for: bosh-cli authenticates with Basic auth inside
//! the TLS channel. The self-signed path exists because the agent's embedded default mode must come up
//! with nothing configured; bosh-cli without `cert.ca` skips verification anyway.

use super::{parse_certs, parse_key, provider};
use crate::error::Context as _;
use std::sync::Arc;

/// Builds the HTTPS bus's server config from PEM strings (`env.bosh.mbus.cert.{certificate,private_key}`).
///
/// The certificate PEM may hold a chain (leaf first). Errors say which half was wrong so an operator can
/// tell a broken certificate from a broken key or a mismatched pair.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = parse_certs(cert_pem).context("HTTPS server certificate")?;
    let key = parse_key(key_pem).context("HTTPS server private key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("HTTPS server TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("HTTPS server certificate and private key are unusable together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Generates a self-signed certificate and key (PEM) for the given DNS names or IP addresses.
///
/// The key is ECDSA P-256 (ring cannot generate RSA keys); bosh-cli still connects because it offers
/// TLS 1.3. With no names given the certificate names `localhost`, so the result is always usable.
pub fn self_signed(names: &[String]) -> Result<(String, String), String> {
    let names = if names.is_empty() { vec!["localhost".to_string()] } else { names.to_vec() };
    let certified =
        rcgen::generate_simple_self_signed(names).context("generating self-signed certificate")?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_builds_a_server_config() {
        let (cert, key) = self_signed(&["127.0.0.1".into(), "localhost".into()]).unwrap();
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn empty_names_still_yield_a_certificate() {
        let (cert, key) = self_signed(&[]).unwrap();
        assert!(server_config(&cert, &key).is_ok());
    }

    #[test]
    fn errors_name_the_broken_half() {
        let (cert, key) = self_signed(&["a".into()]).unwrap();
        let err = server_config("junk", &key).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        let err = server_config(&cert, "junk").unwrap_err();
        assert!(err.contains("private key"), "{err}");
        let (_, other_key) = self_signed(&["b".into()]).unwrap();
        let err = server_config(&cert, &other_key).unwrap_err();
        assert!(err.contains("unusable together"), "{err}");
    }
}
