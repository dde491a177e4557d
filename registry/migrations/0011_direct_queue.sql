-- Direct invalidations (target keys) are taken by the workers themselves, per table, and
-- computed at once: a row never has to be set stale first, which wrote it twice. The drainer
-- takes the rest: entries that mapping SQL turns into keys, and markers that say a table has new
-- stale rows. An index for each side, so neither scans the other's entries.
CREATE INDEX pending_direct ON matcol.pending (target_id, id)
    WHERE dependency_id IS NULL AND vals IS NOT NULL AND vals <> '[]'::jsonb;
CREATE INDEX pending_drain ON matcol.pending (id)
    WHERE dependency_id IS NOT NULL OR vals = '[]'::jsonb;
