-- IMAP sources: how far each mailbox has been committed, and which instance fetches it.
CREATE TABLE imap_state (
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    inbox_id        BIGINT NOT NULL,
    -- host, port, user and folder: a different mailbox starts from nothing.
    source_key      TEXT   NOT NULL,
    uidvalidity     BIGINT NOT NULL,
    last_uid        BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, inbox_id, source_key)
);

CREATE TABLE imap_leases (
    organization_id BIGINT NOT NULL REFERENCES organizations (id),
    inbox_id        BIGINT NOT NULL,
    holder          TEXT   NOT NULL,
    -- Milliseconds since the epoch by the database's clock, so instances need not agree.
    expires_ms      BIGINT NOT NULL,
    PRIMARY KEY (organization_id, inbox_id)
);
