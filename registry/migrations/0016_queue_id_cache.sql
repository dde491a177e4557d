-- Each writer's entry took the queue's next id from the sequence's one page: a buffer lock that
-- every concurrent writer queues on, and a WAL record every 32 ids. A backend now takes 100 ids
-- at a time. Ids were never in commit order (transactions commit out of the order they take
-- them), and nothing relies on it: a pass over a table restarts only for a whole-table entry with
-- a higher id than its own, and one that arrives lower stays queued for a pass of its own.
ALTER TABLE matcol.pending ALTER COLUMN id SET CACHE 100;
