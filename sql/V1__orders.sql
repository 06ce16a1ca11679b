-- Orders, their items, and the notifications sent for them.

CREATE TABLE orders (
    order_id              uuid PRIMARY KEY,
    customer_id           text NOT NULL,
    total                 numeric(12, 2) NOT NULL CHECK (total >= 0),
    status                text NOT NULL
                          CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    -- Deliveries of this order to a worker; a worker's status updates are fenced on it.
    attempts              integer NOT NULL DEFAULT 0,
    last_error            text,
    accepted_at           timestamptz NOT NULL,
    processing_started_at timestamptz,
    completed_at          timestamptz,
    -- Set with the notifications row; the partial index below finds the ones still to notify.
    notified_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id uuid NOT NULL REFERENCES orders (order_id) ON DELETE CASCADE,
    position integer NOT NULL,
    item     text NOT NULL,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE notifications (
    order_id    uuid PRIMARY KEY REFERENCES orders (order_id) ON DELETE CASCADE,
    customer_id text NOT NULL,
    channel     text NOT NULL DEFAULT 'email',
    sent_at     timestamptz NOT NULL DEFAULT now()
);

-- GET /orders: newest first with keyset pagination, optionally by status or customer.
CREATE INDEX orders_newest ON orders (accepted_at DESC, order_id DESC);
CREATE INDEX orders_by_status ON orders (status, accepted_at DESC, order_id DESC);
CREATE INDEX orders_by_customer ON orders (customer_id, accepted_at DESC, order_id DESC);
-- The notifier's catch-up: completed orders not yet notified (stays small).
CREATE INDEX orders_to_notify ON orders (completed_at)
    WHERE status = 'completed' AND notified_at IS NULL;
