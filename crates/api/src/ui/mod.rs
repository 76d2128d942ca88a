//! The helpdesk web page at `/ui/`: one HTML page, one small script and one stylesheet, all
//! compiled into the binary so the page works on an air-gapped network.
//!
//! The page is a client of the API like any other: it signs in with an API token (kept in the
//! tab's `sessionStorage`, sent as `Authorization: Bearer`) and never needs a cookie, so
//! serving it needs no session state here. Every answer carries a strict
//! Content-Security-Policy: scripts and styles from this origin only, no inline code, no
//! framing.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Where the page lives; `/` and `/ui` redirect here.
pub(crate) const PATH: &str = "/ui/";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// No inline script or style, nothing from another origin, no plugins, no framing, and forms
/// may not submit anywhere (the page sends everything through `fetch`, so a form that did
/// submit would be a bug that could put input in a URL).
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The page's routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(to_page))
        .route("/ui", get(to_page))
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
}

async fn to_page() -> Response {
    with_security_headers(Redirect::to(PATH).into_response())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidated on every load, so a new binary's page is never mixed with an old script.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    with_security_headers(res)
}

fn with_security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}
