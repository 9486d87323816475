//! Header facts the policy steps decide on, and delivery-status reports.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// Top-level header fields, unfolded, with names lower-cased.
#[derive(Debug, Clone, Default)]
pub struct HeaderFacts {
    pub fields: Vec<(String, String)>,
    pub content_type: String,
    pub report_type: String,
}

impl HeaderFacts {
    pub(super) fn from_message(
        message: &mail_parser::Message<'_>,
        max_headers: usize,
        notes: &mut Vec<String>,
    ) -> Self {
        let mut fields = Vec::new();
        for (i, (name, value)) in message.headers_raw().enumerate() {
            if i == max_headers {
                notes.push(format!(
                    "message has more than {max_headers} header fields; the rest were not read"
                ));
                break;
            }
            fields.push((name.to_ascii_lowercase(), super::one_line(value)));
        }
        let ct = message.content_type();
        HeaderFacts {
            fields,
            content_type: ct
                .map(|c| {
                    format!("{}/{}", c.ctype(), c.subtype().unwrap_or_default())
                        .to_ascii_lowercase()
                })
                .unwrap_or_default(),
            report_type: ct
                .and_then(|c| c.attribute("report-type"))
                .unwrap_or_default()
                .to_ascii_lowercase(),
        }
    }

    /// Every value of a header field (name in lower case).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a header field (name in lower case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parsed `Authentication-Results` fields.
    pub fn auth_results(&self) -> Vec<AuthResult> {
        self.all("authentication-results")
            .filter_map(AuthResult::parse)
            .collect()
    }
}

/// One `Authentication-Results` field (RFC 8601), reduced to the verdicts we record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuthResult {
    pub authserv_id: String,
    pub dkim: String,
    pub dmarc: String,
    pub spf: String,
}

impl AuthResult {
    fn parse(value: &str) -> Option<AuthResult> {
        let mut parts = value.split(';');
        let authserv_id = parts
            .next()?
            .split_whitespace()
            .next()?
            .to_ascii_lowercase();
        let mut out = AuthResult {
            authserv_id,
            dkim: String::new(),
            dmarc: String::new(),
            spf: String::new(),
        };
        for part in parts {
            let Some((method, rest)) = part.trim().split_once('=') else {
                continue;
            };
            let result = rest
                .split(|c: char| c.is_whitespace() || c == '(')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let slot = match method.trim().to_ascii_lowercase().as_str() {
                "dkim" => &mut out.dkim,
                "dmarc" => &mut out.dmarc,
                "spf" => &mut out.spf,
                _ => continue,
            };
            // A pass from any signature wins over a failing one.
            if slot.is_empty() || result == "pass" {
                *slot = result;
            }
        }
        Some(out)
    }

    /// True when DKIM or DMARC passed.
    pub fn passed(&self) -> bool {
        self.dkim == "pass" || self.dmarc == "pass"
    }
}

/// What a delivery-status notification (RFC 3464) says about the mail it returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BounceReport {
    /// `failed`, `delayed`, `delivered`, `relayed` or `expanded`.
    pub action: String,
    pub status: String,
    pub diagnostic: String,
    pub final_recipient: String,
    /// Message-ID of the returned message, from its attached copy or headers.
    pub original_message_id: Option<String>,
}

impl BounceReport {
    /// A one-line reason a person can read.
    pub fn reason(&self) -> String {
        let mut s = format!(
            "delivery {}",
            if self.action.is_empty() {
                "failed"
            } else {
                &self.action
            }
        );
        if !self.final_recipient.is_empty() {
            s.push_str(&format!(" to {}", self.final_recipient));
        }
        if !self.status.is_empty() {
            s.push_str(&format!(" (status {})", self.status));
        }
        if !self.diagnostic.is_empty() {
            s.push_str(&format!(": {}", self.diagnostic));
        }
        s
    }

    /// True when the report is about a permanent failure: `Action: failed`, or with no
    /// readable action a 5.x.x status. A delay is never a failure.
    pub fn is_failure(&self) -> bool {
        self.action == "failed" || (self.action.is_empty() && self.status.starts_with('5'))
    }
}

/// Reads a `multipart/report; report-type=delivery-status` message; `None` for anything else.
pub(super) fn bounce_report(message: &mail_parser::Message<'_>) -> Option<BounceReport> {
    let ct = message.content_type()?;
    if !ct.ctype().eq_ignore_ascii_case("multipart")
        || !ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        || !ct
            .attribute("report-type")
            .is_some_and(|r| r.eq_ignore_ascii_case("delivery-status"))
    {
        return None;
    }
    let mut report = BounceReport::default();
    for part in message.parts.iter() {
        let Some(pct) = part.content_type() else {
            continue;
        };
        let kind =
            format!("{}/{}", pct.ctype(), pct.subtype().unwrap_or_default()).to_ascii_lowercase();
        match kind.as_str() {
            "message/delivery-status" | "message/global-delivery-status" => {
                let text = String::from_utf8_lossy(part.contents());
                read_status_fields(&text, &mut report);
            }
            "message/rfc822" | "message/global" if report.original_message_id.is_none() => {
                report.original_message_id = match &part.body {
                    PartType::Message(m) => m.message_id().map(super::clean_id),
                    _ => MessageParser::default()
                        .parse_headers(part.contents())
                        .and_then(|m| m.message_id().map(super::clean_id)),
                };
            }
            "text/rfc822-headers" | "message/rfc822-headers" | "message/global-headers"
                if report.original_message_id.is_none() =>
            {
                report.original_message_id = MessageParser::default()
                    .parse_headers(part.contents())
                    .and_then(|m| m.message_id().map(super::clean_id));
            }
            _ => {}
        }
    }
    // Broken MIME (an unclosed boundary) can hide the delivery-status part; its fields are
    // still plain text in the message.
    if report.action.is_empty() && report.status.is_empty() {
        let raw = message.raw_message();
        let text = String::from_utf8_lossy(&raw[..raw.len().min(256 * 1024)]);
        read_status_fields(&text, &mut report);
    }
    Some(report)
}

fn read_status_fields(text: &str, report: &mut BounceReport) {
    // Unfold continuation lines first: Diagnostic-Code often spans several.
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t'])
            && let Some(last) = lines.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim());
            continue;
        }
        lines.push(line.trim_end().to_string());
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = super::one_line(value);
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "action" => &mut report.action,
            "status" => &mut report.status,
            "diagnostic-code" => &mut report.diagnostic,
            "final-recipient" => &mut report.final_recipient,
            _ => continue,
        };
        if slot.is_empty() {
            *slot = match name.trim().to_ascii_lowercase().as_str() {
                "action" => value.to_ascii_lowercase(),
                "final-recipient" => value
                    .split_once(';')
                    .map_or(value.clone(), |(_, a)| a.trim().to_string()),
                _ => value,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_not_failure() {
        let delayed = BounceReport {
            action: "delayed".into(),
            status: "4.4.1".into(),
            ..BounceReport::default()
        };
        assert!(!delayed.is_failure());
        assert!(delayed.reason().contains("delayed"));
        assert!(
            BounceReport {
                action: "failed".into(),
                ..BounceReport::default()
            }
            .is_failure()
        );
        assert!(
            BounceReport {
                status: "5.1.1".into(),
                ..BounceReport::default()
            }
            .is_failure()
        );
        assert!(!BounceReport::default().is_failure());
    }

    #[test]
    fn auth_results() {
        let r = AuthResult::parse("mx.acme.test; dkim=fail header.d=x; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=x; dmarc=pass (p=reject)").expect("parses");
        assert_eq!(r.authserv_id, "mx.acme.test");
        assert_eq!(r.dkim, "pass");
        assert_eq!(r.dmarc, "pass");
        assert!(r.passed());
        let f = AuthResult::parse("mx.acme.test 1; dkim=none; dmarc=fail").expect("parses");
        assert!(!f.passed());
    }
}
