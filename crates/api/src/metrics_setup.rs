//! The Prometheus recorder: histogram buckets for the API's and the reconciler's histograms.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP request latency by matched route, method and status.
pub(crate) const HTTP_DURATION: &str = "deskpool_http_request_duration_seconds";
/// Reconciler: one clone, from task start to ready.
pub(crate) const CLONE_DURATION: &str = "deskpool_clone_duration_seconds";
/// Reconciler: one reconcile pass of one pool.
pub(crate) const RECONCILE_DURATION: &str = "deskpool_reconcile_duration_seconds";

const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
// Linked clones take seconds; full clones or a busy datastore take minutes.
const CLONE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];
const RECONCILE_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A builder with deskpool's histogram buckets, for callers that install their own recorder.
pub fn metrics_builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for (name, buckets) in [
        (HTTP_DURATION, HTTP_BUCKETS),
        (CLONE_DURATION, CLONE_BUCKETS),
        (RECONCILE_DURATION, RECONCILE_BUCKETS),
    ] {
        b = b
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
            .expect("bucket lists are non-empty constants");
    }
    b
}

/// Installs deskpool's recorder as the global `metrics` recorder and returns its handle.
///
/// Safe to call more than once (tests do): later calls return the first handle. If another
/// recorder was installed globally by someone else, the returned handle belongs to a recorder
/// that is not global, so `/metrics` then shows only the database gauges.
pub fn install_metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_builder().build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "a metrics recorder was already installed; /metrics will not show it");
            }
            handle
        })
        .clone()
}
