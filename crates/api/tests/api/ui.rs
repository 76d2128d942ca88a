//! The web page's assets: embedded, served with a strict CSP, nothing from another origin.

use http::{Method, StatusCode};
use sqlx::PgPool;

use crate::common::{call, ctx};

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn root_redirects_to_the_page(db: PgPool) {
    let ctx = ctx(db).await;
    for path in ["/", "/ui"] {
        let res = call(&ctx.router, Method::GET, path).send().await;
        assert!(res.status.is_redirection(), "{path}: {}", res.status);
        assert_eq!(res.header("location"), Some("/ui/"), "{path}");
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn every_asset_has_strict_headers_and_no_foreign_origin(db: PgPool) {
    let ctx = ctx(db).await;
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let res = call(&ctx.router, Method::GET, path).send().await;
        assert_eq!(res.status, StatusCode::OK, "{path}");
        assert!(
            res.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let csp = res.header("content-security-policy").unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(res.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        // Air-gapped: no asset names another origin (the SVG's XML namespace is not fetched).
        let text = res.text.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{path}"
        );
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn the_page_has_no_inline_script_or_style(db: PgPool) {
    let ctx = ctx(db).await;
    let html = call(&ctx.router, Method::GET, "/ui/").send().await.text;
    assert!(html.contains(r#"<script src="app.js""#));
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the one external script"
    );
    assert!(!html.contains("<style") && !html.contains(" style="));
    assert!(!html.contains(" onclick=") && !html.contains(" onload="));
    let js = call(&ctx.router, Method::GET, "/ui/app.js")
        .send()
        .await
        .text;
    // Values reach the page through textContent only.
    assert!(!js.contains("innerHTML") && !js.contains("eval("));
    assert!(
        js.contains("sessionStorage")
            && !js.contains("localStorage")
            && !js.contains("document.cookie")
    );
}
