-- Idempotency records (spec §1.8): one per (project, environment, key string). A record is
-- claimed "in flight" before its request runs and completed in the same transaction as the
-- request's own writes; `token` fences a record taken over after its instance went away.

CREATE TABLE idempotency_records (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    token       TEXT NOT NULL,
    locked_at   INTEGER NOT NULL,
    status      INTEGER,
    body        TEXT,
    session_id  TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, idem_key)
);
CREATE INDEX idempotency_records_created_idx ON idempotency_records (created_at);
