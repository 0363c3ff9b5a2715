-- A webhook's next delivery, its oldest pending one, is found through an index of the pending
-- deliveries alone (a partial index) instead of by reading every delivery the webhook has had,
-- kept for the events' retention, in order until the first pending one. The index made for it
-- in migration 3, by status first, served no query (the planners preferred the primary key) and
-- only cost every delivery's insert and update a write.

CREATE INDEX webhook_deliveries_head_idx ON webhook_deliveries (project, environment, webhook_id, seq)
    WHERE status = 'pending';
DROP INDEX webhook_deliveries_pending_idx;
