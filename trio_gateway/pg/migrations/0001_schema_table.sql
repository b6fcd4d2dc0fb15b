-- Version 1: nothing but the schema table itself (created by the migration runner), so that a
-- database's version is never 0 once a gateway has been started against it.
SELECT 1;
