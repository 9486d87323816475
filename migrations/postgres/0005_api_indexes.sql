-- HTTP API read side (GET .../tickets/, newest first, spam excluded by default): every list
-- filter walks an index in id order and stops after one page, with no sort.
--   no filter, ?is_spam=    -> tickets_org_spam_id
--   ?status=                -> tickets_list (organization_id, is_spam, status, id), from 0001
--   ?inbox=                 -> tickets_org_inbox
--   ?customer=              -> tickets_org_customer (a noisy sender can have many tickets)
CREATE INDEX tickets_org_spam_id ON tickets (organization_id, is_spam, id);
CREATE INDEX tickets_org_inbox ON tickets (organization_id, inbox_id, is_spam, id);
CREATE INDEX tickets_org_customer ON tickets (organization_id, customer_id, is_spam, id);

-- A page of tickets loads its attachments in one lookup.
CREATE INDEX attachments_ticket ON attachments (organization_id, ticket_id);

-- The `count` of a ticket list without a customer filter: a COUNT(*) over an organization's
-- tickets grows with them (about 40 ms per 200,000 here, 15 ms on SQLite), so the number of
-- tickets per (inbox, status, spam flag) is kept up to date by a trigger and a list sums at
-- most inboxes x statuses rows. Any writer of `tickets` keeps it right without knowing it.
CREATE TABLE ticket_list_counts (
    organization_id BIGINT  NOT NULL REFERENCES organizations (id),
    inbox_id        BIGINT  NOT NULL,
    status          TEXT    NOT NULL,
    is_spam         BOOLEAN NOT NULL,
    n               BIGINT  NOT NULL,
    PRIMARY KEY (organization_id, inbox_id, status, is_spam)
);

INSERT INTO ticket_list_counts (organization_id, inbox_id, status, is_spam, n)
SELECT organization_id, inbox_id, status, is_spam, COUNT(*) FROM tickets
GROUP BY organization_id, inbox_id, status, is_spam;

CREATE FUNCTION ticket_list_counts_add(o BIGINT, i BIGINT, s TEXT, spam BOOLEAN, d BIGINT)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO ticket_list_counts AS c (organization_id, inbox_id, status, is_spam, n)
    VALUES (o, i, s, spam, d)
    ON CONFLICT (organization_id, inbox_id, status, is_spam) DO UPDATE SET n = c.n + EXCLUDED.n
$$;

CREATE FUNCTION ticket_list_counts_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ticket_list_counts_add(NEW.organization_id, NEW.inbox_id, NEW.status, NEW.is_spam, 1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM ticket_list_counts_add(OLD.organization_id, OLD.inbox_id, OLD.status, OLD.is_spam, -1);
    ELSIF (OLD.organization_id, OLD.inbox_id, OLD.status, OLD.is_spam)
          IS DISTINCT FROM (NEW.organization_id, NEW.inbox_id, NEW.status, NEW.is_spam) THEN
        -- The two counter rows are locked in key order, so two transactions moving tickets in
        -- opposite directions (closed -> active, active -> closed) cannot deadlock.
        IF (OLD.organization_id, OLD.inbox_id, OLD.status, OLD.is_spam)
           < (NEW.organization_id, NEW.inbox_id, NEW.status, NEW.is_spam) THEN
            PERFORM ticket_list_counts_add(OLD.organization_id, OLD.inbox_id, OLD.status, OLD.is_spam, -1);
            PERFORM ticket_list_counts_add(NEW.organization_id, NEW.inbox_id, NEW.status, NEW.is_spam, 1);
        ELSE
            PERFORM ticket_list_counts_add(NEW.organization_id, NEW.inbox_id, NEW.status, NEW.is_spam, 1);
            PERFORM ticket_list_counts_add(OLD.organization_id, OLD.inbox_id, OLD.status, OLD.is_spam, -1);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ticket_list_counts
AFTER INSERT OR DELETE OR UPDATE OF organization_id, inbox_id, status, is_spam ON tickets
FOR EACH ROW EXECUTE FUNCTION ticket_list_counts_track();
