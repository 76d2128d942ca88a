//! deskpool's configuration: built-in defaults, then a TOML file, then `DESKPOOL__SECTION__KEY`
//! environment variables, then secrets read from files.
//!
//! Every key is documented with its default in `config/deskpool.toml`. Errors name the key the
//! user must fix and fit on one line, because they are printed before logging is set up.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The file loaded when `--config` is not given, if it exists (relative to the working directory).
pub const DEFAULT_CONFIG_FILE: &str = "config/deskpool.toml";
/// Prefix of environment overrides: `DESKPOOL__DATABASE__URL` sets `database.url`.
pub const ENV_PREFIX: &str = "DESKPOOL";

/// A configuration problem, naming the key (or file) to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("{path}: no such file (given with --config)")]
    MissingFile {
        /// The path as given.
        path: PathBuf,
    },
    /// The file is not valid TOML, or a value has the wrong type or an unknown key.
    #[error("{0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, e.g. `vcenters[0].password_file`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration, validated, with secrets loaded.
#[derive(Debug)]
pub struct Config {
    /// `[http]`: the API listener.
    pub http: HttpConfig,
    /// `[database]`: PostgreSQL.
    pub database: DatabaseConfig,
    /// `[log]`: log format and level.
    pub log: LogConfig,
    /// `[reconciler]`: timing and concurrency of the reconcile loop.
    pub reconciler: ReconcilerSection,
    /// `[[vcenters]]`: the vCenter connections pools may name.
    pub vcenters: Vec<VcenterConfig>,
    /// The file the configuration was read from, if any.
    pub source: Option<PathBuf>,
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait for a turn (within the request timeout).
    pub max_concurrent_requests: usize,
    /// A request not answered within this many seconds (waiting included) gets 503.
    pub request_timeout_secs: u64,
    /// PEM certificate chain (leaf first) to serve HTTPS with; with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_concurrent_requests: 256,
            request_timeout_secs: 30,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl HttpConfig {
    /// The certificate and key files when TLS is configured (validation ensures both or none).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((
            self.tls_cert_file.as_deref()?,
            self.tls_key_file.as_deref()?,
        ))
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; may hold a password, so it is a secret and only shown redacted.
    pub url: SecretString,
    /// Connections for HTTP API requests (`/readyz` and `/metrics` included).
    pub max_connections: u32,
    /// Connections reserved for the reconciler (its passes, workers, leader lease and
    /// `LISTEN`), in addition to `max_connections`: API traffic can never take them.
    pub reconciler_connections: u32,
    /// How long to wait for the database when connecting, in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/deskpool"),
            max_connections: 10,
            reconciler_connections: 4,
            connect_timeout_secs: 5,
        }
    }
}

impl DatabaseConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

/// Replaces the password in a URL with `***`; a URL that does not parse is hidden entirely.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                // set_password fails only for URLs that cannot hold one, and this one did.
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable database URL>".to_owned(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`; `--log-format` wins.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,deskpool_vsphere=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// The `[reconciler]` section of the config file, as written (see `tunables()`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerSection {
    /// Full comparison of the database with each vCenter's inventory this often.
    pub resync_interval_secs: u64,
    /// How long the leader lease lasts without renewal (renewed every third of it).
    pub lease_ttl_secs: u64,
    /// Bound on provisioning operations in flight per vCenter, over all pools.
    pub max_concurrent_per_vcenter: u32,
    /// Provisioning of a pool stops after this many clone failures in a row, until an admin
    /// resumes it (0: never stop).
    pub stop_after_failures: u32,
    /// First retry delay after a transient failure; doubles per failure, with jitter.
    pub backoff_base_ms: u64,
    /// Upper bound of the retry delay.
    pub backoff_max_secs: u64,
    /// Failed tries to destroy one desktop's VM (vCenter refusing, e.g. `NoPermission`) before
    /// the desktop is marked failed and left alone until an admin deletes it again (0: never).
    pub destroy_tries: u32,
}

impl Default for ReconcilerSection {
    fn default() -> Self {
        Self {
            resync_interval_secs: 300,
            lease_ttl_secs: 15,
            max_concurrent_per_vcenter: 20,
            stop_after_failures: 3,
            backoff_base_ms: 1000,
            backoff_max_secs: 300,
            destroy_tries: 5,
        }
    }
}

/// One `[[vcenters]]` entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VcenterFile {
    name: String,
    url: String,
    username: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    thumbprint: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_secs: u64,
    #[serde(default = "default_call_timeout")]
    call_timeout_secs: u64,
    #[serde(default = "default_max_response_mib")]
    max_response_mib: u64,
}

fn default_connect_timeout() -> u64 {
    10
}
fn default_call_timeout() -> u64 {
    60
}
fn default_max_response_mib() -> u64 {
    256
}

/// A vCenter connection, with its password loaded.
#[derive(Clone)]
pub struct VcenterConfig {
    /// Name pools refer to (`PoolSpec::vcenter`), and the systemd credential name.
    pub name: String,
    /// SDK URL, e.g. `https://vc1.example.com/sdk`.
    pub url: url::Url,
    /// Login user.
    pub username: String,
    /// Login password (from `password`, `password_file` or the systemd credential).
    pub password: SecretString,
    /// Where the password came from, for `check` output.
    pub password_source: PasswordSource,
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Pinned SHA-256 certificate fingerprint (hex, `:`-separated).
    pub thumbprint: Option<String>,
    /// Skip TLS verification (lab use only).
    pub insecure: bool,
    /// TCP+TLS connect timeout, seconds.
    pub connect_timeout_secs: u64,
    /// Timeout of one SOAP call, seconds.
    pub call_timeout_secs: u64,
    /// Largest vCenter response accepted (after gzip decoding), MiB.
    pub max_response_mib: u64,
}

impl VcenterConfig {
    /// How the vSphere client connects to this vCenter.
    pub fn client_options(&self) -> deskpool_vsphere::ClientOptions {
        let mut o = deskpool_vsphere::ClientOptions::new(
            self.url.clone(),
            self.username.clone(),
            self.password.clone(),
        );
        o.tls = deskpool_vsphere::TlsOptions {
            ca_file: self.ca_file.clone(),
            thumbprint: self.thumbprint.clone(),
            insecure: self.insecure,
        };
        o.connect_timeout = std::time::Duration::from_secs(self.connect_timeout_secs);
        o.call_timeout = std::time::Duration::from_secs(self.call_timeout_secs);
        o.max_response_bytes = self.max_response_mib.saturating_mul(1024 * 1024);
        o
    }
}

impl ReconcilerSection {
    /// The reconciler's tunables.
    pub fn tunables(&self) -> deskpool_reconciler::ReconcilerConfig {
        use std::time::Duration;
        deskpool_reconciler::ReconcilerConfig {
            resync_interval: Duration::from_secs(self.resync_interval_secs),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs),
            max_concurrent_per_vcenter: self.max_concurrent_per_vcenter,
            stop_after_failures: self.stop_after_failures,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_secs(self.backoff_max_secs),
            destroy_tries: self.destroy_tries,
            replica_id: deskpool_reconciler::default_replica_id(),
        }
    }
}

impl fmt::Debug for VcenterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VcenterConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .field("password", &"[REDACTED]")
            .field("password_source", &self.password_source)
            .field("ca_file", &self.ca_file)
            .field("thumbprint", &self.thumbprint)
            .field("insecure", &self.insecure)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("call_timeout_secs", &self.call_timeout_secs)
            .field("max_response_mib", &self.max_response_mib)
            .finish()
    }
}

/// Where a vCenter password was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// Inline `password` key (or its environment override).
    Inline,
    /// `password_file`.
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/<name>` (systemd `LoadCredential=`).
    SystemdCredential(PathBuf),
    /// Not read: the command does not connect to vCenter (see [`Secrets::Skip`]).
    NotLoaded,
}

/// Whether [`load_with`] reads the vCenter passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read every vCenter password; a missing one is a config error (`serve`, `check`).
    Load,
    /// Leave them unread, for commands that only use the database (`migrate`, `token`): run as
    /// the service user, they cannot read a root-only password file or a systemd credential
    /// that only the service is given.
    Skip,
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline => f.write_str("inline password"),
            Self::File(p) => write!(f, "password_file {}", p.display()),
            Self::SystemdCredential(p) => write!(f, "systemd credential {}", p.display()),
            Self::NotLoaded => f.write_str("not loaded (this command does not use vCenter)"),
        }
    }
}

/// The file as deserialized, before secrets are loaded and values checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    database: DatabaseConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    reconciler: ReconcilerSection,
    #[serde(default)]
    vcenters: Vec<VcenterFile>,
}

/// What the loader reads from the process environment; injectable for tests.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// Variables, of which only `DESKPOOL__*` are used for overrides.
    pub vars: HashMap<String, String>,
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for `LoadCredential=`.
    pub credentials_directory: Option<PathBuf>,
}

impl Environment {
    /// The real process environment.
    pub fn from_process() -> Self {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let credentials_directory = vars
            .get("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Self {
            vars,
            credentials_directory,
        }
    }
}

/// Loads the configuration: `file` if given (it must exist), else [`DEFAULT_CONFIG_FILE`] if it
/// exists, else built-in defaults; then environment overrides; then secrets.
pub fn load(file: Option<&Path>, env: &Environment) -> Result<Config, ConfigError> {
    load_with(file, env, Secrets::Load)
}

/// [`load`], reading the vCenter passwords or not (`secrets`); every other rule still applies.
pub fn load_with(
    file: Option<&Path>,
    env: &Environment,
    secrets: Secrets,
) -> Result<Config, ConfigError> {
    let source = match file {
        Some(p) if !p.exists() => {
            return Err(ConfigError::MissingFile {
                path: p.to_path_buf(),
            })
        }
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
    };

    let mut builder = config::Config::builder();
    if let Some(path) = &source {
        builder = builder.add_source(
            config::File::from(path.as_path())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    let env_vars: config::Map<String, String> = env
        .vars
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(env_vars)),
    );
    let raw: FileConfig = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Parse(one_line(&e)))?;

    let vcenters = resolve_vcenters(raw.vcenters, env, secrets)?;
    let cfg = Config {
        http: raw.http,
        database: raw.database,
        log: raw.log,
        reconciler: raw.reconciler,
        vcenters,
        source,
    };
    validate(&cfg)?;
    Ok(cfg)
}

/// Flattens a config-crate error (TOML errors come with a multi-line source snippet) into one line.
fn one_line(e: &config::ConfigError) -> String {
    match e {
        config::ConfigError::FileParse { uri, cause } => {
            let text = cause.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            // toml's layout: "TOML parse error at line L, column C", a snippet, then the message.
            let msg = match (lines.first(), lines.last()) {
                (Some(first), Some(last)) if first != last => format!("{first}: {last}"),
                (Some(first), _) => (*first).to_owned(),
                _ => "parse error".to_owned(),
            };
            match uri {
                Some(uri) => format!("{uri}: {msg}"),
                None => msg,
            }
        }
        other => reword(&other.to_string().replace('\n', " ")),
    }
}

/// Rewrites the config crate's "<problem> for key `k` in <origin>" so the key comes first, as
/// in every other config error.
fn reword(msg: &str) -> String {
    fn unknown(prefix: &str, rest: &str, tail: &str) -> Option<String> {
        let (field, expected) = rest.strip_prefix("unknown field `")?.split_once("`, ")?;
        Some(format!("{prefix}{field}: unknown key ({expected}){tail}"))
    }
    if let Some((problem, rest)) = msg.split_once(" for key `") {
        if let Some((key, tail)) = rest.split_once('`') {
            return unknown(&format!("{key}."), problem, tail)
                .unwrap_or_else(|| format!("{key}: {problem}{tail}"));
        }
    }
    if let Some(text) = unknown("", msg, "") {
        return text;
    }
    if let Some(path) = msg
        .strip_prefix("missing configuration field \"")
        .and_then(|p| p.strip_suffix('"'))
    {
        // The crate drops the '.' after an index: "vcenters[0]username".
        let mut key = String::new();
        let mut after_index = false;
        for c in path.chars() {
            if after_index && c != '.' && c != '[' {
                key.push('.');
            }
            after_index = c == ']';
            key.push(c);
        }
        return format!("{key}: required key is missing");
    }
    msg.to_owned()
}

/// `io::Error`'s message without the trailing ` (os error N)`.
fn io_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
    }
}

/// Reads a secret file, dropping the trailing newline editors and `echo` add.
fn read_secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("{}: {}", path.display(), io_message(&e))))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(invalid(key, format!("{}: file is empty", path.display())));
    }
    Ok(SecretString::from(trimmed))
}

fn resolve_vcenters(
    files: Vec<VcenterFile>,
    env: &Environment,
    secrets: Secrets,
) -> Result<Vec<VcenterConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, v) in files.into_iter().enumerate() {
        let key = |field: &str| format!("vcenters[{i}].{field}");
        if !is_name(&v.name) {
            return Err(invalid(
                key("name"),
                format!(
                    "'{}' is not a valid name: use 1-63 lowercase letters, digits and '-', starting with a letter",
                    v.name
                ),
            ));
        }
        if !seen.insert(v.name.clone()) {
            return Err(invalid(
                key("name"),
                format!("duplicate vCenter name '{}'", v.name),
            ));
        }
        let url = url::Url::parse(&v.url)
            .map_err(|e| invalid(key("url"), format!("'{}' is not a URL: {e}", v.url)))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(invalid(
                key("url"),
                format!(
                    "'{}' must be an http(s) URL with a host, like https://vc1.example.com/sdk",
                    v.url
                ),
            ));
        }
        if url.password().is_some() || !url.username().is_empty() {
            return Err(invalid(
                key("url"),
                "must not contain credentials: use username and password_file",
            ));
        }
        if v.username.trim().is_empty() {
            return Err(invalid(key("username"), "must not be empty"));
        }
        let (password, password_source) = match (v.password, &v.password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("password"),
                    "set either password or password_file, not both",
                ))
            }
            (None, _) if secrets == Secrets::Skip => {
                (SecretString::from(""), PasswordSource::NotLoaded)
            }
            (Some(p), None) => {
                if p.expose_secret().is_empty() {
                    return Err(invalid(key("password"), "must not be empty"));
                }
                (p, PasswordSource::Inline)
            }
            (None, Some(path)) => (
                read_secret_file(&key("password_file"), path)?,
                PasswordSource::File(path.clone()),
            ),
            (None, None) => {
                let cred = env
                    .credentials_directory
                    .as_ref()
                    .map(|d| d.join(&v.name))
                    .filter(|p| p.exists());
                match cred {
                    Some(path) => (
                        read_secret_file(&key("password"), &path)?,
                        PasswordSource::SystemdCredential(path),
                    ),
                    None => {
                        return Err(invalid(
                            key("password_file"),
                            format!(
                                "no password for vCenter '{}': set password_file, or pass the systemd credential '{}' (LoadCredential={}:...)",
                                v.name, v.name, v.name
                            ),
                        ))
                    }
                }
            }
        };
        if let Some(ca) = &v.ca_file {
            std::fs::File::open(ca).map_err(|e| {
                invalid(
                    key("ca_file"),
                    format!("{}: {}", ca.display(), io_message(&e)),
                )
            })?;
        }
        if let Some(tp) = &v.thumbprint {
            if !is_thumbprint(tp) {
                return Err(invalid(
                    key("thumbprint"),
                    format!(
                        "'{tp}' is not a SHA-256 fingerprint (32 hex bytes separated by ':', as `openssl x509 -fingerprint -sha256` prints)"
                    ),
                ));
            }
        }
        if v.insecure && (v.ca_file.is_some() || v.thumbprint.is_some()) {
            return Err(invalid(
                key("insecure"),
                "insecure = true disables the ca_file/thumbprint check it is set with: remove one",
            ));
        }
        if v.connect_timeout_secs == 0 {
            return Err(invalid(key("connect_timeout_secs"), "must be at least 1"));
        }
        if v.call_timeout_secs == 0 {
            return Err(invalid(key("call_timeout_secs"), "must be at least 1"));
        }
        if v.max_response_mib == 0 {
            return Err(invalid(key("max_response_mib"), "must be at least 1"));
        }
        out.push(VcenterConfig {
            name: v.name,
            url,
            username: v.username,
            password,
            password_source,
            ca_file: v.ca_file,
            thumbprint: v.thumbprint,
            insecure: v.insecure,
            connect_timeout_secs: v.connect_timeout_secs,
            call_timeout_secs: v.call_timeout_secs,
            max_response_mib: v.max_response_mib,
        });
    }
    Ok(out)
}

/// A vCenter name: it doubles as a file name (systemd credential) and a pool's reference.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// SHA-256 (32 bytes) as `AA:BB:...` (case-insensitive).
fn is_thumbprint(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 32
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.http.max_body_bytes == 0 {
        return Err(invalid("http.max_body_bytes", "must be at least 1"));
    }
    match (&cfg.http.tls_cert_file, &cfg.http.tls_key_file) {
        (Some(_), None) => {
            return Err(invalid(
                "http.tls_key_file",
                "missing: tls_cert_file is set, so set tls_key_file to its private key (PEM)",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "http.tls_cert_file",
                "missing: tls_key_file is set, so set tls_cert_file to its certificate (PEM)",
            ))
        }
        _ => {}
    }
    let db_url = cfg.database.url.expose_secret();
    match url::Url::parse(db_url) {
        // The URL is not echoed: it may hold a password.
        Err(e) => return Err(invalid("database.url", format!("not a URL: {e}"))),
        Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql") => {
            return Err(invalid(
                "database.url",
                format!(
                    "scheme '{}' is not supported: use postgres://user@host:port/dbname",
                    u.scheme()
                ),
            ))
        }
        Ok(_) => {}
    }
    if cfg.database.max_connections == 0 {
        return Err(invalid("database.max_connections", "must be at least 1"));
    }
    if cfg.database.reconciler_connections < 2 {
        return Err(invalid(
            "database.reconciler_connections",
            "must be at least 2 (one is held by LISTEN for pool changes)",
        ));
    }
    if cfg.http.max_concurrent_requests == 0 {
        return Err(invalid(
            "http.max_concurrent_requests",
            "must be at least 1",
        ));
    }
    if cfg.http.request_timeout_secs == 0 {
        return Err(invalid("http.request_timeout_secs", "must be at least 1"));
    }
    if cfg.database.connect_timeout_secs == 0 {
        return Err(invalid(
            "database.connect_timeout_secs",
            "must be at least 1",
        ));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&cfg.log.level) {
        return Err(invalid(
            "log.level",
            format!(
                "'{}' is not a log filter ({e}): use e.g. info or info,deskpool_vsphere=debug",
                cfg.log.level
            ),
        ));
    }
    let r = &cfg.reconciler;
    for (key, value) in [
        ("reconciler.resync_interval_secs", r.resync_interval_secs),
        ("reconciler.lease_ttl_secs", r.lease_ttl_secs),
        (
            "reconciler.max_concurrent_per_vcenter",
            u64::from(r.max_concurrent_per_vcenter),
        ),
        ("reconciler.backoff_base_ms", r.backoff_base_ms),
        ("reconciler.backoff_max_secs", r.backoff_max_secs),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    if r.backoff_base_ms > r.backoff_max_secs.saturating_mul(1000) {
        return Err(invalid(
            "reconciler.backoff_base_ms",
            format!(
                "{} ms exceeds reconciler.backoff_max_secs ({} s)",
                r.backoff_base_ms, r.backoff_max_secs
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            credentials_directory: None,
        }
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_text(text: &str, e: &Environment) -> Result<Config, ConfigError> {
        let f = file(text);
        load(Some(f.path()), e)
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = load_text("", &env(&[])).unwrap();
        assert_eq!(cfg.http, HttpConfig::default());
        assert_eq!(cfg.reconciler, ReconcilerSection::default());
        assert_eq!(cfg.log, LogConfig::default());
        assert_eq!(
            cfg.database.redacted_url(),
            "postgres://postgres@127.0.0.1:5432/deskpool"
        );
        assert!(cfg.vcenters.is_empty());
    }

    /// The documented default file, with every commented-out `key = value` line enabled, must
    /// parse and must state exactly the built-in defaults.
    #[test]
    fn documented_defaults_match_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/deskpool.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut enabled = String::new();
        let mut keys = HashSet::new();
        for line in text.lines() {
            let t = line.trim_start();
            let uncommented = t.strip_prefix("# ").unwrap_or(t);
            let is_setting = uncommented
                .split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            let is_header = uncommented.starts_with('[') && !uncommented.starts_with("[[vcenters");
            if (t.starts_with("# ") && (is_setting || is_header)) || !t.starts_with('#') {
                if let Some((k, _)) = uncommented.split_once(" = ") {
                    keys.insert(k.to_owned());
                }
                enabled.push_str(uncommented);
                enabled.push('\n');
            }
        }
        let cfg = load_text(&enabled, &env(&[])).unwrap();
        assert_eq!(cfg.http, HttpConfig::default());
        assert_eq!(cfg.reconciler, ReconcilerSection::default());
        assert_eq!(cfg.log, LogConfig::default());
        assert_eq!(
            cfg.database.url.expose_secret(),
            DatabaseConfig::default().url.expose_secret()
        );
        assert_eq!(cfg.database.max_connections, 10);
        assert_eq!(cfg.database.reconciler_connections, 4);
        for key in [
            "listen",
            "max_body_bytes",
            "max_concurrent_requests",
            "request_timeout_secs",
            "url",
            "max_connections",
            "reconciler_connections",
            "connect_timeout_secs",
            "format",
            "level",
            "resync_interval_secs",
            "lease_ttl_secs",
            "max_concurrent_per_vcenter",
            "stop_after_failures",
            "backoff_base_ms",
            "backoff_max_secs",
            "destroy_tries",
        ] {
            assert!(keys.contains(key), "{key} is not documented");
        }
        for key in [
            "name",
            "url",
            "username",
            "password",
            "password_file",
            "ca_file",
            "thumbprint",
            "insecure",
            "connect_timeout_secs",
            "call_timeout_secs",
            "max_response_mib",
        ] {
            assert!(
                text.contains(&format!("#   {key} = "))
                    || text.contains(&format!("#   #   {key} ")),
                "vcenters.{key} is not documented"
            );
        }
        // Keys without a default are shown as an indented example.
        for key in ["tls_cert_file", "tls_key_file"] {
            assert!(
                text.contains(&format!("#   {key} = ")),
                "http.{key} is not documented"
            );
        }
    }

    #[test]
    fn env_overrides_file() {
        let e = env(&[
            ("DESKPOOL__DATABASE__URL", "postgres://u:hunter2@db:5432/x"),
            ("DESKPOOL__RECONCILER__LEASE_TTL_SECS", "30"),
            ("DESKPOOL_UNRELATED", "1"),
        ]);
        let cfg = load_text("[reconciler]\nlease_ttl_secs = 20\n", &e).unwrap();
        assert_eq!(cfg.reconciler.lease_ttl_secs, 30);
        assert_eq!(cfg.database.redacted_url(), "postgres://u:***@db:5432/x");
    }

    #[test]
    fn bad_env_type_names_key() {
        let e = env(&[("DESKPOOL__DATABASE__MAX_CONNECTIONS", "many")]);
        let msg = load_text("", &e).unwrap_err().to_string();
        assert!(
            msg.starts_with("database.max_connections: invalid type"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn unknown_key_rejected() {
        let msg = load_text("[http]\nlisten_addr = \"x\"\n", &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "http.listen_addr: unknown key (expected one of `listen`, `max_body_bytes`, `max_concurrent_requests`, `request_timeout_secs`, `tls_cert_file`, `tls_key_file`)"
        );
        let msg = load_text("[htp]\n", &env(&[])).unwrap_err().to_string();
        assert!(msg.starts_with("htp: unknown key"), "{msg}");
        let vc = "[[vcenters]]\nname = \"a\"\nurl = \"https://a/sdk\"\nusername = \"u\"\npassword = \"p\"\ncolor = 1\n";
        let msg = load_text(vc, &env(&[])).unwrap_err().to_string();
        assert!(msg.starts_with("vcenters[0].color: unknown key"), "{msg}");
    }

    #[test]
    fn missing_required_key_named() {
        let vc = "[[vcenters]]\nname = \"a\"\nurl = \"https://a/sdk\"\npassword = \"p\"\n";
        let msg = load_text(vc, &env(&[])).unwrap_err().to_string();
        assert_eq!(msg, "vcenters[0].username: required key is missing");
    }

    #[test]
    fn malformed_toml_is_one_line() {
        let msg = load_text("[http\nlisten = 1\n", &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("vc1.pass");
        std::fs::write(&pw, "s3cret pass\n").unwrap();
        let text = format!(
            "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1/sdk\"\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        );
        let cfg = load_text(&text, &env(&[])).unwrap();
        assert_eq!(cfg.vcenters[0].password.expose_secret(), "s3cret pass");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    #[test]
    fn missing_password_file_names_key_and_path() {
        let text = "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1/sdk\"\nusername = \"u\"\npassword_file = \"/nonexistent/vc1.pass\"\n";
        let msg = load_text(text, &env(&[])).unwrap_err().to_string();
        assert_eq!(
            msg,
            "vcenters[0].password_file: /nonexistent/vc1.pass: No such file or directory"
        );
    }

    #[test]
    fn systemd_credential_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vc1"), "fromcred").unwrap();
        let mut e = env(&[]);
        e.credentials_directory = Some(dir.path().to_path_buf());
        let text = "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1/sdk\"\nusername = \"u\"\n";
        let cfg = load_text(text, &e).unwrap();
        assert_eq!(cfg.vcenters[0].password.expose_secret(), "fromcred");
        assert!(matches!(
            cfg.vcenters[0].password_source,
            PasswordSource::SystemdCredential(_)
        ));
        // Without the credential there is no password at all.
        let msg = load_text(text, &env(&[])).unwrap_err().to_string();
        assert!(
            msg.starts_with("vcenters[0].password_file: no password"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_vcenter_names_rejected() {
        let one = "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1/sdk\"\nusername = \"u\"\npassword = \"p\"\n";
        let msg = load_text(&format!("{one}{one}"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "vcenters[1].name: duplicate vCenter name 'vc1'");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[database]\nurl = \"mysql://x/y\"\n", "database.url"),
            ("[database]\nmax_connections = 0\n", "database.max_connections"),
            ("[log]\nformat = \"xml\"\n", "format"),
            ("[log]\nlevel = \"info,[[\"\n", "log.level"),
            ("[reconciler]\nlease_ttl_secs = 0\n", "reconciler.lease_ttl_secs"),
            ("[http]\nlisten = \"nope\"\n", "http.listen"),
            ("[http]\ntls_cert_file = \"/c.pem\"\n", "http.tls_key_file"),
            ("[http]\ntls_key_file = \"/k.pem\"\n", "http.tls_cert_file"),
            (
                "[[vcenters]]\nname = \"vc1\"\nurl = \"https://vc1/sdk\"\nusername = \"u\"\npassword = \"p\"\nthumbprint = \"zz\"\n",
                "vcenters[0].thumbprint",
            ),
            (
                "[[vcenters]]\nname = \"vc1\"\nurl = \"ftp://vc1/sdk\"\nusername = \"u\"\npassword = \"p\"\n",
                "vcenters[0].url",
            ),
        ];
        for (text, key) in cases {
            let msg = load_text(text, &env(&[])).unwrap_err().to_string();
            assert!(msg.contains(key), "{text:?}: {msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn redaction_hides_password() {
        assert_eq!(redact_url("postgres://a:b@h/d"), "postgres://a:***@h/d");
        assert_eq!(redact_url("postgres://a@h/d"), "postgres://a@h/d");
        assert_eq!(redact_url("::"), "<unparseable database URL>");
    }

    #[test]
    fn thumbprints() {
        let sha1 = vec!["AB"; 20].join(":");
        let sha256 = vec!["0f"; 32].join(":");
        assert!(
            !is_thumbprint(&sha1),
            "SHA-1 pins are refused: the client verifies SHA-256"
        );
        assert!(is_thumbprint(&sha256));
        assert!(!is_thumbprint("AB:CD"));
    }
}
