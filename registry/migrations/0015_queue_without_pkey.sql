-- Every queued entry paid for the queue's primary key in the writer's transaction: an index
-- insert, its WAL, and one more page that every concurrent writer's entry lands on. Nothing looks
-- entries up by id alone: they are found through pending_direct, pending_drain and
-- pending_all_rows, in id order where order matters, and deleted by ctid.
ALTER TABLE matcol.pending DROP CONSTRAINT pending_pkey;
