//! How to reach one vCenter: endpoint, credentials, trust and timings.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::tls::TlsOptions;

/// Everything needed to connect to one vCenter.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// SDK endpoint, e.g. `https://vc.example.com/sdk` (plain `http` is allowed for simulators).
    pub url: Url,
    /// vCenter user.
    pub username: String,
    /// vCenter password (never logged; Debug prints it redacted).
    pub password: SecretString,
    /// Certificate trust.
    pub tls: TlsOptions,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one SOAP call (the watcher's long polls stay below it).
    pub call_timeout: Duration,
    /// Send `CurrentTime` when no call was made for this long, so the session does not expire.
    pub keepalive_interval: Duration,
    /// `maxObjects` per RetrievePropertiesEx page in [`Client::list_vms`].
    pub page_size: u32,
    /// A waited-for task the property collector says nothing about for this long is read
    /// directly, in case an update was missed (default 60 s).
    pub task_silence: Duration,
    /// Largest response body accepted, in bytes after gzip decoding (default 256 MiB); a
    /// larger one fails the call with [`crate::Error::ResponseTooLarge`].
    pub max_response_bytes: u64,
}

impl ClientOptions {
    /// Options with defaults: system-independent public roots, 10 s connect timeout,
    /// 60 s call timeout, keepalive every 5 minutes, 1000 objects per page, silent tasks read
    /// directly after 60 s, responses up to 256 MiB.
    pub fn new(url: Url, username: impl Into<String>, password: SecretString) -> Self {
        Self {
            url,
            username: username.into(),
            password,
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(300),
            task_silence: Duration::from_secs(60),
            page_size: 1000,
            max_response_bytes: 256 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted_in_debug_output() {
        let mut o = ClientOptions::new(
            "https://vc.example/sdk".parse().unwrap(),
            "user",
            SecretString::from("s3cr3t-Zq".to_string()),
        );
        o.tls.thumbprint = Some("ab".repeat(32));
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("s3cr3t-Zq"), "{dbg}");
        assert!(dbg.contains("REDACTED"), "{dbg}");
    }
}
