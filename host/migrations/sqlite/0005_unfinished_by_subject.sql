-- Nothing on SQLite: one process applies events, so only failed events block
-- later ones of their subject (see inbox_retrying_subject). Kept so both
-- backends have the same migration numbers.
SELECT 1;
