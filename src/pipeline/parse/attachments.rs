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
                let mut subject = nested
                    .subject()
                    .map(super::one_line)
                    .filter(|s| !s.is_empty());
                if subject.as_deref().is_some_and(super::charset::is_damaged)
                    && let Some(fixed) = [message.raw_message(), nested.raw_message()]
                        .iter()
                        .find_map(|raw| {
                            super::charset::reparse_header(
                                raw,
                                nested.headers(),
                                "Subject",
                                &super::charset::declared(nested),
                            )
                        })
                {
                    subject = fixed
                        .subject()
                        .map(super::one_line)
                        .filter(|s| !s.is_empty())
                        .or(subject);
                }
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
        let mut declared = part.attachment_name().map(str::to_string);
        // mail-parser decodes only the first RFC 2231 segment with the declared charset.
        if declared.as_deref().is_some_and(super::charset::is_damaged) {
            declared = rfc2231_name_from_headers(message.raw_message(), part)
                .filter(|n| !super::charset::is_damaged(n))
                .or_else(|| eight_bit_name(message, part))
                .or(declared);
        }
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

/// The part's file name re-read from raw 8-bit header bytes in the message's own charsets.
fn eight_bit_name(
    message: &mail_parser::Message<'_>,
    part: &mail_parser::MessagePart<'_>,
) -> Option<String> {
    let charsets = super::charset::declared(message);
    ["Content-Disposition", "Content-Type"]
        .iter()
        .find_map(|h| {
            let fixed =
                super::charset::reparse_header(message.raw_message(), &part.headers, h, &charsets)?;
            fixed.attachment_name().map(str::to_string)
        })
}

/// Reassembles an RFC 2231 `filename*N*=` (or `name*N*=`) parameter from the part's raw
/// headers and decodes all of its segments with the charset the first one declares.
fn rfc2231_name_from_headers(raw: &[u8], part: &mail_parser::MessagePart<'_>) -> Option<String> {
    for wanted in ["content-disposition", "content-type"] {
        let header = part
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(wanted))?;
        let value = raw.get(header.offset_start() as usize..header.offset_end() as usize)?;
        let param = if wanted == "content-disposition" {
            "filename"
        } else {
            "name"
        };
        if let Some(name) = rfc2231_decode(&String::from_utf8_lossy(value), param) {
            return Some(name);
        }
    }
    None
}

/// Decodes the continued, percent-encoded parameter `param` of a header value.
pub fn rfc2231_decode(value: &str, param: &str) -> Option<String> {
    let mut segments: Vec<(u32, bool, String)> = Vec::new();
    for item in value.split(';') {
        let Some((key, val)) = item.trim().split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let Some(rest) = key.strip_prefix(param).and_then(|r| r.strip_prefix('*')) else {
            continue;
        };
        let (index, encoded) = match rest.strip_suffix('*') {
            Some(n) => (n, true),
            None if rest.is_empty() => ("0", true),
            None => (rest, false),
        };
        let Ok(index) = index.parse::<u32>() else {
            continue;
        };
        segments.push((index, encoded, val.trim().trim_matches('"').to_string()));
    }
    segments.sort_by_key(|(i, _, _)| *i);
    let (_, first_encoded, first) = segments.first()?;
    let mut charset = "utf-8".to_string();
    let mut bytes = Vec::new();
    for (n, (_, encoded, val)) in segments.iter().enumerate() {
        let mut val = val.as_str();
        if n == 0 && *first_encoded {
            let mut parts = first.splitn(3, '\'');
            let cs = parts.next()?;
            let _language = parts.next()?;
            val = parts.next()?;
            if !cs.is_empty() {
                charset = cs.to_string();
            }
        }
        if *encoded {
            bytes.extend(percent_decode(val))
        } else {
            bytes.extend_from_slice(val.as_bytes())
        }
    }
    let encoding =
        encoding_rs::Encoding::for_label(charset.as_bytes()).unwrap_or(encoding_rs::UTF_8);
    let (text, _, _) = encoding.decode(&bytes);
    Some(text.into_owned())
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(byte) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
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
    // mime_guess lists extensions alphabetically (image/jpeg -> .jfif); people expect these.
    let common = match content_type {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(".jpg"),
        "text/plain" => Some(".txt"),
        "text/html" => Some(".html"),
        "message/rfc822" => Some(".eml"),
        "image/tiff" => Some(".tif"),
        _ => None,
    };
    if let Some(ext) = common {
        return ext.to_string();
    }
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
    fn rfc2231_segments_share_the_charset() {
        let v = "attachment;\r\n filename*0*=ISO-8859-1''%DCbersicht%20;\r\n filename*1*=Gr%F6%DFen.txt";
        assert_eq!(
            rfc2231_decode(v, "filename").as_deref(),
            Some("Übersicht Größen.txt")
        );
        assert_eq!(
            rfc2231_decode("attachment; filename*=UTF-8''a%C3%A4.pdf", "filename").as_deref(),
            Some("aä.pdf")
        );
        assert_eq!(
            rfc2231_decode("attachment; filename=plain.txt", "filename"),
            None
        );
    }

    #[test]
    fn extension_fallback() {
        assert_eq!(extension_for("application/pdf"), ".pdf");
        assert_eq!(extension_for("image/jpeg"), ".jpg");
        assert_eq!(extension_for("x-unknown/thing"), ".bin");
    }
}
