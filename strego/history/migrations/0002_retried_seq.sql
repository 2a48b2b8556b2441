-- Version 2: `retried` gets the seq of the event that set it (as last_error has error_seq), so
-- that batches applied in any order, contiguous or not, end with the newest event's count.

-- No backfill: every enqueue event carries a count, so setting the rows stored before would rewrite
-- nearly the whole table under the ALTER's lock. Their retried_seq stays NULL, and the upsert takes
-- such a row's own seq (their count came from an event no newer than it) in its place.
ALTER TABLE strego_tasks ADD COLUMN retried_seq_ms bigint, ADD COLUMN retried_seq_n bigint;
