-- Large raw mail (most of it attachments' base64) is kept zstd-compressed in the blob store;
-- the row then names the blob and `data` is empty. Keeps it out of the WAL and checkpoints.
ALTER TABLE raw_messages ADD COLUMN blob_sha256 TEXT;
