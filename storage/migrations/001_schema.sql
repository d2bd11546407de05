-- The position book (episodes), the aged-position lifecycle, its trigger-written history,
-- the event log and the write-ahead table of close orders.

CREATE SCHEMA IF NOT EXISTS monitoring;

-- The service's own position book: one row per position *episode*, from the moment
-- (exchange, symbol, side) goes from flat to non-flat until it is flat again. A
-- re-entry or a side flip is a new episode. (monitoring.positions is the trading
-- bot's table, if it has one; the service never creates or alters it.)
CREATE TABLE monitoring.episodes (
    id                  bigserial PRIMARY KEY,
    exchange            text        NOT NULL,
    symbol              text        NOT NULL,
    side                text        NOT NULL CHECK (side IN ('long', 'short')),
    quantity            numeric     NOT NULL CHECK (quantity >= 0),
    entry_price         numeric     NOT NULL CHECK (entry_price > 0),
    opened_at           timestamptz NOT NULL,
    -- where opened_at came from, in order of trust
    opened_at_source    text        NOT NULL CHECK (opened_at_source IN (
                            'bot', 'fills', 'fills_bound', 'exchange', 'first_seen', 'legacy')),
    first_seen_at       timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,        -- the last look that showed this episode
    exchange_updated_at timestamptz,                 -- the exchange's own last-change time at that look
    bot_position_id     bigint,                      -- the trading bot's row for this episode, if any
    trailing_activated  boolean     NOT NULL DEFAULT false,
    status              text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    end_reason          text        CHECK (end_reason IN ('flat', 'reentry', 'flip', 'closed_by_service')),
    closed_at           timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- One-way mode: at most one open episode per exchange and symbol.
CREATE UNIQUE INDEX episodes_one_open ON monitoring.episodes (exchange, symbol) WHERE status = 'open';

CREATE TABLE monitoring.aged_positions (
    id                              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    position_id                     bigint      NOT NULL UNIQUE REFERENCES monitoring.episodes (id),
    symbol                          text        NOT NULL,
    exchange                        text        NOT NULL,
    side                            text        NOT NULL CHECK (side IN ('long', 'short')),
    entry_price                     numeric     NOT NULL CHECK (entry_price > 0),
    quantity                        numeric     NOT NULL CHECK (quantity >= 0),
    position_opened_at              timestamptz NOT NULL,
    detected_at                     timestamptz NOT NULL DEFAULT now(),
    grace_started_at                timestamptz,
    progressive_started_at          timestamptz,
    close_triggered_at              timestamptz,
    closed_at                       timestamptz,
    status                          text        NOT NULL DEFAULT 'detected' CHECK (status IN (
                                        'detected', 'grace_pending', 'grace_active', 'progressive_active',
                                        'closed', 'error', 'skipped')),
    target_price                    numeric,
    breakeven_price                 numeric,
    current_loss_tolerance_percent  numeric     NOT NULL DEFAULT 0 CHECK (current_loss_tolerance_percent >= 0),
    last_price_check                timestamptz,
    last_checked_price              numeric,
    close_attempts                  integer     NOT NULL DEFAULT 0 CHECK (close_attempts >= 0),
    last_close_attempt              timestamptz,
    last_error_message              text,
    hours_aged                      numeric     NOT NULL DEFAULT 0,
    hours_in_grace                  numeric     NOT NULL DEFAULT 0,
    hours_in_progressive            numeric     NOT NULL DEFAULT 0,
    closed_qty                      numeric     NOT NULL DEFAULT 0 CHECK (closed_qty >= 0),
    close_price                     numeric,
    close_order_id                  text,
    actual_pnl                      numeric,
    actual_pnl_percent              numeric,
    close_reason                    text CHECK (close_reason IN (
                                        'profitable', 'breakeven', 'loss_acceptable', 'max_loss',
                                        'emergency', 'manual', 'error')),
    phase_at_close                  text CHECK (phase_at_close IN ('grace', 'progressive')),
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    config                          jsonb,
    CONSTRAINT closed_has_reason CHECK (status <> 'closed' OR (close_reason IS NOT NULL AND closed_at IS NOT NULL))
);
CREATE INDEX aged_positions_status ON monitoring.aged_positions (status);
CREATE INDEX aged_positions_closed_at ON monitoring.aged_positions (closed_at);

CREATE TABLE monitoring.aged_positions_history (
    id                      bigserial   PRIMARY KEY,
    aged_position_id        uuid        NOT NULL REFERENCES monitoring.aged_positions (id),
    from_status             text,
    to_status               text        NOT NULL,
    market_price            numeric,
    target_price            numeric,
    loss_tolerance_percent  numeric,
    pnl_percent             numeric,
    close_reason            text,
    changed_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aged_positions_history_aged ON monitoring.aged_positions_history (aged_position_id, id);

-- Every status change is one history row, written here and nowhere else.
-- A closed aged position is final: it may not be reopened or closed again.
CREATE FUNCTION monitoring.aged_positions_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'closed' AND (NEW.status <> 'closed'
            OR NEW.close_reason IS DISTINCT FROM OLD.close_reason
            OR NEW.closed_at IS DISTINCT FROM OLD.closed_at
            OR NEW.close_price IS DISTINCT FROM OLD.close_price
            OR NEW.closed_qty IS DISTINCT FROM OLD.closed_qty) THEN
        RAISE EXCEPTION 'aged position % is closed; its close is final', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER aged_positions_guard BEFORE UPDATE ON monitoring.aged_positions
    FOR EACH ROW EXECUTE FUNCTION monitoring.aged_positions_guard();

CREATE FUNCTION monitoring.aged_positions_log_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO monitoring.aged_positions_history (
            aged_position_id, from_status, to_status, market_price, target_price,
            loss_tolerance_percent, pnl_percent, close_reason)
        VALUES (
            NEW.id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            COALESCE(NEW.close_price, NEW.last_checked_price), NEW.target_price,
            NEW.current_loss_tolerance_percent, NEW.actual_pnl_percent, NEW.close_reason);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER aged_positions_history AFTER INSERT OR UPDATE ON monitoring.aged_positions
    FOR EACH ROW EXECUTE FUNCTION monitoring.aged_positions_log_status();

CREATE TABLE monitoring.aged_positions_monitoring (
    id                      bigserial   PRIMARY KEY,
    aged_position_id        uuid        NOT NULL REFERENCES monitoring.aged_positions (id),
    event_type              text        NOT NULL CHECK (event_type <> ''),
    market_price            numeric,
    target_price            numeric,
    price_distance_percent  numeric,
    action_taken            text,
    success                 boolean,
    error_message           text,
    event_metadata          jsonb,
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX aged_positions_monitoring_aged ON monitoring.aged_positions_monitoring (aged_position_id, id);
CREATE INDEX aged_positions_monitoring_type ON monitoring.aged_positions_monitoring (event_type, created_at);

-- Write-ahead log of close orders: a row is written before the order is sent, so a
-- crash between "sent" and "result recorded" is resolved by asking the exchange
-- for the client order id, never by sending again.
CREATE TABLE monitoring.close_orders (
    client_order_id     text        PRIMARY KEY,
    aged_position_id    uuid        NOT NULL REFERENCES monitoring.aged_positions (id),
    attempt             integer     NOT NULL CHECK (attempt >= 1),
    exchange            text        NOT NULL,
    symbol              text        NOT NULL,
    side                text        NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type          text        NOT NULL CHECK (order_type IN ('market', 'limit_ioc')),
    requested_qty       numeric     NOT NULL CHECK (requested_qty > 0),
    limit_price         numeric,
    state               text        NOT NULL DEFAULT 'pending' CHECK (state IN (
                            'pending', 'unknown', 'open', 'filled', 'partially_filled',
                            'rejected', 'canceled', 'not_found')),
    exchange_order_id   text,
    filled_qty          numeric     NOT NULL DEFAULT 0 CHECK (filled_qty >= 0),
    avg_price           numeric,
    error_code          text,
    error_message       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aged_position_id, attempt),
    CONSTRAINT fill_not_above_request CHECK (filled_qty <= requested_qty)
);
CREATE INDEX close_orders_inflight ON monitoring.close_orders (state) WHERE state IN ('pending', 'unknown', 'open');

-- Aged positions still under watch: everything not closed and not skipped.
-- ('error' stays under watch: a failed close is retried after a cool-down.)
CREATE VIEW monitoring.active_aged_positions AS
SELECT a.*,
       EXTRACT(EPOCH FROM (now() - a.position_opened_at)) / 3600 AS age_hours_now
FROM monitoring.aged_positions a
WHERE a.status IN ('detected', 'grace_pending', 'grace_active', 'progressive_active', 'error');

CREATE VIEW monitoring.aged_positions_statistics AS
SELECT date_trunc('day', closed_at)                                     AS day,
       close_reason,
       count(*)                                                          AS closed_count,
       avg(EXTRACT(EPOCH FROM (closed_at - position_opened_at)) / 3600)  AS avg_age_hours,
       avg(actual_pnl_percent)                                           AS avg_pnl_percent,
       sum(actual_pnl)                                                   AS total_pnl,
       avg(close_attempts)                                               AS avg_close_attempts,
       avg(EXTRACT(EPOCH FROM (closed_at - close_triggered_at)))         AS avg_close_seconds
FROM monitoring.aged_positions
WHERE status = 'closed'
GROUP BY 1, 2;
