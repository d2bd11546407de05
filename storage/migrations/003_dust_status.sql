-- 'dust': a close ended with a remainder below the exchange's minimum order quantity,
-- which no order can close. The position is left alone (not under active watch) until
-- it is gone from the exchange, when the detector records the close.
ALTER TABLE monitoring.aged_positions DROP CONSTRAINT aged_positions_status_check;
ALTER TABLE monitoring.aged_positions ADD CONSTRAINT aged_positions_status_check CHECK (status IN (
    'detected', 'grace_pending', 'grace_active', 'progressive_active', 'closed', 'error', 'skipped', 'dust'));
