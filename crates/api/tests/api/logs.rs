//! Token secrets never reach the log, while every request does.

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::json;
use sqlx::PgPool;

use crate::common::{call, create_pool, ctx};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn secrets_never_logged(db: PgPool) {
    let ctx = ctx(db).await;
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .json()
        .with_current_span(true)
        .with_span_list(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    create_pool(&ctx, "lab").await;
    let wrong = "dpt_0123456789abcdef-wrong-secret";
    for token in [ctx.admin.as_str(), &ctx.helpdesk, &ctx.viewer, wrong] {
        call(&ctx.router, Method::GET, "/api/v1/pools/lab")
            .token(token)
            .send()
            .await;
        call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
            .token(token)
            .json(&json!({"target_size": 3}))
            .send()
            .await;
        call(&ctx.router, Method::PATCH, "/api/v1/pools/lab")
            .token(token)
            .raw("application/json", "{oops")
            .send()
            .await;
        call(&ctx.router, Method::GET, "/api/v1/nowhere")
            .token(token)
            .send()
            .await;
    }
    drop(_guard);
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    // The capture works: request lines with route, status and caller are there.
    assert!(
        log.contains("\"matched_path\":\"/api/v1/pools/{name}\""),
        "{log}"
    );
    assert!(log.contains("\"actor\":\"hank-helpdesk\""), "{log}");
    assert!(
        log.contains("\"status\":412") || log.contains("\"status\":200"),
        "{log}"
    );
    for secret in [ctx.admin.as_str(), &ctx.helpdesk, &ctx.viewer, wrong] {
        assert!(!log.contains(secret), "a token secret was logged");
        // Not even a large part of it.
        assert!(
            !log.contains(&secret[4..24]),
            "part of a token secret was logged"
        );
    }
    assert!(
        !log.to_ascii_lowercase().contains("authorization"),
        "the Authorization header was logged"
    );
}
