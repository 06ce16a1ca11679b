-- Order counts by status, kept by statement-level triggers so GET /stats never counts the table.
-- Each PostgreSQL backend adds to its own shard (pid % 16), so concurrent writers do not queue
-- on one hot row; /stats sums the shards.

CREATE TABLE order_counts (
    status text NOT NULL,
    shard  integer NOT NULL,
    n      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (status, shard)
);

INSERT INTO order_counts (status, shard, n)
SELECT status, 0, count(*) FROM orders GROUP BY status;

-- Adds the per-status differences of one statement, in status order (no deadlocks between
-- backends that share a shard).
CREATE FUNCTION order_counts_apply(delta_status text[], delta_n bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT s, sum(d)::bigint AS d FROM unnest(delta_status, delta_n) AS t(s, d)
        GROUP BY s HAVING sum(d) <> 0 ORDER BY s
    LOOP
        INSERT INTO order_counts AS c (status, shard, n)
        VALUES (r.s, pg_backend_pid() % 16, r.d)
        ON CONFLICT (status, shard) DO UPDATE SET n = c.n + excluded.n;
    END LOOP;
END $$;

CREATE FUNCTION order_counts_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM order_counts_apply(
        (SELECT array_agg(status) FROM new_rows),
        (SELECT array_agg(1::bigint) FROM new_rows));
    RETURN NULL;
END $$;

CREATE FUNCTION order_counts_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM order_counts_apply(
        (SELECT array_agg(s) FROM (SELECT status FROM new_rows UNION ALL SELECT status FROM old_rows) x(s)),
        (SELECT array_agg(d) FROM (SELECT 1::bigint FROM new_rows UNION ALL SELECT -1::bigint FROM old_rows) y(d)));
    RETURN NULL;
END $$;

CREATE FUNCTION order_counts_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM order_counts_apply(
        (SELECT array_agg(status) FROM old_rows),
        (SELECT array_agg(-1::bigint) FROM old_rows));
    RETURN NULL;
END $$;

CREATE TRIGGER order_counts_insert AFTER INSERT ON orders
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_counts_on_insert();
CREATE TRIGGER order_counts_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_counts_on_update();
CREATE TRIGGER order_counts_delete AFTER DELETE ON orders
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION order_counts_on_delete();

-- GET /stats: timings of the most recent completions, and completions in the last minute.
CREATE INDEX orders_completed ON orders (completed_at DESC) WHERE status = 'completed';
