//! Attachments, inline images and forwarded messages of one mail.

use mail_parser::{MimeHeaders, PartType};

use crate::config::LimitsConfig;

/// One attachment, inline part or forwarded message, with its decoded bytes.
#[derive(Debug, Clone)]
pub struct ParsedAttachment {
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// Content-ID without brackets, for `cid:` references.
    pub content_id: String,
    pub is_inline: bool,
}

pub(super) fn collect(
    message: &mail_parser::Message<'_>,
    limits: &LimitsConfig,
    reachable: Vec<u32>,
    notes: &mut Vec<String>,
) -> Vec<ParsedAttachment> {
    let reachable: std::collections::HashSet<u32> = reachable.into_iter().collect();
    let mut out = Vec::new();
    let mut skipped = 0usize;
    for (index, &part_id) in message.attachments.iter().enumerate() {
        if index >= limits.max_parts || !reachable.contains(&part_id) {
            skipped += 1;
            continue;
        }
        let Some(part) = message.part(part_id) else {
            continue;
        };
        let content_type = part
            .content_type()
            .map(|c| {
                format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream"))
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|| match &part.body {
                PartType::Text(_) => "text/plain".into(),
                PartType::Html(_) => "text/html".into(),
                PartType::Message(_) => "message/rfc822".into(),
                _ => "application/octet-stream".into(),
            });
        let (bytes, fallback_name): (Vec<u8>, Option<String>) = match &part.body {
            PartType::Binary(b) | PartType::InlineBinary(b) => (b.to_vec(), None),
            PartType::Text(t) | PartType::Html(t) => (t.as_bytes().to_vec(), None),
            PartType::Message(nested) => {
                let subject = nested
                    .subject()
                    .map(super::one_line)
                    .filter(|s| !s.is_empty());
                (
                    nested.raw_message().to_vec(),
                    Some(format!(
                        "{}.eml",
                        subject.as_deref().unwrap_or("forwarded message")
                    )),
                )
            }
            PartType::Multipart(_) => continue,
        };
        let is_message = matches!(part.body, PartType::Message(_));
        let declared = part.attachment_name().map(str::to_string);
        let mut name = sanitize_filename(
            declared
                .as_deref()
                .or(fallback_name.as_deref())
                .unwrap_or_default(),
        );
        if name.is_empty() {
            name = format!(
                "attachment-{}{}",
                out.len() + 1,
                extension_for(&content_type)
            );
        } else if is_message && !name.to_ascii_lowercase().ends_with(".eml") {
            name.push_str(".eml");
        }
        let content_id = part.content_id().map(super::clean_id).unwrap_or_default();
        let disposition_inline = part
            .content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline"));
        let is_inline =
            !content_id.is_empty() && (disposition_inline || part.content_disposition().is_none());
        out.push(ParsedAttachment {
            name,
            content_type: if is_message {
                "message/rfc822".into()
            } else {
                content_type
            },
            bytes,
            content_id,
            is_inline,
        });
    }
    if skipped > 0 {
        notes.push(format!(
            "{skipped} attachment(s) beyond the part or depth bounds were not stored"
        ));
    }
    out
}

/// A file name safe to show and to save: no path, no control characters, at most 255 bytes.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*'))
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut name = super::body::truncate_at_char(trimmed, 255).to_string();
    if name.chars().all(|c| c == '.' || c.is_whitespace()) {
        name.clear();
    }
    name
}

fn extension_for(content_type: &str) -> String {
    mime_guess::get_mime_extensions_str(content_type)
        .and_then(|exts| exts.first())
        .map(|e| format!(".{e}"))
        .unwrap_or_else(|| ".bin".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_safe() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\x\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a\r\nb\u{0}.txt"), "ab.txt");
        assert_eq!(sanitize_filename(".."), "");
        assert_eq!(sanitize_filename(".hidden"), "hidden");
        assert!(sanitize_filename(&"é".repeat(300)).len() <= 255);
    }

    #[test]
    fn extension_fallback() {
        assert_eq!(extension_for("application/pdf"), ".pdf");
        assert_eq!(extension_for("x-unknown/thing"), ".bin");
    }
}
