-- The console's order detail: the request that placed an order, and the error of every failed
-- try, kept across retries (last_error holds only the one that made it fail). Both nullable with
-- no default, so adding them rewrites nothing; most orders never fail and keep errors NULL.
ALTER TABLE orders ADD COLUMN request_id text, ADD COLUMN errors jsonb;
