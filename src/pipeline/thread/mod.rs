//! Which ticket a message belongs to (SPEC 2.3), and why. The first rule that matches wins.

mod subject_tag;
pub mod token;

use chrono::{DateTime, Utc};

pub use subject_tag::find_tags;
pub use token::ReplyTokens;

use super::known::{Known, Threading};
use super::parse::ParsedMail;
use super::route::Route;
use crate::store::tickets::{self, Ticket};
use crate::store::{StoreError, Tx};

/// The rule that placed a message, stored on it as `threaded_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadedBy {
    ReplyToken,
    InReplyTo,
    References,
    SubjectTag,
    NewTicket,
}

impl ThreadedBy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadedBy::ReplyToken => "reply_token",
            ThreadedBy::InReplyTo => "in_reply_to",
            ThreadedBy::References => "references",
            ThreadedBy::SubjectTag => "subject_tag",
            ThreadedBy::NewTicket => "new_ticket",
        }
    }
}

/// The threading decision: an existing ticket or a new one, with the reason.
#[derive(Debug, Clone)]
pub struct Decision {
    pub ticket: Option<Ticket>,
    pub by: ThreadedBy,
    /// Why a candidate was passed over (forged token, foreign tag, closed too long ago).
    pub notes: Vec<String>,
}

/// What threading needs to know about the sender.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub email_norm: &'a str,
    pub is_agent: bool,
    /// DKIM or DMARC passed per the organization's own `Authentication-Results`.
    pub authenticated: bool,
}

/// The Message-IDs rule 2 looks up, in order: In-Reply-To, then References from the newest.
pub fn referenced_ids(mail: &ParsedMail) -> impl Iterator<Item = (&String, ThreadedBy)> {
    mail.in_reply_to
        .iter()
        .map(|i| (i, ThreadedBy::InReplyTo))
        .chain(
            mail.references
                .iter()
                .rev()
                .take(50)
                .map(|i| (i, ThreadedBy::References)),
        )
}

/// Applies the threading rules in order; `known` answers rule 2 for most messages of a batch.
pub(in crate::pipeline) async fn decide(
    tx: &mut Tx,
    known: &Known,
    route: &Route,
    mail: &ParsedMail,
    sender: Sender<'_>,
    tokens: &ReplyTokens,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    let org = &route.entry.org;
    let mut notes = Vec::new();

    // Rule 1: a signed token in the recipient's +detail.
    if let Some(detail) = route
        .detail
        .as_deref()
        .filter(|d| d.starts_with(['t', 'T']))
    {
        match tokens.verify_reply(org.id, detail) {
            Some(ticket_id) => match tickets::ticket_by_id(tx, org.id, ticket_id).await? {
                Some(t) => {
                    return reopen_window(
                        t,
                        ThreadedBy::ReplyToken,
                        notes,
                        org.reopen_window_days,
                        now,
                    );
                }
                None => notes.push(format!(
                    "reply token names ticket {ticket_id}, which does not exist"
                )),
            },
            None => notes.push(format!(
                "reply token {detail:?} did not verify and was ignored"
            )),
        }
    }

    // Rule 2: In-Reply-To, then References from the newest.
    let ids: Vec<(String, ThreadedBy)> = referenced_ids(mail)
        .map(|(i, by)| (i.clone(), by))
        .collect();
    if !ids.is_empty() {
        let only_ids: Vec<String> = ids.iter().map(|(i, _)| i.clone()).collect();
        let found = match known.threading(org.id, &only_ids) {
            Threading::Found(matched, tickets) => Some((matched, tickets)),
            Threading::NotFound => None,
            Threading::Unknown => tickets::tickets_by_message_ids(tx, org.id, &only_ids).await?,
        };
        if let Some((matched, candidates)) = found {
            let by = ids
                .iter()
                .find(|(i, _)| *i == matched)
                .map_or(ThreadedBy::References, |(_, b)| *b);
            let count = candidates.len();
            let mut chosen = None;
            if count > 1 {
                // A reused Message-ID: a stranger can send first with a guessed one. The
                // ticket the sender takes part in is the one meant.
                for t in &candidates {
                    if is_participant(tx, org.id, t, sender).await? {
                        chosen = Some(t.clone());
                        break;
                    }
                }
                notes.push(format!(
                    "Message-ID {matched} is carried by messages of {count} tickets"
                ));
            }
            if let Some(t) = chosen.or_else(|| candidates.into_iter().next()) {
                return reopen_window(t, by, notes, org.reopen_window_days, now);
            }
        }
    }

    // Rule 3: a subject tag, from a participant of that ticket only.
    for public_id in find_tags(&mail.subject, &org.subject_tag_prefix) {
        let Some(t) = tickets::ticket_by_public_id(tx, org.id, public_id).await? else {
            notes.push(format!("subject tag #{public_id} names no ticket"));
            continue;
        };
        if org.require_authenticated_sender && !sender.authenticated {
            notes.push(format!("subject tag #{public_id} ignored: sender not authenticated (DKIM/DMARC) and the organization requires it"));
            continue;
        }
        let participant = is_participant(tx, org.id, &t, sender).await?;
        if participant {
            return reopen_window(
                t,
                ThreadedBy::SubjectTag,
                notes,
                org.reopen_window_days,
                now,
            );
        }
        notes.push(format!(
            "subject tag #{public_id} ignored: {} is not a participant of that ticket",
            sender.email_norm
        ));
    }

    Ok(Decision {
        ticket: None,
        by: ThreadedBy::NewTicket,
        notes,
    })
}

/// True when the sender is the ticket's requester, in one of its CC snapshots, or an agent.
async fn is_participant(
    tx: &mut Tx,
    org_id: i64,
    t: &Ticket,
    sender: Sender<'_>,
) -> Result<bool, StoreError> {
    if sender.is_agent {
        return Ok(true);
    }
    let requester = tickets::customer_by_id(tx, org_id, t.customer_id)
        .await?
        .and_then(|c| crate::address::normalize(&c.email));
    if requester.as_deref() == Some(sender.email_norm) {
        return Ok(true);
    }
    Ok(tickets::ticket_snapshot_addresses(tx, org_id, t)
        .await?
        .iter()
        .any(|a| a == sender.email_norm))
}

/// Closed statuses, current and legacy.
pub fn is_closed(status: &str) -> bool {
    matches!(status, "closed" | "resolved" | "invalid")
}

/// A reply to a ticket closed longer than the window opens a new ticket instead.
fn reopen_window(
    t: Ticket,
    by: ThreadedBy,
    mut notes: Vec<String>,
    window_days: i64,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    if is_closed(&t.status)
        && let Some(closed_at) = t.closed_at
        && now - closed_at > chrono::Duration::days(window_days)
    {
        notes.push(format!(
            "ticket #{} matched by {} but was closed {} days ago (reopen window {window_days} days): new ticket",
            t.public_id,
            by.as_str(),
            (now - closed_at).num_days()
        ));
        return Ok(Decision {
            ticket: None,
            by: ThreadedBy::NewTicket,
            notes,
        });
    }
    Ok(Decision {
        ticket: Some(t),
        by,
        notes,
    })
}
