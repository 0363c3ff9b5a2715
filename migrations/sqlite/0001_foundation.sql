-- Projects, API keys, agents and memory (spec §1.2.4, §2).
-- Times are integer milliseconds since the Unix epoch; JSON documents are TEXT.

CREATE TABLE projects (
    slug       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    project      TEXT NOT NULL REFERENCES projects (slug),
    environment  TEXT NOT NULL CHECK (environment IN ('live', 'test')),
    name         TEXT,
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    CONSTRAINT api_keys_hash_key UNIQUE (hash)
);
CREATE INDEX api_keys_project_idx ON api_keys (project, id);

CREATE TABLE agents (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id),
    CONSTRAINT agents_name_key UNIQUE (project, environment, name)
);

-- owner is '' for the project memory, else the agent id.
CREATE TABLE memories (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    owner       TEXT NOT NULL,
    content     TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, owner)
);
