//! `serve`: every long-running task under one shutdown token.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::pipeline::Pipeline;

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = crate::cli::open_store(&config).await?;
    let pipeline = Pipeline::from_config(&config, store.clone()).with_context(|| {
        format!(
            "reading or creating {}",
            config.outbound.secret_file.display()
        )
    })?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();

    let http_addr: SocketAddr = config
        .http
        .listen
        .parse()
        .with_context(|| format!("http.listen {:?}", config.http.listen))?;
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding http.listen {http_addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let router = crate::api::router(crate::api::AppState {
        pipeline: pipeline.clone(),
    });
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tasks.close();

    tracing::info!(database = %crate::cli::redact(&config.database.url), "initdesk-gateway started");
    wait_for_signal().await;
    tracing::info!("shutting down: draining open sessions");
    shutdown.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(30), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still running after 30 s; stopping anyway");
    }
    store.close().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
