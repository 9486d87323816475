-- initdesk-gateway schema, SQLite flavour. Every table carries organization_id and
-- every per-organization key includes it, mirroring the PostgreSQL schema.

CREATE TABLE organizations (
    id                           INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id                    TEXT    NOT NULL UNIQUE,
    name                         TEXT    NOT NULL UNIQUE,
    cc_email_routing             BOOLEAN NOT NULL DEFAULT TRUE,
    auto_tagging                 BOOLEAN NOT NULL DEFAULT FALSE,
    reopen_window_days           BIGINT  NOT NULL DEFAULT 30,
    subject_tag_prefix           TEXT    NOT NULL DEFAULT '',
    authserv_id                  TEXT    NOT NULL DEFAULT '',
    require_authenticated_sender BOOLEAN NOT NULL DEFAULT FALSE,
    webhook_url                  TEXT    NOT NULL DEFAULT '',
    webhook_secret               TEXT    NOT NULL DEFAULT '',
    created_at                   TEXT    NOT NULL,
    updated_at                   TEXT    NOT NULL
);

CREATE TABLE organization_domains (
    domain          TEXT    NOT NULL PRIMARY KEY,
    organization_id BIGINT  NOT NULL REFERENCES organizations (id)
);

CREATE TABLE ticket_counters (
    organization_id BIGINT NOT NULL PRIMARY KEY REFERENCES organizations (id),
    last_public_id  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    token_hash      TEXT   NOT NULL UNIQUE,
    created_at      TEXT   NOT NULL
);

CREATE TABLE inboxes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id  BIGINT  NOT NULL REFERENCES organizations (id),
    name             TEXT    NOT NULL,
    email_prefix     TEXT    NOT NULL,
    auto_acknowledge BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       TEXT    NOT NULL,
    UNIQUE (organization_id, email_prefix),
    UNIQUE (organization_id, id)
);

CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    email           TEXT   NOT NULL,
    email_norm      TEXT   NOT NULL,
    name            TEXT   NOT NULL,
    created_at      TEXT   NOT NULL,
    UNIQUE (organization_id, email_norm),
    UNIQUE (organization_id, id)
);

CREATE TABLE customers (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT  NOT NULL REFERENCES organizations (id),
    name            TEXT    NOT NULL DEFAULT '',
    email           TEXT    NOT NULL,
    email_norm      TEXT    NOT NULL,
    is_spam         BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    UNIQUE (organization_id, email_norm),
    UNIQUE (organization_id, id)
);

CREATE TABLE tickets (
    id                           INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id              BIGINT  NOT NULL REFERENCES organizations (id),
    public_id                    BIGINT  NOT NULL,
    inbox_id                     BIGINT  NOT NULL,
    customer_id                  BIGINT  NOT NULL,
    assignee_id                  BIGINT,
    subject                      TEXT    NOT NULL,
    status                       TEXT    NOT NULL,
    waiting_on                   TEXT    NOT NULL DEFAULT '',
    classification               TEXT    NOT NULL DEFAULT '',
    is_spam                      BOOLEAN NOT NULL DEFAULT FALSE,
    origin                       TEXT    NOT NULL,
    description                  TEXT    NOT NULL DEFAULT '',
    description_html             TEXT    NOT NULL DEFAULT '',
    external_recipient_emails    TEXT    NOT NULL DEFAULT '[]',
    tags                         TEXT    NOT NULL DEFAULT '[]',
    language                     TEXT    NOT NULL DEFAULT '',
    has_attachments              BOOLEAN NOT NULL DEFAULT FALSE,
    customer_visible_reply_count BIGINT  NOT NULL DEFAULT 0,
    created_by_role              TEXT    NOT NULL,
    created_by_user_id           BIGINT,
    summary                      TEXT    NOT NULL DEFAULT '',
    sentiment_analysis_class     TEXT    NOT NULL DEFAULT 'pending',
    csat_rating                  BIGINT,
    csat_comment                 TEXT,
    closed_at                    TEXT,
    created_at                   TEXT    NOT NULL,
    updated_at                   TEXT    NOT NULL,
    UNIQUE (organization_id, public_id),
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, inbox_id) REFERENCES inboxes (organization_id, id),
    FOREIGN KEY (organization_id, customer_id) REFERENCES customers (organization_id, id),
    FOREIGN KEY (organization_id, assignee_id) REFERENCES users (organization_id, id)
);
CREATE INDEX tickets_customer_created ON tickets (organization_id, customer_id, created_at);
CREATE INDEX tickets_list ON tickets (organization_id, is_spam, status, id);

CREATE TABLE messages (
    id                        INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id           BIGINT  NOT NULL REFERENCES organizations (id),
    ticket_id                 BIGINT  NOT NULL,
    role                      TEXT    NOT NULL,
    direction                 TEXT    NOT NULL,
    author_user_id            BIGINT,
    sender_customer_id        BIGINT,
    sender_email              TEXT    NOT NULL DEFAULT '',
    sender_name               TEXT    NOT NULL DEFAULT '',
    content                   TEXT    NOT NULL DEFAULT '',
    content_html              TEXT    NOT NULL DEFAULT '',
    is_visible_to_customer    BOOLEAN NOT NULL,
    external_recipient_emails TEXT    NOT NULL DEFAULT '[]',
    subject                   TEXT    NOT NULL DEFAULT '',
    message_id_header         TEXT,
    in_reply_to               TEXT    NOT NULL DEFAULT '',
    references_header         TEXT    NOT NULL DEFAULT '',
    reply_to                  TEXT    NOT NULL DEFAULT '',
    threaded_by               TEXT    NOT NULL DEFAULT '',
    thread_note               TEXT    NOT NULL DEFAULT '',
    auth_results              TEXT    NOT NULL DEFAULT '',
    is_auto_reply             BOOLEAN NOT NULL DEFAULT FALSE,
    spam_reason               TEXT    NOT NULL DEFAULT '',
    processing_notes          TEXT    NOT NULL DEFAULT '',
    language                  TEXT    NOT NULL DEFAULT '',
    raw_sha256                TEXT,
    dedupe_key                TEXT,
    delivery_state            TEXT,
    created_at                TEXT    NOT NULL,
    updated_at                TEXT    NOT NULL,
    UNIQUE (organization_id, id),
    UNIQUE (organization_id, dedupe_key),
    FOREIGN KEY (organization_id, ticket_id) REFERENCES tickets (organization_id, id),
    FOREIGN KEY (organization_id, sender_customer_id) REFERENCES customers (organization_id, id),
    FOREIGN KEY (organization_id, author_user_id) REFERENCES users (organization_id, id)
);
CREATE INDEX messages_ticket ON messages (organization_id, ticket_id, id);
CREATE INDEX messages_message_id ON messages (organization_id, message_id_header);

CREATE TABLE attachments (
    id              TEXT    NOT NULL PRIMARY KEY,
    organization_id BIGINT  NOT NULL REFERENCES organizations (id),
    ticket_id       BIGINT,
    message_id      BIGINT,
    name            TEXT    NOT NULL,
    content_type    TEXT    NOT NULL,
    size            BIGINT  NOT NULL,
    sha256          TEXT    NOT NULL,
    content_id      TEXT    NOT NULL DEFAULT '',
    is_inline       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TEXT    NOT NULL,
    UNIQUE (organization_id, id),
    FOREIGN KEY (organization_id, ticket_id) REFERENCES tickets (organization_id, id),
    FOREIGN KEY (organization_id, message_id) REFERENCES messages (organization_id, id)
);
CREATE INDEX attachments_message ON attachments (organization_id, message_id);

-- The raw bytes of every accepted message, zstd-compressed and named by the SHA-256 of the
-- uncompressed bytes, so a message can be processed again after a fix. They live in the
-- database because there they are durable with the same commit as the message, at no
-- extra fsync.
CREATE TABLE raw_messages (
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    sha256          TEXT   NOT NULL,
    size            BIGINT NOT NULL,
    data            BLOB   NOT NULL,
    created_at      TEXT   NOT NULL,
    PRIMARY KEY (organization_id, sha256)
);

-- One row per accepted delivery, whatever became of it: a person can see why a mail
-- was stored, merged as a duplicate, dropped as a loop or taken as a bounce.
CREATE TABLE inbound_log (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    recipient       TEXT   NOT NULL,
    source          TEXT   NOT NULL,
    raw_sha256      TEXT   NOT NULL,
    outcome         TEXT   NOT NULL,
    detail          TEXT   NOT NULL DEFAULT '',
    ticket_id       BIGINT,
    message_id      BIGINT,
    created_at      TEXT   NOT NULL
);
CREATE INDEX inbound_log_org ON inbound_log (organization_id, id);

-- Messages whose processing failed for a reason other than a policy decision.
-- The raw bytes live here, not in the blob store, so a failing blob store loses nothing.
CREATE TABLE quarantine (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT REFERENCES organizations (id),
    recipient       TEXT   NOT NULL,
    source          TEXT   NOT NULL,
    raw             BLOB   NOT NULL,
    raw_sha256      TEXT   NOT NULL,
    reason          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 1,
    resolved_at     TEXT,
    resolution      TEXT   NOT NULL DEFAULT '',
    created_at      TEXT   NOT NULL,
    updated_at      TEXT   NOT NULL
);
CREATE INDEX quarantine_open ON quarantine (organization_id, resolved_at, id);
