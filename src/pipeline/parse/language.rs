//! Language detection: a two-letter code, or empty when unsure.

/// The ISO 639-1 code of `text`'s language, empty when detection is not reliable.
pub fn detect_language(text: &str) -> String {
    let sample = super::body::truncate_at_char(text, 2000);
    if sample.split_whitespace().count() < 3 {
        return String::new();
    }
    let Some(info) = whatlang::detect(sample) else {
        return String::new();
    };
    if !info.is_reliable() {
        return String::new();
    }
    isolang::Language::from_639_3(info.lang().code())
        .and_then(|l| l.to_639_1())
        .map(str::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_languages() {
        assert_eq!(
            detect_language(
                "Hello, my printer does not work any more since yesterday. Can you please help me with it?"
            ),
            "en"
        );
        assert_eq!(
            detect_language(
                "Hallo, mein Drucker funktioniert seit gestern nicht mehr. Können Sie mir bitte helfen?"
            ),
            "de"
        );
        assert_eq!(detect_language("ok"), "");
    }
}
