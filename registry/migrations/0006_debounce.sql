-- min_interval: rows recomputed less than that ago. The claim passes over them, stale or not,
-- until not_before. Unlogged: after a crash a hot row is at worst recomputed once early.
CREATE UNLOGGED TABLE matcol.debounce (
    target_id  int NOT NULL,
    key        text[] NOT NULL,   -- key values in their text form, as in matcol.failure
    not_before timestamptz NOT NULL,
    PRIMARY KEY (target_id, key)
);
