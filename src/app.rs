//! `serve`: every long-running task under one shutdown token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::intake::Intake;
use crate::listeners::smtp::{self, ListenerConfig, Services};
use crate::pipeline::Pipeline;

async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("{key} {addr:?}"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} {addr}"))
}

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = crate::cli::open_store(&config).await?;
    let pipeline = Pipeline::from_config(&config, store.clone()).with_context(|| {
        format!(
            "reading or creating {}",
            config.outbound.secret_file.display()
        )
    })?;
    let tls = if config.smtp.tls_cert.is_empty() {
        None
    } else {
        Some(
            smtp::load_tls(
                Path::new(&config.smtp.tls_cert),
                Path::new(&config.smtp.tls_key),
            )
            .context("smtp.tls_cert / smtp.tls_key")?,
        )
    };

    // Bind everything before announcing readiness, so a taken port stops start-up.
    let http = bind("http.listen", &config.http.listen).await?;
    let smtp_listener = smtp::Listener::Tcp(bind("smtp.listen", &config.smtp.listen).await?);
    let lmtp_listener = match config.smtp.lmtp_socket() {
        Some(path) => Some(
            smtp::bind_unix(path, config.smtp.lmtp_socket_mode)
                .with_context(|| format!("binding smtp.lmtp_listen unix:{}", path.display()))?,
        ),
        None if config.smtp.lmtp_listen.is_empty() => None,
        None => Some(smtp::Listener::Tcp(
            bind("smtp.lmtp_listen", &config.smtp.lmtp_listen).await?,
        )),
    };

    let stopping = CancellationToken::new();
    let stop_now = CancellationToken::new();
    let metrics = crate::ops::metrics::install();
    let (intake, committer) = Intake::start(pipeline.clone());
    let services = Services {
        pipeline: pipeline.clone(),
        intake,
        stopping: stopping.clone(),
        stop_now: stop_now.clone(),
        large_messages: Arc::new(Semaphore::new(config.smtp.max_large_messages)),
    };
    let accept_loops = TaskTracker::new();
    let sessions = TaskTracker::new();

    let imap_status = crate::listeners::imap::ImapStatus::default();
    let fetchers = TaskTracker::new();
    let imap_sources = crate::listeners::imap::sources(&store, &config)
        .await
        .context("reading the IMAP sources of the configured inboxes")?;
    if !imap_sources.is_empty() {
        let holder = crate::listeners::imap::instance_name(&config.imap.instance_id);
        tracing::info!(mailboxes = imap_sources.len(), instance = %holder, "IMAP fetchers starting");
        crate::listeners::imap::spawn(
            imap_sources,
            crate::listeners::imap::Fetchers {
                store: store.clone(),
                intake: services.intake.clone(),
                status: imap_status.clone(),
                global: config.imap.clone(),
                max_message_bytes: config.smtp.max_message_bytes,
                holder,
            },
            stopping.clone(),
            &fetchers,
        );
    }
    fetchers.close();

    tracing::info!(addr = %smtp_listener.describe(), "SMTP listening");
    accept_loops.spawn(smtp::serve(
        smtp_listener,
        ListenerConfig::from_config(&config.smtp, false, tls.clone()),
        services.clone(),
        sessions.clone(),
    ));
    if let Some(listener) = lmtp_listener {
        tracing::info!(addr = %listener.describe(), "LMTP listening");
        accept_loops.spawn(smtp::serve(
            listener,
            ListenerConfig::from_config(&config.smtp, true, tls.clone()),
            services.clone(),
            sessions.clone(),
        ));
    }
    accept_loops.close();

    tracing::info!(addr = %http.local_addr()?, "HTTP listening");
    // The outbox sender: one per instance; instances share the outbox through the database.
    let sender = crate::outbox::Sender::new(
        store.clone(),
        pipeline.blobs().clone(),
        pipeline.tokens().clone(),
        crate::outbox::SenderSettings {
            relay: config.outbound.relay.clone(),
            hello_name: config.smtp.hostname.clone(),
            max_attempts: config.outbound.max_attempts,
            retry_base: Duration::from_secs(config.outbound.retry_base_secs),
            concurrency: config.outbound.concurrency,
            ca_file: config.outbound.ca_file.clone(),
            holder: crate::listeners::imap::instance_name(&config.imap.instance_id),
            public_url: config.http.public_url.clone(),
        },
    )
    .context("setting up the outbound relay")?;
    let outbox_wake = sender.waker();
    let sender_stop = CancellationToken::new();
    let sender_task = tokio::spawn(sender.run(sender_stop.clone()));

    let router = crate::api::router(crate::api::AppState {
        pipeline: pipeline.clone(),
        metrics,
        imap: imap_status,
        public_url: config.http.public_url.clone(),
        max_upload_bytes: usize::try_from(config.smtp.max_message_bytes).unwrap_or(usize::MAX),
        outbox_wake: Some(outbox_wake),
    });
    let http_stop = stopping.clone();
    let http_idle = Duration::from_secs(config.http.idle_timeout_secs);
    let http_task = tokio::spawn(async move {
        let listener = crate::api::listener::IdleLimited::new(http, http_idle);
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    tracing::info!(database = %crate::cli::redact(&config.database.url), "initdesk-gateway started");
    crate::ops::systemd::ready();
    crate::ops::systemd::spawn_watchdog(stopping.clone());
    wait_for_signal().await;
    crate::ops::systemd::stopping();

    let grace = Duration::from_secs(config.smtp.shutdown_grace_secs);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections; finishing sessions in flight"
    );
    stopping.cancel();
    accept_loops.wait().await;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!("grace period over: closing the remaining sessions with 421");
        stop_now.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
    }
    // Fetchers finish the batch in hand and give their leases back.
    if tokio::time::timeout(grace, fetchers.wait()).await.is_err() {
        tracing::warn!("IMAP fetchers did not stop within the grace period");
    }
    // The committer stops once no session can hand it anything more.
    drop(services);
    let _ = committer.await;
    let _ = http_task.await;
    // Sends in progress finish (bounded by the relay timeout); the rest wait in the outbox.
    sender_stop.cancel();
    if tokio::time::timeout(grace, sender_task).await.is_err() {
        tracing::warn!("the outbox sender did not stop within the grace period");
    }
    store.close().await;
    tracing::info!("stopped");
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
