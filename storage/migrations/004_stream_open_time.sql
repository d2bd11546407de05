-- 'stream': the account stream showed the symbol flat and then open, so the time of
-- that change (the exchange's own) is the episode's opening.
ALTER TABLE monitoring.episodes DROP CONSTRAINT episodes_opened_at_source_check;
ALTER TABLE monitoring.episodes ADD CONSTRAINT episodes_opened_at_source_check CHECK (opened_at_source IN (
    'bot', 'fills', 'fills_bound', 'exchange', 'first_seen', 'legacy', 'stream'));
