//! The HTTP probe endpoints of `gatehouse coordinator --http` and `gatehouse worker
//! --http`, for Kubernetes probes and load balancers:
//!
//! - `GET /healthz`: `200 ok` while the process serves (liveness);
//! - `GET /readyz`: `200 ready` when the process can do its job now, else `503 not
//!   ready` (what "ready" means is the caller's: the coordinator leads, the worker has a
//!   session with the leader and is not draining).
//!
//! Anything else is `404`. The server ends when `shutdown` fires.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Whether the process is ready; called on every `/readyz`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the probes on `listener` until `shutdown`.
pub async fn serve_probes(
    listener: TcpListener,
    ready: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
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
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn probes_answer_health_and_readiness() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_probes(
            listener,
            Arc::new(move || f.load(Ordering::Relaxed)),
            stop.clone(),
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        flag.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
        server.await.expect("task").expect("served");
    }
}
