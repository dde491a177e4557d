-- Source triggers insert their entries into matcol.pending themselves, as the writer, in the
-- statement that computes them: the SELECT INTO and the SECURITY DEFINER call of enqueue() it
-- replaces cost a third of the trigger in every application statement. PUBLIC may insert only
-- the three columns enqueue() took, which it could already fill through enqueue(); it still may
-- not read, change or delete entries, nor choose their id or time. The wake flag is readable, so
-- that the trigger sends NOTIFY only while a daemon sleeps.
GRANT INSERT (target_id, dependency_id, vals) ON matcol.pending TO PUBLIC;
GRANT SELECT ON SEQUENCE matcol.wake_flag TO PUBLIC;
