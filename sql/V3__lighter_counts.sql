-- The order_counts triggers of V2, each as one statement: they looped over a grouped query and
-- called a second plpgsql function per status, which cost about 0.3 ms of PostgreSQL time per
-- statement on orders (pgbench, with and without the triggers). Same counts, same shards
-- (pg_backend_pid() % 16), same order of updates (by status, so no deadlocks).

CREATE OR REPLACE FUNCTION order_counts_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_counts AS c (status, shard, n)
    SELECT status, pg_backend_pid() % 16, count(*) FROM new_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION order_counts_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_counts AS c (status, shard, n)
    SELECT s, pg_backend_pid() % 16, sum(d)
    FROM (SELECT status, 1 FROM new_rows UNION ALL SELECT status, -1 FROM old_rows) AS x(s, d)
    GROUP BY s HAVING sum(d) <> 0 ORDER BY s
    ON CONFLICT (status, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION order_counts_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_counts AS c (status, shard, n)
    SELECT status, pg_backend_pid() % 16, -count(*) FROM old_rows GROUP BY status ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

DROP FUNCTION order_counts_apply(text[], bigint[]);
