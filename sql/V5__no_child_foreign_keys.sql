-- The foreign keys of order_items and notifications ran a query per item and per notification
-- that share-locked the order row (a write to it, with its WAL record): a tenth of PostgreSQL's
-- time when the queue drains at full speed. The rows are only ever written with their order:
-- items in the same statement as the order's row, a notification only for an order found
-- completed in the same statement. Deleting an order deletes them too (Store::delete), as
-- ON DELETE CASCADE did.
ALTER TABLE order_items DROP CONSTRAINT order_items_order_id_fkey;
ALTER TABLE notifications DROP CONSTRAINT notifications_order_id_fkey;
