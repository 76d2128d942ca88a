//! TLS trust: public roots, a private CA file, a pinned SHA-256 thumbprint, or (explicitly)
//! no verification at all.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// How the vCenter certificate is checked. Default: the system's trust store (the Mozilla root
/// set when the system has none).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's leaf certificate (hex, colons allowed). When set,
    /// only that exact certificate is accepted (no chain or host name check), which is what
    /// vCenter's self-signed certificates need.
    pub thumbprint: Option<String>,
    /// Accept any certificate. Off by default; logged as a warning on connect.
    pub insecure: bool,
}

/// Parse "AB:CD:..." or "abcd..." into the 32 bytes of a SHA-256 digest.
pub(crate) fn parse_thumbprint(s: &str) -> Result<[u8; 32], Error> {
    let hexs: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes =
        hex::decode(&hexs).map_err(|e| Error::Tls(format!("thumbprint '{s}' is not hex: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        Error::Tls(format!(
            "thumbprint '{s}' has {} bytes; a SHA-256 thumbprint has 32 (SHA-1 thumbprints are not accepted)",
            b.len()
        ))
    })
}

pub(crate) fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;

    let config = if opts.insecure {
        tracing::warn!(
            "TLS certificate verification is DISABLED for vCenter (tls.insecure = true)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: None,
                provider,
            }))
            .with_no_client_auth()
    } else if let Some(tp) = &opts.thumbprint {
        let pin = parse_thumbprint(tp)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: Some(pin),
                provider,
            }))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &opts.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::Tls(format!("cannot read CA file {}: {e}", path.display()))
                })?;
                let mut n = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| {
                        Error::Tls(format!("bad PEM in CA file {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(|e| {
                        Error::Tls(format!(
                            "bad certificate in CA file {}: {e}",
                            path.display()
                        ))
                    })?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::Tls(format!(
                        "CA file {} holds no PEM certificate",
                        path.display()
                    )));
                }
            }
            None => {
                // The system's trust store (where an admin adds an internal CA), falling back
                // to the Mozilla set when the system has none.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    tracing::debug!("no system CA certificates found; using the Mozilla root set");
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// Accepts exactly the certificate whose SHA-256 matches `pin`, or anything when `pin` is
/// None (insecure mode). Handshake signatures are still verified, so the peer must hold the
/// certificate's private key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
            if &got != pin {
                return Err(rustls::Error::General(format!(
                    "vCenter certificate thumbprint {} does not match the pinned one",
                    hex::encode(got)
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_formats() {
        let hexs = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_thumbprint(&hexs).unwrap(), [0xab; 32]);
        assert_eq!(parse_thumbprint(&colons).unwrap(), [0xab; 32]);
        assert!(parse_thumbprint(&"ab".repeat(20)).is_err()); // SHA-1
        assert!(parse_thumbprint("zz").is_err());
    }

    #[test]
    fn configs_build() {
        assert!(client_config(&TlsOptions::default()).is_ok());
        assert!(client_config(&TlsOptions {
            insecure: true,
            ..Default::default()
        })
        .is_ok());
        assert!(client_config(&TlsOptions {
            thumbprint: Some("ab".repeat(32)),
            ..Default::default()
        })
        .is_ok());
        let missing = client_config(&TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        });
        assert!(matches!(missing, Err(Error::Tls(_))));
        let dir = std::env::temp_dir().join(format!("deskpool-vsphere-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a pem").unwrap();
        let empty = client_config(&TlsOptions {
            ca_file: Some(dir.clone()),
            ..Default::default()
        });
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(empty, Err(Error::Tls(_))));
    }
}
