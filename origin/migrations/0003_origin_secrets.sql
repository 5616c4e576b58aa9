-- 0003: secrets the origins of one cluster share.
--
-- form_token signs the buy form's anti-forgery token (origin/formtoken.go).
-- Every origin behind the edge must accept a form that another rendered, so
-- the key cannot be random per process; kept here, it is shared by
-- construction, made once, by the database (RANDOM_BYTES, replicated to the
-- replicas as a row: the binlog is row-based), and never typed into a
-- config file. `podium origin -form-secret` overrides it. To rotate it,
-- UPDATE the row and restart the origins: forms open at that moment get a
-- fresh form and submit again.
CREATE TABLE IF NOT EXISTS origin_secrets (
  name       VARCHAR(64)   NOT NULL,
  secret     VARBINARY(64) NOT NULL,
  created_at DATETIME(6)   NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT IGNORE INTO origin_secrets (name, secret, created_at)
VALUES ('form_token', RANDOM_BYTES(32), UTC_TIMESTAMP(6));
