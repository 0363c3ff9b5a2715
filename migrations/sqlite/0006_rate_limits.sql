-- Rate limits shared by instances on one database (spec §1.7): each key's token bucket, from
-- which instances lease tokens in batches, and the streams each instance holds open per key.

CREATE TABLE rate_buckets (
    key_id      TEXT PRIMARY KEY,
    tokens      REAL NOT NULL,
    refilled_at INTEGER NOT NULL
);

CREATE TABLE stream_slots (
    key_id     TEXT NOT NULL,
    instance   TEXT NOT NULL,
    open       INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key_id, instance)
);
