-- Notifications still to send. The completion adds its order's row in the same statement; the
-- notifier deletes it and records the notifications row in one transaction. This replaces
-- orders.notified_at, whose update rewrote the whole order row and its five index entries once
-- more for every order (a third of the notifier's statement time).
CREATE TABLE notifications_due (
    order_id    uuid PRIMARY KEY,
    customer_id text NOT NULL,
    -- When the order completed: the catch-up sends what has been due for a while.
    due_at      timestamptz NOT NULL
);

INSERT INTO notifications_due (order_id, customer_id, due_at)
SELECT order_id, customer_id, completed_at FROM orders
WHERE status = 'completed' AND notified_at IS NULL;

DROP INDEX orders_to_notify;
ALTER TABLE orders DROP COLUMN notified_at;
