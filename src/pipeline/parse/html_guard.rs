//! A linear pre-scan of HTML nesting. html5ever (behind ammonia and html2text) checks the
//! stack of open elements for every new tag, so 100,000 unclosed `<div>`s cost 10^10 steps,
//! and html2text renders recursively. Real mail nests a few dozen levels; past the bound
//! the HTML is not handed to either.

/// Elements that never have an end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// The deepest element nesting in `html`, approximately (unclosed tags count as open).
pub fn max_depth(html: &str) -> usize {
    let bytes = html.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while let Some(offset) = bytes[i..].iter().position(|b| *b == b'<') {
        i += offset + 1;
        let closing = bytes.get(i) == Some(&b'/');
        let start = if closing { i + 1 } else { i };
        let name_len = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 {
            continue;
        }
        let name = html[start..start + name_len].to_ascii_lowercase();
        let end = bytes[start..]
            .iter()
            .position(|b| *b == b'>')
            .map_or(bytes.len(), |p| start + p);
        let self_closing = end > 0 && bytes.get(end - 1) == Some(&b'/');
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing && !VOID.contains(&name.as_str()) {
            depth += 1;
            deepest = deepest.max(depth);
        }
        i = end.min(bytes.len());
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth() {
        assert_eq!(max_depth("<p>a<br>b<img src=x></p>"), 1);
        assert_eq!(max_depth("<div><div><span>x</span></div></div>"), 3);
        assert_eq!(max_depth(&"<div>".repeat(5000)), 5000);
        assert_eq!(max_depth("a < b and c > d"), 0);
        assert_eq!(max_depth("<br/><hr /><x/>"), 0);
    }
}
