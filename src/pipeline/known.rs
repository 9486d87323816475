//! What a batch transaction knows before it decides each message: rows read once for the
//! whole batch (duplicate keys, senders, their recent tickets) and kept current as the batch
//! writes, and the ticket numbers it took. In the serial commit every statement is a round
//! trip to the database, so four statements per message become a few per batch.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::store::tickets::{self, Customer, Ticket, TicketState};
use crate::store::{StoreError, Tx};

/// One message's keys, for [`Known::load`].
#[derive(Debug, Clone)]
pub(super) struct Keys<'a> {
    pub org_id: i64,
    pub dedupe_key: &'a str,
    /// The normalized sender address, when the message has one.
    pub sender: Option<&'a str>,
    /// The Message-IDs threading will look up ([`super::thread::referenced_ids`]).
    pub refs: Vec<&'a str>,
}

/// What the batch knows about the tickets of some Message-IDs.
#[derive(Debug)]
pub(super) enum Threading {
    /// The first of the ids any message carries, with the tickets of those messages.
    Found(String, Vec<Ticket>),
    /// No message carries any of them.
    NotFound,
    /// The batch cannot tell (a message it stored carries one): ask the database.
    Unknown,
}

/// The batch's view of duplicates, customers and recently opened tickets.
#[derive(Debug, Default)]
pub(super) struct Known {
    dedupe: HashMap<(i64, String), (i64, i64)>,
    customers: HashMap<(i64, String), Customer>,
    /// (organization, customer id) -> normalized address, the key of `customers`.
    customer_ids: HashMap<(i64, i64), String>,
    /// When each loaded customer opened tickets by mail, from `opened_since` on.
    opened: HashMap<(i64, i64), Vec<DateTime<Utc>>>,
    /// The customers whose tickets `load` read: only for them is `opened` complete.
    loaded: HashSet<(i64, i64)>,
    opened_since: Option<DateTime<Utc>>,
    /// Nothing else writes while the transaction is open (SQLite's single writer): a customer
    /// missing from `load` and created by the batch has no earlier tickets.
    exclusive: bool,
    /// Messages per organization in the batch: each opens at most one ticket.
    per_org: HashMap<i64, i64>,
    /// Ticket numbers taken and not used yet, per organization: (next, last).
    numbers: HashMap<i64, (i64, i64)>,
    /// Per (organization, Message-ID) looked up by `load`: the tickets of the messages
    /// carrying it, in message order (empty when none does).
    threads: HashMap<(i64, String), Vec<i64>>,
    /// Those tickets, kept current as the batch changes them.
    tickets: HashMap<i64, Ticket>,
    /// Message-IDs of the messages the batch stored.
    written_ids: HashSet<(i64, String)>,
}

impl Known {
    /// Reads what the batch's messages will ask about; `window` is the rate-limit window;
    /// `exclusive` when no other transaction can write until this one ends.
    pub async fn load(
        tx: &mut Tx,
        keys: &[Keys<'_>],
        window: chrono::Duration,
        now: DateTime<Utc>,
        exclusive: bool,
    ) -> Result<Self, StoreError> {
        let mut known = Known {
            opened_since: Some(now - window),
            exclusive,
            ..Known::default()
        };
        for k in keys {
            *known.per_org.entry(k.org_id).or_default() += 1;
        }
        let mut orgs: Vec<i64> = keys.iter().map(|k| k.org_id).collect();
        orgs.sort_unstable();
        orgs.dedup();
        for org_id in orgs {
            let of_org = || keys.iter().filter(move |k| k.org_id == org_id);
            let dedupe_keys = distinct(of_org().map(|k| k.dedupe_key));
            for (key, ticket_id, message_id) in
                tickets::existing_dedupe_keys(tx, org_id, &dedupe_keys).await?
            {
                known.dedupe.insert((org_id, key), (ticket_id, message_id));
            }
            let senders = distinct(of_org().filter_map(|k| k.sender));
            let mut ids = Vec::new();
            for found in tickets::customers_by_emails(tx, org_id, &senders).await? {
                ids.push(found.customer.id);
                known.loaded.insert((org_id, found.customer.id));
                known.remember_customer(org_id, found.email_norm, found.customer);
            }
            let refs = distinct(of_org().flat_map(|k| k.refs.iter().copied()));
            for r in &refs {
                known.threads.insert((org_id, (*r).to_string()), Vec::new());
            }
            for found in tickets::tickets_by_message_id_list(tx, org_id, &refs).await? {
                let ticket_id = found.ticket.id;
                let of_header = known.threads.entry((org_id, found.header)).or_default();
                if !of_header.contains(&ticket_id) {
                    of_header.push(ticket_id);
                }
                known.tickets.insert(ticket_id, found.ticket);
            }
            for (customer_id, at) in
                tickets::tickets_opened_since(tx, org_id, &ids, now - window).await?
            {
                known
                    .opened
                    .entry((org_id, customer_id))
                    .or_default()
                    .push(at);
            }
        }
        Ok(known)
    }

    /// The stored message with this duplicate key, as (ticket id, message id).
    pub fn duplicate(&self, org_id: i64, key: &str) -> Option<(i64, i64)> {
        self.dedupe.get(&(org_id, key.to_string())).copied()
    }

    /// Notes a message stored under `key` (and Message-ID `header`) in this batch.
    pub fn stored_message(
        &mut self,
        org_id: i64,
        key: &str,
        header: Option<&str>,
        ticket_id: i64,
        message_id: i64,
    ) {
        self.dedupe
            .insert((org_id, key.to_string()), (ticket_id, message_id));
        if let Some(h) = header {
            self.written_ids.insert((org_id, h.to_string()));
        }
    }

    /// The tickets threading rule 2 finds for `ids`, tried in order, as the database would
    /// answer now.
    pub fn threading(&self, org_id: i64, ids: &[String]) -> Threading {
        for id in ids {
            let key = (org_id, id.clone());
            if self.written_ids.contains(&key) {
                return Threading::Unknown;
            }
            let Some(ticket_ids) = self.threads.get(&key) else {
                return Threading::Unknown;
            };
            if ticket_ids.is_empty() {
                continue;
            }
            let tickets: Option<Vec<Ticket>> = ticket_ids
                .iter()
                .map(|t| self.tickets.get(t).cloned())
                .collect();
            return match tickets {
                Some(t) => Threading::Found(id.clone(), t),
                None => Threading::Unknown,
            };
        }
        Threading::NotFound
    }

    /// Notes a new message on ticket `ticket_id`: its state when changed, attachments.
    pub fn ticket_changed(
        &mut self,
        ticket_id: i64,
        state: Option<&TicketState>,
        has_attachments: bool,
        at: DateTime<Utc>,
    ) {
        if let Some(t) = self.tickets.get_mut(&ticket_id) {
            if let Some(s) = state {
                t.status.clone_from(&s.status);
                t.waiting_on.clone_from(&s.waiting_on);
                t.classification.clone_from(&s.classification);
                t.closed_at = s.closed_at;
            }
            t.has_attachments |= has_attachments;
            t.updated_at = at;
        }
    }

    /// The customer with this normalized address, when stored.
    pub fn customer(&self, org_id: i64, email_norm: &str) -> Option<&Customer> {
        self.customers.get(&(org_id, email_norm.to_string()))
    }

    /// The customer with this id, when the batch has seen it.
    pub fn customer_by_id(&self, org_id: i64, id: i64) -> Option<&Customer> {
        let norm = self.customer_ids.get(&(org_id, id))?;
        self.customers.get(&(org_id, norm.clone()))
    }

    /// Notes a customer read or written in this batch.
    pub fn remember_customer(&mut self, org_id: i64, email_norm: String, customer: Customer) {
        self.customer_ids
            .insert((org_id, customer.id), email_norm.clone());
        self.customers.insert((org_id, email_norm), customer);
    }

    /// Notes a customer the batch created because `load` did not find it; `surely_new`
    /// when it cannot have existed before (then it has no earlier tickets either).
    pub fn created_customer(
        &mut self,
        org_id: i64,
        email_norm: String,
        customer: Customer,
        surely_new: bool,
    ) {
        if self.exclusive || surely_new {
            self.loaded.insert((org_id, customer.id));
        }
        self.remember_customer(org_id, email_norm, customer);
    }

    /// The next ticket number of `org_id`. The first call takes a block as large as the
    /// organization's share of the batch; [`Known::return_unused`] gives the rest back.
    pub async fn take_public_id(&mut self, tx: &mut Tx, org_id: i64) -> Result<i64, StoreError> {
        if let Some((next, last)) = self.numbers.get_mut(&org_id)
            && *next <= *last
        {
            let n = *next;
            *next += 1;
            return Ok(n);
        }
        // The counter row is this transaction's until commit: a second block follows the
        // first without a gap.
        let want = self.per_org.get(&org_id).copied().unwrap_or(1).max(1);
        let last = tickets::reserve_public_ids(tx, org_id, want).await?;
        let first = last - want + 1;
        self.numbers.insert(org_id, (first + 1, last));
        Ok(first)
    }

    /// Gives back the ticket numbers taken and not used, so numbering stays gap-free; call
    /// right before the commit.
    pub async fn return_unused(&mut self, tx: &mut Tx) -> Result<(), StoreError> {
        for (org_id, (next, last)) in std::mem::take(&mut self.numbers) {
            if next <= last {
                tickets::return_public_ids(tx, org_id, last - next + 1).await?;
            }
        }
        Ok(())
    }

    /// Tickets this customer opened by mail after `since`, or None when the batch cannot
    /// tell: a customer it did not load (new, or created by another process meanwhile),
    /// or a time before what it read.
    pub fn opened_since(&self, org_id: i64, customer_id: i64, since: DateTime<Utc>) -> Option<i64> {
        if self.opened_since.is_none_or(|loaded| since < loaded)
            || !self.loaded.contains(&(org_id, customer_id))
        {
            return None;
        }
        let count = self
            .opened
            .get(&(org_id, customer_id))
            .map_or(0, |times| times.iter().filter(|t| **t > since).count());
        Some(i64::try_from(count).unwrap_or(i64::MAX))
    }

    /// Notes a ticket opened by mail in this batch.
    pub fn opened_ticket(&mut self, org_id: i64, customer_id: i64, at: DateTime<Utc>) {
        self.opened
            .entry((org_id, customer_id))
            .or_default()
            .push(at);
    }
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(id: i64) -> Customer {
        Customer {
            id,
            organization_id: 1,
            name: String::new(),
            email: format!("c{id}@example.com"),
            is_spam: false,
        }
    }

    #[test]
    fn counts_only_tickets_inside_the_window_and_only_for_loaded_customers() {
        let now = Utc::now();
        let mut known = Known {
            opened_since: Some(now - chrono::Duration::hours(1)),
            ..Known::default()
        };
        known.remember_customer(1, "c5@example.com".into(), customer(5));
        assert_eq!(
            known.opened_since(1, 5, now - chrono::Duration::minutes(5)),
            None
        );
        known.loaded.insert((1, 5));
        assert_eq!(
            known.opened_since(1, 5, now - chrono::Duration::minutes(5)),
            Some(0)
        );
        known.opened_ticket(1, 5, now - chrono::Duration::minutes(10));
        known.opened_ticket(1, 5, now);
        assert_eq!(
            known.opened_since(1, 5, now - chrono::Duration::minutes(5)),
            Some(1)
        );
        assert_eq!(
            known.opened_since(1, 5, now - chrono::Duration::minutes(30)),
            Some(2)
        );
        // Before what was loaded: the batch cannot tell.
        assert_eq!(
            known.opened_since(1, 5, now - chrono::Duration::hours(2)),
            None
        );
        // Another organization's customer with the same id is not this one.
        assert_eq!(known.opened_since(2, 5, now), None);
    }

    #[test]
    fn customers_are_found_by_address_and_id_within_their_organization() {
        let mut known = Known::default();
        known.remember_customer(1, "c7@example.com".into(), customer(7));
        assert_eq!(known.customer(1, "c7@example.com").map(|c| c.id), Some(7));
        assert_eq!(known.customer_by_id(1, 7).map(|c| c.id), Some(7));
        assert!(known.customer(2, "c7@example.com").is_none());
        assert!(known.customer_by_id(2, 7).is_none());
    }

    fn ticket(id: i64) -> Ticket {
        let at = Utc::now();
        Ticket {
            id,
            organization_id: 1,
            public_id: id,
            inbox_id: 1,
            customer_id: 5,
            assignee_id: None,
            subject: String::new(),
            status: "pending_customer".into(),
            waiting_on: "customer".into(),
            classification: String::new(),
            is_spam: false,
            origin: "email".into(),
            description: String::new(),
            description_html: String::new(),
            external_recipient_emails: "[]".into(),
            tags: "[]".into(),
            language: String::new(),
            has_attachments: false,
            customer_visible_reply_count: 0,
            created_by_role: "customer".into(),
            created_by_user_id: None,
            summary: String::new(),
            sentiment_analysis_class: "pending".into(),
            csat_rating: None,
            csat_comment: None,
            closed_at: None,
            created_at: at,
            updated_at: at,
            reply_domain: String::new(),
        }
    }

    #[test]
    fn threading_answers_from_the_batch_start_only_when_nothing_since_can_change_it() {
        let mut known = Known::default();
        known.threads.insert((1, "<none>".into()), Vec::new());
        known.threads.insert((1, "<a>".into()), vec![7, 8]);
        known.tickets.insert(7, ticket(7));
        known.tickets.insert(8, ticket(8));
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match known.threading(1, &ids(&["<none>", "<a>"])) {
            Threading::Found(matched, tickets) => {
                assert_eq!(matched, "<a>");
                assert_eq!(tickets.iter().map(|t| t.id).collect::<Vec<_>>(), [7, 8]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            known.threading(1, &ids(&["<none>"])),
            Threading::NotFound
        ));
        // Not read at the start, or another organization's: only the database knows.
        assert!(matches!(
            known.threading(1, &ids(&["<other>"])),
            Threading::Unknown
        ));
        assert!(matches!(
            known.threading(2, &ids(&["<a>"])),
            Threading::Unknown
        ));
        // A message of the batch now carries an id that was free at the start.
        known.stored_message(1, "k", Some("<none>"), 9, 10);
        assert!(matches!(
            known.threading(1, &ids(&["<none>", "<a>"])),
            Threading::Unknown
        ));
        // The batch's own change to a ticket is what the next message sees.
        let state = TicketState {
            status: "active".into(),
            waiting_on: "associate".into(),
            classification: String::new(),
            closed_at: None,
        };
        known.ticket_changed(7, Some(&state), true, Utc::now());
        match known.threading(1, &ids(&["<a>"])) {
            Threading::Found(_, tickets) => {
                assert_eq!(tickets[0].status, "active");
                assert_eq!(tickets[0].waiting_on, "associate");
                assert!(tickets[0].has_attachments);
                assert_eq!(tickets[1].status, "pending_customer");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicates_written_in_the_batch_are_seen() {
        let mut known = Known::default();
        assert_eq!(known.duplicate(1, "k"), None);
        known.stored_message(1, "k", None, 3, 4);
        assert_eq!(known.duplicate(1, "k"), Some((3, 4)));
        assert_eq!(known.duplicate(2, "k"), None);
    }
}
