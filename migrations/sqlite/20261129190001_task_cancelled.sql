-- `cancelled`: a terminal status (POST /api/v1/tasks/{id}/cancel); its hold is released.
-- SQLite cannot alter a CHECK; widening one changes no stored row, so the table's definition is edited
-- in place (https://www.sqlite.org/lang_altertable.html#otheralter) rather than the table rebuilt:
-- `replace` appends the value whatever other columns or statuses other migrations added.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql, '''succeeded'', ''failed'')', '''succeeded'', ''failed'', ''cancelled'')')
WHERE type = 'table' AND name = 'tasks';
PRAGMA writable_schema = RESET;
-- Any DDL bumps the schema cookie, so every open connection re-reads the definition.
CREATE TABLE schema_bump (x INTEGER);
DROP TABLE schema_bump;
