//! HTML sanitizing for mail: ammonia with a style allowlist, `cid:` images rewritten, remote images dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// CSS properties kept in `style` attributes: layout and typography, nothing that loads a URL.
const STYLE_PROPERTIES: &[&str] = &[
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "text-align",
    "text-decoration",
    "text-indent",
    "text-transform",
    "line-height",
    "letter-spacing",
    "white-space",
    "vertical-align",
    "width",
    "height",
    "max-width",
    "min-width",
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-color",
    "border-style",
    "border-width",
    "border-collapse",
    "border-spacing",
    "border-radius",
    "direction",
    "list-style-type",
    "table-layout",
];

/// Sanitizes `html`; `cid_urls` maps a Content-ID to the URL its attachment is served at.
pub fn sanitize_html(html: &str, cid_urls: &HashMap<String, String>) -> String {
    if html.trim().is_empty() {
        return String::new();
    }
    let cids = Arc::new(cid_urls.clone());
    let mut builder = ammonia::Builder::default();
    builder
        .add_generic_attributes([
            "style", "align", "valign", "dir", "bgcolor", "width", "height",
        ])
        .filter_style_properties(STYLE_PROPERTIES.iter().copied().collect::<HashSet<_>>())
        .url_schemes(
            ["http", "https", "mailto", "tel", "cid"]
                .into_iter()
                .collect(),
        )
        .link_rel(Some("noopener noreferrer nofollow"))
        // A document's <title> is not part of what the person wrote.
        .add_clean_content_tags(["title"])
        .attribute_filter(
            move |element, attribute, value| match (element, attribute) {
                // Remote images are tracking pixels or worse; only the mail's own parts show.
                ("img", "src") => {
                    let cid = value.strip_prefix("cid:").map(super::clean_id)?;
                    cids.get(&cid).map(|url| url.clone().into())
                }
                (_, "src" | "srcset" | "background" | "poster") if !value.starts_with("cid:") => {
                    None
                }
                _ => Some(value.into()),
            },
        );
    builder.clean(html).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_active_content() {
        let dirty = r#"<p onclick="x()" style="color:red;background:url(http://t/x)">Hi<script>alert(1)</script></p><a href="javascript:alert(1)">x</a><img src="http://tracker/p.gif"><iframe src="http://x"></iframe>"#;
        let clean = sanitize_html(dirty, &HashMap::new());
        for bad in [
            "onclick",
            "script",
            "javascript",
            "tracker",
            "iframe",
            "url(",
        ] {
            assert!(!clean.contains(bad), "{bad} survived: {clean}");
        }
        assert!(clean.contains("color:red"), "{clean}");
    }

    #[test]
    fn rewrites_cid_images() {
        let mut map = HashMap::new();
        map.insert(
            "logo@x".to_string(),
            "http://gw/organizations/1/attachments/u1/download/".to_string(),
        );
        let clean = sanitize_html(r#"<img src="cid:logo@x"><img src="cid:unknown@x">"#, &map);
        assert!(
            clean.contains("http://gw/organizations/1/attachments/u1/download/"),
            "{clean}"
        );
        assert!(!clean.contains("unknown@x"), "{clean}");
    }
}
