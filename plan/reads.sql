-- What the view pg_temp.matcol_reads reads, following the views it reads to their tables: each
-- table or materialized view or foreign table with the columns read, the views followed, and
-- the functions outside pg_catalog that may read more (their bodies are opaque to this).
--
-- pg_depend records the columns each Var names. A whole-row reference (to_jsonb(t), count(t))
-- is a Var of column 0 whose type is the table's row type; pg_depend folds it into the table's
-- column entries, so it is found in the rule's stored tree instead: the node text
-- ":varattno 0 :vartype <reltype> " has had this shape since PostgreSQL 8.
WITH RECURSIVE rules (rule, view, tree) AS (
    SELECT r.oid, r.ev_class, r.ev_action::text FROM pg_rewrite r WHERE r.ev_class = to_regclass('pg_temp.matcol_reads') AND r.rulename = '_RETURN'
  UNION
    SELECT r.oid, r.ev_class, r.ev_action::text
    FROM rules
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rules.rule
                    AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'v' AND c.oid <> rules.view
    JOIN pg_rewrite r ON r.ev_class = c.oid AND r.rulename = '_RETURN'
),
deps AS (
    SELECT DISTINCT d.refclassid, d.refobjid, d.refobjsubid
    FROM rules JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rules.rule
),
tables AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind,
           array_agg(deps.refobjsubid) AS subids,
           EXISTS (SELECT 1 FROM rules WHERE strpos(rules.tree, ':varattno 0 :vartype ' || c.reltype || ' ') > 0) AS whole
    FROM deps
    JOIN pg_class c ON c.oid = deps.refobjid AND c.relkind IN ('r', 'p', 'm', 'f')
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE deps.refclassid = 'pg_class'::regclass
    GROUP BY c.oid, n.nspname, c.relname, c.relkind, c.reltype
),
calls AS (
    SELECT format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS name,
           unnest(ARRAY[p.oid, ag.aggtransfn, ag.aggfinalfn]) AS code
    FROM deps
    JOIN pg_proc p ON p.oid = deps.refobjid
    JOIN pg_namespace n ON n.oid = p.pronamespace
    LEFT JOIN pg_aggregate ag ON ag.aggfnoid = p.oid
    WHERE deps.refclassid = 'pg_proc'::regclass
  UNION ALL
    SELECT format('operator %I.%s(%s, %s)', n.nspname, o.oprname,
                  coalesce(format_type(o.oprleft, NULL), 'NONE'), format_type(o.oprright, NULL)), o.oprcode
    FROM deps
    JOIN pg_operator o ON o.oid = deps.refobjid
    JOIN pg_namespace n ON n.oid = o.oprnamespace
    WHERE deps.refclassid = 'pg_operator'::regclass
)
SELECT t.oid, t.nspname::text, t.relname::text, t.relkind::text, t.whole,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                 WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND (t.whole OR a.attnum = ANY (t.subids))), '{}')
FROM tables t
UNION ALL
-- The views followed, as kind 'v'.
SELECT c.oid, n.nspname::text, c.relname::text, 'v', false, '{}'::text[]
FROM rules JOIN pg_class c ON c.oid = rules.view JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.oid <> pg_my_temp_schema()
UNION ALL
SELECT DISTINCT 0::oid, '', calls.name, '', false, '{}'::text[]
FROM calls
JOIN pg_proc p ON p.oid = calls.code
JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname <> 'pg_catalog' AND l.lanname NOT IN ('internal', 'c')
