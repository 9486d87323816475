//! Rows a batch transaction holds back and writes in bulk: the customers, tickets, messages
//! and attachments the pipeline creates. In the serial commit every statement is a round
//! trip (on SQLite a hand-off to its thread and back), so one multi-row `INSERT` per table
//! per batch replaces one per row.
//!
//! Held-back rows get their ids when they are held back: on SQLite from `sqlite_sequence`
//! (the batch holds the only write lock; read again after every bulk write, as another
//! insert may follow it), on PostgreSQL from the table's sequence in blocks, so ids follow
//! the order rows are held back in (a row inserted otherwise meanwhile may sort between). Every statement run through
//! [`crate::with_tx!`] writes the held-back rows first, so nothing ever reads around them;
//! the few lookups that skip that say why their answer cannot depend on them.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};

use super::tickets::{NewAttachment, NewMessage, NewTicket};
use super::{StoreError, Tx, TxConn, clean_text, json_list};
use crate::with_tx_as_is;

/// The tables whose ids are given out in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Customers,
    Tickets,
    Messages,
}

impl Table {
    const ALL: [Table; 3] = [Table::Customers, Table::Tickets, Table::Messages];

    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Tickets => "tickets",
            Table::Messages => "messages",
        }
    }
}

/// Where the next ids of one table come from.
#[derive(Debug, Default)]
enum Ids {
    /// Not read since the last bulk write.
    #[default]
    Unread,
    /// SQLite: the next id; everything above it is free while the write lock is held.
    From(i64),
    /// PostgreSQL: ids taken from the sequence and not used yet.
    Block(VecDeque<i64>),
}

/// The rows held back in one transaction.
#[derive(Debug, Default)]
pub struct Pending {
    customers: Vec<CustomerRow>,
    tickets: Vec<TicketRow>,
    messages: Vec<MessageRow>,
    attachments: Vec<AttachmentRow>,
    /// (organization, Message-ID) of the held-back messages.
    message_ids: HashSet<(i64, String)>,
    ticket_ids: HashSet<i64>,
    ids: [Ids; 3],
    /// How many ids one PostgreSQL block takes.
    block: i64,
    /// A bulk write failed; which row caused it is unknown.
    failed: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.customers.is_empty()
            && self.tickets.is_empty()
            && self.messages.is_empty()
            && self.attachments.is_empty()
    }
}

/// Most rows in one bulk statement. Statements of 1, 2, 4 ... this many rows: a handful of
/// shapes per table, each prepared once per connection and then taken from its cache.
const MAX_CHUNK: usize = 64;

/// The next chunk length for `left` rows: the largest power of two that fits.
fn chunk_len(left: usize) -> usize {
    let fit = left.min(MAX_CHUNK);
    if fit == 0 { 0 } else { 1 << fit.ilog2() }
}

/// A customer row held back.
#[derive(Debug)]
struct CustomerRow {
    id: i64,
    organization_id: i64,
    name: String,
    email: String,
    email_norm: String,
    at: DateTime<Utc>,
}

/// A ticket row held back.
#[derive(Debug)]
struct TicketRow {
    id: i64,
    organization_id: i64,
    public_id: i64,
    inbox_id: i64,
    customer_id: i64,
    subject: String,
    status: String,
    waiting_on: String,
    is_spam: bool,
    origin: String,
    description: String,
    description_html: String,
    external_recipient_emails: String,
    language: String,
    has_attachments: bool,
    created_by_role: String,
    created_by_user_id: Option<i64>,
    reply_domain: String,
    at: DateTime<Utc>,
}

/// A message row held back.
#[derive(Debug)]
struct MessageRow {
    id: i64,
    organization_id: i64,
    ticket_id: i64,
    role: String,
    direction: String,
    author_user_id: Option<i64>,
    sender_customer_id: Option<i64>,
    sender_email: String,
    sender_name: String,
    content: String,
    content_html: String,
    is_visible_to_customer: bool,
    external_recipient_emails: String,
    subject: String,
    message_id_header: Option<String>,
    in_reply_to: String,
    references_header: String,
    reply_to: String,
    threaded_by: String,
    thread_note: String,
    auth_results: String,
    is_auto_reply: bool,
    spam_reason: String,
    processing_notes: String,
    language: String,
    raw_sha256: Option<String>,
    dedupe_key: Option<String>,
    delivery_state: Option<String>,
    at: DateTime<Utc>,
}

/// An attachment row held back (its message is held back, or may be).
#[derive(Debug)]
struct AttachmentRow {
    id: String,
    organization_id: i64,
    ticket_id: i64,
    message_id: i64,
    name: String,
    content_type: String,
    size: i64,
    sha256: String,
    content_id: String,
    is_inline: bool,
    at: DateTime<Utc>,
}

impl Tx {
    /// From now on customers, tickets, messages and attachments created through the store
    /// are written in bulk, before the next other statement or the commit. `expected` is
    /// about how many rows of each kind the transaction will create.
    pub fn hold_back_inserts(&mut self, expected: usize) {
        self.pending = Some(Box::new(Pending {
            block: i64::try_from(expected.clamp(1, super::MAX_ROWS)).unwrap_or(1),
            ..Pending::default()
        }));
    }

    /// True when inserts are held back.
    pub fn holds_back(&self) -> bool {
        self.pending.is_some()
    }

    /// True when writing held-back rows failed in this transaction: the failure belongs to
    /// no one statement of the caller, so it should run again writing row by row.
    pub fn bulk_write_failed(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.failed)
    }

    /// True when a held-back message of `org_id` carries one of these Message-IDs.
    pub(crate) fn holds_message_id(&self, org_id: i64, ids: &[String]) -> bool {
        self.pending.as_ref().is_some_and(|p| {
            !p.message_ids.is_empty()
                && ids
                    .iter()
                    .any(|id| p.message_ids.contains(&(org_id, id.clone())))
        })
    }

    /// True when the ticket with this id is held back.
    pub(crate) fn holds_ticket(&self, ticket_id: i64) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| p.ticket_ids.contains(&ticket_id))
    }

    /// The id the next held-back row of `table` gets.
    async fn next_id(&mut self, table: Table) -> Result<i64, StoreError> {
        let needs_read = match &self.pending_mut()?.ids[table.index()] {
            Ids::Unread => true,
            Ids::From(_) => false,
            Ids::Block(ids) => ids.is_empty(),
        };
        if needs_read {
            self.read_ids(table).await?;
        }
        match &mut self.pending_mut()?.ids[table.index()] {
            Ids::From(next) => {
                let id = *next;
                *next += 1;
                Ok(id)
            }
            Ids::Block(ids) => ids
                .pop_front()
                .ok_or_else(|| StoreError::Conflict(format!("no {} ids", table.name()))),
            Ids::Unread => Err(StoreError::Conflict(format!("no {} ids", table.name()))),
        }
    }

    /// Fills the id source of `table`: on SQLite every table's from `sqlite_sequence` in one
    /// statement; on PostgreSQL a block from `table`'s sequence, so a batch that opens no
    /// ticket takes no ticket ids.
    async fn read_ids(&mut self, table: Table) -> Result<(), StoreError> {
        let block = self.pending.as_ref().map_or(1, |p| p.block);
        match &mut self.conn {
            TxConn::Sqlite(c) => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT name, seq FROM sqlite_sequence WHERE name IN ('customers', 'tickets', 'messages')",
                )
                .fetch_all(&mut **c)
                .await?;
                let Some(p) = self.pending.as_mut() else {
                    return Ok(());
                };
                for table in Table::ALL {
                    if matches!(p.ids[table.index()], Ids::Unread) {
                        // No row means the table never had one.
                        let seq = rows
                            .iter()
                            .find(|(name, _)| name == table.name())
                            .map_or(0, |(_, seq)| *seq);
                        p.ids[table.index()] = Ids::From(seq + 1);
                    }
                }
            }
            TxConn::Postgres(c) => {
                let mut ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)",
                )
                .bind(table.name())
                .bind(block)
                .fetch_all(&mut **c)
                .await?;
                // Ids in the order rows are written: messages of a ticket sort by id.
                ids.sort_unstable();
                if let Some(p) = self.pending.as_mut() {
                    p.ids[table.index()] = Ids::Block(ids.into());
                }
            }
        }
        Ok(())
    }

    /// Holds back a new customer; returns its id.
    pub(crate) async fn hold_customer(
        &mut self,
        org_id: i64,
        email: &str,
        email_norm: &str,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let id = self.next_id(Table::Customers).await?;
        let row = CustomerRow {
            id,
            organization_id: org_id,
            name: clean_text(name),
            email: clean_text(email),
            email_norm: email_norm.to_string(),
            at,
        };
        self.pending_mut()?.customers.push(row);
        Ok(id)
    }

    /// Holds back a new ticket numbered `public_id`; returns its id.
    pub(crate) async fn hold_ticket(
        &mut self,
        t: &NewTicket<'_>,
        public_id: i64,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let id = self.next_id(Table::Tickets).await?;
        let row = TicketRow {
            id,
            organization_id: t.organization_id,
            public_id,
            inbox_id: t.inbox_id,
            customer_id: t.customer_id,
            subject: clean_text(t.subject),
            status: t.status.to_string(),
            waiting_on: t.waiting_on.to_string(),
            is_spam: t.is_spam,
            origin: t.origin.to_string(),
            description: clean_text(t.description),
            description_html: clean_text(t.description_html),
            external_recipient_emails: json_list(t.external_recipient_emails),
            language: t.language.to_string(),
            has_attachments: t.has_attachments,
            created_by_role: t.created_by_role.to_string(),
            created_by_user_id: t.created_by_user_id,
            reply_domain: t.reply_domain.to_string(),
            at,
        };
        let p = self.pending_mut()?;
        p.ticket_ids.insert(id);
        p.tickets.push(row);
        Ok(id)
    }

    /// Holds back a new message; returns its id.
    pub(crate) async fn hold_message(
        &mut self,
        m: &NewMessage<'_>,
        at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let id = self.next_id(Table::Messages).await?;
        let row = MessageRow {
            id,
            organization_id: m.organization_id,
            ticket_id: m.ticket_id,
            role: m.role.to_string(),
            direction: m.direction.to_string(),
            author_user_id: m.author_user_id,
            sender_customer_id: m.sender_customer_id,
            sender_email: clean_text(m.sender_email),
            sender_name: clean_text(m.sender_name),
            content: clean_text(m.content),
            content_html: clean_text(m.content_html),
            is_visible_to_customer: m.is_visible_to_customer,
            external_recipient_emails: json_list(m.external_recipient_emails),
            subject: clean_text(m.subject),
            message_id_header: m.message_id_header.map(clean_text),
            in_reply_to: clean_text(m.in_reply_to),
            references_header: clean_text(m.references_header),
            reply_to: clean_text(m.reply_to),
            threaded_by: m.threaded_by.to_string(),
            thread_note: clean_text(m.thread_note),
            auth_results: clean_text(m.auth_results),
            is_auto_reply: m.is_auto_reply,
            spam_reason: m.spam_reason.to_string(),
            processing_notes: clean_text(m.processing_notes),
            language: m.language.to_string(),
            raw_sha256: m.raw_sha256.map(str::to_string),
            dedupe_key: m.dedupe_key.map(str::to_string),
            delivery_state: m.delivery_state.map(str::to_string),
            at,
        };
        let p = self.pending_mut()?;
        if let Some(header) = &row.message_id_header {
            p.message_ids.insert((row.organization_id, header.clone()));
        }
        p.messages.push(row);
        Ok(id)
    }

    /// Holds back an attachment row.
    pub(crate) fn hold_attachment(
        &mut self,
        a: &NewAttachment<'_>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let row = AttachmentRow {
            id: a.id.to_string(),
            organization_id: a.organization_id,
            ticket_id: a.ticket_id,
            message_id: a.message_id,
            name: clean_text(a.name),
            content_type: clean_text(a.content_type),
            size: a.size,
            sha256: a.sha256.to_string(),
            content_id: clean_text(a.content_id),
            is_inline: a.is_inline,
            at,
        };
        self.pending_mut()?.attachments.push(row);
        Ok(())
    }

    fn pending_mut(&mut self) -> Result<&mut Pending, StoreError> {
        self.pending
            .as_deref_mut()
            .ok_or_else(|| StoreError::Conflict("no rows are held back".into()))
    }

    /// Writes the held-back rows, parents before children; a failure is remembered
    /// ([`Tx::bulk_write_failed`]) and nothing is held back after it.
    pub async fn write_pending(&mut self) -> Result<(), sqlx::Error> {
        let Some(p) = self.pending.as_deref_mut() else {
            return Ok(());
        };
        if p.is_empty() {
            return Ok(());
        }
        let customers = std::mem::take(&mut p.customers);
        let tickets = std::mem::take(&mut p.tickets);
        let messages = std::mem::take(&mut p.messages);
        let attachments = std::mem::take(&mut p.attachments);
        p.message_ids.clear();
        p.ticket_ids.clear();
        if matches!(self.conn, TxConn::Sqlite(_)) {
            // Another insert may follow this write in the same transaction and take the
            // next ids: read the counters again before giving any out. (PostgreSQL's blocks
            // are this transaction's alone.)
            p.ids = Default::default();
        }
        let written = async {
            write_customers(self, &customers).await?;
            write_tickets(self, &tickets).await?;
            write_messages(self, &messages).await?;
            write_attachments(self, &attachments).await
        }
        .await;
        if written.is_err()
            && let Some(p) = self.pending.as_deref_mut()
        {
            p.failed = true;
        }
        written
    }
}

/// Runs `push_rows` for chunks of `rows` after `head`, one multi-row statement each.
macro_rules! insert_chunks {
    ($tx:expr, $rows:expr, $head:expr, |$row:ident, $r:ident| $push:block) => {{
        let mut rest = &$rows[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(rest.len()));
            rest = tail;
            with_tx_as_is!($tx, |c| {
                let mut q = sqlx::QueryBuilder::new($head);
                q.push_values(chunk, |mut $row, $r| $push);
                q.build().execute(c).await.map(|r| r.rows_affected())
            })?;
        }
        Ok(())
    }};
}

async fn write_customers(tx: &mut Tx, rows: &[CustomerRow]) -> Result<(), sqlx::Error> {
    insert_chunks!(
        tx,
        rows,
        "INSERT INTO customers (id, organization_id, name, email, email_norm, is_spam, created_at, updated_at) ",
        |row, r| {
            row.push_bind(r.id)
                .push_bind(r.organization_id)
                .push_bind(r.name.as_str())
                .push_bind(r.email.as_str())
                .push_bind(r.email_norm.as_str())
                .push_bind(false)
                .push_bind(r.at)
                .push_bind(r.at);
        }
    )
}

async fn write_tickets(tx: &mut Tx, rows: &[TicketRow]) -> Result<(), sqlx::Error> {
    insert_chunks!(
        tx,
        rows,
        "INSERT INTO tickets (id, organization_id, public_id, inbox_id, customer_id, subject, status, waiting_on, classification,
            is_spam, origin, description, description_html, external_recipient_emails, tags, language, has_attachments,
            created_by_role, created_by_user_id, reply_domain, created_at, updated_at) ",
        |row, r| {
            row.push_bind(r.id)
                .push_bind(r.organization_id)
                .push_bind(r.public_id)
                .push_bind(r.inbox_id)
                .push_bind(r.customer_id)
                .push_bind(r.subject.as_str())
                .push_bind(r.status.as_str())
                .push_bind(r.waiting_on.as_str())
                .push_bind("")
                .push_bind(r.is_spam)
                .push_bind(r.origin.as_str())
                .push_bind(r.description.as_str())
                .push_bind(r.description_html.as_str())
                .push_bind(r.external_recipient_emails.as_str())
                .push_bind("[]")
                .push_bind(r.language.as_str())
                .push_bind(r.has_attachments)
                .push_bind(r.created_by_role.as_str())
                .push_bind(r.created_by_user_id)
                .push_bind(r.reply_domain.as_str())
                .push_bind(r.at)
                .push_bind(r.at);
        }
    )
}

async fn write_messages(tx: &mut Tx, rows: &[MessageRow]) -> Result<(), sqlx::Error> {
    insert_chunks!(
        tx,
        rows,
        "INSERT INTO messages (id, organization_id, ticket_id, role, direction, author_user_id, sender_customer_id, sender_email,
            sender_name, content, content_html, is_visible_to_customer, external_recipient_emails, subject, message_id_header,
            in_reply_to, references_header, reply_to, threaded_by, thread_note, auth_results, is_auto_reply, spam_reason,
            processing_notes, language, raw_sha256, dedupe_key, delivery_state, created_at, updated_at) ",
        |row, r| {
            row.push_bind(r.id)
                .push_bind(r.organization_id)
                .push_bind(r.ticket_id)
                .push_bind(r.role.as_str())
                .push_bind(r.direction.as_str())
                .push_bind(r.author_user_id)
                .push_bind(r.sender_customer_id)
                .push_bind(r.sender_email.as_str())
                .push_bind(r.sender_name.as_str())
                .push_bind(r.content.as_str())
                .push_bind(r.content_html.as_str())
                .push_bind(r.is_visible_to_customer)
                .push_bind(r.external_recipient_emails.as_str())
                .push_bind(r.subject.as_str())
                .push_bind(r.message_id_header.as_deref())
                .push_bind(r.in_reply_to.as_str())
                .push_bind(r.references_header.as_str())
                .push_bind(r.reply_to.as_str())
                .push_bind(r.threaded_by.as_str())
                .push_bind(r.thread_note.as_str())
                .push_bind(r.auth_results.as_str())
                .push_bind(r.is_auto_reply)
                .push_bind(r.spam_reason.as_str())
                .push_bind(r.processing_notes.as_str())
                .push_bind(r.language.as_str())
                .push_bind(r.raw_sha256.as_deref())
                .push_bind(r.dedupe_key.as_deref())
                .push_bind(r.delivery_state.as_deref())
                .push_bind(r.at)
                .push_bind(r.at);
        }
    )
}

async fn write_attachments(tx: &mut Tx, rows: &[AttachmentRow]) -> Result<(), sqlx::Error> {
    insert_chunks!(
        tx,
        rows,
        "INSERT INTO attachments (id, organization_id, ticket_id, message_id, name, content_type, size, sha256, content_id,
            is_inline, created_at) ",
        |row, r| {
            row.push_bind(r.id.as_str())
                .push_bind(r.organization_id)
                .push_bind(r.ticket_id)
                .push_bind(r.message_id)
                .push_bind(r.name.as_str())
                .push_bind(r.content_type.as_str())
                .push_bind(r.size)
                .push_bind(r.sha256.as_str())
                .push_bind(r.content_id.as_str())
                .push_bind(r.is_inline)
                .push_bind(r.at);
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_up_to_the_cap() {
        let mut left = 200;
        let mut chunks = Vec::new();
        while left > 0 {
            let n = chunk_len(left);
            chunks.push(n);
            left -= n;
        }
        assert_eq!(chunks, vec![64, 64, 64, 8]);
        assert_eq!(chunk_len(7), 4);
        assert_eq!(chunk_len(1), 1);
        assert_eq!(chunk_len(0), 0);
    }
}
