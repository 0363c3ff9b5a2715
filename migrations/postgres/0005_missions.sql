-- Missions, their runs and schedules (spec §6). Each document is stored whole as JSON in `body`;
-- the columns beside it serve scoping, names, filters and the schedule. A run's tasks are rows
-- of `tasks` carrying the run and the index of their definition (`run_node`), unique per run,
-- so that a start retried after a crash can never create a node twice. `held` keeps a task
-- from being claimed while a hold blocks it or its run is not live.

CREATE TABLE missions (
    project         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    id              TEXT NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    body            TEXT NOT NULL,
    -- The next schedule tick to fire; NULL: the schedule is not armed.
    next_fire_at    BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (project, environment, id)
);
CREATE UNIQUE INDEX missions_name_key ON missions (project, environment, name);
CREATE INDEX missions_fire_idx ON missions (next_fire_at) WHERE next_fire_at IS NOT NULL;

CREATE TABLE mission_runs (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    id          TEXT NOT NULL,
    mission_id  TEXT NOT NULL,
    number      BIGINT NOT NULL,
    status      TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project, environment, id)
);
CREATE UNIQUE INDEX mission_runs_number_key ON mission_runs (project, environment, mission_id, number);
CREATE INDEX mission_runs_live_idx ON mission_runs (status) WHERE status IN ('active', 'paused');

-- A run's volatile team: present only while the run is live.
CREATE TABLE run_agents (
    project         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    name            TEXT NOT NULL,
    body            TEXT NOT NULL,
    max_concurrency BIGINT,
    PRIMARY KEY (project, environment, run_id, name)
);

-- One row per fired (or skipped) schedule tick: "exactly once per tick" is this key.
CREATE TABLE schedule_ticks (
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    mission_id    TEXT NOT NULL,
    scheduled_for BIGINT NOT NULL,
    run_id        TEXT,
    claimed_at    BIGINT NOT NULL,
    PRIMARY KEY (project, environment, mission_id, scheduled_for)
);

ALTER TABLE tasks ADD COLUMN run_node BIGINT;
ALTER TABLE tasks ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX tasks_run_node_key ON tasks (project, environment, run_id, run_node);
CREATE INDEX tasks_run_idx ON tasks (project, environment, run_id);
