//! HTML to readable text, bounded: html2text is fast on mail but not on pathological input.

/// Readable text for an HTML body; falls back to stripping tags when html2text fails.
/// HTML nested deeper than `max_depth` skips html2text (see `html_guard`).
pub fn html_to_text(html: &str, max_bytes: usize, max_depth: usize) -> String {
    let input = truncate_at_char(html, max_bytes);
    if super::html_guard::max_depth(input) > max_depth {
        return tidy(&strip_tags(input));
    }
    let converted = std::panic::catch_unwind(|| {
        html2text::config::plain_no_decorate()
            .allow_width_overflow()
            .no_table_borders()
            .string_from_read(input.as_bytes(), 1000)
    });
    let text = match converted {
        Ok(Ok(text)) => text,
        _ => strip_tags(input),
    };
    tidy(&text)
}

/// The longest prefix of `s` no longer than `max` bytes that ends on a character boundary.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// Trims trailing space on each line and collapses runs of blank lines.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_html() {
        let t = html_to_text(
            "<p>Hello <b>world</b></p><p>Second&nbsp;para</p>",
            10_000,
            256,
        );
        assert!(t.contains("Hello world"), "{t}");
        assert!(t.contains("Second"), "{t}");
    }

    #[test]
    fn bounded() {
        let big = "<div>".repeat(100_000);
        let t = html_to_text(&big, 1000, 256);
        assert!(t.len() < 1000);
        let deep = format!(
            "{}deep text{}",
            "<div>".repeat(100_000),
            "</div>".repeat(100_000)
        );
        assert_eq!(html_to_text(&deep, usize::MAX, 256), "deep text");
        assert_eq!(truncate_at_char("héllo", 2), "h");
    }
}
