-- The organization domain a ticket's customer wrote to: replies leave from the inbox
-- address at that domain (empty: the organization's first domain).
ALTER TABLE tickets ADD COLUMN reply_domain TEXT NOT NULL DEFAULT '';
