-- The history schema as a fresh install creates it (strego.history.schema): the latest version,
-- in one go. migrations/ holds the steps from each earlier version; a test checks that both give
-- the same catalog. Both tables are partitioned by day (partitions are made by the drainer as
-- events need them, and dropped whole for retention: no DELETE, no bloat).

CREATE TABLE strego_history_version (version int NOT NULL);

-- One row per task: its latest state by event order, and what its enqueue said.
CREATE TABLE strego_tasks (
    id text NOT NULL,
    -- the time the task id starts with (strego ids do): known from any event, so every event of a
    -- task finds its row; 1970-01-01 for an id with no time in it
    created_at timestamptz NOT NULL,
    queue text NOT NULL,
    type text,
    state text NOT NULL,
    labels jsonb,
    payload bytea,
    encoding text,
    enqueued_at timestamptz,
    retried int,
    last_error text,
    consumer text,
    updated_at timestamptz NOT NULL,
    -- the newest event applied (stream entry id), and the newest one that carried an error
    seq_ms bigint NOT NULL,
    seq_n bigint NOT NULL,
    error_seq_ms bigint,
    error_seq_n bigint,
    -- type, label values and payload text, for search(text=...)
    words tsvector,
    -- the newest event that carried a retry count (after words: migration 2 added them); NULL
    -- with a count in rows stored before version 2, whose own seq stands in for it
    retried_seq_ms bigint,
    retried_seq_n bigint,
    -- (created_at, id): a task is found by its id (whose time is created_at), and an unfiltered
    -- search reads this index backwards
    PRIMARY KEY (created_at, id)
) PARTITION BY RANGE (created_at);

CREATE INDEX strego_tasks_by_state ON strego_tasks (state, created_at DESC, id DESC);
CREATE INDEX strego_tasks_by_type ON strego_tasks (type, state, created_at DESC, id DESC);
CREATE INDEX strego_tasks_by_queue ON strego_tasks (queue, state, created_at DESC, id DESC);
CREATE INDEX strego_tasks_labels ON strego_tasks USING gin (labels jsonb_path_ops);
CREATE INDEX strego_tasks_words ON strego_tasks USING gin (words);

-- Every event: (queue, seq) names it, so storing it again changes nothing.
CREATE TABLE strego_events (
    at timestamptz NOT NULL,
    queue text NOT NULL,
    seq_ms bigint NOT NULL,
    seq_n bigint NOT NULL,
    task_id text NOT NULL,
    state text NOT NULL,
    retried int,
    error text,
    consumer text,
    PRIMARY KEY (queue, seq_ms, seq_n, at)
) PARTITION BY RANGE (at);

CREATE INDEX strego_events_by_task ON strego_events (task_id, seq_ms, seq_n);
