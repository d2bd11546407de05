-- Operator actions: hold a position (no close but the emergency rule), release it,
-- force-close it now, and per-symbol policy overrides. Every action is one row with
-- who, when and why; the running service picks up the rows not yet applied.

-- A hold in force: the position does not close (except by the emergency rule) before
-- hold_until. Written in the same transaction as the action that sets it, so a hold
-- holds even while no service runs.
ALTER TABLE monitoring.aged_positions ADD COLUMN hold_until timestamptz NULL;
ALTER TABLE monitoring.aged_positions ADD COLUMN hold_reason text NULL;

CREATE TABLE monitoring.operator_actions (
    id                  bigserial   PRIMARY KEY,
    aged_position_id    uuid        NULL REFERENCES monitoring.aged_positions (id),
    exchange            text        NULL,
    symbol              text        NULL,
    action              text        NOT NULL CHECK (action IN ('hold', 'release', 'close', 'override',
                                                                'clear_override')),
    params              jsonb       NOT NULL DEFAULT '{}',
    reason              text,
    actor               text        NOT NULL CHECK (actor <> ''),   -- who: 'cli:<user>', 'api', 'config'
    created_at          timestamptz NOT NULL DEFAULT now(),
    applied_at          timestamptz NULL,                           -- when the service acted on it
    outcome             text        NULL,                           -- 'held until ...', 'closed', 'already closing', ...
    error               text        NULL,
    -- a position action names its aged position; a symbol action its exchange and symbol
    CONSTRAINT operator_action_target CHECK (
        (action IN ('hold', 'release', 'close') AND aged_position_id IS NOT NULL)
        OR (action IN ('override', 'clear_override') AND exchange IS NOT NULL AND symbol IS NOT NULL))
);
CREATE INDEX operator_actions_pending ON monitoring.operator_actions (id) WHERE applied_at IS NULL;
CREATE INDEX operator_actions_aged ON monitoring.operator_actions (aged_position_id, id);

-- Evented: a running service LISTENs on 'aged_operator' and hears each new action at
-- once (it also polls, so a missed notification is picked up within the poll interval).
CREATE FUNCTION monitoring.operator_actions_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aged_operator', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER operator_actions_notify AFTER INSERT ON monitoring.operator_actions
    FOR EACH ROW EXECUTE FUNCTION monitoring.operator_actions_notify();

-- Per-symbol policy overrides set by an operator; layered over the configuration's.
CREATE TABLE monitoring.symbol_overrides (
    exchange    text        NOT NULL,
    symbol      text        NOT NULL,
    settings    jsonb       NOT NULL,
    reason      text,
    actor       text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol)
);
