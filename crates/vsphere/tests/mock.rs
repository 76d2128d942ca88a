//! Client behaviour the simulator cannot show: paging with ContinueRetrievePropertiesEx,
//! "re-login once" when the session stays invalid, HTTP errors. A tiny HTTP/1.1 server
//! answers with recorded or hand-written SOAP bodies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskpool_vsphere::{Client, ClientOptions, Error, FaultKind, MoRef};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SERVICE_CONTENT: &str = include_str!("fixtures/00024-RetrieveServiceContent-resp.xml");
const LOGIN: &str = include_str!("fixtures/00025-Login-resp.xml");
const NOT_AUTHENTICATED: &str = include_str!("fixtures/00059-Fetch-resp.xml");
const CONTAINER_VIEW: &str = include_str!("fixtures/00053-CreateContainerView-resp.xml");

/// One recorded request: SOAP method, body, Cookie header.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    body: String,
    cookie: Option<String>,
}

type Handler = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

async fn serve(handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    serve_with(handler, None).await
}

/// Serve over TLS with the test CA's leaf certificate when `tls` is set.
async fn serve_with(
    handler: Arc<Handler>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!(
        "{scheme}://localhost:{}/sdk",
        listener.local_addr().unwrap().port()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, tls) = (Arc::clone(&handler), Arc::clone(&log), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(sock).await {
                            connection(stream, handler, log).await
                        }
                    }
                    None => connection(sock, handler, log).await,
                }
            });
        }
    });
    (url, seen)
}

async fn connection(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    loop {
        let mut len = 0usize;
        let mut cookie = None;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "cookie" => cookie = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.unwrap();
        let body = String::from_utf8(body).unwrap();
        let method = body
            .split_once("<soapenv:Body><")
            .map(|(_, rest)| rest.split([' ', '>']).next().unwrap().to_owned())
            .unwrap_or_default();
        let req = Seen {
            method,
            body,
            cookie,
        };
        log.lock().unwrap().push(req.clone());
        let (status, resp) = handler(&req);
        let set_cookie = if req.method == "Login" {
            "Set-Cookie: vmware_soap_session=\"abc123\"; Path=/; HttpOnly\r\n"
        } else {
            ""
        };
        let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n{set_cookie}\r\n",
                        resp.len()
                    );
        if w.write_all(head.as_bytes()).await.is_err()
            || w.write_all(resp.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

fn envelope(inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"#
    )
}

fn page(method: &str, token: Option<&str>, range: std::ops::Range<usize>) -> String {
    let mut s = format!(r#"<{method}Response xmlns="urn:vim25"><returnval>"#);
    if let Some(t) = token {
        s += &format!("<token>{t}</token>");
    }
    for i in range {
        s += &format!(
            r#"<objects><obj type="VirtualMachine">vm-{i}</obj><propSet><name>name</name><val xsi:type="xsd:string">desk-{i:02}</val></propSet><propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOff</val></propSet></objects>"#
        );
    }
    s += &format!("</returnval></{method}Response>");
    envelope(&s)
}

fn base(seen: &Seen) -> Option<(u16, String)> {
    match seen.method.as_str() {
        "RetrieveServiceContent" => Some((200, SERVICE_CONTENT.to_owned())),
        "Login" => Some((200, LOGIN.to_owned())),
        "Logout" | "DestroyView" => Some((
            200,
            envelope(&format!(r#"<{}Response xmlns="urn:vim25"/>"#, seen.method)),
        )),
        "CreateContainerView" => Some((200, CONTAINER_VIEW.to_owned())),
        _ => None,
    }
}

async fn client(url: &str) -> Client {
    let mut o = ClientOptions::new(
        url.parse().unwrap(),
        "user",
        SecretString::from("p&<ss".to_string()),
    );
    o.page_size = 10;
    o.call_timeout = Duration::from_secs(5);
    Client::connect(o).await.unwrap()
}

#[tokio::test]
async fn list_vms_follows_continue_tokens_and_destroys_the_view() {
    let (url, seen) = serve(Arc::new(|s: &Seen| {
        base(s).unwrap_or_else(|| match s.method.as_str() {
            "RetrievePropertiesEx" => (200, page("RetrievePropertiesEx", Some("t1"), 0..10)),
            "ContinueRetrievePropertiesEx" if s.body.contains("<token>t1</token>") => (
                200,
                page("ContinueRetrievePropertiesEx", Some("t2"), 10..20),
            ),
            "ContinueRetrievePropertiesEx" if s.body.contains("<token>t2</token>") => {
                (200, page("ContinueRetrievePropertiesEx", None, 20..25))
            }
            _ => (500, NOT_AUTHENTICATED.to_owned()),
        })
    }))
    .await;
    let vc = client(&url).await;
    let vms = vc
        .list_vms(&MoRef::new("Folder", "folder-3"))
        .await
        .unwrap();
    assert_eq!(vms.len(), 25);
    assert_eq!(vms[24].name, "desk-24");
    let seen = seen.lock().unwrap().clone();
    let methods: Vec<&str> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "RetrieveServiceContent",
            "Login",
            "CreateContainerView",
            "RetrievePropertiesEx",
            "ContinueRetrievePropertiesEx",
            "ContinueRetrievePropertiesEx",
            "DestroyView"
        ]
    );
    let rpe = &seen[3].body;
    assert!(rpe.contains("<maxObjects>10</maxObjects>"), "{rpe}");
    assert!(rpe.contains("<recursive>") || seen[2].body.contains("<recursive>false</recursive>"));
    // The password is escaped in Login, and the session cookie is sent afterwards.
    assert!(seen[1].body.contains("<password>p&amp;&lt;ss</password>"));
    assert_eq!(seen[0].cookie, None);
    assert_eq!(
        seen[3].cookie.as_deref(),
        Some("vmware_soap_session=\"abc123\"")
    );
}

#[tokio::test]
async fn not_authenticated_logs_in_again_only_once() {
    let (url, seen) = serve(Arc::new(|s: &Seen| {
        base(s).unwrap_or_else(|| (500, NOT_AUTHENTICATED.to_owned()))
    }))
    .await;
    let vc = client(&url).await;
    let mut reconnects = vc.subscribe_reconnects();
    let err = vc.find_by_inventory_path("DC0/vm/x").await.unwrap_err();
    assert_eq!(err.fault_kind(), Some(&FaultKind::NotAuthenticated));
    assert!(err.is_transient());
    assert!(!vc.is_connected());
    assert!(reconnects.has_changed().unwrap());
    assert_eq!(*reconnects.borrow_and_update(), 1);
    let methods: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.method.clone())
        .collect();
    assert_eq!(
        methods,
        [
            "RetrieveServiceContent",
            "Login",
            "FindByInventoryPath",
            "Login",
            "FindByInventoryPath"
        ]
    );
}

#[tokio::test]
async fn http_errors_and_garbage() {
    let (url, _) = serve(Arc::new(|s: &Seen| {
        base(s).unwrap_or_else(|| match s.method.as_str() {
            "FindByInventoryPath" => (503, "<html>maintenance</html>".to_owned()),
            "FindByUuid" => (200, "<soapenv:Envelope><unclosed".to_owned()),
            _ => (500, "not xml at all".to_owned()),
        })
    }))
    .await;
    let vc = client(&url).await;
    let e = vc.find_by_inventory_path("x").await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("503"), "{e}");
    let e = vc.find_vm_by_instance_uuid("u").await.unwrap_err();
    assert!(matches!(e, Error::Parse { .. }), "{e}");
    // A garbled answer (a proxy's page, a cut body) may be fine the next time.
    assert!(e.is_transient());
    let e = vc
        .power_on(&MoRef::new("VirtualMachine", "vm-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Transport { .. }),
        "500 without a SOAP fault: {e}"
    );
}

#[tokio::test]
async fn soap_fault_in_http_500_is_typed() {
    const MONF: &str = include_str!("fixtures/00056-Fetch-resp.xml");
    let (url, _) = serve(Arc::new(|s: &Seen| {
        base(s).unwrap_or_else(|| (500, MONF.to_owned()))
    }))
    .await;
    let vc = client(&url).await;
    let e = vc
        .destroy(&MoRef::new("VirtualMachine", "vm-99999"))
        .await
        .unwrap_err();
    assert_eq!(
        e.fault_kind(),
        Some(&FaultKind::ManagedObjectNotFound {
            obj: Some(MoRef::new("VirtualMachine", "vm-99999"))
        })
    );
    assert!(
        vc.is_connected(),
        "a fault still means vCenter answered with a valid session"
    );
    assert_eq!(
        vc.vm_info(&MoRef::new("VirtualMachine", "vm-99999"))
            .await
            .unwrap(),
        None
    );
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let certs = vec![CertificateDer::from_pem_file(format!("{dir}/leaf.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/leaf.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// `openssl x509 -in tests/fixtures/tls/leaf.pem -noout -fingerprint -sha256`
const LEAF_SHA256: &str =
    "D1:C6:8A:96:E8:18:2E:8E:E6:AE:15:35:09:E8:E1:EA:61:69:93:79:DD:EF:DC:10:8C:B5:ED:13:10:C2:A8:81";

#[tokio::test]
async fn tls_trust_modes() {
    let (url, _) = serve_with(
        Arc::new(|s: &Seen| base(s).unwrap_or_else(|| (500, NOT_AUTHENTICATED.to_owned()))),
        Some(tls_acceptor()),
    )
    .await;
    let connect = |tls: deskpool_vsphere::TlsOptions| {
        let mut o = ClientOptions::new(
            url.parse().unwrap(),
            "user",
            SecretString::from("p".to_string()),
        );
        o.tls = tls;
        o.connect_timeout = Duration::from_secs(5);
        Client::connect(o)
    };
    // Public roots do not know the test CA.
    let e = connect(Default::default()).await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    // The CA file makes the chain valid.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    connect(deskpool_vsphere::TlsOptions {
        ca_file: Some(ca.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    // Pinning the leaf's SHA-256 works without any CA, in either spelling.
    for pin in [
        LEAF_SHA256.to_string(),
        LEAF_SHA256.replace(':', "").to_lowercase(),
    ] {
        connect(deskpool_vsphere::TlsOptions {
            thumbprint: Some(pin),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // A wrong pin is refused.
    let wrong = LEAF_SHA256.replace("D1:C6", "00:00");
    let e = connect(deskpool_vsphere::TlsOptions {
        thumbprint: Some(wrong),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    // Insecure accepts anything (and logs a warning).
    connect(deskpool_vsphere::TlsOptions {
        insecure: true,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_task_the_collector_never_reports_is_read_directly_after_the_silence() {
    // A property collector that never reports anything (every long poll comes back empty),
    // and a task that finished long ago: the waiter still gets its result.
    let (url, seen) = serve(Arc::new(|s: &Seen| {
        if let Some(r) = base(s) {
            return r;
        }
        let m = s.method.as_str();
        let ret = |kind: &str, value: &str| {
            (
                200,
                envelope(&format!(
                    r#"<{m}Response xmlns="urn:vim25"><returnval type="{kind}">{value}</returnval></{m}Response>"#
                )),
            )
        };
        match m {
            "CreatePropertyCollector" => ret("PropertyCollector", "pc-1"),
            "CreateListView" => ret("ListView", "lv-1"),
            "CreateFilter" => ret("PropertyFilter", "pf-1"),
            "ModifyListView" | "WaitForUpdatesEx" => (
                200,
                envelope(&format!(r#"<{m}Response xmlns="urn:vim25"/>"#)),
            ),
            "RetrievePropertiesEx" if s.body.contains("task-7") => (
                200,
                envelope(
                    r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="Task">task-7</obj><propSet><name>info</name><val xsi:type="TaskInfo"><key>task-7</key><task type="Task">task-7</task><state>success</state><result type="VirtualMachine" xsi:type="ManagedObjectReference">vm-42</result></val></propSet></objects></returnval></RetrievePropertiesExResponse>"#,
                ),
            ),
            _ => (500, NOT_AUTHENTICATED.to_owned()),
        }
    }))
    .await;
    let mut o = ClientOptions::new(
        url.parse().unwrap(),
        "user",
        SecretString::from("pass".to_string()),
    );
    o.call_timeout = Duration::from_secs(5);
    o.task_silence = Duration::from_millis(300);
    let vc = Client::connect(o).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        vc.wait_task(&MoRef::new("Task", "task-7")),
    )
    .await
    .expect("the waiter was answered")
    .unwrap();
    assert_eq!(result, Some(MoRef::new("VirtualMachine", "vm-42")));
    let reads = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "RetrievePropertiesEx")
        .count();
    assert_eq!(reads, 1, "one direct read of the silent task");
}

#[tokio::test]
async fn a_half_done_watcher_setup_destroys_the_collector_it_made() {
    // CreateListView fails after CreatePropertyCollector worked: each collector made must be
    // destroyed, or every retry leaves one more on vCenter for the rest of the session.
    let (url, seen) = serve(Arc::new(|s: &Seen| {
        if let Some(r) = base(s) {
            return r;
        }
        let m = s.method.as_str();
        match m {
            "CreatePropertyCollector" => (
                200,
                envelope(&format!(
                    r#"<{m}Response xmlns="urn:vim25"><returnval type="PropertyCollector">pc-1</returnval></{m}Response>"#
                )),
            ),
            "DestroyPropertyCollector" => (
                200,
                envelope(&format!(r#"<{m}Response xmlns="urn:vim25"/>"#)),
            ),
            "CreateListView" => (
                500,
                envelope(
                    r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>A general system error occurred</faultstring><detail><SystemErrorFault xmlns="urn:vim25" xsi:type="SystemError"><reason>busy</reason></SystemErrorFault></detail></soapenv:Fault>"#,
                ),
            ),
            _ => (500, NOT_AUTHENTICATED.to_owned()),
        }
    }))
    .await;
    let vc = client(&url).await;
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        vc.wait_task(&MoRef::new("Task", "task-1")),
    )
    .await
    .expect("the waiter gets the error after a few rounds")
    .unwrap_err();
    assert!(err.to_string().contains("SystemError"), "{err}");
    let count = |m: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == m)
            .count()
    };
    for _ in 0..50 {
        if count("DestroyPropertyCollector") >= count("CreatePropertyCollector") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(count("CreatePropertyCollector") >= 3);
    assert_eq!(
        count("DestroyPropertyCollector"),
        count("CreatePropertyCollector"),
        "every collector made is destroyed"
    );
}

#[tokio::test]
async fn a_truncated_first_answer_does_not_report_an_announced_vm_gone() {
    // After a (re)start the first WaitForUpdatesEx answer lists the inventory; when it is
    // truncated, the announced VM may simply be in the part still pending.
    let waits = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&waits);
    let (url, _) = serve(Arc::new(move |s: &Seen| {
        if let Some(r) = base(s) {
            return r;
        }
        let m = s.method.as_str();
        let ret = |kind: &str, value: &str| {
            (
                200,
                envelope(&format!(
                    r#"<{m}Response xmlns="urn:vim25"><returnval type="{kind}">{value}</returnval></{m}Response>"#
                )),
            )
        };
        let enter = |vm: &str| {
            format!(r#"<objectSet><kind>enter</kind><obj type="VirtualMachine">{vm}</obj><changeSet><name>runtime.powerState</name><op>assign</op><val xsi:type="VirtualMachinePowerState">poweredOn</val></changeSet></objectSet>"#)
        };
        match m {
            "CreatePropertyCollector" => ret("PropertyCollector", "pc-1"),
            "CreateFilter" => ret("PropertyFilter", "pf-1"),
            "WaitForUpdatesEx" => {
                let n = {
                    let mut n = counter.lock().unwrap();
                    *n += 1;
                    *n
                };
                let body = match n {
                    1 => format!(
                        "<version>1</version><filterSet><filter type=\"PropertyFilter\">pf-1</filter>{}</filterSet><truncated>true</truncated>",
                        enter("vm-1")
                    ),
                    2 => format!(
                        "<version>2</version><filterSet><filter type=\"PropertyFilter\">pf-1</filter>{}</filterSet>",
                        enter("vm-2")
                    ),
                    _ => {
                        std::thread::sleep(Duration::from_millis(20));
                        format!("<version>{n}</version>")
                    }
                };
                (
                    200,
                    envelope(&format!(
                        r#"<WaitForUpdatesExResponse xmlns="urn:vim25"><returnval>{body}</returnval></WaitForUpdatesExResponse>"#
                    )),
                )
            }
            _ => (
                200,
                envelope(&format!(r#"<{m}Response xmlns="urn:vim25"/>"#)),
            ),
        }
    }))
    .await;
    let vc = client(&url).await;
    let vm2 = MoRef::new("VirtualMachine", "vm-2");
    let mut watch = vc.watch_vms();
    // Announced before the watch task first runs: judged by the first answer it gets.
    watch.expecter().expect(vm2.clone());
    let mut events = Vec::new();
    while *waits.lock().unwrap() < 2
        || events
            .iter()
            .all(|e: &deskpool_vsphere::VmEvent| e.vm != vm2)
    {
        let batch = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("the watch answered")
            .expect("the watch runs");
        events.extend(batch);
    }
    assert!(
        !events
            .iter()
            .any(|e| e.vm == vm2 && e.change == deskpool_vsphere::VmChange::Gone),
        "{events:?}"
    );
}
