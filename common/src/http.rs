//! The HTTP endpoints of `gatehouse coordinator --http` and `gatehouse worker --http`,
//! for Kubernetes probes, load balancers and Prometheus:
//!
//! - `GET /healthz`: `200 ok` while the process serves (liveness);
//! - `GET /readyz`: `200 ready` when the process can do its job now, else `503 not
//!   ready` (what "ready" means is the caller's: the coordinator leads, the worker has a
//!   session with the leader and is not draining);
//! - `GET /metrics`: the role's metrics in the OpenMetrics text format.
//!
//! Anything else is `404`. The server ends when `shutdown` fires.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::{
    CONTENT_TYPE, SharedRegistry, TEXT_CONTENT_TYPE, accepts_openmetrics, encode, to_text_format,
};

/// Whether the process is ready; called on every `/readyz`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the probes and metrics on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    ready: Readiness,
    metrics: SharedRegistry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let body = encode(&metrics);
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let answer = if accepts_openmetrics(accept) {
                    (CONTENT_TYPE, body)
                } else {
                    (TEXT_CONTENT_TYPE, to_text_format(&body))
                };
                async move { ([(header::CONTENT_TYPE, answer.0)], answer.1) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move {
                    match ready {
                        true => (StatusCode::OK, "ready\n"),
                        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        get_accepting(addr, path, "*/*").await
    }

    async fn get_accepting(addr: std::net::SocketAddr, path: &str, accept: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn probes_answer_health_readiness_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let stop = CancellationToken::new();
        let mut registry = crate::telemetry::metrics::registry();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("probes", "Probes answered", counter.clone());
        counter.inc();
        let server = crate::spawn::spawn_named(
            "http",
            serve(
                listener,
                Arc::new(move || f.load(Ordering::Relaxed)),
                Arc::new(registry),
                stop.clone(),
            ),
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        flag.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let om = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let metrics = get_accepting(addr, "/metrics", om).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE gatehouse_probes counter"),
            "{metrics}"
        );
        assert!(metrics.contains("gatehouse_probes_total 1"), "{metrics}");
        assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
        // Anything else gets the classic text format.
        let text = get(addr, "/metrics").await;
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(
            text.contains("# HELP gatehouse_probes_total Probes answered"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gatehouse_probes_total counter"),
            "{text}"
        );
        assert!(text.contains("gatehouse_probes_total 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        stop.cancel();
        server.await.expect("task").expect("served");
    }
}
