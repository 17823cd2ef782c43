//! TLS for OTLP endpoints: one rustls client configuration on the ring
//! provider, from the PEM files the `OTEL_EXPORTER_OTLP_*CERTIFICATE` /
//! `*CLIENT_KEY` variables name. The HTTP exporter uses it as is; the gRPC one
//! gives tonic the same PEM bytes. [`check`] runs at startup, so a bad file
//! stops the agent there, named by its variable.
use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};

use super::config::TlsFiles;

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TlsError {
    #[error("no PEM certificate in it")]
    NoCertificate,
    #[error("not a PEM certificate: {0}")]
    BadCertificate(String),
    #[error("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    BadKey(String),
    #[error("the client certificate and key do not go together: {0}")]
    Mismatch(String),
    #[error("no system root certificates found (install ca-certificates, or set OTEL_EXPORTER_OTLP_CERTIFICATE)")]
    NoRoots,
}

/// Every certificate of a PEM bundle.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The roots: the given CA bundle only, or the system's.
fn roots(files: &TlsFiles) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match &files.ca_pem {
        Some(pem) => {
            for cert in certificates(pem)? {
                roots.add(cert).map_err(|e| TlsError::BadCertificate(e.to_string()))?;
            }
        }
        None => {
            // Unreadable entries of the system store are skipped, as every client does.
            let (added, _ignored) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
        }
    }
    Ok(roots)
}

/// The client configuration for `files` (HTTP/1.1 by ALPN).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots(files)?);
    let mut config = match &files.client {
        Some(id) => {
            let chain = certificates(&id.cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem).map_err(|e| TlsError::BadKey(e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::Mismatch(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A plain-HTTP client configuration (no roots needed: it is never used for
/// a handshake, but reqwest without a default provider wants one).
pub fn plaintext_config() -> ClientConfig {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// Checks `files` the way [`client_config`] will use them.
pub fn check(files: &TlsFiles) -> Result<(), TlsError> {
    client_config(files).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_with_the_reason() {
        assert_eq!(certificates(b"hello"), Err(TlsError::NoCertificate));
        let files = TlsFiles {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec()),
            client: None,
        };
        assert!(matches!(check(&files), Err(TlsError::BadCertificate(_))), "{:?}", check(&files));
    }
}
