//! The bottom of the client: one vCenter session. HTTP transport, cookies, login and
//! re-login, the SOAP call with its retry rule, paged property reads and the keepalive.
//! The client and both watchers are built on it; it knows none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tracing::Instrument;
use url::Url;

use crate::base::MoRef;
use crate::error::Error;
use crate::fault::{Fault, FaultKind};
use crate::options::ClientOptions;
use crate::soap::{self, req, ObjectContent, ServiceContent};
use crate::tls;
use crate::types::TaskInfo;
use crate::xml::{Node, Writer};

/// One logged-in session: HTTP transport, cookies, login and re-login, the SOAP call with
/// its retry rule. Knows nothing of the watchers built on it.
pub(crate) struct Session {
    pub(crate) http: reqwest::Client,
    pub(crate) url: Url,
    pub(crate) url_display: String,
    pub(crate) username: String,
    pub(crate) password: SecretString,
    pub(crate) call_timeout: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) task_silence: Duration,
    pub(crate) page_size: u32,
    pub(crate) max_response_bytes: u64,
    pub(crate) content: ServiceContent,
    pub(crate) cookies: RwLock<HashMap<String, String>>,
    pub(crate) soap_calls: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) last_activity: Mutex<Instant>,
    pub(crate) session_gen: AtomicU64,
    /// One login attempt at a time, shared by every caller, with backoff after failures.
    pub(crate) login_gate: tokio::sync::Mutex<LoginGate>,
    /// Why the last login failed (None once one succeeds), for health reports.
    pub(crate) login_failure: Mutex<Option<String>>,
    pub(crate) reconnect_tx: watch::Sender<u64>,
}

const SOAP_ACTION: &str = "urn:vim25/6.5";

/// Wait after the first failed login; doubles with each further failure. With a wrong
/// password that is 5 attempts in the first minute (0, 2, 6, 14, 30 s), then fewer:
/// account lockout policies count failed logins, and every caller waiting on a session is
/// answered by the same attempt.
const LOGIN_BACKOFF_FIRST: Duration = Duration::from_secs(2);
const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// State of the login attempts of one session.
#[derive(Debug, Default)]
pub(crate) struct LoginGate {
    failures: u32,
    retry_at: Option<Instant>,
    last: Option<LoginFailure>,
}

/// A failed login, kept to answer the callers that come during the backoff.
#[derive(Debug, Clone)]
enum LoginFailure {
    Fault(Fault),
    Other(String),
}

/// A successful response body, parsed on demand so large results are read once, into
/// strings that borrow from it.
#[derive(Debug)]
pub(crate) struct Response {
    method: &'static str,
    bytes: Vec<u8>,
}

impl Response {
    /// The element inside `soapenv:Body` (e.g. `RetrievePropertiesExResponse`).
    pub(crate) fn body(&self) -> Result<Node<'_>, Error> {
        soap::decode(self.method, &self.bytes)
    }
}

impl Session {
    /// RetrieveServiceContent and Login; the owner starts the [`keepalive`].
    pub(crate) async fn connect(opts: ClientOptions) -> Result<Arc<Session>, Error> {
        let mut url = opts.url.clone();
        match url.scheme() {
            "https" | "http" => {}
            s => {
                return Err(Error::Config(format!(
                    "vCenter URL scheme must be https or http, not '{s}'"
                )))
            }
        }
        // Credentials belong in the options, never in a URL that may be logged.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if url.scheme() == "http" {
            tracing::warn!(url = %url, "connecting to vCenter over plain http (simulator only)");
        }
        let tls_config = tls::client_config(&opts.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config)
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(50))
            // A followed 307 would send the request again (Login: the password) wherever the
            // Location header points, perhaps over plain http.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;

        // Bootstrap without a session to learn the managed object ids.
        let bootstrap = Bootstrap {
            http: &http,
            url: &url,
            timeout: opts.call_timeout,
            max_bytes: opts.max_response_bytes.max(1),
        };
        let content = bootstrap.service_content().await?;
        let (reconnect_tx, _) = watch::channel(0u64);
        let session = Arc::new(Session {
            http,
            url_display: url.to_string(),
            url,
            username: opts.username,
            password: opts.password,
            call_timeout: opts.call_timeout,
            keepalive_interval: opts.keepalive_interval,
            task_silence: opts.task_silence.max(Duration::from_millis(100)),
            page_size: opts.page_size.max(1),
            max_response_bytes: opts.max_response_bytes.max(1),
            content,
            cookies: RwLock::new(HashMap::new()),
            soap_calls: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_activity: Mutex::new(Instant::now()),
            session_gen: AtomicU64::new(0),
            login_gate: tokio::sync::Mutex::new(LoginGate::default()),
            login_failure: Mutex::new(None),
            reconnect_tx,
        });
        session.login().await?;
        tracing::info!(
            url = %session.url_display,
            version = %session.content.about.full_name,
            "logged in to vCenter"
        );

        Ok(session)
    }

    /// One HTTP round trip, no retry.
    pub(crate) async fn send(
        &self,
        method: &'static str,
        body: &str,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let span = tracing::info_span!("soap", method, duration_ms = tracing::field::Empty);
        let started = Instant::now();
        let result = self
            .send_inner(method, body, timeout)
            .instrument(span.clone())
            .await;
        let ms = started.elapsed().as_millis() as u64;
        span.record("duration_ms", ms);
        let _e = span.enter();
        match &result {
            Ok(_) => tracing::debug!(duration_ms = ms, "soap call ok"),
            Err(e) => tracing::debug!(duration_ms = ms, error = %e, "soap call failed"),
        }
        result
    }

    async fn send_inner(
        &self,
        method: &'static str,
        body: &str,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let envelope = soap::envelope(method, body);
        let cookie_header = {
            let jar = self.cookies.read().unwrap_or_else(|p| p.into_inner());
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut request = self
            .http
            .post(self.url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(envelope);
        if !cookie_header.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookie_header);
        }
        self.soap_calls.fetch_add(1, Ordering::Relaxed);
        *self.last_activity.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let transport = |detail: String, source: Option<reqwest::Error>| Error::Transport {
            method,
            url: self.url_display.clone(),
            detail,
            source,
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.connected.store(false, Ordering::Relaxed);
                let detail = if e.is_timeout() {
                    format!("timed out after {timeout:?}")
                } else if e.is_connect() {
                    "connection failed".to_owned()
                } else {
                    "request failed".to_owned()
                };
                return Err(transport(detail, Some(e)));
            }
        };
        let status = response.status();
        let location = redirect_target(&response);
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some((name, val)) = value
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .and_then(|kv| kv.split_once('='))
            {
                self.cookies
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.trim().to_owned(), val.trim().to_owned());
            }
        }
        let bytes = match read_body(response, self.max_response_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Err(Error::ResponseTooLarge {
                    method,
                    url: self.url_display.clone(),
                    limit: self.max_response_bytes,
                })
            }
            Err(BodyError::Read(e)) => {
                self.connected.store(false, Ordering::Relaxed);
                return Err(transport("reading the response failed".to_owned(), Some(e)));
            }
        };
        if status.is_success() {
            self.connected.store(true, Ordering::Relaxed);
            return Ok(Response { method, bytes });
        }
        // SOAP faults come as HTTP 500; anything else is a proxy or server problem.
        if status == reqwest::StatusCode::INTERNAL_SERVER_ERROR {
            if let Err(Error::Fault(f)) = soap::decode(method, &bytes) {
                let session_ok = !matches!(
                    f.kind,
                    FaultKind::NotAuthenticated | FaultKind::InvalidLogin
                );
                self.connected.store(session_ok, Ordering::Relaxed);
                return Err(Error::Fault(f));
            }
        }
        self.connected.store(false, Ordering::Relaxed);
        Err(transport(
            unexpected_status(status, location.as_deref()),
            None,
        ))
    }

    /// A call with the session's retry rule: on NotAuthenticated, log in again once and retry.
    pub(crate) async fn call(&self, method: &'static str, body: String) -> Result<Response, Error> {
        self.call_with_timeout(method, body, self.call_timeout)
            .await
    }

    pub(crate) async fn call_with_timeout(
        &self,
        method: &'static str,
        body: String,
        timeout: Duration,
    ) -> Result<Response, Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        let generation = self.session_generation();
        match self.send(method, &body, timeout).await {
            Err(Error::Fault(f)) if f.kind == FaultKind::NotAuthenticated => {
                tracing::info!(
                    method,
                    "vCenter session is not authenticated; logging in again"
                );
                self.relogin(generation).await?;
                self.send(method, &body, timeout).await
            }
            other => other,
        }
    }

    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.reconnect_tx.subscribe()
    }

    pub(crate) fn session_generation(&self) -> u64 {
        self.session_gen.load(Ordering::SeqCst)
    }

    /// Log in again unless another task already did since `seen` was read. Callers share the
    /// attempt: one login at a time, and while the backoff after a failed one runs, callers
    /// get that failure without a new attempt.
    pub(crate) async fn relogin(&self, seen: u64) -> Result<(), Error> {
        let mut gate = self.login_gate.lock().await;
        if self.session_generation() != seen {
            return Ok(());
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        if let (Some(at), Some(last)) = (gate.retry_at, &gate.last) {
            if Instant::now() < at {
                return Err(self.login_error(last));
            }
        }
        self.cookies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if let Err(e) = self.login().await {
            gate.failures += 1;
            let wait = LOGIN_BACKOFF_FIRST
                .saturating_mul(2u32.saturating_pow(gate.failures - 1))
                .min(LOGIN_BACKOFF_MAX);
            gate.retry_at = Some(Instant::now() + wait);
            gate.last = Some(match &e {
                Error::Fault(f) => LoginFailure::Fault(f.clone()),
                other => LoginFailure::Other(other.to_string()),
            });
            tracing::warn!(user = %self.username, error = %e, failures = gate.failures, retry_in_ms = wait.as_millis() as u64, "vCenter login failed; no new attempt until the backoff is over");
            *self.login_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                "logging in to {} as '{}' failed {} time(s), last with {e}; next attempt in {} s{}",
                self.url_display,
                self.username,
                gate.failures,
                wait.as_secs(),
                if matches!(e.fault_kind(), Some(FaultKind::InvalidLogin)) {
                    ": fix the vCenter password in deskpool's configuration"
                } else {
                    ""
                }
            ));
            return Err(e);
        }
        *gate = LoginGate::default();
        *self.login_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let generation = self.session_gen.fetch_add(1, Ordering::SeqCst) + 1;
        self.reconnect_tx.send_replace(generation);
        tracing::info!(generation, "logged in to vCenter again");
        Ok(())
    }

    fn login_error(&self, last: &LoginFailure) -> Error {
        match last {
            LoginFailure::Fault(f) => Error::Fault(f.clone()),
            LoginFailure::Other(detail) => Error::Transport {
                method: "Login",
                url: self.url_display.clone(),
                detail: format!("{detail} (waiting before the next login attempt)"),
                source: None,
            },
        }
    }

    async fn login(&self) -> Result<(), Error> {
        let mut w = Writer::new();
        w.moref("_this", &self.content.session_manager)
            .text("userName", &self.username)
            .text("password", self.password.expose_secret());
        self.send("Login", &w.finish(), self.call_timeout)
            .await
            .map(drop)
    }

    pub(crate) fn this_body(this: &MoRef) -> String {
        let mut w = Writer::new();
        w.moref("_this", this);
        w.finish()
    }

    /// RetrievePropertiesEx + ContinueRetrievePropertiesEx until the token runs out; each page
    /// is handed to `page` so large inventories are converted as they arrive.
    pub(crate) async fn retrieve<T>(
        &self,
        spec: &str,
        max_objects: Option<u32>,
        mut page: impl FnMut(Vec<ObjectContent<'_>>, &mut Vec<T>),
    ) -> Result<Vec<T>, Error> {
        let pc = &self.content.property_collector;
        let mut w = Writer::new();
        w.moref("_this", pc)
            .open("specSet")
            .raw_trusted(spec)
            .close("specSet")
            .open("options");
        if let Some(n) = max_objects {
            w.text("maxObjects", &n.to_string());
        }
        w.close("options");
        let resp = self.call("RetrievePropertiesEx", w.finish()).await?;
        let (objs, mut token) = soap::parse_retrieve_result("RetrievePropertiesEx", resp.body()?)?;
        let mut out = Vec::new();
        page(objs, &mut out);
        while let Some(t) = token.take() {
            let mut w = Writer::new();
            w.moref("_this", pc).text("token", &t);
            let resp = self
                .call("ContinueRetrievePropertiesEx", w.finish())
                .await?;
            let (objs, next) =
                soap::parse_retrieve_result("ContinueRetrievePropertiesEx", resp.body()?)?;
            page(objs, &mut out);
            token = next;
        }
        Ok(out)
    }

    /// `Task.info` read once.
    pub(crate) async fn task_info(&self, task: &MoRef) -> Result<TaskInfo, Error> {
        let mut spec = Writer::new();
        req::filter_spec_objects(&mut spec, &task.kind, &["info"], &[task]);
        let infos = self
            .retrieve(
                &spec.finish(),
                None,
                |objs, out: &mut Vec<Result<TaskInfo, Error>>| {
                    for oc in objs {
                        if let Some(v) = oc.prop("info") {
                            out.push(soap::parse_task_info("RetrievePropertiesEx", v));
                        }
                    }
                },
            )
            .await?;
        infos.into_iter().next().unwrap_or_else(|| {
            Err(Error::Fault(Fault::new(
                FaultKind::ManagedObjectNotFound {
                    obj: Some(task.clone()),
                },
                format!("task {task} has no info (it no longer exists)"),
            )))
        })
    }
}

struct Bootstrap<'a> {
    http: &'a reqwest::Client,
    url: &'a Url,
    timeout: Duration,
    max_bytes: u64,
}

impl Bootstrap<'_> {
    async fn service_content(&self) -> Result<ServiceContent, Error> {
        const M: &str = "RetrieveServiceContent";
        let mut w = Writer::new();
        w.moref("_this", &MoRef::new("ServiceInstance", "ServiceInstance"));
        let transport = |detail: String, source| Error::Transport {
            method: M,
            url: self.url.to_string(),
            detail,
            source,
        };
        let resp = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .header("SOAPAction", SOAP_ACTION)
            .body(soap::envelope(M, &w.finish()))
            .send()
            .await
            .map_err(|e| transport("connection failed".into(), Some(e)))?;
        let status = resp.status();
        let location = redirect_target(&resp);
        let bytes = match read_body(resp, self.max_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Err(Error::ResponseTooLarge {
                    method: M,
                    url: self.url.to_string(),
                    limit: self.max_bytes,
                })
            }
            Err(BodyError::Read(e)) => {
                return Err(transport("reading the response failed".into(), Some(e)))
            }
        };
        if status.is_redirection() {
            return Err(transport(
                unexpected_status(status, location.as_deref()),
                None,
            ));
        }
        if !(status.is_success() || status == reqwest::StatusCode::INTERNAL_SERVER_ERROR) {
            return Err(transport(
                format!("HTTP status {status} (is this a vSphere /sdk URL?)"),
                None,
            ));
        }
        soap::parse_service_content(&soap::decode(M, &bytes)?)
    }
}

/// Keep the session alive with `CurrentTime` while nothing else talks to vCenter.
pub(crate) async fn keepalive(session: Arc<Session>) {
    let interval = session.keepalive_interval.max(Duration::from_millis(100));
    let tick = (interval / 4).max(Duration::from_millis(50));
    let service_instance = MoRef::new("ServiceInstance", "ServiceInstance");
    loop {
        tokio::time::sleep(tick).await;
        if session.closed.load(Ordering::Relaxed) {
            return;
        }
        let idle = session
            .last_activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if idle < interval {
            continue;
        }
        if let Err(e) = session
            .call("CurrentTime", Session::this_body(&service_instance))
            .await
        {
            tracing::warn!(error = %e, "vCenter keepalive failed");
        }
    }
}

/// Objects a watcher made in this session (its PropertyCollector, with the filters on it, and
/// its view). vCenter keeps them, and keeps them up to date, until the session ends, so they
/// are destroyed on every way out: a failed round, a half-done setup, a stopped or aborted
/// watch. Dropping the guard sends the destroy calls from a background task (best effort);
/// after a re-login there is nothing to destroy, the old session took them along.
pub(crate) struct ServerObjects {
    session: Arc<Session>,
    generation: u64,
    objects: Vec<(&'static str, MoRef)>,
}

impl ServerObjects {
    /// An empty set for the session's current login.
    pub(crate) fn new(session: &Arc<Session>) -> Self {
        Self {
            session: Arc::clone(session),
            generation: session.session_generation(),
            objects: Vec::new(),
        }
    }

    /// The session generation the objects belong to.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `CreatePropertyCollector`: a collector of our own, so our filters are ours alone.
    pub(crate) async fn create_collector(&mut self) -> Result<MoRef, Error> {
        const M: &str = "CreatePropertyCollector";
        let body = Session::this_body(&self.session.content.property_collector);
        let pc = soap::parse_moref(M, &self.session.call(M, body).await?.body()?)?;
        self.objects.push(("DestroyPropertyCollector", pc.clone()));
        Ok(pc)
    }

    /// An `EventHistoryCollector` made by `CreateCollectorForEvents` with `body`.
    pub(crate) async fn create_event_collector(&mut self, body: String) -> Result<MoRef, Error> {
        const M: &str = "CreateCollectorForEvents";
        let c = soap::parse_moref(M, &self.session.call(M, body).await?.body()?)?;
        self.objects.push(("DestroyCollector", c.clone()));
        Ok(c)
    }

    /// A view made by `method` (`CreateContainerView`, `CreateListView`) with `body`.
    pub(crate) async fn create_view(
        &mut self,
        method: &'static str,
        body: String,
    ) -> Result<MoRef, Error> {
        let view = soap::parse_moref(method, &self.session.call(method, body).await?.body()?)?;
        self.objects.push(("DestroyView", view.clone()));
        Ok(view)
    }
}

impl Drop for ServerObjects {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.objects);
        if objects.is_empty()
            || self.generation != self.session.session_generation()
            || self.session.closed.load(Ordering::Relaxed)
        {
            return;
        }
        // Outside a runtime (the process is ending) the session ends with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let session = Arc::clone(&self.session);
        // The collector first: destroying it also ends a long poll still waiting on it.
        runtime.spawn(async move {
            for (method, obj) in objects {
                if let Err(e) = session.call(method, Session::this_body(&obj)).await {
                    tracing::debug!(%obj, error = %e, "{method} of an abandoned watch failed");
                }
            }
        });
    }
}

enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads a response body (gzip already decoded by reqwest) up to `limit` bytes; a larger
/// one is abandoned as soon as it passes the limit, without holding more than that.
async fn read_body(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length().unwrap_or(0);
    if declared > limit {
        return Err(BodyError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(declared.min(limit).min(16 << 20) as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Where a redirect points, without any credentials in it (it goes into an error message).
fn redirect_target(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    match Url::parse(location) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            Some(u.to_string())
        }
        Err(_) => Some(location.split('?').next().unwrap_or_default().to_owned()),
    }
}

fn unexpected_status(status: reqwest::StatusCode, location: Option<&str>) -> String {
    if status.is_redirection() {
        format!(
            "HTTP status {status}, a redirect to {}; deskpool does not follow redirects (one \
             would send the request, a Login with its password, again elsewhere): set the \
             vCenter url to the final /sdk address",
            location.unwrap_or("(no Location)")
        )
    } else {
        format!("HTTP status {status} without a SOAP fault")
    }
}
