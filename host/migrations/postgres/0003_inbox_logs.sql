-- The log lines of an event's last handler attempt (a JSON array of strings),
-- kept so `authkit-host events show` can explain a failure or a dead letter.
ALTER TABLE inbox ADD COLUMN logs TEXT;
