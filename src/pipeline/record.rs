//! Decides what a prepared message becomes and writes it: the customer, threading and
//! policy steps in order, then the ticket, message and attachment rows.

use super::known::Known;
use super::parse::{AuthResult, Mailbox, ParsedMail};
use super::policy::{acknowledge, autoreply, bounce, cc, loops, spam};
use super::prepare::Prepared;
use super::route::{Route, RouteCache};
use super::thread::{self, ReplyTokens, Sender, ThreadedBy};
use super::{Envelope, Outcome, customer};
use crate::address::normalize;
use crate::config::PolicyConfig;
use crate::outbox::webhook;
use crate::store::tickets::{self, NewAttachment, NewMessage, NewTicket, Ticket, TicketState};
use crate::store::{Store, StoreError, Tx, now, raw};

/// Subjects are capped here (SPEC 1).
const MAX_SUBJECT_CHARS: usize = 255;

/// Everything one message's decision reads.
pub(super) struct Context<'a> {
    pub route: &'a Route,
    pub envelope: &'a Envelope,
    pub prepared: &'a Prepared,
    pub tokens: &'a ReplyTokens,
    pub policy: &'a PolicyConfig,
    pub routes: &'a RouteCache,
    pub store: &'a Store,
    /// The raw bytes were kept for the whole batch already ([`raw::insert_many`]).
    pub raw_kept: bool,
}

/// A failure deciding or writing one message.
pub(super) enum Error {
    Store(StoreError),
    Unusable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// Why a message is refused before anything is written, if it is.
pub(super) fn refusal(mail: &ParsedMail, envelope: &Envelope) -> Option<String> {
    (sender_of(mail, envelope).is_none() && mail.bounce.is_none())
        .then(|| "no sender address in From, Sender or the envelope".into())
}

/// The normalized address of the sender the message is recorded under.
pub(super) fn sender_norm(mail: &ParsedMail, envelope: &Envelope) -> Option<String> {
    sender_of(mail, envelope).and_then(|m| normalize(&m.email))
}

/// Runs the decision steps and writes the result inside `tx`; `known` is the batch's view
/// of what is stored, kept current here.
pub(super) async fn apply(
    tx: &mut Tx,
    ctx: &Context<'_>,
    known: &mut Known,
) -> Result<Outcome, Error> {
    let mail = &ctx.prepared.mail;
    let org = &ctx.route.entry.org;

    // Refused before anything is written, so the batch transaction needs no undo.
    if let Some(reason) = refusal(mail, ctx.envelope) {
        return Err(Error::Unusable(reason));
    }

    // Every accepted message's raw bytes are kept, whatever it becomes.
    if !ctx.raw_kept {
        raw::insert(
            tx,
            org.id,
            &ctx.prepared.raw_sha256,
            ctx.prepared.raw_size,
            &ctx.prepared.raw_stored,
        )
        .await?;
    }

    let from = sender_of(mail, ctx.envelope);
    if let Some(from) = &from
        && loops::is_own_address(ctx.routes, ctx.store, &from.email).await?
    {
        let detail = format!(
            "From {} is one of the gateway's own inbox addresses",
            from.email
        );
        tracing::warn!(org = org.id, %detail, "mail loop dropped");
        log_outcome(tx, ctx, "loop", &detail, None).await?;
        return Ok(Outcome::Loop);
    }

    if let Some((ticket_id, message_id)) = known.duplicate(org.id, &mail.dedupe_key) {
        log_outcome(
            tx,
            ctx,
            "duplicate",
            "same content stored before",
            Some((ticket_id, message_id)),
        )
        .await?;
        return Ok(Outcome::Duplicate {
            ticket_id,
            message_id,
        });
    }

    // Before the sender check: a mailer daemon's report often has no usable From.
    if let Some(report) = &mail.bounce {
        let linked = bounce::apply(tx, ctx.route, report, ctx.tokens).await?;
        let detail = match linked {
            Some(l) => format!("{} (outgoing message {})", report.reason(), l.message_id),
            None => format!("{} (about no message of ours)", report.reason()),
        };
        log_outcome(
            tx,
            ctx,
            "bounce",
            &detail,
            linked.map(|l| (l.ticket_id, l.message_id)),
        )
        .await?;
        return Ok(Outcome::Bounce {
            linked_message_id: linked.map(|l| l.message_id),
        });
    }

    let from = from.ok_or_else(|| {
        Error::Unusable("no sender address in From, Sender or the envelope".into())
    })?;
    let from_norm = normalize(&from.email)
        .ok_or_else(|| Error::Unusable(format!("sender {:?} is not an address", from.email)))?;

    let agent = ctx.route.entry.agent(&from_norm).cloned();
    let auth: Vec<AuthResult> = if org.authserv_id.is_empty() {
        Vec::new()
    } else {
        // Only the organization's own server's verdicts count: anyone can write this header.
        mail.headers
            .auth_results()
            .into_iter()
            .filter(|a| a.authserv_id.eq_ignore_ascii_case(&org.authserv_id))
            .collect()
    };
    let sender = Sender {
        email_norm: &from_norm,
        is_agent: agent.is_some(),
        authenticated: auth.iter().any(AuthResult::passed),
    };
    let decision = thread::decide(tx, known, ctx.route, mail, sender, ctx.tokens, now()).await?;
    let auto_reply = autoreply::detect(&mail.headers, ctx.envelope.mail_from.as_deref());
    let facts = Facts {
        from: &from,
        from_norm: &from_norm,
        agent_id: agent.as_ref().map(|a| a.id),
        auth_json: if auth.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&auth).unwrap_or_default()
        },
        auto_reply,
        thread_note: decision.notes.join("; "),
        threaded_by: decision.by,
    };
    match decision.ticket {
        None => new_ticket(tx, ctx, known, &facts).await,
        Some(ticket) => append(tx, ctx, known, &facts, ticket).await,
    }
}

/// What the steps found out, handed to the writers.
struct Facts<'a> {
    from: &'a Mailbox,
    from_norm: &'a str,
    agent_id: Option<i64>,
    auth_json: String,
    auto_reply: Option<String>,
    thread_note: String,
    threaded_by: ThreadedBy,
}

/// From, else Sender, else the envelope sender: the first usable address.
pub(super) fn sender_of(mail: &ParsedMail, envelope: &Envelope) -> Option<Mailbox> {
    mail.from
        .clone()
        .filter(|m| normalize(&m.email).is_some())
        .or_else(|| {
            mail.sender
                .clone()
                .filter(|m| normalize(&m.email).is_some())
        })
        .or_else(|| {
            let env = envelope.mail_from.as_deref()?;
            normalize(env).map(|_| Mailbox {
                email: env.trim_matches(['<', '>']).to_string(),
                name: String::new(),
            })
        })
}

async fn new_ticket(
    tx: &mut Tx,
    ctx: &Context<'_>,
    known: &mut Known,
    f: &Facts<'_>,
) -> Result<Outcome, Error> {
    let org = &ctx.route.entry.org;
    let p = ctx.prepared;
    let mail = &p.mail;
    let customer = customer::resolve(tx, known, org.id, f.from, f.from_norm).await?;
    let at = now();
    let spam_reason = if customer.is_spam {
        Some("customer is marked as spam".to_string())
    } else if let Some(v) = spam::upstream_verdict(&mail.headers) {
        Some(format!("upstream filter: {v}"))
    } else {
        let since = spam::window_start(ctx.policy, at);
        let opened = match known.opened_since(org.id, customer.id, since) {
            Some(n) => n,
            None => tickets::count_tickets_since(tx, org.id, customer.id, since).await?,
        };
        spam::over_rate_limit(opened, ctx.policy)
    };
    let creation = cc::creation_list(&ctx.route.entry, mail, &customer.email);
    let snapshot = cc::message_snapshot(&ctx.route.entry, mail, &customer.email);
    let subject = ticket_subject(&mail.subject);
    let language = p.language();
    let public_id = known.take_public_id(tx, org.id).await?;
    let ticket_id = tickets::insert_numbered_ticket(
        tx,
        &NewTicket {
            organization_id: org.id,
            inbox_id: ctx.route.inbox.id,
            customer_id: customer.id,
            subject: &subject,
            status: "created",
            waiting_on: "associate",
            is_spam: spam_reason.is_some(),
            origin: "email",
            description: &p.text,
            description_html: &p.html,
            external_recipient_emails: &creation,
            language: &language,
            has_attachments: !p.attachments.is_empty(),
            created_by_role: "customer",
            created_by_user_id: None,
            reply_domain: &ctx.route.domain,
        },
        public_id,
    )
    .await?;
    known.opened_ticket(org.id, customer.id, at);
    let written = Written {
        ticket_id,
        role: "customer",
        snapshot: &snapshot,
        spam_reason: spam_reason.as_deref().unwrap_or(""),
        customer_id: Some(customer.id),
        language: &language,
    };
    let message_id = insert_message(tx, ctx, known, f, &written).await?;
    // The first message travels inside ticket.created.
    webhook::enqueue(
        tx,
        org,
        "ticket.created",
        ticket_id,
        Some(message_id),
        spam_reason.is_some(),
    )
    .await?;
    if ctx.route.inbox.auto_acknowledge
        && spam_reason.is_none()
        && f.auto_reply.is_none()
        && f.agent_id.is_none()
        && let Some(domain) = Some(ctx.route.domain.as_str())
            .filter(|d| !d.is_empty())
            .or(org.domains.first().map(String::as_str))
    {
        acknowledge::queue(
            tx,
            &acknowledge::NewTicket {
                org_id: org.id,
                domain,
                ticket_id,
                public_id,
                customer_id: customer.id,
                subject: &subject,
            },
            ctx.policy.acknowledge_window_secs,
            now(),
        )
        .await?;
    }
    Ok(Outcome::Created {
        ticket_id,
        public_id,
        message_id,
    })
}

async fn append(
    tx: &mut Tx,
    ctx: &Context<'_>,
    known: &mut Known,
    f: &Facts<'_>,
    ticket: Ticket,
) -> Result<Outcome, Error> {
    let org = &ctx.route.entry.org;
    let mail = &ctx.prepared.mail;
    let requester = match known.customer_by_id(org.id, ticket.customer_id) {
        Some(c) => Some(c.clone()),
        None => tickets::customer_by_id(tx, org.id, ticket.customer_id).await?,
    };
    let requester = requester.ok_or_else(|| {
        StoreError::NotFound(format!(
            "customer {} of ticket {}",
            ticket.customer_id, ticket.id
        ))
    })?;
    let is_requester = normalize(&requester.email) == normalize(&f.from.email);
    let role = if is_requester {
        "customer"
    } else if f.agent_id.is_some() {
        "associate"
    } else {
        "cc"
    };
    let snapshot = if role == "associate" {
        Vec::new()
    } else {
        cc::message_snapshot(&ctx.route.entry, mail, &requester.email)
    };
    // An agent writing an internal note is not a customer; everyone else is one.
    let customer = if role == "associate" {
        None
    } else {
        Some(customer::resolve(tx, known, org.id, f.from, f.from_norm).await?)
    };
    let upstream_spam =
        spam::upstream_verdict(&mail.headers).map(|v| format!("upstream filter: {v}"));
    let spam_reason = if customer.as_ref().is_some_and(|c| c.is_spam) {
        Some("customer is marked as spam".to_string())
    } else {
        upstream_spam
    };
    let written = Written {
        ticket_id: ticket.id,
        role,
        snapshot: &snapshot,
        spam_reason: spam_reason.as_deref().unwrap_or(""),
        customer_id: customer.as_ref().map(|c| c.id),
        language: ctx.prepared.detected_language(),
    };
    let message_id = insert_message(tx, ctx, known, f, &written).await?;

    // Spam, automatic mail and internal notes are stored but change nothing (SPEC 2.5, 2.9).
    let processed =
        role != "associate" && f.auto_reply.is_none() && spam_reason.is_none() && !ticket.is_spam;
    let next = processed.then(|| {
        if thread::is_closed(&ticket.status) {
            TicketState {
                status: "active".into(),
                waiting_on: "associate".into(),
                classification: String::new(),
                closed_at: None,
            }
        } else {
            TicketState {
                status: match ticket.status.as_str() {
                    "pending_customer" | "pending_associate" | "reopened" => "active".into(),
                    other => other.to_string(),
                },
                waiting_on: "associate".into(),
                classification: ticket.classification.clone(),
                closed_at: ticket.closed_at,
            }
        }
    });
    let has_attachments = !ctx.prepared.attachments.is_empty();
    tickets::update_ticket_after_message(tx, org.id, ticket.id, next.as_ref(), has_attachments)
        .await?;
    known.ticket_changed(ticket.id, next.as_ref(), has_attachments, now());
    webhook::enqueue(
        tx,
        org,
        "message.created",
        ticket.id,
        Some(message_id),
        ticket.is_spam,
    )
    .await?;
    if next
        .as_ref()
        .is_some_and(|n| n.status != ticket.status || n.waiting_on != ticket.waiting_on)
    {
        webhook::enqueue(tx, org, "ticket.updated", ticket.id, None, ticket.is_spam).await?;
    }
    Ok(Outcome::Appended {
        ticket_id: ticket.id,
        public_id: ticket.public_id,
        message_id,
    })
}

/// The decided parts of one message row.
struct Written<'a> {
    ticket_id: i64,
    role: &'a str,
    snapshot: &'a [String],
    spam_reason: &'a str,
    customer_id: Option<i64>,
    /// The message's language: the ticket's for its first message, else as detected.
    language: &'a str,
}

async fn insert_message(
    tx: &mut Tx,
    ctx: &Context<'_>,
    known: &mut Known,
    f: &Facts<'_>,
    w: &Written<'_>,
) -> Result<i64, Error> {
    let (ticket_id, role) = (w.ticket_id, w.role);
    let org_id = ctx.route.entry.org.id;
    let p = ctx.prepared;
    let mail = &p.mail;
    let in_reply_to = mail.in_reply_to.join(" ");
    let references = mail.references.join(" ");
    let reply_to = mail
        .reply_to
        .iter()
        .map(|m| m.email.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut notes = mail.notes.clone();
    if let Some(a) = &f.auto_reply {
        notes.push(format!(
            "automatic mail ({a}): no state change, no acknowledgement"
        ));
    }
    let message_id = tickets::insert_message(
        tx,
        &NewMessage {
            organization_id: org_id,
            ticket_id,
            role,
            direction: "inbound",
            author_user_id: if role == "associate" {
                f.agent_id
            } else {
                None
            },
            sender_customer_id: w.customer_id,
            sender_email: &f.from.email,
            sender_name: &f.from.name,
            content: &p.text,
            content_html: &p.html,
            is_visible_to_customer: role != "associate",
            external_recipient_emails: w.snapshot,
            subject: &mail.subject,
            message_id_header: mail.message_id.as_deref(),
            in_reply_to: &in_reply_to,
            references_header: &references,
            reply_to: &reply_to,
            threaded_by: f.threaded_by.as_str(),
            thread_note: &f.thread_note,
            auth_results: &f.auth_json,
            is_auto_reply: f.auto_reply.is_some(),
            spam_reason: w.spam_reason,
            processing_notes: &notes.join("\n"),
            language: w.language,
            raw_sha256: Some(&p.raw_sha256),
            dedupe_key: Some(&mail.dedupe_key),
            delivery_state: None,
        },
    )
    .await?;
    known.stored_message(
        org_id,
        &mail.dedupe_key,
        mail.message_id.as_deref(),
        ticket_id,
        message_id,
    );
    for a in &p.attachments {
        tickets::insert_attachment(
            tx,
            &NewAttachment {
                id: &a.id,
                organization_id: org_id,
                ticket_id,
                message_id,
                name: &a.name,
                content_type: &a.content_type,
                size: a.size,
                sha256: &a.sha256,
                content_id: &a.content_id,
                is_inline: a.is_inline,
            },
        )
        .await?;
    }
    Ok(message_id)
}

/// The subject a ticket shows: one line, at most 255 characters, never empty.
fn ticket_subject(subject: &str) -> String {
    let s: String = subject.trim().chars().take(MAX_SUBJECT_CHARS).collect();
    if s.is_empty() {
        "(no subject)".into()
    } else {
        s
    }
}

/// Records an outcome that stored no message (loop, duplicate, bounce) in the inbound log.
async fn log_outcome(
    tx: &mut Tx,
    ctx: &Context<'_>,
    outcome: &str,
    detail: &str,
    linked: Option<(i64, i64)>,
) -> Result<(), StoreError> {
    tickets::log_inbound(
        tx,
        &tickets::InboundLog {
            organization_id: ctx.route.entry.org.id,
            recipient: &ctx.envelope.recipient.to_string(),
            source: ctx.envelope.source.as_str(),
            raw_sha256: &ctx.prepared.raw_sha256,
            outcome,
            detail,
            ticket_id: linked.map(|(t, _)| t),
            message_id: linked.map(|(_, m)| m),
        },
    )
    .await
}
