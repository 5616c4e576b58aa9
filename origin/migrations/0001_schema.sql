-- 0001: games, tickets and idempotency keys.
--
-- Every statement is idempotent (IF NOT EXISTS) because MariaDB commits DDL
-- implicitly: a migrator that dies between a CREATE and the version row must
-- be able to run this file again.

CREATE TABLE IF NOT EXISTS games (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  sport       VARCHAR(64)  NOT NULL,
  event       VARCHAR(160) NOT NULL,
  venue       VARCHAR(120) NOT NULL,
  city        VARCHAR(80)  NOT NULL,
  starts_at   DATETIME     NOT NULL COMMENT 'UTC',
  price_cents INT UNSIGNED NOT NULL,
  currency    CHAR(3)      NOT NULL,
  capacity    INT UNSIGNED NOT NULL,
  -- Signed on purpose: with UNSIGNED a bad decrement would be an
  -- out-of-range error before the CHECK could name the invariant.
  remaining   INT          NOT NULL,
  PRIMARY KEY (id),
  -- The listing orders by (starts_at, id) and filters by sport and day.
  KEY games_starts_at (starts_at, id),
  KEY games_sport_starts_at (sport, starts_at, id),
  CONSTRAINT games_remaining_nonnegative CHECK (remaining >= 0),
  CONSTRAINT games_remaining_within_capacity CHECK (remaining <= capacity)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per order: quantity seats of one game. The ticket numbers shown to
-- the buyer are derived from (game_id, id, 1..quantity), so they are unique
-- because id is.
CREATE TABLE IF NOT EXISTS tickets (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  game_id     BIGINT UNSIGNED NOT NULL,
  email       VARCHAR(254) NOT NULL,
  quantity    INT UNSIGNED NOT NULL,
  -- A random token per purchase attempt: when a COMMIT's outcome is lost
  -- with its connection, the retry's INSERT collides here instead of
  -- selling the seats twice.
  order_token BINARY(16)   NOT NULL,
  created_at  DATETIME(6)  NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY tickets_order_token (order_token),
  KEY tickets_game (game_id),
  CONSTRAINT tickets_game_fk FOREIGN KEY (game_id) REFERENCES games (id),
  CONSTRAINT tickets_quantity_positive CHECK (quantity > 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Idempotency-Key claims. The row is inserted first in the purchase
-- transaction, so a concurrent duplicate blocks on its lock and then sees the
-- stored response; request_hash refuses the same key with another body.
CREATE TABLE IF NOT EXISTS idempotency_keys (
  idem_key     VARBINARY(255) NOT NULL,
  request_hash BINARY(32)     NOT NULL,
  status       SMALLINT UNSIGNED NOT NULL,
  response     MEDIUMBLOB     NOT NULL,
  created_at   DATETIME(6)    NOT NULL,
  PRIMARY KEY (idem_key),
  KEY idempotency_keys_created_at (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
