//! Recognizes automatic mail: out-of-office replies, list and bulk mail, null senders.

use crate::pipeline::parse::HeaderFacts;

/// Why a message counts as automatic, or `None` for mail written by a person.
pub fn detect(headers: &HeaderFacts, envelope_from: Option<&str>) -> Option<String> {
    let first_word = |v: &str| {
        v.split([';', ' ', '('])
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    if let Some(v) = headers.get("auto-submitted")
        && first_word(v) != "no"
        && !v.trim().is_empty()
    {
        return Some(format!("Auto-Submitted: {v}"));
    }
    for name in ["x-autoreply", "x-autorespond"] {
        if let Some(v) = headers.get(name) {
            return Some(format!("{name}: {v}"));
        }
    }
    if let Some(v) = headers.get("precedence")
        && matches!(
            first_word(v).as_str(),
            "bulk" | "junk" | "list" | "auto_reply"
        )
    {
        return Some(format!("Precedence: {v}"));
    }
    if let Some(v) = headers.get("x-auto-response-suppress")
        && v.split(',')
            .any(|p| matches!(p.trim().to_ascii_lowercase().as_str(), "all" | "oof"))
    {
        return Some(format!("X-Auto-Response-Suppress: {v}"));
    }
    if headers.all("return-path").any(|v| v.trim() == "<>")
        || envelope_from.is_some_and(|f| f.trim().trim_matches(['<', '>']).is_empty())
    {
        return Some("null Return-Path".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(fields: &[(&str, &str)]) -> HeaderFacts {
        HeaderFacts {
            fields: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..HeaderFacts::default()
        }
    }

    #[test]
    fn signals() {
        assert!(detect(&facts(&[("auto-submitted", "auto-replied")]), None).is_some());
        assert!(detect(&facts(&[("auto-submitted", "no")]), None).is_none());
        assert!(detect(&facts(&[("precedence", "bulk")]), None).is_some());
        assert!(detect(&facts(&[("precedence", "first-class")]), None).is_none());
        assert!(detect(&facts(&[("x-auto-response-suppress", "DR, OOF")]), None).is_some());
        assert!(detect(&facts(&[("return-path", "<>")]), None).is_some());
        assert!(detect(&facts(&[]), Some("")).is_some());
        assert!(detect(&facts(&[]), Some("a@b.c")).is_none());
    }
}
