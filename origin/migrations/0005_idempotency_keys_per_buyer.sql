-- 0005: Idempotency-Keys are scoped to the buyer, and kept as long as their
-- outcome needs.
--
-- A key used to be global: another buyer's request with the same key was
-- refused as a mismatch (telling a prober the key existed), and two buyers
-- whose clients picked the same key could not both buy. It is now unique per
-- buyer (the email, compared case-insensitively like tickets.email), as
-- Stripe scopes keys to an account. expires_at lets a sale's key live the
-- whole IdempotencyTTL and a refusal's, which protects no sale, much less.
--
-- Re-runnable: the columns and indexes are IF NOT EXISTS, the backfills
-- only touch rows not done yet, and the primary key is replaced by the same
-- one on a second run. Rows from before get their buyer from the stored
-- order (a sale's answer holds the email), so a retry across the upgrade
-- still replays; a stored refusal has no email and stays under buyer '',
-- where no new request looks: retried, it runs again, which sells nothing
-- it should not.
ALTER TABLE idempotency_keys
  ADD COLUMN IF NOT EXISTS buyer VARCHAR(254) NOT NULL DEFAULT '' FIRST,
  ADD COLUMN IF NOT EXISTS expires_at DATETIME(6) NULL;

UPDATE idempotency_keys
   SET buyer = COALESCE(JSON_VALUE(CONVERT(response USING utf8mb4), '$.email'), '')
 WHERE buyer = '' AND status = 201;

UPDATE idempotency_keys SET expires_at = created_at + INTERVAL 1 DAY WHERE expires_at IS NULL;

ALTER TABLE idempotency_keys DROP PRIMARY KEY, ADD PRIMARY KEY (buyer, idem_key);

ALTER TABLE idempotency_keys
  ADD INDEX IF NOT EXISTS idempotency_keys_buyer_created (buyer, created_at),
  ADD INDEX IF NOT EXISTS idempotency_keys_expires_at (expires_at);
