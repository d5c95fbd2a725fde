-- Nothing on Postgres: SQLite rebuilt its inbox to state the CHECK on `status`
-- in a form it evaluates without a temporary table. Kept so both backends have
-- the same migration numbers.
SELECT 1;
