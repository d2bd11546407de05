-- Accounts and leases. Several accounts (several per exchange) share one database, and
-- several instances of the service may run on it with exactly one acting per account at
-- a time: the one holding that account's lease.

-- Every row of the book, the aged positions and the close orders belongs to an account.
-- Rows from before accounts belong to the account named like their exchange (what a
-- single-account configuration calls its account).
ALTER TABLE monitoring.episodes ADD COLUMN account text;
ALTER TABLE monitoring.aged_positions ADD COLUMN account text;
ALTER TABLE monitoring.close_orders ADD COLUMN account text;
UPDATE monitoring.episodes SET account = exchange;
UPDATE monitoring.aged_positions SET account = exchange;
UPDATE monitoring.close_orders SET account = exchange;
ALTER TABLE monitoring.episodes ALTER COLUMN account SET NOT NULL;
ALTER TABLE monitoring.aged_positions ALTER COLUMN account SET NOT NULL;
ALTER TABLE monitoring.close_orders ALTER COLUMN account SET NOT NULL;

-- An insert that names no account (a tool, an older writer) belongs to the account
-- named like its exchange, as the rows above.
CREATE FUNCTION monitoring.account_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.account := COALESCE(NEW.account, NEW.exchange);
    RETURN NEW;
END $$;
CREATE TRIGGER account_default BEFORE INSERT ON monitoring.episodes
    FOR EACH ROW EXECUTE FUNCTION monitoring.account_default();
CREATE TRIGGER account_default BEFORE INSERT ON monitoring.aged_positions
    FOR EACH ROW EXECUTE FUNCTION monitoring.account_default();

-- One-way mode, per account: at most one open episode per account, exchange and symbol.
DROP INDEX monitoring.episodes_one_open;
CREATE UNIQUE INDEX episodes_one_open ON monitoring.episodes (account, exchange, symbol) WHERE status = 'open';
CREATE INDEX aged_positions_account_status ON monitoring.aged_positions (account, status);
CREATE INDEX close_orders_account_inflight ON monitoring.close_orders (account, state)
    WHERE state IN ('pending', 'unknown', 'open');

-- The fencing token a close order's row was written under (NULL: written unfenced).
ALTER TABLE monitoring.close_orders ADD COLUMN lease_token bigint;

-- One row per account ever leased. The token grows by one at every change of holder
-- (and at every new taking of a lease that had lapsed); a released or expired lease
-- keeps its row so the token is never reused. Expiry is decided by the database's now().
CREATE TABLE monitoring.leases (
    account     text        PRIMARY KEY,
    holder      text        NOT NULL,
    token       bigint      NOT NULL CHECK (token >= 1),
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The instances alive now (expires_at in the future), for spreading accounts among them.
CREATE TABLE monitoring.instances (
    instance    text        PRIMARY KEY,
    started_at  timestamptz,
    seen_at     timestamptz,
    expires_at  timestamptz NOT NULL
);

-- Refuse (SQLSTATE AP001) a write under a token that is not the account's live lease;
-- with a NULL token, refuse while any live lease of the account exists. The row is read
-- FOR SHARE: a takeover (an UPDATE of the row) waits for the writer's transaction to
-- end, and a writer that reads the row while a takeover is in progress waits for it and
-- then sees the new token (READ COMMITTED re-reads the row's newest version).
CREATE FUNCTION monitoring.check_lease(p_account text, p_token bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    l monitoring.leases%ROWTYPE;
BEGIN
    SELECT * INTO l FROM monitoring.leases WHERE account = p_account FOR SHARE;
    IF p_token IS NULL THEN
        IF FOUND AND l.expires_at > now() THEN
            RAISE EXCEPTION 'account %: an unfenced write refused, % holds the lease (token %) until %',
                p_account, l.holder, l.token, l.expires_at
                USING ERRCODE = 'AP001';
        END IF;
        RETURN;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account %: lease lost, token % refused: no lease exists', p_account, p_token
            USING ERRCODE = 'AP001';
    END IF;
    IF l.token <> p_token OR l.expires_at <= now() THEN
        RAISE EXCEPTION 'account %: lease lost, token % refused: holder % has token %, expiring %',
            p_account, p_token, l.holder, l.token, l.expires_at
            USING ERRCODE = 'AP001';
    END IF;
END $$;

CREATE FUNCTION monitoring.close_orders_fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.account := COALESCE(NEW.account, NEW.exchange);
    PERFORM monitoring.check_lease(NEW.account, NEW.lease_token);
    RETURN NEW;
END $$;
CREATE TRIGGER close_orders_fence BEFORE INSERT ON monitoring.close_orders
    FOR EACH ROW EXECUTE FUNCTION monitoring.close_orders_fence();
