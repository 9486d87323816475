//! One SMTP or LMTP session as a state machine over any byte stream (a TCP socket, a TLS
//! stream, or an in-memory pipe in tests).
//!
//! Framing is ours (RFC 5321 command lines are at most 512 octets); commands are parsed by
//! smtp-proto, and DATA is un-dot-stuffed by its receiver, which ends a message only at a
//! strict CRLF.CRLF. A message with a bare CR or LF anywhere is refused: that is what SMTP
//! smuggling hides behind.

use std::net::SocketAddr;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use smtp_proto::{Error as ProtoError, Request};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::intake::Intake;
use crate::pipeline::{Delivery, Envelope, IngestError, Outcome, Pipeline, Recipient, Source};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets with its CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// A message past this size must hold a large-message slot while it is received and committed.
pub const LARGE_MESSAGE: usize = 1024 * 1024;

/// How a session is set up; shared by every session of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    /// LMTP (RFC 2033): LHLO instead of EHLO, one reply per recipient after DATA.
    pub lmtp: bool,
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    pub idle_timeout: Duration,
    pub session_timeout: Duration,
    pub max_errors: usize,
}

/// Why a session's conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// QUIT.
    Quit,
    /// The client asked for STARTTLS and was told to go ahead: the caller upgrades the stream.
    StartTls,
    /// The client went away, timed out, made too many errors, or the gateway is stopping.
    Closed,
}

/// What the session hands its listener: the pipeline for RCPT checks and the intake for DATA.
#[derive(Debug, Clone)]
pub struct Services {
    pub pipeline: Pipeline,
    pub intake: Intake,
    /// Cancelled when the gateway stops accepting: idle sessions are told 421.
    pub stopping: CancellationToken,
    /// Cancelled when the shutdown grace period is over: every session is told 421.
    pub stop_now: CancellationToken,
    /// Slots for messages over [`LARGE_MESSAGE`]: memory is bounded by the slots, not by how
    /// many large messages arrive at once (the others wait, and TCP holds their senders back).
    pub large_messages: Arc<Semaphore>,
}

/// The other end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A process on this machine, over a Unix socket.
    Local,
}

impl Peer {
    /// How the greeting names the client.
    fn host(&self) -> String {
        match self {
            Peer::Tcp(addr) => addr.ip().to_string(),
            Peer::Local => "localhost".into(),
        }
    }

    /// The client's part of the `Received:` comment: `[address]`, or `localhost`.
    fn received_from(&self) -> String {
        match self {
            Peer::Tcp(addr) => format!("[{}]", addr.ip()),
            Peer::Local => "localhost".into(),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => addr.fmt(f),
            Peer::Local => f.write_str("unix socket"),
        }
    }
}

/// The state of one conversation.
pub struct Session {
    cfg: SessionConfig,
    services: Services,
    peer: Peer,
    tls_available: bool,
    tls_active: bool,
    deadline: Instant,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    errors: usize,
    out: Vec<u8>,
}

enum Act {
    Continue,
    Data,
    StartTls,
    Quit,
    Close,
}

enum Read {
    Bytes,
    Closed,
}

impl Session {
    /// A new session with `peer`; STARTTLS is offered when `tls_available`.
    pub fn new(cfg: SessionConfig, services: Services, peer: Peer, tls_available: bool) -> Self {
        let deadline = Instant::now() + cfg.session_timeout;
        Self {
            cfg,
            services,
            peer,
            tls_available,
            tls_active: false,
            deadline,
            helo: None,
            mail_from: None,
            rcpts: Vec::new(),
            errors: 0,
            out: Vec::new(),
        }
    }

    /// After a TLS handshake: everything said before is forgotten (RFC 3207 4.2).
    pub fn tls_established(&mut self) {
        self.tls_active = true;
        self.tls_available = false;
        self.helo = None;
        self.reset();
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
    }

    fn reply(&mut self, line: &str) {
        let code = line.get(..3).unwrap_or("000").to_string();
        metrics::counter!("initdesk_smtp_replies_total", "code" => code).increment(1);
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn error(&mut self, line: &str) -> Act {
        self.reply(line);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.reply("421 4.7.0 Too many errors, closing the connection");
            return Act::Close;
        }
        Act::Continue
    }

    /// How long the session may wait on its client now: the idle timeout, or less when the
    /// session's deadline is nearer.
    fn wait_limit(&self) -> Duration {
        self.cfg
            .idle_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// Sends the replies so far; false when the client is gone or will not take them.
    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> bool {
        if self.out.is_empty() {
            return true;
        }
        // A client that sends but never reads fills the socket, and the write would wait
        // forever, holding the session: writing is bounded like reading (idle timeout, the
        // session's deadline, shutdown), with a second's grace for a last reply.
        let limit = self.wait_limit().max(Duration::from_secs(1));
        let out = std::mem::take(&mut self.out);
        let write = async { stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok() };
        let ok = tokio::select! {
            // The write first: a last 421 at shutdown goes out when the socket takes it.
            biased;
            written = tokio::time::timeout(limit, write) => written.unwrap_or(false),
            () = self.services.stop_now.cancelled() => false,
        };
        self.out = out;
        self.out.clear();
        ok
    }

    /// Runs the conversation until QUIT, STARTTLS, or the end of the connection.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, stream: &mut S) -> End {
        if !self.tls_active {
            let greeting = format!(
                "220 {} {} initdesk-gateway ready",
                self.cfg.hostname,
                if self.cfg.lmtp { "LMTP" } else { "ESMTP" }
            );
            self.reply(&greeting);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut start = 0usize;
        let mut skipping = false;
        loop {
            // Every complete line already received is answered before reading again, which is
            // what PIPELINING asks for.
            if let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
                let line_end = start + pos + 1;
                let line = buf[start..line_end].to_vec();
                start = line_end;
                if skipping {
                    skipping = false;
                    if let Act::Close = self.error("500 5.5.2 Line too long") {
                        self.flush(stream).await;
                        return End::Closed;
                    }
                    continue;
                }
                if line.len() > MAX_COMMAND_LINE {
                    if let Act::Close = self.error("500 5.5.2 Line too long") {
                        self.flush(stream).await;
                        return End::Closed;
                    }
                    continue;
                }
                match self.command(&line).await {
                    Act::Continue => {}
                    Act::Data => {
                        if !self.flush(stream).await {
                            return End::Closed;
                        }
                        buf.drain(..start);
                        start = 0;
                        match self.data(stream, &mut buf).await {
                            Some(()) => continue,
                            None => {
                                self.flush(stream).await;
                                return End::Closed;
                            }
                        }
                    }
                    Act::StartTls => {
                        self.flush(stream).await;
                        // Anything pipelined after STARTTLS was sent in the clear and must not
                        // be carried into the TLS session (CVE-2011-0411 and its kin).
                        return End::StartTls;
                    }
                    Act::Quit => {
                        self.flush(stream).await;
                        return End::Quit;
                    }
                    Act::Close => {
                        self.flush(stream).await;
                        return End::Closed;
                    }
                }
                continue;
            }
            // No complete line: keep at most one partial command line.
            buf.drain(..start);
            start = 0;
            if buf.len() > MAX_COMMAND_LINE {
                buf.clear();
                skipping = true;
            }
            if !self.flush(stream).await {
                return End::Closed;
            }
            match self.read_more(stream, &mut buf, false).await {
                Read::Bytes => {}
                Read::Closed => {
                    self.flush(stream).await;
                    return End::Closed;
                }
            }
        }
    }

    /// Reads more input, bounded by the idle and session timeouts and the shutdown tokens.
    async fn read_more<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
        in_data: bool,
    ) -> Read {
        let mut chunk = [0u8; 16 * 1024];
        let idle = tokio::time::sleep(self.wait_limit());
        // While a message is being received, only the end of the grace period interrupts it.
        let stopping = if in_data {
            self.services.stop_now.clone()
        } else {
            self.services.stopping.clone()
        };
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => Read::Closed,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    Read::Bytes
                }
            },
            () = idle => {
                self.reply("421 4.4.2 Timeout, closing the connection");
                Read::Closed
            }
            () = stopping.cancelled() => {
                self.reply("421 4.3.2 Service shutting down, try again later");
                Read::Closed
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Act {
        let parsed = Request::parse(&mut line.iter());
        let request = match parsed {
            Ok(r) => r,
            Err(ProtoError::UnknownCommand) => {
                return self.error("500 5.5.1 Command not recognized");
            }
            Err(ProtoError::InvalidSenderAddress) => {
                return self.error("501 5.1.7 Bad sender address syntax");
            }
            Err(ProtoError::InvalidRecipientAddress) => {
                return self.error("501 5.1.3 Bad recipient address syntax");
            }
            Err(ProtoError::SyntaxError { syntax }) => {
                return self.error(&format!("501 5.5.4 Syntax: {syntax}"));
            }
            Err(ProtoError::InvalidParameter { param }) => {
                return self.error(&format!("501 5.5.4 Invalid parameter {param:?}"));
            }
            Err(ProtoError::UnsupportedParameter { param }) => {
                let param: String = param.chars().filter(|c| !c.is_control()).take(40).collect();
                return self.error(&format!("504 5.5.4 Unsupported parameter {param:?}"));
            }
            Err(_) => return self.error("500 5.5.2 Syntax error"),
        };
        match request {
            Request::Ehlo { host } if !self.cfg.lmtp => {
                let first = format!("{} Hello {}", self.cfg.hostname, self.peer.host());
                self.greet(host.into_owned(), first);
                Act::Continue
            }
            Request::Lhlo { host } if self.cfg.lmtp => {
                let first = self.cfg.hostname.clone();
                self.greet(host.into_owned(), first);
                Act::Continue
            }
            Request::Helo { host } if !self.cfg.lmtp => {
                self.helo = Some(host.into_owned());
                self.reset();
                let line = format!("250 {}", self.cfg.hostname);
                self.reply(&line);
                Act::Continue
            }
            Request::Ehlo { .. } | Request::Helo { .. } => {
                self.error("500 5.5.1 This is an LMTP server: say LHLO")
            }
            Request::Lhlo { .. } => self.error("500 5.5.1 This is an SMTP server: say EHLO"),
            Request::StartTls => {
                if !self.tls_available || self.tls_active {
                    return self.error("502 5.5.1 STARTTLS not available");
                }
                self.reply("220 2.0.0 Ready to start TLS");
                Act::StartTls
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error("503 5.5.1 Say EHLO first");
                }
                if self.mail_from.is_some() {
                    return self.error("503 5.5.1 Sender already given");
                }
                if from.size > self.cfg.max_message_bytes {
                    return self.error(&format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes",
                        self.cfg.max_message_bytes
                    ));
                }
                self.mail_from = Some(from.address.into_owned());
                self.reply("250 2.1.0 Sender OK");
                Act::Continue
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL first");
                }
                if self.rcpts.len() >= self.cfg.max_recipients {
                    self.reply("452 4.5.3 Too many recipients");
                    return Act::Continue;
                }
                let address = to.address.into_owned();
                match self
                    .services
                    .pipeline
                    .check_recipient(&Recipient::Address(address.clone()))
                    .await
                {
                    Ok(()) => {
                        self.rcpts.push(address);
                        self.reply("250 2.1.5 Recipient OK");
                        Act::Continue
                    }
                    Err(IngestError::UnknownRecipient(_)) => {
                        self.error("550 5.1.1 No such mailbox here")
                    }
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, error = %e, "recipient check failed");
                        self.reply("451 4.3.0 Temporary failure, try again later");
                        Act::Continue
                    }
                }
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL first");
                }
                if self.rcpts.is_empty() {
                    return self.error("554 5.5.1 No valid recipients");
                }
                self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
                Act::Data
            }
            Request::Rset => {
                self.reset();
                self.reply("250 2.0.0 OK");
                Act::Continue
            }
            Request::Noop { .. } => {
                self.reply("250 2.0.0 OK");
                Act::Continue
            }
            Request::Quit => {
                self.reply("221 2.0.0 Bye");
                Act::Quit
            }
            Request::Vrfy { .. } => {
                self.reply("252 2.5.0 Cannot verify, but will accept and attempt delivery");
                Act::Continue
            }
            Request::Help { .. } => {
                self.reply("214 2.0.0 See RFC 5321");
                Act::Continue
            }
            Request::Bdat { .. } => self.error("502 5.5.1 CHUNKING not supported"),
            Request::Auth { .. } => self.error("502 5.5.1 Authentication not supported"),
            _ => self.error("502 5.5.1 Command not implemented"),
        }
    }

    /// EHLO or LHLO: a new start, answered with the capabilities.
    fn greet(&mut self, host: String, first_line: String) {
        self.helo = Some(host);
        self.reset();
        let mut lines = vec![
            first_line,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_bytes),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.tls_available && !self.tls_active {
            lines.push("STARTTLS".to_string());
        }
        self.multiline(250, &lines);
    }

    fn multiline(&mut self, code: u16, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let text = format!("{code}{sep}{line}");
            self.reply(&text);
        }
    }

    /// Receives one message after 354; `None` when the connection is gone.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> Option<()> {
        let mut receiver = DataReceiver::new();
        // The trace header goes in first, so the message is never copied to prepend it.
        let first_rcpt = self.rcpts.first().cloned().unwrap_or_default();
        let mut message = self.received_header(&first_rcpt).into_bytes();
        let header_len = message.len();
        message.reserve(64 * 1024);
        let mut smuggling = BareCheck::default();
        let mut too_big = false;
        let mut large_slot: Option<OwnedSemaphorePermit> = None;
        loop {
            let mut iter = buf.iter();
            let done = receiver.ingest(&mut iter, &mut message);
            let consumed = buf.len() - iter.as_slice().len();
            smuggling.scan(&buf[..consumed]);
            buf.drain(..consumed);
            if too_big || message.len() - header_len > self.cfg.max_message_bytes {
                // Keep reading to the end so the session stays in step, but keep nothing.
                too_big = true;
                message.truncate(header_len);
            } else if large_slot.is_none() && message.len() > LARGE_MESSAGE {
                large_slot = self
                    .services
                    .large_messages
                    .clone()
                    .acquire_owned()
                    .await
                    .ok();
            }
            if done {
                break;
            }
            if let Read::Closed = self.read_more(stream, buf, true).await {
                return None;
            }
        }
        let mail_from = self.mail_from.take();
        let rcpts = std::mem::take(&mut self.rcpts);
        if too_big {
            let text = format!(
                "Message size exceeds the limit of {} bytes",
                self.cfg.max_message_bytes
            );
            self.refuse_data(&rcpts, "552 5.3.4", &text);
            return Some(());
        }
        if smuggling.found {
            self.refuse_data(
                &rcpts,
                "550 5.6.11",
                "Message refused: bare CR or LF in DATA (SMTP requires CRLF line endings)",
            );
            return Some(());
        }
        let source = if self.cfg.lmtp {
            Source::Lmtp
        } else {
            Source::Smtp
        };
        // Shared as it is, not copied: a 50 MB message would be in memory twice for a moment.
        // What doubling growth left over is returned first (for large buffers glibc's realloc
        // moves pages, not bytes).
        if message.capacity() - message.len() > LARGE_MESSAGE {
            message.shrink_to_fit();
        }
        let raw = Arc::new(message);
        let deliveries = rcpts
            .iter()
            .map(|r| Delivery {
                raw: raw.clone(),
                envelope: Envelope {
                    recipient: Recipient::Address(r.clone()),
                    mail_from: mail_from.clone(),
                    source,
                },
            })
            .collect();
        drop(raw);
        let results = self.services.intake.submit(deliveries).await;
        drop(large_slot);
        if self.cfg.lmtp {
            for (rcpt, result) in rcpts.iter().zip(&results) {
                let line = reply_for(result, Some(rcpt));
                self.reply(&line);
            }
        } else {
            let line = summary_reply(&results);
            self.reply(&line);
        }
        Some(())
    }

    /// Refuses a received message: once over SMTP, once per recipient over LMTP, whose
    /// client waits for as many replies as it had recipients accepted (RFC 2033 4.2).
    fn refuse_data(&mut self, rcpts: &[String], code: &str, text: &str) {
        if self.cfg.lmtp {
            for rcpt in rcpts {
                let line = format!("{code}{} {text}", recipient_tag(Some(rcpt)));
                self.reply(&line);
            }
        } else {
            self.reply(&format!("{code} {text}"));
        }
    }

    /// The trace header a receiving MTA adds (RFC 5321 4.4), so a person can see how the mail came.
    fn received_header(&self, rcpt: &str) -> String {
        let helo: String = self
            .helo
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(100)
            .collect();
        let rcpt: String = rcpt
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(200)
            .collect();
        let with = match (self.cfg.lmtp, self.tls_active) {
            (true, _) => "LMTP",
            (false, true) => "ESMTPS",
            (false, false) => "ESMTP",
        };
        format!(
            "Received: from {helo} ({})\r\n\tby {} (initdesk-gateway) with {with}\r\n\tfor <{rcpt}>; {}\r\n",
            self.peer.received_from(),
            self.cfg.hostname,
            chrono::Utc::now().to_rfc2822()
        )
    }
}

/// One reply for a whole SMTP message: all stored, or the most urgent failure.
fn summary_reply(results: &[Result<Outcome, IngestError>]) -> String {
    if let Some(temporary) = results
        .iter()
        .find(|r| matches!(r, Err(IngestError::Temporary(_))))
    {
        return reply_for(temporary, None);
    }
    if let Some(ok) = results.iter().find(|r| r.is_ok()) {
        return reply_for(ok, None);
    }
    results.first().map_or_else(
        || "451 4.3.0 Temporary failure, try again later".to_string(),
        |r| reply_for(r, None),
    )
}

/// ` <recipient>` for an LMTP reply about one recipient (printable ASCII only); empty for SMTP.
fn recipient_tag(rcpt: Option<&str>) -> String {
    rcpt.map(|r| {
        format!(
            " <{}>",
            r.chars()
                .filter(|c| c.is_ascii_graphic())
                .collect::<String>()
        )
    })
    .unwrap_or_default()
}

fn reply_for(result: &Result<Outcome, IngestError>, rcpt: Option<&str>) -> String {
    let who = recipient_tag(rcpt);
    match result {
        Ok(outcome) => format!("250 2.0.0{who} OK: {}", outcome.kind()),
        Err(IngestError::Temporary(_)) => {
            format!("451 4.3.0{who} Temporary failure, try again later")
        }
        Err(IngestError::UnknownRecipient(_)) => format!("550 5.1.1{who} No such mailbox here"),
        Err(IngestError::Unusable(reason)) => {
            let reason: String = reason
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            format!("550 5.6.0{who} Message refused: {reason}")
        }
        Err(IngestError::Failed(_)) => format!("451 4.3.0{who} Temporary failure, try again later"),
    }
}

/// Finds CR not followed by LF and LF not preceded by CR, across chunk boundaries.
#[derive(Default)]
struct BareCheck {
    prev: u8,
    found: bool,
}

impl BareCheck {
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if (b == b'\n' && self.prev != b'\r') || (self.prev == b'\r' && b != b'\n') {
                self.found = true;
            }
            self.prev = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_endings() {
        let check = |chunks: &[&[u8]]| {
            let mut c = BareCheck::default();
            for chunk in chunks {
                c.scan(chunk);
            }
            c.found
        };
        assert!(!check(&[b"a\r\nb\r\n.\r\n"]));
        assert!(!check(&[b"a\r", b"\nb\r\n"]));
        assert!(check(&[b"a\nb\r\n"]));
        assert!(check(&[b"a\rb\r\n"]));
        assert!(check(&[b"a\r", b"b"]));
    }
}
