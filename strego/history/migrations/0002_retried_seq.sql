-- Version 2: `retried` gets the seq of the event that set it (as last_error has error_seq), so
-- that batches applied in any order, contiguous or not, end with the newest event's count.

ALTER TABLE strego_tasks ADD COLUMN retried_seq_ms bigint, ADD COLUMN retried_seq_n bigint;

-- rows stored before: their count came from an event no newer than the row's newest
UPDATE strego_tasks SET retried_seq_ms = seq_ms, retried_seq_n = seq_n WHERE retried IS NOT NULL;
