-- A webhook's next delivery, its oldest pending one, is found through an index of the pending
-- deliveries alone (a partial index) instead of by reading every delivery the webhook has had,
-- kept for the events' retention, in order until the first pending one.

CREATE INDEX webhook_deliveries_head_idx ON webhook_deliveries (project, environment, webhook_id, seq)
    WHERE status = 'pending';
