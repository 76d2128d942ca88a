//! One log event and one histogram sample per request.
//!
//! Written by hand rather than with tower-http's `TraceLayer` so that no header (in particular
//! `Authorization`) can ever reach the log, whatever the level.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use tracing::Instrument;

use crate::auth::ActorSlot;
use crate::metrics_setup::HTTP_DURATION;

/// Method label with bounded cardinality.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Logs and measures one request under its matched route (`unmatched` for 404s, so random
/// paths cannot blow up the label set).
pub(crate) async fn observe(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let actor = ActorSlot::default();
    req.extensions_mut().insert(actor.clone());

    let span = tracing::info_span!("http", method, matched_path = %route);
    let res = next.run(req).instrument(span.clone()).await;

    let latency = start.elapsed();
    let status = res.status().as_u16();
    let actor = actor.0.get().map_or("-", String::as_str);
    let latency_ms = latency.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(method, matched_path = %route, status, latency_ms, actor, "request");
        } else {
            tracing::info!(method, matched_path = %route, status, latency_ms, actor, "request");
        }
    });
    metrics::histogram!(HTTP_DURATION, "route" => route, "method" => method, "status" => status.to_string())
        .record(latency.as_secs_f64());
    res
}
