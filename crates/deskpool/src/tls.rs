//! HTTPS for the API: `http.tls_cert_file` + `http.tls_key_file` (PEM), served with rustls.
//!
//! [`TlsListener`] implements axum's `Listener`, so `axum::serve` (and its graceful shutdown)
//! serves TLS exactly as it serves plain TCP. Handshakes run in their own tasks, each with a
//! deadline, so a client that connects and says nothing cannot hold up the others.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, TimeZone, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and key as read from the configured files.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Reads the PEM files, naming the key to fix when one is unreadable or holds nothing usable.
pub fn read_identity(cert_file: &Path, key_file: &Path) -> anyhow::Result<Identity> {
    let pem = std::fs::read(cert_file)
        .with_context(|| format!("http.tls_cert_file: {}", cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "http.tls_cert_file: {}: not a PEM certificate: {e}",
                cert_file.display()
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "http.tls_cert_file: {}: no CERTIFICATE block in the file",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        anyhow::anyhow!(
            "http.tls_key_file: {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) readable: {e}",
            key_file.display()
        )
    })?;
    Ok(Identity { chain, key })
}

/// A rustls server configuration for the identity (HTTP/1.1, TLS 1.2 and 1.3).
pub fn server_config(identity: Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(identity.chain, identity.key)
    .context("http.tls_key_file: the key does not fit the certificate in http.tls_cert_file")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections and hands axum only those whose TLS handshake finished.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` (the accept loop runs until the listener is dropped).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return; // the listener was dropped: the server stopped
                }
                let acceptor = acceptor.clone();
                let handed = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends once this listener is gone; never reached while it lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The leaf certificate's validity period (notBefore, notAfter).
pub fn validity(cert: &CertificateDer<'_>) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    der::validity(cert.as_ref()).context("reading the certificate's validity")
}

/// Just enough DER to reach `tbsCertificate.validity` (RFC 5280 4.1), rather than a full X.509
/// parser as a dependency for two dates.
mod der {
    use super::*;

    fn read(buf: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
        let (&tag, rest) = buf.split_first().context("truncated DER")?;
        let (&first, mut rest) = rest.split_first().context("truncated DER")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            anyhow::ensure!((1..=4).contains(&n) && rest.len() >= n, "bad DER length");
            let len = rest[..n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        anyhow::ensure!(rest.len() >= len, "truncated DER");
        Ok((tag, &rest[..len], &rest[len..]))
    }

    fn time(tag: u8, v: &[u8]) -> anyhow::Result<DateTime<Utc>> {
        let s = std::str::from_utf8(v).context("time is not ASCII")?;
        let s = s.strip_suffix('Z').context("time is not in UTC")?;
        let full = match tag {
            // UTCTime YYMMDDHHMMSS: years 50-99 are 19xx (RFC 5280 4.1.2.5.1).
            0x17 => {
                anyhow::ensure!(s.len() == 12, "bad UTCTime '{s}'");
                let yy: u32 = s[..2].parse().context("bad UTCTime")?;
                format!("{}{s}", if yy >= 50 { "19" } else { "20" })
            }
            0x18 => s.to_owned(),
            other => anyhow::bail!("unexpected time tag {other:#x}"),
        };
        anyhow::ensure!(full.len() == 14, "bad time '{full}'");
        let n = |r: std::ops::Range<usize>| full[r].parse::<u32>().context("bad time digits");
        Utc.with_ymd_and_hms(
            n(0..4)? as i32,
            n(4..6)?,
            n(6..8)?,
            n(8..10)?,
            n(10..12)?,
            n(12..14)?,
        )
        .single()
        .with_context(|| format!("invalid date '{full}'"))
    }

    pub(super) fn validity(cert: &[u8]) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
        let (_, certificate, _) = read(cert)?;
        let (_, mut tbs, _) = read(certificate)?;
        // [0] version (optional), serialNumber, signature, issuer, then validity.
        let (tag, _, rest) = read(tbs)?;
        tbs = if tag == 0xa0 { read(rest)?.2 } else { rest };
        for _ in 0..2 {
            tbs = read(tbs)?.2;
        }
        let (tag, validity, _) = read(tbs)?;
        anyhow::ensure!(tag == 0x30, "validity is not a SEQUENCE");
        let (t1, not_before, rest) = read(validity)?;
        let (t2, not_after, _) = read(rest)?;
        Ok((time(t1, not_before)?, time(t2, not_after)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // Before 2050 certificates carry UTCTime, from 2050 GeneralizedTime.
        let (from, to) = validity(&cert_valid((2026, 1, 2), (2027, 3, 4))).unwrap();
        assert_eq!(from, Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap());
        assert_eq!(to, Utc.with_ymd_and_hms(2027, 3, 4, 0, 0, 0).unwrap());
        let (from, to) = validity(&cert_valid((1999, 12, 31), (2051, 6, 7))).unwrap();
        assert_eq!(from, Utc.with_ymd_and_hms(1999, 12, 31, 0, 0, 0).unwrap());
        assert_eq!(to, Utc.with_ymd_and_hms(2051, 6, 7, 0, 0, 0).unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &[0x30, 0x82, 0xff],
            &[0x30, 0x03, 0x02, 0x01, 0x00],
        ] {
            assert!(validity(&CertificateDer::from(bytes.to_vec())).is_err());
        }
    }

    #[test]
    fn unreadable_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        let e = read_identity(&cert, &key).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("http.tls_cert_file: "),
            "{e:#}"
        );
        std::fs::write(&cert, "not pem").unwrap();
        let e = read_identity(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").contains("no CERTIFICATE"), "{e:#}");
        let rc = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, rc.cert.pem()).unwrap();
        let e = read_identity(&cert, &key).unwrap_err();
        assert!(format!("{e:#}").starts_with("http.tls_key_file: "), "{e:#}");
        // A key of another certificate.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let e = server_config(read_identity(&cert, &key).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
        std::fs::write(&key, rc.key_pair.serialize_pem()).unwrap();
        server_config(read_identity(&cert, &key).unwrap()).unwrap();
    }
}
