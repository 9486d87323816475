-- The durable outbox: agent replies, acknowledgements and webhooks wait here until a sender
-- task has handed them over (the relay said 250, the webhook URL said 2xx).
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    organization_id BIGINT  NOT NULL REFERENCES organizations (id),
    -- 'email' (message_id names the outgoing message) or 'webhook' (payload is the body).
    kind            TEXT    NOT NULL,
    message_id      BIGINT,
    event           TEXT    NOT NULL DEFAULT '',
    payload         TEXT    NOT NULL DEFAULT '',
    -- pending -> sending (claimed) -> sent | failed; a claim that expires is pending again.
    state           TEXT    NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT  NOT NULL,
    claimed_by      TEXT,
    claimed_until_ms BIGINT,
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);
CREATE INDEX outbox_due ON outbox (state, next_attempt_ms, id);
CREATE INDEX outbox_message ON outbox (organization_id, message_id);
