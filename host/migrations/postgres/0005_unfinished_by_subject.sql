-- Postgres claims take only the oldest unfinished event of each subject (several
-- host processes keep per-user order that way): look those up by subject.
CREATE INDEX inbox_unfinished_subject ON inbox (tenant_id, subject, occurred_at, event_id)
    WHERE status IN ('pending', 'failed');
