//! Bounds on what vCenter (or whatever answers at its address) can make the client do: the
//! decoded size of an answer is capped, and redirects are not followed. A raw HTTP/1.1
//! server on 127.0.0.1 answers with hand-made responses.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskpool_vsphere::{Client, ClientOptions, Error};
use secrecy::SecretString;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SERVICE_CONTENT: &str = include_str!("fixtures/00024-RetrieveServiceContent-resp.xml");
const LOGIN: &str = include_str!("fixtures/00025-Login-resp.xml");

/// The whole HTTP response (status line, headers, body) for a SOAP method.
type Answer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// Serves on a free port; returns the SDK URL and the methods it was asked for.
async fn serve(answer: Arc<Answer>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sdk", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (answer, log) = (Arc::clone(&answer), Arc::clone(&log));
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let method = body
                        .split_once("<soapenv:Body><")
                        .map(|(_, rest)| rest.split([' ', '>']).next().unwrap().to_owned())
                        .unwrap_or_default();
                    log.lock().unwrap().push(method.clone());
                    if w.write_all(&answer(&method)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Session set-up answers; None for other methods.
fn session(method: &str) -> Option<Vec<u8>> {
    match method {
        "RetrieveServiceContent" => Some(response("200 OK", "", SERVICE_CONTENT.as_bytes())),
        "Login" => Some(response(
            "200 OK",
            "Set-Cookie: vmware_soap_session=\"abc\"; Path=/\r\n",
            LOGIN.as_bytes(),
        )),
        _ => None,
    }
}

/// A FindByInventoryPath answer padded with `padding` bytes of whitespace-free filler.
fn padded_answer(padding: usize) -> Vec<u8> {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><FindByInventoryPathResponse xmlns="urn:vim25"><pad>"#,
    );
    xml.push_str(&"A".repeat(padding));
    xml.push_str(r#"</pad></FindByInventoryPathResponse></soapenv:Body></soapenv:Envelope>"#);
    xml.into_bytes()
}

fn options(url: &str, max_response_bytes: u64) -> ClientOptions {
    let mut o = ClientOptions::new(
        url.parse().unwrap(),
        "user",
        SecretString::from("s3cret".to_string()),
    );
    o.call_timeout = Duration::from_secs(10);
    o.max_response_bytes = max_response_bytes;
    o
}

#[tokio::test]
async fn a_gzip_bomb_is_cut_off_at_the_decoded_size_cap() {
    // 64 MiB of filler compress to well under a MiB: only the decoded size can catch it.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&padded_answer(64 << 20)).unwrap();
    let bomb = Arc::new(gz.finish().unwrap());
    assert!(bomb.len() < 1 << 20, "compressed: {} bytes", bomb.len());
    let (url, _) = serve(Arc::new(move |m: &str| {
        session(m).unwrap_or_else(|| response("200 OK", "Content-Encoding: gzip\r\n", &bomb))
    }))
    .await;
    let vc = Client::connect(options(&url, 4 << 20)).await.unwrap();
    let err = vc.find_by_inventory_path("DC0/vm/x").await.unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { limit, .. } if limit == 4 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_response_mib"), "{err}");
    assert!(!err.is_transient(), "a retry gets the same answer");
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_and_smaller_answers_pass() {
    let (url, _) = serve(Arc::new(|m: &str| {
        session(m).unwrap_or_else(|| response("200 OK", "", &padded_answer(2 << 20)))
    }))
    .await;
    let vc = Client::connect(options(&url, 1 << 20)).await.unwrap();
    let err = vc.find_by_inventory_path("DC0/vm/x").await.unwrap_err();
    assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err:?}");
    // The same answer under a larger cap is read (and means "nothing at that path").
    let vc = Client::connect(options(&url, 4 << 20)).await.unwrap();
    assert_eq!(vc.find_by_inventory_path("DC0/vm/x").await.unwrap(), None);
}

#[tokio::test]
async fn a_redirected_login_is_not_followed() {
    // Whatever sits behind the redirect must never see the Login (it carries the password).
    let (elsewhere, elsewhere_seen) = serve(Arc::new(|m: &str| {
        session(m).unwrap_or_else(|| response("200 OK", "", b""))
    }))
    .await;
    let location = elsewhere.replace("http://", "http://admin:pw@") + "?token=abc";
    let (url, seen) = serve(Arc::new(move |m: &str| match m {
        "Login" => response(
            "307 Temporary Redirect",
            &format!("Location: {location}\r\n"),
            b"",
        ),
        _ => session(m).unwrap(),
    }))
    .await;
    let err = Client::connect(options(&url, 1 << 20)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("307") && text.contains("redirect"), "{text}");
    assert!(!text.contains("pw@") && !text.contains("token"), "{text}");
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["RetrieveServiceContent", "Login"]
    );
    assert!(
        elsewhere_seen.lock().unwrap().is_empty(),
        "the redirect target got {:?}",
        elsewhere_seen.lock().unwrap()
    );
}
