//! Logs (tracing) and the admin HTTP endpoint every daemon serves: `/metrics` (Prometheus),
//! `/healthz` (the process is alive) and `/readyz` (it can serve).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Logs to stderr; `RUST_LOG` overrides the configured level.
pub fn init_logging(settings: &LogSettings, to: LogTo) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = match to {
        LogTo::Stdout => std::io::stdout().is_terminal(),
        LogTo::Stderr => std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || -> Box<dyn std::io::Write> {
            match to {
                LogTo::Stdout => Box::new(std::io::stdout()),
                LogTo::Stderr => Box::new(std::io::stderr()),
            }
        });
    // A second init (tests that start two daemons in one process) keeps the first.
    let _ = if settings.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Where a process logs: daemons to stdout (what container runtimes collect), tools to
/// stderr (their stdout is their output).
#[derive(Clone, Copy, Debug)]
pub enum LogTo {
    Stdout,
    Stderr,
}

/// Installs the process-wide metrics recorder and returns the handle that renders it.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Whether the daemon can serve requests now (for `/readyz`).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the admin endpoint until `shutdown` resolves.
pub async fn serve_admin(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/healthz", get(|| std::future::ready("ok\n")))
        .route(
            "/readyz",
            get(move || {
                let ok = ready();
                std::future::ready(if ok {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint on {addr}"))?;
    tracing::info!(%addr, "admin endpoint listening (/metrics, /healthz, /readyz)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("admin endpoint failed")
}
