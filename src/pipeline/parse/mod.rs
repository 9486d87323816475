//! Raw bytes to a [`ParsedMail`]: the only user of mail-parser.
//!
//! Parsing never fails: a message mail-parser cannot read becomes a best-effort text
//! message, and a message over a bound keeps what was read plus a note saying so.

mod attachments;
mod body;
mod charset;
mod headers;
pub mod html_guard;
mod language;
mod sanitize;

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

pub use attachments::{ParsedAttachment, sanitize_filename};
pub use body::html_to_text;
pub use headers::{AuthResult, BounceReport, HeaderFacts};
pub use language::detect_language;
pub use sanitize::sanitize_html;

use crate::config::LimitsConfig;

/// A mailbox from an address header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The address as written (trimmed).
    pub email: String,
    /// The decoded display name, empty when absent.
    pub name: String,
}

/// What the pipeline needs from one message.
#[derive(Debug, Clone, Default)]
pub struct ParsedMail {
    pub from: Option<Mailbox>,
    pub sender: Option<Mailbox>,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub reply_to: Vec<Mailbox>,
    pub subject: String,
    pub message_id: Option<String>,
    pub in_reply_to: Vec<String>,
    pub references: Vec<String>,
    pub date: Option<DateTime<Utc>>,
    /// text/plain bodies, decoded to UTF-8.
    pub text: String,
    /// text/html bodies as sent (not yet sanitized).
    pub html: String,
    pub attachments: Vec<ParsedAttachment>,
    pub headers: HeaderFacts,
    pub bounce: Option<BounceReport>,
    /// Bounds hit and repairs made, for a person reading the message later.
    pub notes: Vec<String>,
    /// Content hash that identifies the same mail delivered twice (SPEC 2.9).
    pub dedupe_key: String,
}

/// Parses `raw` within `limits`. Never panics on input; see [`parse_guarded`].
pub fn parse(raw: &[u8], limits: &LimitsConfig) -> ParsedMail {
    let mut notes = Vec::new();
    let max = usize::try_from(limits.max_parse_bytes).unwrap_or(usize::MAX);
    let input = if raw.len() > max {
        notes.push(format!(
            "message is {} bytes; only the first {max} were parsed",
            raw.len()
        ));
        &raw[..max]
    } else {
        raw
    };
    let mut mail = match MessageParser::default().parse(input) {
        Some(message) => from_message(&message, limits, &mut notes),
        None => {
            notes.push("not readable as MIME; stored as plain text".into());
            fallback(input)
        }
    };
    mail.dedupe_key = dedupe_key(&mail, raw);
    mail.notes.extend(notes);
    mail
}

/// [`parse`], with a panic in a parsing crate turned into an error instead of a crash.
pub fn parse_guarded(raw: &[u8], limits: &LimitsConfig) -> Result<ParsedMail, String> {
    std::panic::catch_unwind(|| parse(raw, limits)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("the parser failed on this message: {what}")
    })
}

fn from_message(
    message: &mail_parser::Message<'_>,
    limits: &LimitsConfig,
    notes: &mut Vec<String>,
) -> ParsedMail {
    if message.parts.len() > limits.max_parts {
        notes.push(format!(
            "message has {} MIME parts; only the first {} were read",
            message.parts.len(),
            limits.max_parts
        ));
    }
    let depth = nesting_depth(message);
    if depth > limits.max_depth {
        notes.push(format!(
            "MIME nesting is {depth} deep; parts below depth {} were not read",
            limits.max_depth
        ));
    }
    let headers = HeaderFacts::from_message(message, limits.max_headers, notes);

    let mut text: Vec<Cow<'_, str>> = Vec::new();
    for part in message.text_bodies().take(limits.max_parts) {
        if let PartType::Text(t) = &part.body {
            text.push(
                charset::utf7_repair(message, part).map_or(Cow::Borrowed(t.as_ref()), Cow::Owned),
            );
        }
    }
    let mut html: Vec<Cow<'_, str>> = Vec::new();
    for part in message.html_bodies().take(limits.max_parts) {
        if let PartType::Html(h) = &part.body {
            html.push(
                charset::utf7_repair(message, part).map_or(Cow::Borrowed(h.as_ref()), Cow::Owned),
            );
        }
    }
    let bounce = headers::bounce_report(message);
    let mut attachments = attachments::collect(
        message,
        limits,
        depth_limited_parts(message, limits.max_depth),
        notes,
    );
    let mut text = join_bodies(&text);
    let html = html.join("\n");
    // A multipart whose boundary never appears parses as one opaque part; its bytes are the
    // message the person wrote, so they are the body, not an attachment.
    if text.trim().is_empty()
        && html.trim().is_empty()
        && let Some(pos) = attachments
            .iter()
            .position(|a| a.content_type.starts_with("multipart/"))
    {
        let blob = attachments.remove(pos);
        text = opaque_body_text(message)
            .unwrap_or_else(|| charset::decode_best(&blob.bytes, &charset::declared(message)))
            .trim()
            .replace("\r\n", "\n");
        notes.push("MIME structure is broken (the declared boundary never appears); the body is kept as text".into());
    }

    let charsets = charset::declared(message);
    let repaired = |name: &str| {
        charset::reparse_header(message.raw_message(), message.headers(), name, &charsets)
    };
    let mut subject = one_line(message.subject().unwrap_or_default());
    if charset::is_damaged(&subject)
        && let Some(fixed) = repaired("Subject")
    {
        subject = one_line(fixed.subject().unwrap_or_default());
    }
    let mut from = first_mailbox(message.from());
    if from.as_ref().is_some_and(|f| charset::is_damaged(&f.name))
        && let Some(fixed) = repaired("From")
    {
        from = first_mailbox(fixed.from()).or(from);
    }

    ParsedMail {
        from,
        sender: first_mailbox(message.sender()),
        to: mailboxes(message.to()),
        cc: mailboxes(message.cc()),
        reply_to: mailboxes(message.reply_to()),
        subject,
        message_id: message.message_id().map(clean_id).filter(|s| !s.is_empty()),
        in_reply_to: id_list(message.in_reply_to()),
        references: id_list(message.references()),
        date: message
            .date()
            .and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
        text,
        html,
        attachments,
        headers,
        bounce,
        notes: Vec::new(),
        dedupe_key: String::new(),
    }
}

/// When mail-parser gives up: the bytes as lossy UTF-8 text, with the From line if one can be found.
fn fallback(raw: &[u8]) -> ParsedMail {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = split_head_body(&text);
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let from = header("from").and_then(|v| {
        let addr = v
            .rsplit_once('<')
            .map_or(v.as_str(), |(_, a)| a.trim_end_matches('>'));
        crate::address::parse_addr_spec(addr).map(|a| Mailbox {
            email: format!("{}@{}", a.local, a.domain),
            name: String::new(),
        })
    });
    ParsedMail {
        from,
        subject: header("subject").map(|s| one_line(&s)).unwrap_or_default(),
        message_id: header("message-id")
            .map(|s| clean_id(&s))
            .filter(|s| !s.is_empty()),
        text: body.to_string(),
        ..ParsedMail::default()
    }
}

fn split_head_body(text: &str) -> (&str, &str) {
    for sep in ["\r\n\r\n", "\n\n"] {
        if let Some(i) = text.find(sep) {
            return (&text[..i], &text[i + sep.len()..]);
        }
    }
    (text, "")
}

/// The body of a multipart whose parts could not be found, from the raw bytes: transfer
/// encoding undone, then decoded in the message's charsets (the parser's text is lossy).
fn opaque_body_text(message: &mail_parser::Message<'_>) -> Option<String> {
    use mail_parser::decoders::{base64::base64_decode, quoted_printable::quoted_printable_decode};
    let part = message.parts.iter().find(|p| {
        !matches!(p.body, PartType::Multipart(_))
            && p.content_type()
                .is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart"))
    })?;
    let raw = message
        .raw_message()
        .get(part.offset_body as usize..part.offset_end as usize)?;
    let bytes = match part.encoding {
        mail_parser::Encoding::QuotedPrintable => quoted_printable_decode(raw)?,
        mail_parser::Encoding::Base64 => base64_decode(raw)?,
        mail_parser::Encoding::None => raw.to_vec(),
    };
    Some(charset::decode_best(&bytes, &charset::declared(message)))
}

fn nesting_depth(message: &mail_parser::Message<'_>) -> usize {
    // Iterative: a hostile message can nest thousands deep.
    let mut deepest = 0;
    let mut stack = vec![(0u32, 0usize)];
    let mut budget = 100_000;
    while let Some((id, depth)) = stack.pop() {
        budget -= 1;
        if budget == 0 {
            break;
        }
        deepest = deepest.max(depth);
        if let Some(PartType::Multipart(children)) = message.part(id).map(|p| &p.body) {
            stack.extend(children.iter().map(|c| (*c, depth + 1)));
        }
    }
    deepest
}

/// The part ids at most `max_depth` multiparts deep.
fn depth_limited_parts(message: &mail_parser::Message<'_>, max_depth: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![(0u32, 0usize)];
    while let Some((id, depth)) = stack.pop() {
        out.push(id);
        if let Some(PartType::Multipart(children)) = message.part(id).map(|p| &p.body)
            && depth < max_depth
        {
            stack.extend(children.iter().rev().map(|c| (*c, depth + 1)));
        }
    }
    out
}

fn first_mailbox(addr: Option<&Address<'_>>) -> Option<Mailbox> {
    mailboxes(addr).into_iter().next()
}

fn mailboxes(addr: Option<&Address<'_>>) -> Vec<Mailbox> {
    let Some(addr) = addr else { return Vec::new() };
    addr.iter()
        .filter_map(|a| {
            let email = a.address()?.trim();
            crate::address::parse_addr_spec(email)?;
            Some(Mailbox {
                email: email.to_string(),
                name: one_line(a.name().unwrap_or_default())
                    .trim_matches(|c| c == '"' || c == '\'')
                    .trim()
                    .to_string(),
            })
        })
        .collect()
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    let list: Vec<String> = match value {
        HeaderValue::Text(t) => vec![clean_id(t)],
        HeaderValue::TextList(l) => l.iter().map(|t| clean_id(t)).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .filter(|s| !s.is_empty())
        .take(100)
        .collect()
}

/// A Message-ID without brackets or white space, as stored and compared.
pub fn clean_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect()
}

/// Folds a header value onto one line with no control characters (CR/LF never survive).
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

fn join_bodies(parts: &[Cow<'_, str>]) -> String {
    parts
        .iter()
        .map(|p| p.trim_end_matches(['\r', '\n']))
        .filter(|p| !p.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
        .replace("\r\n", "\n")
}

/// Identifies "the same mail" across an MTA retry, two inboxes, or IMAP after SMTP: the
/// identifying headers and the body, not the trace headers each hop adds. A stranger who
/// reuses a Message-ID with other content gets another key and cannot suppress the real mail.
fn dedupe_key(mail: &ParsedMail, raw: &[u8]) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for field in [
        mail.message_id.as_deref().unwrap_or(""),
        mail.from.as_ref().map_or("", |m| m.email.as_str()),
        &mail
            .date
            .map(|d| d.timestamp().to_string())
            .unwrap_or_default(),
        &mail.subject,
    ] {
        h.update(field.as_bytes());
        h.update(&[0]);
    }
    let body_start = find(raw, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| find(raw, b"\n\n").map(|i| i + 2))
        .unwrap_or(raw.len());
    let body = &raw[body_start..];
    // Line endings and trailing white space differ between SMTP, LMTP and IMAP copies.
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let end = line
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        h.update(&line[..end]);
        h.update(b"\n");
    }
    hex::encode(h.finish())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    #[test]
    fn plain_message() {
        let raw = b"From: \"Alice A.\" <alice@example.com>\r\nTo: support@acme.test\r\nSubject: =?UTF-8?Q?Caf=C3=A9?=\r\nMessage-ID: <a1@example.com>\r\n\r\nHello\r\n";
        let m = parse(raw, &limits());
        let from = m.from.expect("from");
        assert_eq!(from.email, "alice@example.com");
        assert_eq!(from.name, "Alice A.");
        assert_eq!(m.subject, "Café");
        assert_eq!(m.message_id.as_deref(), Some("a1@example.com"));
        assert_eq!(m.text, "Hello");
        assert!(m.html.is_empty());
    }

    #[test]
    fn garbage_still_parses() {
        for raw in [
            &b""[..],
            b"\x00\x01\x02",
            b"no headers at all",
            b"From:\r\n\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
        ] {
            let _ = parse(raw, &limits());
        }
    }

    #[test]
    fn dedupe_ignores_trace_headers_and_line_endings() {
        let a = b"Received: from a\r\nFrom: a@b.c\r\nMessage-ID: <x@y>\r\nSubject: s\r\n\r\nbody line\r\n";
        let b = b"Return-Path: <a@b.c>\nDelivered-To: support@acme.test\nFrom: a@b.c\nMessage-ID: <x@y>\nSubject: s\n\nbody line\n";
        let c = b"From: a@b.c\nMessage-ID: <x@y>\nSubject: s\n\nother body\n";
        let ka = parse(a, &limits()).dedupe_key;
        assert_eq!(ka, parse(b, &limits()).dedupe_key);
        assert_ne!(ka, parse(c, &limits()).dedupe_key);
    }

    #[test]
    fn dedupe_key_is_stable_across_releases() {
        // Stored keys must still match after an upgrade (an MTA retry may straddle one).
        // Computed independently with Python's hashlib over the documented fields.
        let raw = b"Received: from x\r\nMessage-ID: <k1@example.com>\r\nFrom: Ann <ann@example.com>\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\nSubject: Key\r\n\r\nHello  \r\nthere\r\n";
        assert_eq!(
            parse(raw, &limits()).dedupe_key,
            "172217f33d55eeb11067dab3918e1f76c0fbc1fbec1871d7d2f3577885a88d4e"
        );
    }

    #[test]
    fn size_cap_adds_note() {
        let mut raw = b"From: a@b.c\r\nSubject: big\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 10_000));
        let l = LimitsConfig {
            max_parse_bytes: 1000,
            ..limits()
        };
        let m = parse(&raw, &l);
        assert!(
            m.notes.iter().any(|n| n.contains("only the first 1000")),
            "{:?}",
            m.notes
        );
        assert_eq!(m.from.expect("from").email, "a@b.c");
    }
}
