//! TLS client settings shared by every outgoing connection the gateway makes itself (IMAP
//! fetchers, webhooks): rustls with ring, the public web PKI roots, and optionally a private CA.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A client configuration trusting the public roots plus the PEM certificates in `ca_file`
/// (none when empty); the error names the file and the problem.
pub fn client_config(ca_file: &str) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {ca_file}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {ca_file}: {e}"))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
