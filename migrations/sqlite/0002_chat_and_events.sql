-- The event log (spec §7.3) and chat sessions with their messages (spec §3.6, §3.13).

CREATE TABLE event_counters (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    last_seq    INTEGER NOT NULL,
    PRIMARY KEY (project, environment)
);

CREATE TABLE events (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, seq)
);
CREATE INDEX events_created_idx ON events (created_at);

CREATE TABLE chat_sessions (
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    id            TEXT NOT NULL,
    agent         TEXT,
    user_id       TEXT,
    metadata      TEXT NOT NULL,
    title         TEXT NOT NULL,
    message_count INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id)
);

CREATE TABLE chat_messages (
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    id            TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    tool_calls    TEXT,
    tool_call_id  TEXT,
    model         TEXT,
    finish_reason TEXT,
    usage         TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id)
);
CREATE INDEX chat_messages_session_idx ON chat_messages (project, environment, session_id, id);
