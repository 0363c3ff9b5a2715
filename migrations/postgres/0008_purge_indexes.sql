-- The background purge, every minute, finds what it deletes through an index instead of reading
-- whole tables: sessions that never received a message, by creation time (a partial index: a
-- turn's new session is stored with its messages and never enters it), and webhook deliveries
-- past the events' retention.

CREATE INDEX chat_sessions_empty_idx ON chat_sessions (created_at) WHERE message_count = 0;
CREATE INDEX webhook_deliveries_created_idx ON webhook_deliveries (created_at);
