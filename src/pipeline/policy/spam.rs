//! Spam verdicts: upstream filters' headers and a per-sender ticket rate limit.

use chrono::{DateTime, Utc};

use crate::config::PolicyConfig;
use crate::pipeline::parse::HeaderFacts;

/// The upstream filter verdict, when one says spam (SpamAssassin or rspamd).
pub fn upstream_verdict(headers: &HeaderFacts) -> Option<String> {
    let yes = |v: &str| {
        v.trim()
            .get(..3)
            .is_some_and(|w| w.eq_ignore_ascii_case("yes"))
    };
    for name in ["x-spam-flag", "x-spam-status", "x-spam"] {
        if let Some(v) = headers.all(name).find(|v| yes(v)) {
            return Some(format!("{name}: {v}"));
        }
    }
    None
}

/// The start of the rate-limit window that ends at `now`.
pub fn window_start(policy: &PolicyConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::seconds(policy.rate_limit_window_secs)
}

/// A reason when a sender who opened `opened` tickets in the window is over the limit.
pub fn over_rate_limit(opened: i64, policy: &PolicyConfig) -> Option<String> {
    (opened >= policy.rate_limit_tickets).then(|| {
        format!(
            "sender opened {opened} tickets in the last {} seconds (limit {})",
            policy.rate_limit_window_secs, policy.rate_limit_tickets
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let f = |n: &str, v: &str| HeaderFacts {
            fields: vec![(n.to_string(), v.to_string())],
            ..HeaderFacts::default()
        };
        assert!(upstream_verdict(&f("x-spam-flag", "YES")).is_some());
        assert!(upstream_verdict(&f("x-spam-status", "Yes, score=9.1")).is_some());
        assert!(upstream_verdict(&f("x-spam-status", "No, score=0.1")).is_none());
        assert!(upstream_verdict(&f("x-spam", "Yes")).is_some());
        assert!(upstream_verdict(&f("x-spam", "No")).is_none());
    }
}
