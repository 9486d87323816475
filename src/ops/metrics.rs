//! Prometheus metrics: the recorder is installed once by `serve`; without it every
//! `metrics::` call is a no-op (tests, one-shot commands).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder and describes the gateway's metrics; `None` if one exists already.
pub fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ])
        .ok()?
        .install_recorder()
        .ok()?;
    metrics::describe_counter!(
        "initdesk_messages_total",
        "Messages handed to the pipeline, by outcome"
    );
    metrics::describe_counter!(
        "initdesk_smtp_replies_total",
        "SMTP and LMTP replies sent, by code"
    );
    metrics::describe_gauge!("initdesk_smtp_sessions", "SMTP and LMTP sessions open now");
    metrics::describe_counter!(
        "initdesk_smtp_sessions_total",
        "SMTP and LMTP sessions accepted"
    );
    metrics::describe_histogram!(
        "initdesk_commit_seconds",
        "Time to commit one batch of messages"
    );
    metrics::describe_histogram!(
        "initdesk_commit_write_seconds",
        "Time one batch holds the database's write side (the serial part of a commit)"
    );
    metrics::describe_histogram!(
        "initdesk_commit_batch_messages",
        "Messages committed together in one batch"
    );
    metrics::describe_counter!(
        "initdesk_imap_messages_total",
        "Messages fetched from IMAP mailboxes, by mailbox and outcome"
    );
    metrics::describe_counter!(
        "initdesk_imap_errors_total",
        "IMAP fetcher failures, by mailbox and kind (connect, tls, auth, protocol, timeout, database)"
    );
    metrics::describe_gauge!(
        "initdesk_imap_failing",
        "1 while a mailbox's fetcher is failing, 0 once it works again"
    );
    metrics::describe_gauge!(
        "initdesk_imap_lease_held",
        "1 when this instance holds the mailbox's lease and fetches it"
    );
    metrics::describe_counter!(
        "initdesk_imap_resyncs_total",
        "Folders read again from the start after a UIDVALIDITY change"
    );
    Some(handle)
}
