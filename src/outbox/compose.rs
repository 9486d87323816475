//! Turns a stored outgoing message into a threaded email (SPEC 3).

use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pipeline::thread::ReplyTokens;
use crate::store::blobs::BlobStore;
use crate::store::tickets;
use crate::store::{StoreError, Tx, orgs, parse_json_list, views};

/// Why a message cannot be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Nothing to retry: the data cannot make a mail (no recipient, a bad address).
    #[error("{0}")]
    Invalid(String),
}

/// An email ready for the relay.
#[derive(Debug)]
pub struct Outgoing {
    pub envelope: Envelope,
    pub message: Message,
}

/// Most Message-IDs carried in References: the first (the thread's root) and the latest.
const MAX_REFERENCES: usize = 20;

/// How long a looked-up organization or inbox is used before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(30);

/// Organizations and inboxes the sender read lately. They change rarely (at start, or by a
/// command), and reading them for every reply was a third of the sender's statements.
#[derive(Debug, Default)]
pub struct Directory {
    orgs: Mutex<HashMap<i64, (Instant, orgs::Org)>>,
    inboxes: Mutex<HashMap<i64, (Instant, orgs::Inbox)>>,
}

impl Directory {
    async fn org(&self, tx: &mut Tx, id: i64) -> Result<Option<orgs::Org>, StoreError> {
        cached(&self.orgs, id, orgs::get_org(tx, id)).await
    }

    async fn inbox(&self, tx: &mut Tx, id: i64) -> Result<Option<orgs::Inbox>, StoreError> {
        cached(&self.inboxes, id, orgs::inbox_by_id(tx, id)).await
    }
}

/// The entry `id` of `map` while fresh; otherwise what `load` reads, remembered.
async fn cached<T: Clone>(
    map: &Mutex<HashMap<i64, (Instant, T)>>,
    id: i64,
    load: impl std::future::Future<Output = Result<Option<T>, StoreError>>,
) -> Result<Option<T>, StoreError> {
    let fresh = map.lock().ok().and_then(|m| {
        m.get(&id)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, v)| v.clone())
    });
    if fresh.is_some() {
        return Ok(fresh);
    }
    let loaded = load.await?;
    if let (Some(v), Ok(mut m)) = (&loaded, map.lock()) {
        m.insert(id, (Instant::now(), v.clone()));
    }
    Ok(loaded)
}

/// What composing outgoing messages of one organization reads from the database, read for
/// a whole claim at once: five statements for the claim instead of five for every mail.
#[derive(Debug, Default)]
pub struct Inputs {
    org: Option<orgs::Org>,
    inboxes: HashMap<i64, orgs::Inbox>,
    messages: HashMap<i64, tickets::Message>,
    tickets: HashMap<i64, tickets::Ticket>,
    customers: HashMap<i64, tickets::Customer>,
    /// Each ticket's Message-IDs with the ids of their messages, oldest first.
    threads: HashMap<i64, Vec<(i64, String)>>,
    attachments: HashMap<i64, Vec<tickets::Attachment>>,
}

impl Inputs {
    /// Reads what composing `message_ids` of organization `org_id` needs.
    pub async fn load(
        tx: &mut Tx,
        directory: &Directory,
        org_id: i64,
        message_ids: &[i64],
    ) -> Result<Inputs, StoreError> {
        let messages: HashMap<i64, tickets::Message> =
            views::messages_by_ids(tx, org_id, message_ids)
                .await?
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
        let ticket_ids: Vec<i64> = messages.values().map(|m| m.ticket_id).collect();
        let tickets: HashMap<i64, tickets::Ticket> = views::tickets_by_ids(tx, org_id, &ticket_ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
        let customer_ids: Vec<i64> = tickets.values().map(|t| t.customer_id).collect();
        let customers = views::customers_by_ids(tx, org_id, &customer_ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let mut threads: HashMap<i64, Vec<(i64, String)>> = HashMap::new();
        for (ticket_id, id, header) in
            tickets::message_ids_of_tickets(tx, org_id, &ticket_ids).await?
        {
            threads.entry(ticket_id).or_default().push((id, header));
        }
        let mut attachments: HashMap<i64, Vec<tickets::Attachment>> = HashMap::new();
        for a in views::attachments_of_messages(tx, org_id, message_ids).await? {
            if let Some(message_id) = a.message_id {
                attachments.entry(message_id).or_default().push(a);
            }
        }
        let org = directory.org(tx, org_id).await?;
        let mut inboxes = HashMap::new();
        for ticket in tickets.values() {
            if inboxes.contains_key(&ticket.inbox_id) {
                continue;
            }
            if let Some(inbox) = directory.inbox(tx, ticket.inbox_id).await? {
                inboxes.insert(ticket.inbox_id, inbox);
            }
        }
        Ok(Inputs {
            org,
            inboxes,
            messages,
            tickets,
            customers,
            threads,
            attachments,
        })
    }
}

/// Builds the mail for outgoing message `message_id` of organization `org_id`.
pub async fn compose(
    tx: &mut Tx,
    blobs: &dyn BlobStore,
    tokens: &ReplyTokens,
    directory: &Directory,
    org_id: i64,
    message_id: i64,
) -> Result<Outgoing, ComposeError> {
    let inputs = Inputs::load(tx, directory, org_id, &[message_id]).await?;
    build(&inputs, blobs, tokens, org_id, message_id)
}

/// Builds the mail for outgoing message `message_id` of organization `org_id` from `inputs`.
pub fn build(
    inputs: &Inputs,
    blobs: &dyn BlobStore,
    tokens: &ReplyTokens,
    org_id: i64,
    message_id: i64,
) -> Result<Outgoing, ComposeError> {
    let row = inputs
        .messages
        .get(&message_id)
        .ok_or_else(|| ComposeError::Invalid(format!("message {message_id} does not exist")))?;
    let ticket = inputs
        .tickets
        .get(&row.ticket_id)
        .ok_or_else(|| ComposeError::Invalid(format!("message {message_id} has no ticket")))?;
    let org = inputs
        .org
        .as_ref()
        .ok_or_else(|| ComposeError::Invalid(format!("organization {org_id} does not exist")))?;
    let inbox = inputs.inboxes.get(&ticket.inbox_id).ok_or_else(|| {
        ComposeError::Invalid(format!("inbox {} does not exist", ticket.inbox_id))
    })?;
    let customer = inputs.customers.get(&ticket.customer_id).ok_or_else(|| {
        ComposeError::Invalid(format!("customer {} does not exist", ticket.customer_id))
    })?;
    let domain = crate::store::replies::reply_domain(org, ticket)
        .ok_or_else(|| ComposeError::Invalid(format!("organization {org_id} has no domain")))?;

    let own = |local: &str| -> Result<Address, ComposeError> {
        Address::new(local, &domain)
            .map_err(|e| ComposeError::Invalid(format!("{local}@{domain}: {e}")))
    };
    let from = Mailbox::new(Some(one_line(&inbox.name)), own(&inbox.email_prefix)?);
    let reply_to = Mailbox::new(
        Some(one_line(&inbox.name)),
        own(&format!(
            "{}+{}",
            inbox.email_prefix,
            tokens.reply_detail(org_id, ticket.id)
        ))?,
    );
    let bounce = own(&format!(
        "{}+{}",
        inbox.email_prefix,
        tokens.bounce_detail(org_id, message_id)
    ))?;
    let to_addr: Address = customer
        .email
        .parse()
        .map_err(|e| ComposeError::Invalid(format!("requester {:?}: {e}", customer.email)))?;
    let to = Mailbox::new(non_empty(one_line(&customer.name)), to_addr.clone());
    // Cc: the message's snapshot minus the requester and our own addresses; an address
    // that does not parse is left out rather than failing the whole reply.
    let own_domains: Vec<String> = org.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    let mut cc: Vec<Mailbox> = Vec::new();
    for raw in parse_json_list(&row.external_recipient_emails) {
        let Ok(addr) = one_line(&raw).parse::<Address>() else {
            continue;
        };
        let same_as_requester = AsRef::<str>::as_ref(&addr).eq_ignore_ascii_case(to_addr.as_ref());
        let ours = own_domains.contains(&addr.domain().to_ascii_lowercase());
        if !same_as_requester && !ours && !cc.iter().any(|m| m.email == addr) {
            cc.push(Mailbox::new(None, addr));
        }
    }

    let tag = if org.subject_tag_prefix.is_empty() {
        format!("[#{}]", ticket.public_id)
    } else {
        format!("[{} #{}]", org.subject_tag_prefix, ticket.public_id)
    };
    let subject = if row.subject.is_empty() {
        format!("Re: {} {tag}", one_line(&ticket.subject))
    } else {
        one_line(&row.subject)
    };

    // Threading: In-Reply-To the latest earlier message with an id, References the root and
    // the most recent ones.
    let ids: Vec<String> = inputs
        .threads
        .get(&ticket.id)
        .map(|thread| {
            thread
                .iter()
                .filter(|(id, _)| *id < row.id)
                .map(|(_, header)| header.clone())
                .collect()
        })
        .unwrap_or_default();
    let references: Vec<String> = if ids.len() > MAX_REFERENCES {
        let mut r = vec![ids[0].clone()];
        r.extend(ids[ids.len() - (MAX_REFERENCES - 1)..].iter().cloned());
        r
    } else {
        ids.clone()
    };

    let own_id = row
        .message_id_header
        .clone()
        .ok_or_else(|| ComposeError::Invalid(format!("message {message_id} has no Message-ID")))?;
    let mut builder = Message::builder()
        .from(from)
        .reply_to(reply_to)
        .to(to.clone())
        .subject(subject)
        .message_id(Some(format!("<{}>", one_line(&own_id))));
    for m in cc.iter().cloned() {
        builder = builder.cc(m);
    }
    if let Some(last) = ids.last() {
        builder = builder.in_reply_to(format!("<{}>", one_line(last)));
    }
    if !references.is_empty() {
        builder = builder.references(
            references
                .iter()
                .map(|r| format!("<{}>", one_line(r)))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    if row.is_auto_reply {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".into(),
        ));
    }

    let mut recipients = vec![to_addr];
    recipients.extend(cc.iter().map(|m| m.email.clone()));
    let envelope = Envelope::new(Some(bounce), recipients)
        .map_err(|e| ComposeError::Invalid(format!("envelope: {e}")))?;
    builder = builder.envelope(envelope.clone());

    let text = if row.content.trim().is_empty() && !row.content_html.trim().is_empty() {
        crate::pipeline::parse::html_to_text(&row.content_html, 2 * 1024 * 1024, 256)
    } else {
        row.content.clone()
    };
    let body = if row.content_html.trim().is_empty() {
        MultiPart::alternative().singlepart(SinglePart::plain(text))
    } else {
        let html = crate::pipeline::parse::sanitize_html(&row.content_html, &Default::default());
        MultiPart::alternative_plain_html(text, html)
    };
    let attachments = inputs
        .attachments
        .get(&message_id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let message = if attachments.is_empty() {
        builder.multipart(body)
    } else {
        let mut mixed = MultiPart::mixed().multipart(body);
        for a in attachments {
            let bytes = blobs.get(&a.sha256).map_err(StoreError::Io)?;
            let content_type = ContentType::parse(&a.content_type).unwrap_or(
                ContentType::parse("application/octet-stream")
                    .map_err(|e| ComposeError::Invalid(format!("content type: {e}")))?,
            );
            mixed = mixed.singlepart(Attachment::new(one_line(&a.name)).body(bytes, content_type));
        }
        builder.multipart(mixed)
    }
    .map_err(|e| ComposeError::Invalid(format!("building the message: {e}")))?;
    Ok(Outgoing { envelope, message })
}

/// Text for a header: line breaks and other control characters become spaces, so no input
/// can start a header of its own.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn header_text_has_no_line_breaks() {
        assert_eq!(one_line("Hi\r\nBcc: x@evil.test"), "Hi  Bcc: x@evil.test");
        assert_eq!(one_line("a\u{0}b\tc"), "a b c");
    }
}
