-- Webhooks and their deliveries (spec §8). Deliveries are driven from here, not from memory,
-- so they survive restarts; `cursor` is the last event sequence already fanned out.

CREATE TABLE webhooks (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    id          TEXT NOT NULL,
    url         TEXT NOT NULL,
    events      TEXT NOT NULL,
    description TEXT,
    secret      TEXT NOT NULL,
    cursor      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (project, environment, id)
);

CREATE TABLE webhook_deliveries (
    project          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    event            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    last_status_code BIGINT,
    last_error       TEXT,
    last_attempt_at  BIGINT,
    next_attempt_at  BIGINT NOT NULL,
    duration_ms      BIGINT,
    lease_until      BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (project, environment, webhook_id, seq)
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (status, webhook_id, seq);
