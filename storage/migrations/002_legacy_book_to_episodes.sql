-- Upgrade a database created before episodes existed. Its migration 001 created the
-- service's book as monitoring.positions; from 001's current text on that name belongs
-- to the trading bot. Only when version 1 was applied with that earlier text (its
-- checksum) is the old book ours to rename; on any other database this does nothing.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM monitoring.schema_migrations
               WHERE version = 1
                 AND checksum = '68d55d73b0d702668eb3aca8d01d79ac439fb48dad9a970f2cb1989cdc00d67e') THEN
        ALTER TABLE monitoring.positions RENAME TO episodes;
        ALTER INDEX monitoring.positions_one_open RENAME TO episodes_one_open;
        ALTER TABLE monitoring.episodes
            ADD COLUMN opened_at_source text,
            ADD COLUMN first_seen_at timestamptz,
            ADD COLUMN last_seen_at timestamptz,
            ADD COLUMN exchange_updated_at timestamptz,
            ADD COLUMN bot_position_id bigint,
            ADD COLUMN end_reason text CHECK (end_reason IN ('flat', 'reentry', 'flip', 'closed_by_service'));
        -- The old book took Bybit's createdTime / Binance's updateTime as the open time.
        UPDATE monitoring.episodes
           SET opened_at_source = 'legacy', first_seen_at = created_at, last_seen_at = updated_at;
        ALTER TABLE monitoring.episodes
            ALTER COLUMN opened_at_source SET NOT NULL,
            ALTER COLUMN first_seen_at SET NOT NULL,
            ALTER COLUMN last_seen_at SET NOT NULL,
            ADD CONSTRAINT episodes_opened_at_source_check CHECK (opened_at_source IN (
                'bot', 'fills', 'fills_bound', 'exchange', 'first_seen', 'legacy')),
            DROP COLUMN source;
        ALTER SEQUENCE monitoring.positions_id_seq RENAME TO episodes_id_seq;
    END IF;
END $$;
