//! The whole round trip with real parts (issue 5): a customer's mail reaches the gateway
//! through a real Postfix; an agent answers through the HTTP API; the reply leaves through
//! the same Postfix into the customer's real Dovecot mailbox; the test reads it over IMAP,
//! checks its headers with mail-parser, answers it as a mail client would, and sees the
//! answer threaded on the same ticket. The same with a CC participant and with a changed
//! subject (threaded by the signed reply token), on SQLite and on PostgreSQL.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use mail_parser::{HeaderValue, MessageParser};
use serde_json::{Value, json};

use crate::dovecot::Dovecot;
use crate::helpers::fresh_postgres;
use crate::postfix::{Gateway, Postfix, free_port, wait_for};

const CUSTOMER: (&str, &str) = ("customer@customer.test", "customer-pw");
const CC: (&str, &str) = ("colleague@customer.test", "colleague-pw");

/// One HTTP request to the gateway; returns the status and the JSON body (Null if none).
fn http(port: u16, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Initdesk-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(request.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // The API answers with Content-Length; a chunked body would need decoding.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked answer"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Submits raw mail to Postfix on 127.0.0.1:`port` with Python's smtplib, as a mail client.
fn submit_raw(port: u16, from: &str, to: &[&str], raw: &str) {
    let script = r#"
import smtplib, sys
port, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
raw = sys.stdin.buffer.read()
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.customer.test", timeout=30) as s:
    refused = s.sendmail(sender, rcpts, raw)
    if refused:
        sys.exit("refused: %r" % (refused,))
print("submitted")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, &port.to_string(), from, &to.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (the test command installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw.as_bytes())
        .expect("write the message");
    let out = child.wait_with_output().expect("python3");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("submitted"),
        "smtplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `user`'s INBOX holds `n` messages and returns them, raw, in UID order.
fn mailbox(
    rt: &tokio::runtime::Runtime,
    dovecot: &Dovecot,
    (user, pw): (&str, &str),
    n: usize,
) -> Vec<Vec<u8>> {
    let found = wait_for(Duration::from_secs(60), || {
        let list = rt.block_on(dovecot.messages(user, pw, "INBOX"));
        (list.len() >= n).then_some(list)
    });
    assert!(found.is_some(), "{user} did not receive {n} message(s)");
    rt.block_on(async {
        use futures_util::TryStreamExt as _;
        let mut s = dovecot.login(user, pw).await;
        s.select("INBOX").await.expect("select");
        let fetches: Vec<_> = s
            .uid_fetch("1:*", "(UID BODY.PEEK[])")
            .await
            .expect("fetch")
            .try_collect()
            .await
            .expect("fetch all");
        let mut out: Vec<(u32, Vec<u8>)> = fetches
            .iter()
            .filter_map(|f| Some((f.uid?, f.body()?.to_vec())))
            .collect();
        out.sort_by_key(|(u, _)| *u);
        let _ = s.logout().await;
        out.into_iter().map(|(_, b)| b).collect()
    })
}

fn header_text(m: &mail_parser::Message<'_>, name: &str) -> String {
    m.header_raw(name).unwrap_or_default().trim().to_string()
}

fn id_of(v: &HeaderValue<'_>) -> String {
    match v {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.first().map(|t| t.to_string()).unwrap_or_default(),
        _ => String::new(),
    }
}

fn messages_of(port: u16, token: &str, org: i64, ticket: i64) -> Vec<Value> {
    let (code, page) = http(
        port,
        "GET",
        &format!("/organizations/{org}/tickets/{ticket}/messages/?page_size=100"),
        token,
        None,
    );
    assert_eq!(code, 200, "{page}");
    page["results"].as_array().cloned().unwrap_or_default()
}

fn roundtrip(postgres: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dovecot = rt.block_on(Dovecot::start(&[CUSTOMER, CC]));
    let gateway_smtp = free_port();
    let postfix = Postfix::start_routes(&[
        (
            "acme.test".into(),
            format!("smtp:[127.0.0.1]:{gateway_smtp}"),
        ),
        (
            "customer.test".into(),
            format!("lmtp:inet:127.0.0.1:{}", dovecot.lmtp_port),
        ),
    ]);
    let pg = postgres.then(|| rt.block_on(fresh_postgres()));
    let gw = Gateway::start_with(
        pg.as_ref().map(|(url, _)| url.as_str()),
        &[
            ("INITDESK_SMTP_LISTEN", format!("127.0.0.1:{gateway_smtp}")),
            (
                "INITDESK_OUTBOUND_RELAY",
                format!("smtp://127.0.0.1:{}", postfix.port),
            ),
            ("INITDESK_OUTBOUND_RETRY_BASE_SECS", "1".into()),
        ],
    );
    let (org, token) = rt.block_on(gw.org_token("acme.test"));

    // 1. The customer writes to support.
    let first_id = "first.1@client.customer.test";
    submit_raw(
        postfix.port,
        CUSTOMER.0,
        &["support@acme.test"],
        &format!(
            "From: Carla Customer <{}>\r\nTo: support@acme.test\r\nSubject: Printer on fire\r\nMessage-ID: <{first_id}>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nThe printer is on fire. Please advise.\r\n",
            CUSTOMER.0
        ),
    );
    let ticket = wait_for(Duration::from_secs(60), || {
        let (_, page) = http(
            gw.http_port,
            "GET",
            &format!("/organizations/{org}/tickets/"),
            &token,
            None,
        );
        page["results"].as_array().and_then(|r| r.first().cloned())
    })
    .unwrap_or_else(|| {
        panic!(
            "no ticket from the customer's mail\n{}\n{}",
            gw.log(),
            postfix.log()
        )
    });
    let ticket_id = ticket["id"].as_i64().expect("ticket id");
    let public_id = ticket["public_id"].as_i64().expect("public id");
    assert_eq!(ticket["subject"], "Printer on fire");

    // 2. The agent answers, copying a colleague of the customer.
    let (code, reply) = http(
        gw.http_port,
        "POST",
        &format!("/organizations/{org}/tickets/{ticket_id}/messages/"),
        &token,
        Some(&json!({
            "content": "Please unplug it first.",
            "content_html": "<p>Please <b>unplug</b> it first.</p>",
            "external_recipient_emails": [CC.0],
        })),
    );
    assert_eq!(code, 201, "{reply}\n{}", gw.log());
    assert_eq!(reply["role"], "associate");
    assert_eq!(reply["is_visible_to_customer"], true);

    // 3. It arrives in the customer's real mailbox, threaded and addressed as SPEC 3 says.
    let raw = mailbox(&rt, &dovecot, CUSTOMER, 1).remove(0);
    let m = MessageParser::default()
        .parse(&raw)
        .expect("parse the reply");
    let from = m.from().and_then(|a| a.first()).expect("From");
    assert_eq!(from.address().unwrap_or_default(), "support@acme.test");
    assert_eq!(from.name().unwrap_or_default(), "Support");
    assert_eq!(
        m.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some(CUSTOMER.0)
    );
    let cc: Vec<&str> = m
        .cc()
        .map(|a| a.iter().filter_map(|x| x.address()).collect())
        .unwrap_or_default();
    assert_eq!(cc, vec![CC.0], "Cc: the snapshot minus the requester");
    let reply_to = m
        .reply_to()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .expect("Reply-To")
        .to_string();
    assert!(
        reply_to.starts_with(&format!("support+t{ticket_id}-")) && reply_to.ends_with("@acme.test"),
        "Reply-To carries the signed reply token: {reply_to}"
    );
    assert_eq!(
        m.subject().unwrap_or_default(),
        format!("Re: Printer on fire [#{public_id}]")
    );
    let own_id = m.message_id().expect("Message-ID").to_string();
    assert!(
        own_id.ends_with("@acme.test"),
        "fresh Message-ID under the organization's domain: {own_id}"
    );
    assert_eq!(
        id_of(m.in_reply_to()),
        first_id,
        "In-Reply-To the customer's mail"
    );
    assert!(
        header_text(&m, "References").contains(first_id),
        "References the thread: {}",
        header_text(&m, "References")
    );
    let return_path = header_text(&m, "Return-Path");
    assert!(
        return_path.contains("support+bounce-") && return_path.contains("@acme.test"),
        "the envelope sender is the per-message VERP address: {return_path}"
    );
    assert!(
        m.body_text(0)
            .unwrap_or_default()
            .contains("Please unplug it first.")
    );
    assert!(m.body_html(0).unwrap_or_default().contains("<b>unplug</b>"));
    assert!(header_text(&m, "Bcc").is_empty());
    // The colleague got the same mail.
    let cc_raw = mailbox(&rt, &dovecot, CC, 1).remove(0);
    let cc_mail = MessageParser::default().parse(&cc_raw).expect("parse");
    assert_eq!(cc_mail.message_id(), Some(own_id.as_str()));

    // 4. The customer answers as a mail client does: Re: subject, In-Reply-To, References,
    // to the Reply-To address.
    submit_raw(
        postfix.port,
        CUSTOMER.0,
        &[&reply_to],
        &format!(
            "From: Carla Customer <{}>\r\nTo: <{reply_to}>\r\nSubject: Re: Printer on fire [#{public_id}]\r\nMessage-ID: <second.2@client.customer.test>\r\nIn-Reply-To: <{own_id}>\r\nReferences: <{first_id}> <{own_id}>\r\nDate: Sat, 21 Nov 2026 11:00:00 +0000\r\n\r\nUnplugged. Now it smokes.\r\n\r\n> Please unplug it first.\r\n",
            CUSTOMER.0
        ),
    );
    // 5. The colleague answers too (role cc), and the customer writes once more with a
    // changed subject and no threading headers: the reply token alone places it.
    submit_raw(
        postfix.port,
        CC.0,
        &[&reply_to],
        &format!(
            "From: Colin Colleague <{}>\r\nTo: <{reply_to}>\r\nCc: {}\r\nSubject: Re: Printer on fire [#{public_id}]\r\nMessage-ID: <third.3@client.customer.test>\r\nIn-Reply-To: <{own_id}>\r\nDate: Sat, 21 Nov 2026 11:05:00 +0000\r\n\r\nI called the fire brigade.\r\n",
            CC.0, CUSTOMER.0
        ),
    );
    let expected = 5;
    let all = wait_for(Duration::from_secs(60), || {
        let msgs = messages_of(gw.http_port, &token, org, ticket_id);
        (msgs.len() >= expected - 1).then_some(msgs)
    })
    .unwrap_or_else(|| {
        panic!(
            "the answers did not arrive on ticket {ticket_id}\n{}\n{}",
            gw.log(),
            postfix.log()
        )
    });
    submit_raw(
        postfix.port,
        CUSTOMER.0,
        &[&reply_to],
        &format!(
            "From: Carla Customer <{}>\r\nTo: <{reply_to}>\r\nSubject: totally different words\r\nMessage-ID: <fourth.4@client.customer.test>\r\nDate: Sat, 21 Nov 2026 12:00:00 +0000\r\n\r\nAlso: the fax is beeping.\r\n",
            CUSTOMER.0
        ),
    );
    let all = wait_for(Duration::from_secs(60), || {
        let msgs = messages_of(gw.http_port, &token, org, ticket_id);
        (msgs.len() >= expected).then_some(msgs)
    })
    .unwrap_or_else(|| {
        panic!(
            "the changed-subject answer did not arrive on ticket {ticket_id}: {all:?}\n{}",
            gw.log()
        )
    });
    let roles: Vec<&str> = all
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        vec!["customer", "associate", "customer", "cc", "customer"],
        "{all:#?}"
    );
    let (_, tickets) = http(
        gw.http_port,
        "GET",
        &format!("/organizations/{org}/tickets/"),
        &token,
        None,
    );
    assert_eq!(
        tickets["count"], 1,
        "every answer landed on the same ticket: {tickets}"
    );
    // The reply was recorded as sent.
    assert_eq!(all[1]["delivery_state"], "sent", "{}", all[1]);

    // 6. Header injection: a customer name and CC entry with line breaks never add a header.
    let customer_id = ticket["customer"]["id"].as_i64().expect("customer id");
    let (code, _) = http(
        gw.http_port,
        "PATCH",
        &format!("/organizations/{org}/customers/{customer_id}/"),
        &token,
        Some(&json!({"name": "Carla\r\nBcc: thief@customer.test"})),
    );
    assert!(code == 200 || code == 400, "PATCH answered {code}");
    let (code, body) = http(
        gw.http_port,
        "POST",
        &format!("/organizations/{org}/tickets/{ticket_id}/messages/"),
        &token,
        Some(
            &json!({"content": "x", "external_recipient_emails": ["a@customer.test\r\nBcc: thief@customer.test"]}),
        ),
    );
    assert_eq!(code, 400, "a CC entry with a line break is refused: {body}");
    assert!(body.get("external_recipient_emails").is_some(), "{body}");
    let (code, body) = http(
        gw.http_port,
        "POST",
        &format!("/organizations/{org}/tickets/{ticket_id}/messages/"),
        &token,
        Some(
            &json!({"content": "Second answer.\r\nBcc: thief@customer.test", "external_recipient_emails": []}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    let mails = mailbox(&rt, &dovecot, CUSTOMER, 2);
    let second = MessageParser::default().parse(&mails[1]).expect("parse");
    for (name, _) in second.headers_raw() {
        assert!(
            !name.eq_ignore_ascii_case("bcc"),
            "no Bcc header: {}",
            String::from_utf8_lossy(&mails[1])
        );
    }
    assert!(second.cc().is_none(), "an empty list sent means no CC");
    let to_name = second
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.name())
        .unwrap_or_default();
    assert!(
        !to_name.contains('\n') && !to_name.contains('\r'),
        "{to_name:?}"
    );

    // 7. A reply to an address whose mailbox does not exist: Dovecot refuses it, Postfix
    // returns a DSN to the reply's VERP address, and the gateway marks the reply failed and
    // notes why on its ticket.
    submit_raw(
        postfix.port,
        "ghost@customer.test",
        &["support@acme.test"],
        "From: Ghost <ghost@customer.test>\r\nTo: support@acme.test\r\nSubject: Boo\r\nMessage-ID: <ghost.1@client.customer.test>\r\nDate: Sat, 21 Nov 2026 13:00:00 +0000\r\n\r\nAnyone there?\r\n",
    );
    let ghost_ticket = wait_for(Duration::from_secs(60), || {
        let (_, page) = http(
            gw.http_port,
            "GET",
            &format!("/organizations/{org}/tickets/"),
            &token,
            None,
        );
        page["results"]
            .as_array()?
            .iter()
            .find(|t| t["subject"] == "Boo")
            .and_then(|t| t["id"].as_i64())
    })
    .expect("the ghost's ticket");
    let (code, body) = http(
        gw.http_port,
        "POST",
        &format!("/organizations/{org}/tickets/{ghost_ticket}/messages/"),
        &token,
        Some(&json!({"content": "Hello?"})),
    );
    assert_eq!(code, 201, "{body}");
    let noted = wait_for(Duration::from_secs(90), || {
        let msgs = messages_of(gw.http_port, &token, org, ghost_ticket);
        let failed = msgs
            .iter()
            .any(|m| m["role"] == "associate" && m["delivery_state"] == "failed");
        let note = msgs
            .iter()
            .find(|m| m["role"] == "system")
            .and_then(|m| m["content"].as_str().map(str::to_string));
        (failed && note.is_some()).then_some(note)
    })
    .unwrap_or_else(|| {
        panic!(
            "no bounce recorded on ticket {ghost_ticket}: {:#?}\n{}\n{}",
            messages_of(gw.http_port, &token, org, ghost_ticket),
            gw.log(),
            postfix.log()
        )
    });
    assert!(noted.is_some_and(|n| !n.is_empty()));
    let (_, tickets) = http(
        gw.http_port,
        "GET",
        &format!("/organizations/{org}/tickets/"),
        &token,
        None,
    );
    assert_eq!(tickets["count"], 2, "the DSN opened no ticket: {tickets}");

    drop(gw);
    drop(postfix);
    if let Some((_, db)) = pg {
        rt.block_on(crate::helpers::drop_postgres(db));
    }
}

#[test]
fn roundtrip_through_postfix_and_dovecot_sqlite() {
    roundtrip(false);
}

#[test]
fn roundtrip_through_postfix_and_dovecot_postgres() {
    roundtrip(true);
}
