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
    cursor      INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id)
);

CREATE TABLE webhook_deliveries (
    project          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    event            TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    last_status_code INTEGER,
    last_error       TEXT,
    last_attempt_at  INTEGER,
    next_attempt_at  INTEGER NOT NULL,
    duration_ms      INTEGER,
    lease_until      INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (project, environment, webhook_id, seq)
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (status, webhook_id, seq);
