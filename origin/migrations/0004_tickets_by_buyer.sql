-- 0004: the purchase counts what one email already holds of a game (the
-- per-buyer limit, Config.MaxPerBuyer) on every sale; this index makes that
-- a short range read instead of a scan of the game's orders.
ALTER TABLE tickets ADD INDEX IF NOT EXISTS tickets_game_email (game_id, email);
