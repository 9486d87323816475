//! Email address helpers shared by routing, customers and CC snapshots.

/// A mailbox address split into local part and lower-cased domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSpec {
    pub local: String,
    pub domain: String,
}

impl AddrSpec {
    /// The local part before any `+tag` (sub-addressing).
    pub fn base_local(&self) -> &str {
        self.local
            .split_once('+')
            .map_or(self.local.as_str(), |(base, _)| base)
    }

    /// The `+tag` after the base local part, if any.
    pub fn detail(&self) -> Option<&str> {
        self.local.split_once('+').map(|(_, tag)| tag)
    }
}

/// Parses `local@domain` (angle brackets and surrounding space allowed).
pub fn parse_addr_spec(raw: &str) -> Option<AddrSpec> {
    let s = raw
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    let (local, domain) = s.rsplit_once('@')?;
    // A fully qualified `example.com.` is the same domain; some mailers write it so.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if !is_local_part(local) || !is_domain(domain) {
        return None;
    }
    Some(AddrSpec {
        local: local.to_string(),
        domain: domain.to_ascii_lowercase(),
    })
}

/// Normalizes an address for comparison: trimmed and lower-cased (helpdesks treat addresses case-insensitively).
pub fn normalize(raw: &str) -> Option<String> {
    parse_addr_spec(raw).map(|a| format!("{}@{}", a.local.to_lowercase(), a.domain))
}

/// A dot-atom-ish local part: printable, no space, no control characters, no `@`.
pub fn is_local_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| {
            !c.is_control()
                && !c.is_whitespace()
                && !matches!(
                    c,
                    '@' | '<' | '>' | ',' | ';' | '"' | '(' | ')' | '[' | ']' | '\\'
                )
        })
}

/// A DNS domain: labels of letters, digits and hyphens (IDNs in their Unicode form are accepted).
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sub_address() {
        let a = parse_addr_spec("<Support+Billing@ACME.test>").expect("parses");
        assert_eq!(a.base_local(), "Support");
        assert_eq!(a.detail(), Some("Billing"));
        assert_eq!(a.domain, "acme.test");
        assert_eq!(
            normalize("Claudia@Yahoo.com.").as_deref(),
            Some("claudia@yahoo.com")
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "no-at",
            "a@",
            "@b.c",
            "a b@c.d",
            "a@b..c",
            "a@-b.c",
            "a\r\nBcc: x@y.z",
        ] {
            assert!(parse_addr_spec(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn normalizes_case() {
        assert_eq!(
            normalize(" Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
    }
}
