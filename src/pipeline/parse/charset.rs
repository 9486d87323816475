//! Repair for raw 8-bit header bytes: mail-parser reads them as UTF-8 and replaces what is
//! not, so a GB2312 subject or a Latin-1 file name arrives as U+FFFD. The bytes are still
//! in the raw message; we decode them with the charsets the message itself declares.

use encoding_rs::{Encoding, WINDOWS_1252};
use mail_parser::{Header, Message, MessageParser, MimeHeaders, PartType};

/// The charsets a message declares in its parts (nested messages included), multi-byte ones
/// first, with windows-1252 as the last resort.
pub(super) fn declared(message: &Message<'_>) -> Vec<&'static Encoding> {
    let mut out: Vec<&'static Encoding> = Vec::new();
    let mut push = |label: Option<&str>| {
        if let Some(enc) = label.and_then(|l| Encoding::for_label(l.trim().as_bytes()))
            && enc != encoding_rs::UTF_8
            && !out.contains(&enc)
        {
            out.push(enc);
        }
    };
    for part in message.parts.iter().take(200) {
        push(part.content_type().and_then(|c| c.attribute("charset")));
        if let PartType::Message(nested) = &part.body {
            for p in nested.parts.iter().take(200) {
                push(p.content_type().and_then(|c| c.attribute("charset")));
            }
        }
    }
    // ISO-2022-JP is 7-bit, so 8-bit bytes under that label are Japanese mail mislabelled
    // by its sender, nearly always Shift_JIS (else EUC-JP).
    if out.contains(&encoding_rs::ISO_2022_JP) {
        for enc in [encoding_rs::SHIFT_JIS, encoding_rs::EUC_JP] {
            if !out.contains(&enc) {
                out.push(enc);
            }
        }
    }
    if !out.contains(&WINDOWS_1252) {
        out.push(WINDOWS_1252);
    }
    // A single-byte charset decodes any bytes, so it proves nothing; a multi-byte one
    // (GB2312, Shift_JIS, Big5, ...) rejects what is not its own. Try those first.
    out.sort_by_key(|e| e.is_single_byte());
    out
}

/// The header `name` of `headers` re-read from `raw` with the first declared charset that
/// decodes its bytes cleanly, as a one-header message for mail-parser to read again.
/// `None` when the raw value is valid UTF-8 (nothing to repair) or the header is absent.
pub(super) fn reparse_header(
    raw: &[u8],
    headers: &[Header<'_>],
    name: &str,
    charsets: &[&'static Encoding],
) -> Option<Message<'static>> {
    let header = headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))?;
    // Offsets of a nested message's headers may point into the outer message; make sure
    // these bytes really are this header before trusting them.
    let field = raw.get(header.offset_field() as usize..header.offset_start() as usize)?;
    if !field
        .get(..name.len())
        .is_some_and(|f| f.eq_ignore_ascii_case(name.as_bytes()))
    {
        return None;
    }
    let bytes = raw.get(header.offset_start() as usize..header.offset_end() as usize)?;
    if std::str::from_utf8(bytes).is_ok() {
        return None;
    }
    let text = charsets
        .iter()
        .find_map(|enc| enc.decode_without_bom_handling_and_without_replacement(bytes))?;
    let rebuilt = format!("{name}:{}\r\n\r\n", text.trim_end_matches(['\r', '\n']));
    MessageParser::default()
        .parse_headers(rebuilt.as_bytes())
        .map(Message::into_owned)
}

/// A text part labelled UTF-7 decoded again from its raw bytes: mail-parser 0.11 drops the
/// character that ends a base64 run when it is not `-` (RFC 2152 allows any). `None` for
/// other charsets and for transfer encodings other than 7bit/8bit (UTF-7 needs neither).
pub(super) fn utf7_repair(
    message: &Message<'_>,
    part: &mail_parser::MessagePart<'_>,
) -> Option<String> {
    let label = part
        .content_type()?
        .attribute("charset")?
        .to_ascii_lowercase();
    if !matches!(
        label.as_str(),
        "utf-7" | "unicode-1-1-utf-7" | "x-unicode-2-0-utf-7" | "csunicode11utf7"
    ) {
        return None;
    }
    if part.encoding != mail_parser::Encoding::None {
        return None;
    }
    let raw = message
        .raw_message()
        .get(part.offset_body as usize..part.offset_end as usize)?;
    Some(decode_utf7(raw))
}

/// Decodes UTF-7 (RFC 2152). Bad sequences become U+FFFD; nothing is dropped silently.
pub fn decode_utf7(bytes: &[u8]) -> String {
    fn sextet(b: u8) -> Option<u32> {
        match b {
            b'A'..=b'Z' => Some(u32::from(b - b'A')),
            b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'+' {
            out.push(if b.is_ascii() {
                char::from(b)
            } else {
                '\u{FFFD}'
            });
            i += 1;
            continue;
        }
        i += 1;
        if bytes.get(i) == Some(&b'-') {
            out.push('+');
            i += 1;
            continue;
        }
        let (mut bits, mut nbits, mut units) = (0u32, 0u32, Vec::new());
        while let Some(v) = bytes.get(i).and_then(|b| sextet(*b)) {
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xffff) as u16);
            }
            i += 1;
        }
        out.extend(char::decode_utf16(units).map(|c| c.unwrap_or('\u{FFFD}')));
        // The run ends at '-' (absorbed) or at any other character (kept).
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    out
}

/// `bytes` as text: UTF-8 when they are, else the first declared charset that decodes them
/// cleanly (windows-1252, last in `charsets`, always does).
pub(super) fn decode_best(bytes: &[u8], charsets: &[&'static Encoding]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    charsets
        .iter()
        .find_map(|enc| enc.decode_without_bom_handling_and_without_replacement(bytes))
        .map_or_else(
            || String::from_utf8_lossy(bytes).into_owned(),
            |s| s.into_owned(),
        )
}

/// True when `s` shows the marks of a lossy UTF-8 decode.
pub(super) fn is_damaged(s: &str) -> bool {
    s.contains('\u{FFFD}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf7() {
        assert_eq!(decode_utf7(b"Hi Mom -+Jjo--!"), "Hi Mom -\u{263A}-!");
        assert_eq!(
            decode_utf7(b"50 +IKw +IBM danke"),
            "50 \u{20AC} \u{2013} danke"
        );
        assert_eq!(decode_utf7(b"1 +- 1"), "1 + 1");
        assert_eq!(decode_utf7(b"+ZeVnLIqe-"), "\u{65E5}\u{672C}\u{8A9E}");
    }

    #[test]
    fn repairs_gb2312_subject() {
        let mut raw = b"From: a@b.c\r\nSubject: ".to_vec();
        let (gb, _, _) = encoding_rs::GBK.encode("转发：整体提升");
        raw.extend_from_slice(&gb);
        raw.extend_from_slice(b"\r\nContent-Type: text/plain; charset=gb2312\r\n\r\nbody\r\n");
        let message = MessageParser::default().parse(&raw).expect("parses");
        assert!(is_damaged(message.subject().unwrap_or_default()));
        let charsets = declared(&message);
        let fixed = reparse_header(
            message.raw_message(),
            message.headers(),
            "Subject",
            &charsets,
        )
        .expect("repaired");
        assert_eq!(fixed.subject(), Some("转发：整体提升"));
    }
}
