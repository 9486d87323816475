//! Ticket tags in subjects: `[#12]`, `[Ticket #12]`, or an organization prefix such as `[ACME #12]`.

use std::sync::LazyLock;

use regex::Regex;

static TAG: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[\s*([^\]\[#]{0,40}?)\s*#\s*(\d{1,18})\s*\]").ok());

/// The ticket numbers tagged in `subject`, in order, for the accepted prefixes.
pub fn find_tags(subject: &str, org_prefix: &str) -> Vec<i64> {
    let Some(re) = TAG.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for cap in re.captures_iter(subject) {
        let prefix = cap.get(1).map_or("", |m| m.as_str()).trim();
        let accepted = prefix.is_empty()
            || prefix.eq_ignore_ascii_case("ticket")
            || (!org_prefix.is_empty() && prefix.eq_ignore_ascii_case(org_prefix.trim()));
        if accepted
            && let Some(n) = cap.get(2).and_then(|m| m.as_str().parse::<i64>().ok())
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        assert_eq!(find_tags("Re: Printer [#12]", ""), vec![12]);
        assert_eq!(find_tags("AW: [Ticket #7] Hallo", ""), vec![7]);
        assert_eq!(find_tags("[ACME #3] x", "ACME"), vec![3]);
        assert_eq!(find_tags("[ACME #3] x", ""), Vec::<i64>::new());
        assert_eq!(find_tags("[Other #3] x", "ACME"), Vec::<i64>::new());
        assert_eq!(find_tags("Order #12 shipped", ""), Vec::<i64>::new());
        assert_eq!(find_tags("[#99999999999999999999]", ""), Vec::<i64>::new());
    }
}
