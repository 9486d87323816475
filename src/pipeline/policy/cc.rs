//! CC snapshots (SPEC 2.6): who an agent's reply goes to.

use crate::address::normalize;
use crate::pipeline::parse::{Mailbox, ParsedMail};
use crate::pipeline::route::OrgEntry;

/// The ticket's creation-time list: To and Cc minus inbox addresses, requester first.
pub fn creation_list(org: &OrgEntry, mail: &ParsedMail, requester: &str) -> Vec<String> {
    build(org, requester, mail.to.iter().chain(&mail.cc))
}

/// One message's snapshot: From, To and Cc minus inbox addresses, requester first.
pub fn message_snapshot(org: &OrgEntry, mail: &ParsedMail, requester: &str) -> Vec<String> {
    build(
        org,
        requester,
        mail.from.iter().chain(&mail.to).chain(&mail.cc),
    )
}

fn build<'a>(
    org: &OrgEntry,
    requester: &str,
    addresses: impl Iterator<Item = &'a Mailbox>,
) -> Vec<String> {
    let mut out: Vec<String> = normalize(requester).into_iter().collect();
    if !org.org.cc_email_routing {
        return out;
    }
    for m in addresses {
        let Some(n) = normalize(&m.email) else {
            continue;
        };
        if !org.is_inbox_address(&n) && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}
