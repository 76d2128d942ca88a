//! The bound on the API's work: at most `max_concurrent` requests are handled at once, and a
//! request not answered within `timeout` (its wait for a turn included) gets 503.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::RequestLimits;

/// The shared state of [`bound`]: one semaphore for every route.
#[derive(Debug)]
pub(crate) struct Bound {
    turns: Semaphore,
    limits: RequestLimits,
}

impl Bound {
    pub(crate) fn new(limits: RequestLimits) -> Arc<Self> {
        Arc::new(Self {
            turns: Semaphore::new(limits.max_concurrent.max(1)),
            limits,
        })
    }
}

/// Middleware: waits for a turn, runs the request, and answers 503 `request_timeout` when
/// both together take longer than the timeout. (tower's timeout would not count the wait: a
/// concurrency limit waits in `poll_ready`, before the timer starts.)
pub(crate) async fn bound(State(bound): State<Arc<Bound>>, req: Request, next: Next) -> Response {
    let work = async {
        let _turn = bound.turns.acquire().await;
        next.run(req).await
    };
    match tokio::time::timeout(bound.limits.timeout, work).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("deskpool_http_timeouts_total").increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                format!(
                    "the request was not answered within {} s (the server is busy); retry later",
                    bound.limits.timeout.as_secs_f64()
                ),
            )
            .into_response()
        }
    }
}
