-- Tasks and approvals (spec §5). The task document is stored whole as JSON in `body`; the
-- columns beside it exist for scoping, filters, uniqueness checks and the runner: `run_after`
-- (a retry backoff), `deadline` and `attempt_deadline` (maxDuration) are stored timers, and a
-- claimed task carries its lease (`lease_owner`, `lease_until`) and the generation that fences
-- every later write of its attempt (`lease_gen`). `next_input` carries what the next attempt
-- must answer (a reviewer's or approver's feedback) until that attempt starts.

CREATE TABLE tasks (
    project          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    id               TEXT NOT NULL,
    title            TEXT NOT NULL,
    task_group       TEXT,
    assign_to        TEXT NOT NULL,
    mission_id       TEXT,
    run_id           TEXT,
    status           TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    body             TEXT NOT NULL,
    run_after        INTEGER NOT NULL,
    deadline         INTEGER,
    attempt_deadline INTEGER,
    lease_owner      TEXT,
    lease_until      INTEGER NOT NULL,
    next_input       TEXT,
    lease_gen        INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id)
);
-- The runner's claim reads pending tasks by priority, then creation order.
CREATE INDEX tasks_claim_idx ON tasks (status, priority DESC, id);
CREATE INDEX tasks_group_idx ON tasks (project, environment, task_group, title);
CREATE INDEX tasks_agent_idx ON tasks (project, environment, assign_to, status);
-- Every runner checks deadlines every second; most tasks have none.
CREATE INDEX tasks_deadline_idx ON tasks (deadline) WHERE deadline IS NOT NULL;

-- One row per dependency, so that "every dependency is done" is one query on both backends.
CREATE TABLE task_dependencies (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    depends_on  TEXT NOT NULL,
    PRIMARY KEY (project, environment, task_id, depends_on)
);
CREATE INDEX task_dependencies_on_idx ON task_dependencies (project, environment, depends_on);

CREATE TABLE approvals (
    project     TEXT NOT NULL,
    environment TEXT NOT NULL,
    id          TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project, environment, id)
);
CREATE INDEX approvals_task_idx ON approvals (project, environment, task_id);

-- The runner checks an agent's maxConcurrency when it claims, across instances.
ALTER TABLE agents ADD COLUMN max_concurrency INTEGER;
UPDATE agents SET max_concurrency = json_extract(body, '$.maxConcurrency');
